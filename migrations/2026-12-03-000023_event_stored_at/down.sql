DROP INDEX events_stored;
ALTER TABLE events DROP COLUMN stored_at;
