-- Plan migrations are recorded in the catalogue audit too.
ALTER TABLE catalogue_audit DROP CONSTRAINT catalogue_audit_action_check;
ALTER TABLE catalogue_audit ADD CONSTRAINT catalogue_audit_action_check
    CHECK (action IN ('published', 'refused', 'migrated'));
