-- The pages' sign-ins: a portal link (`POST /v1/portal-sessions`, opened once), the portal
-- session it becomes, and a console session (signed in with a finance or admin key). Only
-- hashes of the tokens are kept. Not account-owned (a console session has no account, and a
-- link is looked up by its token alone): a global table written at each sign-in, which on
-- Citus stays on the coordinator (a Citus-local table, like `jobs`).
CREATE TABLE web_sessions (
    token_hash text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('portal_link', 'portal', 'console')),
    -- The one account a portal link or portal session shows.
    account text NULL,
    -- The key a console session was signed in with: revoking it ends the session.
    key_id bigint NULL,
    -- The form token every POST of this session must carry.
    csrf text NOT NULL,
    return_url text NULL,
    expires_at timestamptz NOT NULL,
    -- When a portal link was opened (a link opens once).
    used_at timestamptz NULL,
    created_at timestamptz NOT NULL,
    CHECK ((kind = 'console') = (key_id IS NOT NULL)),
    CHECK ((kind = 'console') = (account IS NULL))
);
CREATE INDEX web_sessions_expires_at ON web_sessions (expires_at);
