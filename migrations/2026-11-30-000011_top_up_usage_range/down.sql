UPDATE invoice_lines SET usage_from = NULL, usage_to = NULL WHERE kind = 'minimum_top_up';
