//! Citus: when the `citus` extension is installed in accrue's database, the migrations end by
//! placing every table (`accrue migrate`, and `serve`, which migrates). Account-owned tables are
//! distributed by `account`, co-located with `accounts`. The catalogue becomes reference tables.
//! The global tables (the job queue, the invoice-number registry, the webhook endpoints) become
//! Citus-local tables on the coordinator. This follows `SCALE.md` recipe M1 and rule 12:
//!
//! 1. drop the foreign keys that touch a table still to be placed;
//! 2. create the reference tables, then the Citus-local ones;
//! 3. distribute `accounts`, then the other account-owned tables co-located with it;
//! 4. empty the coordinator's own copy of the rows now on the shards (Citus keeps it on disk,
//!    unseen, until told: [`drop_local_leftovers`]);
//! 5. put the foreign keys back, one per statement.
//!
//! It all happens in one transaction. It places only tables not placed yet (and only those the
//! migrations have created), so it converts an existing single-node database (its rows are
//! copied to the shards) and a table a later migration adds, the same way, provided that
//! migration gives the table no foreign key yet (Citus would make it a coordinator table on the
//! spot): foreign keys of new tables belong here. A later migration runs on tables already
//! placed, where Citus refuses some `ALTER TABLE` forms (`SET`/`DROP NOT NULL`, `DROP COLUMN`,
//! `ADD CONSTRAINT ... UNIQUE`) sent with other statements in one string, as a migration file
//! is: `cannot insert multiple commands into a prepared statement`. Such a migration puts them
//! in a `DO` block. `every_later_migration_runs_on_a_database_placed_on_citus`
//! (tests/api/citus.rs) runs every migration since Citus support on a placed database. On plain
//! PostgreSQL it does nothing.
//!
//! Every table of the schema must be in exactly one of the three lists below. A test checks the
//! lists against the migrated schema, so a new table cannot be forgotten.

use super::StoreError;
use diesel::connection::SimpleConnection;
use diesel::sql_types::Text;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use std::sync::atomic::{AtomicBool, Ordering};

/// The blocking connection the migrations run on.
type PgConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// Tables owned by an account, distributed by their `account` column. `accounts` comes first:
/// the others are co-located with it.
pub const DISTRIBUTED: &[&str] = &[
    "accounts",
    "events",
    "usage_rollups",
    "usage_unique_keys",
    "event_type_counts",
    "subscriptions",
    "quotes",
    "idempotency_keys",
    "subscription_changes",
    "invoices",
    "invoice_lines",
    "invoice_payments",
    "invoice_settlements",
    "dunning_steps",
    "account_mrr",
    "revenue_movements",
    "outbox",
    "limit_alerts",
    "pql_scores",
    "billing_errors",
];

/// The catalogue: small, rarely written, read with every request; copied to every node.
pub const REFERENCE: &[&str] = &["plan_versions", "api_keys", "test_clocks"];

/// Global tables kept on the coordinator (`citus_add_local_table_to_metadata`): the job queue
/// (claimed with `FOR UPDATE SKIP LOCKED`, SCALE.md rule 7), singletons and registries keyed
/// by a global value, the webhook endpoints and their delivery queue, console and portal
/// sessions, the catalogue's append-only audit (which keeps its trigger), and the per-type
/// event totals of single-node ingestion (kept when a database is converted).
pub const COORDINATOR: &[&str] = &[
    "jobs",
    "invoice_counter",
    "invoice_numbers",
    "stripe_events",
    "installation",
    "outbox_sequencer",
    "web_sessions",
    "catalogue_audit",
    "webhook_endpoints",
    "webhook_deliveries",
    "event_type_totals",
];

/// Whether accrue's database has the extension, learnt as pooled connections open
/// ([`super::pool`]). It only picks the faster form of a statement: for bulk writes
/// (ingestion's, a close batch's) multi-row `VALUES`, which Citus routes shard by shard, where
/// one PostgreSQL is faster with `UNNEST`, which Citus runs through the coordinator; for reads
/// of many accounts `= ANY`, which Citus prunes to their shards, where one PostgreSQL is
/// surer with a LATERAL index lookup per account. Both forms are correct on both.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether this process has seen a database with the extension.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

