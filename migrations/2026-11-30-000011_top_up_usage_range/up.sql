-- A minimum top-up is part of its period's arrears: it carries the period's usage range, so a
-- late-usage correction recomputes usage and top-up together.
UPDATE invoice_lines l
   SET usage_from = i.period_start, usage_to = i.period_end
  FROM invoices i
 WHERE l.account = i.account AND l.number = i.number
   AND l.kind = 'minimum_top_up' AND l.usage_from IS NULL;
