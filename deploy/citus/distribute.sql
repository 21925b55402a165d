-- Issue 18, work in progress: converting a migrated single-node accrue database to Citus by
-- hand (not yet run by `accrue migrate`). Tried on 2026-12-03 on ../shared/citus/cluster.sh's
-- coordinator (:9700) and two workers, after `accrue migrate` on the coordinator: it commits,
-- and 19 account-owned tables are distributed by `account`, co-located with `accounts`; the
-- catalogue (plan_versions, api_keys, test_clocks) are reference tables; the global tables
-- stay on the coordinator as Citus-local tables (webhook_endpoints with its deliveries, which
-- reference it, through cascade_via_foreign_keys; catalogue_audit keeps its trigger there).
-- Foreign keys are dropped first and the account-keyed ones re-added one per statement (Citus
-- refuses ADD CONSTRAINT with other subcommands).
--
-- What then fails (seen with the server on the converted database): the batched usage read
-- of the check cache and of PQL scoring (store/usage.rs, `find_by_accounts_and_ranges`):
--   cannot push down this subquery: "Offset clause is currently unsupported when a lateral
--   subquery references a column from a table function (p)"
-- (the LATERAL ... OFFSET 0 over UNNEST keeps plain PostgreSQL on an index range scan per
-- account). Creating accounts, ingesting and subscribing worked.
--
-- Usage: psql "$COORDINATOR_URL/accrue" -v ON_ERROR_STOP=1 -f deploy/citus/distribute.sql
BEGIN;
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
-- 1. foreign keys that Citus cannot hold while tables change kind
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_account_fkey, DROP CONSTRAINT subscriptions_plan_plan_version_fkey;
ALTER TABLE quotes DROP CONSTRAINT quotes_account_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_account_fkey;
ALTER TABLE subscription_changes DROP CONSTRAINT subscription_changes_account_fkey;
ALTER TABLE invoices DROP CONSTRAINT invoices_account_fkey;
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_account_number_fkey;
ALTER TABLE invoice_payments DROP CONSTRAINT invoice_payments_account_number_fkey;
ALTER TABLE dunning_steps DROP CONSTRAINT dunning_steps_account_fkey, DROP CONSTRAINT dunning_steps_account_number_fkey;
ALTER TABLE account_mrr DROP CONSTRAINT account_mrr_account_fkey;
ALTER TABLE revenue_movements DROP CONSTRAINT revenue_movements_account_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_account_fkey;
ALTER TABLE limit_alerts DROP CONSTRAINT limit_alerts_account_fkey;
ALTER TABLE pql_scores DROP CONSTRAINT pql_scores_account_fkey;
ALTER TABLE invoice_settlements DROP CONSTRAINT invoice_settlements_account_number_fkey;
ALTER TABLE accounts DROP CONSTRAINT accounts_test_clock_fkey;
-- 2. the catalogue: reference tables
SELECT create_reference_table('plan_versions');
SELECT create_reference_table('api_keys');
SELECT create_reference_table('test_clocks');
-- 3. global tables stay on the coordinator
SELECT citus_add_local_table_to_metadata(t) FROM unnest(ARRAY['jobs','invoice_counter','invoice_numbers','stripe_events','installation','outbox_sequencer','web_sessions','catalogue_audit']) t;
SELECT citus_add_local_table_to_metadata('webhook_endpoints', cascade_via_foreign_keys => true);
-- 4. account-owned tables, co-located
SELECT create_distributed_table('accounts', 'account');
SELECT create_distributed_table(t, 'account', colocate_with => 'accounts') FROM unnest(ARRAY['events','usage_rollups','usage_unique_keys','event_type_counts','subscriptions','quotes','idempotency_keys','subscription_changes','invoices','invoice_lines','invoice_payments','invoice_settlements','dunning_steps','account_mrr','revenue_movements','outbox','limit_alerts','pql_scores']) t;
-- 5. the foreign keys again
ALTER TABLE subscriptions ADD FOREIGN KEY (account) REFERENCES accounts (account);
ALTER TABLE subscriptions ADD FOREIGN KEY (plan, plan_version) REFERENCES plan_versions (plan, version);
ALTER TABLE invoices ADD FOREIGN KEY (account) REFERENCES accounts (account);
ALTER TABLE invoice_payments ADD FOREIGN KEY (account, number) REFERENCES invoices (account, number);
ALTER TABLE invoice_settlements ADD FOREIGN KEY (account, number) REFERENCES invoices (account, number);
ALTER TABLE dunning_steps ADD FOREIGN KEY (account, number) REFERENCES invoices (account, number);
ALTER TABLE invoice_lines ADD FOREIGN KEY (account, number) REFERENCES invoices (account, number);
ALTER TABLE accounts ADD FOREIGN KEY (test_clock) REFERENCES test_clocks (id);
COMMIT;
