-- Event exports read in storage order after a cursor. `stored_at` is the database's time at the
-- storing transaction's start (never an application clock); an export shows an event once its
-- stored_at is ten minutes old, longer than any ingest transaction can run (its statements are
-- bounded by statement_timeout), so no event can commit behind a cursor. A group commit's
-- events share one stored_at: the btree deduplicates them, and PostgreSQL's incremental sort
-- orders the ties by (account, id) within a page.
ALTER TABLE events ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX events_stored ON events (stored_at);
