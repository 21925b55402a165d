DROP INDEX webhook_endpoints_idempotency;
ALTER TABLE webhook_endpoints DROP COLUMN idempotency_key;
