DROP TRIGGER catalogue_audit_append_only ON catalogue_audit;
DROP FUNCTION catalogue_audit_is_append_only();
DROP TABLE catalogue_audit;
DROP TABLE plan_versions;
