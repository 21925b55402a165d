DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
DROP TABLE outbox_sequencer;
DROP TABLE outbox;
DROP TABLE revenue_movements;
DROP TABLE account_mrr;
