DROP INDEX usage_unique_keys_written;
ALTER TABLE usage_unique_keys DROP COLUMN written_at;
