-- Published plan versions and the append-only audit of catalogue changes.
-- Both are catalogue tables (reference tables on Citus): small, rarely written, no account.

CREATE TABLE plan_versions (
    plan text NOT NULL,
    version integer NOT NULL CHECK (version > 0),
    name text NOT NULL,
    self_serve boolean NOT NULL,
    -- SHA-256 of the canonical JSON of the definition: the immutability check.
    content_hash text NOT NULL,
    definition jsonb NOT NULL,
    published_at timestamptz NOT NULL,
    published_by text NOT NULL,
    PRIMARY KEY (plan, version)
);

CREATE TABLE catalogue_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action text NOT NULL CHECK (action IN ('published', 'refused')),
    plan text NOT NULL,
    version integer NOT NULL,
    content_hash text NOT NULL,
    actor text NOT NULL,
    detail text NOT NULL DEFAULT '',
    at timestamptz NOT NULL
);

-- Append-only: rows can be added, never changed or removed. (A trigger on this catalogue
-- table is fine; SCALE.md forbids triggers on account-owned, distributed tables only.)
CREATE FUNCTION catalogue_audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'catalogue_audit is append-only';
END;
$$;
CREATE TRIGGER catalogue_audit_append_only
    BEFORE UPDATE OR DELETE ON catalogue_audit
    FOR EACH STATEMENT EXECUTE FUNCTION catalogue_audit_is_append_only();
