-- A POST of a webhook endpoint retried with the same Idempotency-Key finds the endpoint the
-- first one created instead of creating a second (security review L6).
ALTER TABLE webhook_endpoints ADD COLUMN idempotency_key text NULL;
CREATE UNIQUE INDEX webhook_endpoints_idempotency ON webhook_endpoints (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
