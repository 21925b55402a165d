-- The share of a whole period a period invoice covers when a change cut it short (an interval
-- change, a dunning cancellation); NULL: the whole period. Its recurring fees, minimum and
-- peak-metered prices were in proportion, and a late-usage recomputation uses the same share.
ALTER TABLE invoices ADD COLUMN period_share NUMERIC(28, 9);
