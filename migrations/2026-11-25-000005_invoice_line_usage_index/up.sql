-- Finds the lines that billed a period's usage (late-usage detection at period close).
CREATE INDEX invoice_lines_by_usage ON invoice_lines (account, usage_from) WHERE usage_from IS NOT NULL;
