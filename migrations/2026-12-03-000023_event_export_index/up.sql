-- Event exports read in receipt order after a cursor. A BRIN index (events arrive roughly in
-- received_at order) finds the recent range an incremental export reads at almost no cost to
-- ingestion, where a btree would add a second index write per event.
CREATE INDEX events_received_brin ON events USING brin (received_at);
