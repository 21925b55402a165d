DROP INDEX invoice_lines_by_usage;
