-- API keys as operators expect: an optional expiry, the last time a key was used, and a
-- change stamp (set on create, revoke and rotate, never on use) that every instance polls to
-- reload its in-memory key set within a second.
ALTER TABLE api_keys
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN changed_at timestamptz NOT NULL DEFAULT clock_timestamp();