pub(super) fn learnt_active() {
    ACTIVE.store(true, Ordering::Relaxed);
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct ForeignKey {
    /// As `regclass` prints it: quoted where it needs to be.
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    definition: String,
}

/// Whether the database has the `citus` extension.
pub fn enabled(conn: &mut PgConnection) -> Result<bool, StoreError> {
    let rows: Vec<Name> =
        diesel::sql_query("SELECT extname::text AS name FROM pg_extension WHERE extname = 'citus'")
            .load(conn)?;
    Ok(!rows.is_empty())
}

/// Places every table of the lists that exists and is not yet known to Citus; returns how many
/// it placed (0 on plain PostgreSQL, and on a database already placed).
pub fn place_tables(conn: &mut PgConnection) -> Result<usize, StoreError> {
    if !enabled(conn)? {
        return Ok(0);
    }
    conn.transaction::<usize, StoreError, _>(|c| {
        let placed: Vec<Name> =
            diesel::sql_query("SELECT logicalrelid::regclass::text AS name FROM pg_dist_partition")
                .load(c)?;
        let placed: Vec<String> = placed.into_iter().map(|n| n.name).collect();
        let existing: Vec<Name> = diesel::sql_query(
            "SELECT tablename::text AS name FROM pg_tables WHERE schemaname = current_schema()",
        )
        .load(c)?;
        let existing: Vec<String> = existing.into_iter().map(|n| n.name).collect();
        // Only tables the migrations have created: a database placed by an earlier release,
        // with some of today's tables still to come, is placed as that release did (the test
        // of upgrades places one so). A migrate runs every migration first, so it finds all.
        let pending = |list: &'static [&'static str]| -> Vec<&'static str> {
            list.iter()
                .copied()
                .filter(|t| !placed.iter().any(|p| p == t) && existing.iter().any(|e| e == t))
                .collect()
        };
        let (distributed, reference, coordinator) = (
            pending(DISTRIBUTED),
            pending(REFERENCE),
            pending(COORDINATOR),
        );
        let count = distributed.len() + reference.len() + coordinator.len();
        if count == 0 {
            // A database converted before accrue emptied the coordinator's copy keeps it
            // until a migrate finds it.
            drop_local_leftovers(c)?;
            return Ok(0);
        }
        let all: Vec<String> = distributed
            .iter()
            .chain(&reference)
            .chain(&coordinator)
            .map(|t| t.to_string())
            .collect();
        // Moving rows between nodes inside a transaction that also changes tables needs
        // sequential shard access.
        c.batch_execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")?;
        let keys: Vec<ForeignKey> = diesel::sql_query(
            "SELECT conrelid::regclass::text AS table_name, conname::text AS name,
                    pg_get_constraintdef(oid) AS definition
               FROM pg_constraint
              WHERE contype = 'f'
                AND (conrelid::regclass::text = ANY($1) OR confrelid::regclass::text = ANY($1))
              ORDER BY conrelid::regclass::text, conname",
        )
        .bind::<diesel::sql_types::Array<Text>, _>(&all)
        .load(c)?;
        for k in &keys {
            c.batch_execute(&format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                k.table_name,
                ident(&k.name)
            ))?;
        }
        for t in &reference {
            c.batch_execute(&format!("SELECT create_reference_table('{t}')"))?;
        }
        for t in &coordinator {
            c.batch_execute(&format!("SELECT citus_add_local_table_to_metadata('{t}')"))?;
        }
        for t in &distributed {
            if *t == "accounts" {
                c.batch_execute("SELECT create_distributed_table('accounts', 'account')")?;
            } else {
                c.batch_execute(&format!(
                    "SELECT create_distributed_table('{t}', 'account', colocate_with => 'accounts')"
                ))?;
            }
        }
        // Before the keys come back: the removal truncates with CASCADE, which then reaches
        // no other table.
        drop_local_leftovers(c)?;
        for k in &keys {
            c.batch_execute(&format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {}",
                k.table_name,
                ident(&k.name),
                k.definition
            ))?;
        }
        tracing::info!(tables = count, "placed tables on Citus");
        Ok(count)
    })
}

/// Empties the coordinator's own copy of the rows of every distributed and reference table
/// that has one. A table placed with rows in it (a single-node database converting) has them
/// copied to its shards, and Citus keeps the local ones on disk, never read again, as large as
/// the table, until `truncate_local_data_after_distributing_table`. A placed table's local
/// relation is otherwise empty (`pg_relation_size` is that relation alone, not its shards).
fn drop_local_leftovers(c: &mut PgConnection) -> Result<(), StoreError> {
    let tables: Vec<String> = DISTRIBUTED
        .iter()
        .chain(REFERENCE)
        .map(|t| t.to_string())
        .collect();
    let left: Vec<Name> = diesel::sql_query(
        "SELECT t AS name FROM unnest($1::text[]) AS t
          WHERE pg_relation_size(to_regclass(t)) > 0
            AND EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass(t))",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(&tables)
    .load(c)?;
    for t in &left {
        c.batch_execute(&format!(
            "SELECT truncate_local_data_after_distributing_table('{}')",
            t.name
        ))?;
    }
    if !left.is_empty() {
        tracing::info!(
            tables = left.len(),
            "emptied the coordinator's copy of rows now on the shards"
        );
    }
    Ok(())
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
