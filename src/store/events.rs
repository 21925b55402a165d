//! `events`, `usage_rollups`, `usage_unique_keys`, `event_type_counts`, `event_type_totals`:
//! the write path of ingestion. Its writes run on a connection inside the caller's
//! transaction and take their rows sorted by key, so concurrent batches lock rows in the same
//! order. [`fold_idle_type_totals`] is the one maintenance write.

use super::StoreError;
use crate::domain::aggregate::AggregateState;
use crate::domain::event::Event;
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::sql_types::{Array, Int8, Jsonb, Nullable, Numeric, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};
use rust_decimal::Decimal;
use std::collections::HashSet;

/// A rollup key: (account, meter, bucket start).
pub type RollupKey<'a> = (&'a str, &'a str, DateTime<Utc>);

#[derive(QueryableByName)]
struct InsertedKey {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = Text)]
    id: String,
}

/// The most bind parameters one statement takes (PostgreSQL's limit is 65,535).
const MAX_BINDS: usize = 60_000;

/// How many rows of `columns` bound values fit in one statement.
fn rows_per_statement(columns: usize) -> usize {
    MAX_BINDS / columns
}

/// `rows` rows of a multi-row VALUES list, each with a bound placeholder of each of `types`
/// (numbered from $1, row by row) and then `tail` (SQL, such as `, clock_timestamp()`).
/// On Citus a multi-row INSERT ... VALUES goes shard by shard, where INSERT ... SELECT FROM
/// UNNEST is planned through the coordinator (measured: 250 events, 31 ms against 386 ms).
fn values_list(rows: usize, types: &[&str], tail: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(rows * (types.len() * 16 + tail.len() + 3));
    let mut n = 0;
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for (i, t) in types.iter().enumerate() {
            n += 1;
            let _ = write!(out, "{}${n}::{t}", if i == 0 { "" } else { ", " });
        }
        out.push_str(tail);
        out.push(')');
    }
    out
}

/// A group's events as column arrays, bound to `UNNEST` on single-node PostgreSQL.
struct Columns<'a> {
    accounts: Vec<&'a str>,
    ids: Vec<&'a str>,
    types: Vec<&'a str>,
    timestamps: Vec<DateTime<Utc>>,
    properties: Vec<&'a serde_json::Value>,
}

impl<'a> Columns<'a> {
    fn of(events: &[&'a Event]) -> Self {
        Self {
            accounts: events.iter().map(|e| e.account.as_str()).collect(),
            ids: events.iter().map(|e| e.id.as_str()).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            timestamps: events.iter().map(|e| e.timestamp).collect(),
            properties: events.iter().map(|e| &e.properties).collect(),
        }
    }

    /// Binds the five columns and then `received_at` to the next placeholders (the events
    /// inserts' order).
    fn bind_inserted(
        self,
        q: super::prepared::Prepared<'a>,
        received_at: DateTime<Utc>,
    ) -> super::prepared::Prepared<'a> {
        q.bind::<Array<Text>, _>(self.accounts)
            .bind::<Array<Text>, _>(self.ids)
            .bind::<Array<Text>, _>(self.types)
            .bind::<Array<Timestamptz>, _>(self.timestamps)
            .bind::<Array<Jsonb>, _>(self.properties)
            .bind::<Timestamptz, _>(received_at)
    }
}

/// Inserts events that are not stored yet; returns the (account, id) of those inserted.
/// Conflicts with stored events (earlier batches, concurrent retries) are skipped, not errors.
pub async fn insert_new(
    conn: &mut AsyncPgConnection,
    events: &[&Event],
    received_at: DateTime<Utc>,
) -> Result<HashSet<(String, String)>, StoreError> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    if super::citus::active() {
        let mut out = HashSet::new();
        for chunk in events.chunks(rows_per_statement(6)) {
            let sql = format!(
                "INSERT INTO events (account, id, event_type, ts, properties, received_at)
                 VALUES {} ON CONFLICT (account, id) DO NOTHING RETURNING account, id",
                values_list(
                    chunk.len(),
                    &[
                        "text",
                        "text",
                        "text",
                        "timestamptz",
                        "jsonb",
                        "timestamptz"
                    ],
                    ""
                )
            );
            let mut q = diesel::sql_query(sql).into_boxed::<Pg>();
            for e in chunk {
                q = q
                    .bind::<Text, _>(e.account.as_str())
                    .bind::<Text, _>(e.id.as_str())
                    .bind::<Text, _>(e.event_type.as_str())
                    .bind::<Timestamptz, _>(e.timestamp)
                    .bind::<Jsonb, _>(&e.properties)
                    .bind::<Timestamptz, _>(received_at);
            }
            let rows: Vec<InsertedKey> = q.load(conn).await?;
            out.extend(rows.into_iter().map(|r| (r.account, r.id)));
        }
        return Ok(out);
    }
    let insert = super::prepared::prepared(
        "INSERT INTO events (account, id, event_type, ts, properties, received_at)
         SELECT a, i, t, s, p, $6
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[])
                AS u(a, i, t, s, p)
         ON CONFLICT (account, id) DO NOTHING
         RETURNING account, id",
    );
    let rows: Vec<InsertedKey> = Columns::of(events)
        .bind_inserted(insert, received_at)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.account, r.id)).collect())
}

/// Of events already stored, the (account, id) of those whose stored copy has another type or
/// other properties (compared as `jsonb`, so key order and number spelling do not matter).
pub async fn differing_from_stored(
    conn: &mut AsyncPgConnection,
    events: &[&Event],
) -> Result<Vec<(String, String)>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let c = Columns::of(events);
    let rows: Vec<InsertedKey> = super::prepared::prepared(
        "SELECT u.a AS account, u.i AS id
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS u(a, i, t, p)
           JOIN events e ON e.account = u.a AND e.id = u.i
          WHERE e.event_type <> u.t OR e.properties <> u.p",
    )
    .bind::<Array<Text>, _>(c.accounts)
    .bind::<Array<Text>, _>(c.ids)
    .bind::<Array<Text>, _>(c.types)
    .bind::<Array<Jsonb>, _>(c.properties)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.account, r.id)).collect())
}

/// How a rollup delta adds to the stored row. Event ids compare bytewise (COLLATE "C") to match
/// the domain's tie-break for `latest`.
const ROLLUP_CONFLICT: &str = r#"ON CONFLICT (account, meter, bucket) DO UPDATE SET
           updated_at = EXCLUDED.updated_at,
           event_count = r.event_count + EXCLUDED.event_count,
           value_sum = r.value_sum + EXCLUDED.value_sum,
           value_max = GREATEST(r.value_max, EXCLUDED.value_max),
           latest_at = CASE WHEN EXCLUDED.latest_at IS NOT NULL AND (r.latest_at IS NULL OR
                 (EXCLUDED.latest_at, EXCLUDED.latest_event_id COLLATE "C")
                   > (r.latest_at, r.latest_event_id COLLATE "C"))
               THEN EXCLUDED.latest_at ELSE r.latest_at END,
           latest_event_id = CASE WHEN EXCLUDED.latest_at IS NOT NULL AND (r.latest_at IS NULL OR
                 (EXCLUDED.latest_at, EXCLUDED.latest_event_id COLLATE "C")
                   > (r.latest_at, r.latest_event_id COLLATE "C"))
               THEN EXCLUDED.latest_event_id ELSE r.latest_event_id END,
           latest_value = CASE WHEN EXCLUDED.latest_at IS NOT NULL AND (r.latest_at IS NULL OR
                 (EXCLUDED.latest_at, EXCLUDED.latest_event_id COLLATE "C")
                   > (r.latest_at, r.latest_event_id COLLATE "C"))
               THEN EXCLUDED.latest_value ELSE r.latest_value END,
           first_event_at = LEAST(r.first_event_at, EXCLUDED.first_event_at),
           last_event_at = GREATEST(r.last_event_at, EXCLUDED.last_event_at)"#;

/// `UNNEST` of one array placeholder per column type, numbered from `$first`.
fn unnest(types: &[&str], first: usize) -> String {
    let args: Vec<String> = (first..)
        .zip(types)
        .map(|(n, t)| format!("${n}::{t}[]"))
        .collect();
    format!("UNNEST({})", args.join(", "))
}

const EVENT_TYPES: [&str; 5] = ["text", "text", "text", "timestamptz", "jsonb"];
const ROLLUP_TYPES: [&str; 11] = [
    "text",
    "text",
    "timestamptz",
    "int8",
    "numeric",
    "numeric",
    "timestamptz",
    "text",
    "numeric",
    "timestamptz",
    "timestamptz",
];
const KEY_TYPES: [&str; 4] = ["text", "text", "timestamptz", "text"];
const TYPE_COUNT_TYPES: [&str; 5] = ["text", "text", "int8", "timestamptz", "timestamptz"];
const TYPE_SEEN_TYPES: [&str; 4] = ["text", "text", "timestamptz", "timestamptz"];
const TYPE_TOTAL_TYPES: [&str; 4] = ["text", "int8", "timestamptz", "timestamptz"];

/// The single-node events insert over bound arrays from `$first` (the receipt time last).
fn events_insert(first: usize) -> String {
    format!(
        "INSERT INTO events (account, id, event_type, ts, properties, received_at)
         SELECT a, i, t, s, p, ${received}
           FROM {} AS u(a, i, t, s, p)",
        unnest(&EVENT_TYPES, first),
        received = first + EVENT_TYPES.len(),
    )
}

/// The single-node rollup upsert over bound arrays from `$first`.
fn rollup_upsert(first: usize) -> String {
    format!(
        "INSERT INTO usage_rollups AS r (account, meter, bucket, event_count, value_sum,
                value_max, latest_at, latest_event_id, latest_value, first_event_at, last_event_at,
                updated_at)
         SELECT u.*, clock_timestamp() FROM {} AS u
         {ROLLUP_CONFLICT}",
        unnest(&ROLLUP_TYPES, first)
    )
}

/// The single-node distinct-key insert over bound arrays from `$first`.
fn keys_insert(first: usize) -> String {
    format!(
        "INSERT INTO usage_unique_keys (account, meter, bucket, key)
         SELECT * FROM {} ON CONFLICT DO NOTHING",
        unnest(&KEY_TYPES, first)
    )
}

/// The single-node insert of the (account, type) rows a group may be the first to see, over
/// bound arrays from `$first`: written once, with no count (the counts go to
/// `event_type_totals`, [`type_totals_upsert`]), and skipped where stored. They give the
/// report its number of accounts per type.
fn type_seen_insert(first: usize) -> String {
    format!(
        "INSERT INTO event_type_counts AS c (account, event_type, event_count, first_seen_at,
                last_seen_at)
         SELECT a, t, 0, f, l FROM {} AS u(a, t, f, l) ON CONFLICT DO NOTHING",
        unnest(&TYPE_SEEN_TYPES, first)
    )
}

/// The single-node per-type count upsert over bound arrays from `$first`, then the group's
/// shard (one row per type and shard; see [`Counters::shard`]).
fn type_totals_upsert(first: usize) -> String {
    format!(
        "INSERT INTO event_type_totals AS s (event_type, shard, event_count, first_seen_at,
                last_seen_at, updated_at)
         SELECT t, ${shard}, n, f, l, now() FROM {} AS u(t, n, f, l)
         {TYPE_TOTAL_CONFLICT}",
        unnest(&TYPE_TOTAL_TYPES, first),
        shard = first + TYPE_TOTAL_TYPES.len(),
    )
}

/// How a per-type count adds to the stored row.
const TYPE_TOTAL_CONFLICT: &str = "ON CONFLICT (event_type, shard) DO UPDATE SET
           event_count = s.event_count + EXCLUDED.event_count,
           first_seen_at = LEAST(s.first_seen_at, EXCLUDED.first_seen_at),
           last_seen_at = GREATEST(s.last_seen_at, EXCLUDED.last_seen_at),
           updated_at = EXCLUDED.updated_at";

/// The counter writes of a group as one statement's parts, bound from `$1`: rollups
/// ($1–$11), distinct keys ($12–$15), the (account, type) rows not known to exist ($16–$19),
/// the per-type counts ($20–$23, the shard $24). PostgreSQL runs a statement's
/// data-modifying `WITH` parts after its main part (the events, in
/// [`NEW_EVENTS_AND_COUNTERS`]), in an order it fixes for the text (PostgreSQL 15: last part
/// first), which its documentation leaves unspecified. Both single-node statements start with
/// these same parts, so every group locks the counters' rows in one order whichever it runs
/// (and on Citus, where the tables are written one statement each, no group runs either).
fn counter_parts() -> String {
    let seen = 1 + ROLLUP_TYPES.len() + KEY_TYPES.len();
    format!(
        "WITH rollups AS ({}), unique_keys AS ({}), type_counts AS ({}), type_totals AS ({})",
        rollup_upsert(1),
        keys_insert(1 + ROLLUP_TYPES.len()),
        type_seen_insert(seen),
        type_totals_upsert(seen + TYPE_SEEN_TYPES.len()),
    )
}

/// The first placeholder after the counters' (see [`counter_parts`]).
const AFTER_COUNTERS: usize =
    1 + ROLLUP_TYPES.len() + KEY_TYPES.len() + TYPE_SEEN_TYPES.len() + TYPE_TOTAL_TYPES.len() + 1;

/// A group's counters, as one statement.
static COUNTERS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} SELECT 1", counter_parts()));

/// A group's events, none stored before, and their counters, as one statement: its events
/// first (the main part), then the counters as in [`COUNTERS`].
static NEW_EVENTS_AND_COUNTERS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} {}", counter_parts(), events_insert(AFTER_COUNTERS)));

/// A group's counter deltas: rollups by (account, meter, hour) and event types by (account,
/// type), each key once and in key order.
///
/// The event types are counted two ways. On Citus, per (account, type) in
/// `event_type_counts`, one statement per table. On single-node PostgreSQL, per type in the
/// group's [`shard`](Self::shard) of `event_type_totals` (a row per type and group instead of
/// one per account and type: those rows' `ON CONFLICT` probes cost more than their updates,
/// BENCHMARKS.md, ninth session), and `event_type_counts` only gets the (account, type) rows
/// flagged [`unseen`](Self::unseen), once each, for the report's number of accounts.
pub struct Counters<'a> {
    pub rollups: &'a [(RollupKey<'a>, AggregateState)],
    pub types: &'a [((&'a str, &'a str), TypeCount)],
    /// One flag per entry of `types`: whether its (account, type) row may not be stored yet
    /// (the caller has not seen a commit that stored it). Single-node only.
    pub unseen: &'a [bool],
    /// The `event_type_totals` rows this group adds to: no other group in flight may use the
    /// same shard, or the two would wait for each other's commit. Single-node only.
    pub shard: &'a str,
}

impl<'a> Counters<'a> {
    /// Binds the counters' columns to the next placeholders, in [`counter_parts`]' order.
    fn bind(&self, q: super::prepared::Prepared<'a>) -> super::prepared::Prepared<'a> {
        let (r, n) = (self.rollups, self.rollups.len());
        let mut accounts = Vec::with_capacity(n);
        let mut meters = Vec::with_capacity(n);
        let mut buckets = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut sums = Vec::with_capacity(n);
        let mut maxes: Vec<Option<Decimal>> = Vec::with_capacity(n);
        let mut latest_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
        let mut latest_id: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut latest_value: Vec<Option<Decimal>> = Vec::with_capacity(n);
        let mut firsts = Vec::with_capacity(n);
        let mut lasts = Vec::with_capacity(n);
        for ((account, meter, bucket), st) in r {
            accounts.push(*account);
            meters.push(*meter);
            buckets.push(*bucket);
            counts.push(st.event_count);
            sums.push(st.sum);
            maxes.push(st.max);
            latest_at.push(st.latest.as_ref().map(|l| l.at));
            latest_id.push(st.latest.as_ref().map(|l| l.event_id.as_str()));
            latest_value.push(st.latest.as_ref().map(|l| l.value));
            firsts.push(st.first_at.unwrap_or(*bucket));
            lasts.push(st.last_at.unwrap_or(*bucket));
        }
        let keys = unique_keys(r);
        debug_assert_eq!(self.unseen.len(), self.types.len());
        let unseen: Vec<&((&str, &str), TypeCount)> = self
            .types
            .iter()
            .zip(self.unseen)
            .filter(|(_, u)| **u)
            .map(|(t, _)| t)
            .collect();
        let totals = totals_by_type(self.types);
        q.bind::<Array<Text>, _>(accounts)
            .bind::<Array<Text>, _>(meters)
            .bind::<Array<Timestamptz>, _>(buckets)
            .bind::<Array<Int8>, _>(counts)
            .bind::<Array<Numeric>, _>(sums)
            .bind::<Array<Nullable<Numeric>>, _>(maxes)
            .bind::<Array<Nullable<Timestamptz>>, _>(latest_at)
            .bind::<Array<Nullable<Text>>, _>(latest_id)
            .bind::<Array<Nullable<Numeric>>, _>(latest_value)
            .bind::<Array<Timestamptz>, _>(firsts)
            .bind::<Array<Timestamptz>, _>(lasts)
            .bind::<Array<Text>, _>(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind::<Array<Timestamptz>, _>(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(keys.iter().map(|k| k.3).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(unseen.iter().map(|((a, _), _)| *a).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(unseen.iter().map(|((_, t), _)| *t).collect::<Vec<_>>())
            .bind::<Array<Timestamptz>, _>(
                unseen.iter().map(|(_, c)| c.first_at).collect::<Vec<_>>(),
            )
            .bind::<Array<Timestamptz>, _>(
                unseen.iter().map(|(_, c)| c.last_at).collect::<Vec<_>>(),
            )
            .bind::<Array<Text>, _>(totals.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .bind::<Array<Int8>, _>(totals.iter().map(|(_, c)| c.count).collect::<Vec<_>>())
            .bind::<Array<Timestamptz>, _>(
                totals.iter().map(|(_, c)| c.first_at).collect::<Vec<_>>(),
            )
            .bind::<Array<Timestamptz>, _>(
                totals.iter().map(|(_, c)| c.last_at).collect::<Vec<_>>(),
            )
            .bind::<Text, _>(self.shard)
    }
}

/// The (account, type) counts summed per type, in type order (the rows' lock order).
fn totals_by_type<'a>(types: &[((&'a str, &'a str), TypeCount)]) -> Vec<(&'a str, TypeCount)> {
    let mut out: std::collections::BTreeMap<&str, TypeCount> = std::collections::BTreeMap::new();
    for ((_, t), c) in types {
        out.entry(t)
            .and_modify(|o| o.merge(c))
            .or_insert_with(|| c.clone());
    }
    out.into_iter().collect()
}

/// The distinct keys of unique_count meters in `deltas` (kept once per account, meter and hour).
fn unique_keys<'a>(
    deltas: &'a [(RollupKey<'a>, AggregateState)],
) -> Vec<(&'a str, &'a str, DateTime<Utc>, &'a str)> {
    deltas
        .iter()
        .flat_map(|((account, meter, bucket), st)| {
            st.keys
                .iter()
                .map(move |k| (*account, *meter, *bucket, k.as_str()))
        })
        .collect()
}

/// Adds a group's counter deltas: its hourly rollups (their `updated_at` is the database's
/// clock at the write, `clock_timestamp()`, never an application clock: late-usage detection
/// compares it with the database time a close read its usage at, `invoices.usage_mark`), the
/// distinct keys of unique_count meters, and the governance counters ([`Counters`]). One statement
/// on single-node PostgreSQL ([`COUNTERS`]); on Citus, one per table, each as multi-row VALUES.
pub async fn add_counters(
    conn: &mut AsyncPgConnection,
    counters: &Counters<'_>,
) -> Result<(), StoreError> {
    if counters.rollups.is_empty() && counters.types.is_empty() {
        return Ok(());
    }
    if super::citus::active() {
        add_to_rollups_citus(conn, counters.rollups).await?;
        add_unique_keys_citus(conn, counters.rollups).await?;
        return add_to_type_counts_citus(conn, counters.types).await;
    }
    counters
        .bind(super::prepared::prepared(COUNTERS.as_str()))
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts a group's events, none of which is stored yet, with their counters (`counters`,
/// of all of them), as one statement: one round trip. The events go in as a plain INSERT: PostgreSQL checks each key once, on its way into
/// the index, where `ON CONFLICT` ([`insert_new`]) first searches the index for every key and
/// then inserts it (measured at 1,000 accounts: the search was a third of the database's
/// time). A stored id fails the whole statement with a unique violation, and nothing of it is
/// written: the caller then runs the group again with [`insert_new`] and [`add_counters`].
/// Single-node PostgreSQL only (on Citus, those two).
pub async fn insert_all_with_counters(
    conn: &mut AsyncPgConnection,
    events: &[&Event],
    received_at: DateTime<Utc>,
    counters: &Counters<'_>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let insert = counters.bind(super::prepared::prepared(NEW_EVENTS_AND_COUNTERS.as_str()));
    Columns::of(events)
        .bind_inserted(insert, received_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Citus: the rollup deltas as multi-row VALUES.
async fn add_to_rollups_citus(
    conn: &mut AsyncPgConnection,
    deltas: &[(RollupKey<'_>, AggregateState)],
) -> Result<(), StoreError> {
    for chunk in deltas.chunks(rows_per_statement(ROLLUP_TYPES.len())) {
        let sql = format!(
            "INSERT INTO usage_rollups AS r (account, meter, bucket, event_count, value_sum,
                    value_max, latest_at, latest_event_id, latest_value, first_event_at,
                    last_event_at, updated_at)
             VALUES {} {ROLLUP_CONFLICT}",
            values_list(chunk.len(), &ROLLUP_TYPES, ", clock_timestamp()")
        );
        let mut q = diesel::sql_query(sql).into_boxed::<Pg>();
        for ((account, meter, bucket), st) in chunk {
            q = q
                .bind::<Text, _>(*account)
                .bind::<Text, _>(*meter)
                .bind::<Timestamptz, _>(*bucket)
                .bind::<Int8, _>(st.event_count)
                .bind::<Numeric, _>(st.sum)
                .bind::<Nullable<Numeric>, _>(st.max)
                .bind::<Nullable<Timestamptz>, _>(st.latest.as_ref().map(|l| l.at))
                .bind::<Nullable<Text>, _>(st.latest.as_ref().map(|l| l.event_id.as_str()))
                .bind::<Nullable<Numeric>, _>(st.latest.as_ref().map(|l| l.value))
                .bind::<Timestamptz, _>(st.first_at.unwrap_or(*bucket))
                .bind::<Timestamptz, _>(st.last_at.unwrap_or(*bucket));
        }
        q.execute(conn).await?;
    }
    Ok(())
}

/// Citus: the distinct keys as multi-row VALUES.
async fn add_unique_keys_citus(
    conn: &mut AsyncPgConnection,
    deltas: &[(RollupKey<'_>, AggregateState)],
) -> Result<(), StoreError> {
    let keys = unique_keys(deltas);
    for chunk in keys.chunks(rows_per_statement(KEY_TYPES.len())) {
        let sql = format!(
            "INSERT INTO usage_unique_keys (account, meter, bucket, key) VALUES {}
             ON CONFLICT DO NOTHING",
            values_list(chunk.len(), &KEY_TYPES, "")
        );
        let mut q = diesel::sql_query(sql).into_boxed::<Pg>();
        for (account, meter, bucket, key) in chunk {
            q = q
                .bind::<Text, _>(*account)
                .bind::<Text, _>(*meter)
                .bind::<Timestamptz, _>(*bucket)
                .bind::<Text, _>(*key);
        }
        q.execute(conn).await?;
    }
    Ok(())
}

/// How a type count adds to the stored row.
const TYPE_COUNT_CONFLICT: &str = "ON CONFLICT (account, event_type) DO UPDATE SET
           event_count = c.event_count + EXCLUDED.event_count,
           first_seen_at = LEAST(c.first_seen_at, EXCLUDED.first_seen_at),
           last_seen_at = GREATEST(c.last_seen_at, EXCLUDED.last_seen_at)";

/// Per (account, event type): how many new events, and their time span.
#[derive(Debug, Clone)]
pub struct TypeCount {
    pub count: i64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

impl TypeCount {
    /// One event at `at`.
    pub fn one(at: DateTime<Utc>) -> TypeCount {
        TypeCount {
            count: 1,
            first_at: at,
            last_at: at,
        }
    }

    /// Adds `other`'s events: the counts add up, the span covers both.
    pub fn merge(&mut self, other: &TypeCount) {
        self.count += other.count;
        self.first_at = self.first_at.min(other.first_at);
        self.last_at = self.last_at.max(other.last_at);
    }
}

/// Citus: the per-type governance counters as multi-row VALUES.
async fn add_to_type_counts_citus(
    conn: &mut AsyncPgConnection,
    counts: &[((&str, &str), TypeCount)],
) -> Result<(), StoreError> {
    for chunk in counts.chunks(rows_per_statement(TYPE_COUNT_TYPES.len())) {
        let sql = format!(
            "INSERT INTO event_type_counts AS c (account, event_type, event_count,
                    first_seen_at, last_seen_at)
             VALUES {} {TYPE_COUNT_CONFLICT}",
            values_list(chunk.len(), &TYPE_COUNT_TYPES, "")
        );
        let mut q = diesel::sql_query(sql).into_boxed::<Pg>();
        for ((account, event_type), c) in chunk {
            q = q
                .bind::<Text, _>(*account)
                .bind::<Text, _>(*event_type)
                .bind::<Int8, _>(c.count)
                .bind::<Timestamptz, _>(c.first_at)
                .bind::<Timestamptz, _>(c.last_at);
        }
        q.execute(conn).await?;
    }
    Ok(())
}

/// How long a shard of `event_type_totals` stays unwritten before [`fold_idle_type_totals`]
/// folds it. A live lane's shard may be folded too (a lane idle for an hour); its next group
/// then starts the row again.
pub const IDLE_SHARD_SECONDS: f64 = 3600.0;

/// Folds the `event_type_totals` rows of shards unwritten for [`IDLE_SHARD_SECONDS`] (those of
/// processes that have stopped, mostly: each process's lanes start new shards) into the shard
/// '' row of their type, so the table stays a few rows per type however often instances
/// restart; the report's sums do not change. A row an ingest group is writing is locked, so
/// it is skipped (and it is not idle). Returns how many rows were folded. Single-node only
/// (on Citus nothing writes the table).
pub async fn fold_idle_type_totals(conn: &mut AsyncPgConnection) -> Result<usize, StoreError> {
    #[derive(QueryableByName)]
    struct Folded {
        #[diesel(sql_type = Int8)]
        n: i64,
    }
    let folded: Folded = diesel::sql_query(format!(
        "WITH idle AS (
             SELECT event_type, shard FROM event_type_totals
              WHERE shard <> '' AND updated_at < now() - make_interval(secs => $1)
              ORDER BY event_type, shard
                FOR UPDATE SKIP LOCKED),
         moved AS (
             DELETE FROM event_type_totals t USING idle
              WHERE t.event_type = idle.event_type AND t.shard = idle.shard
          RETURNING t.event_type, t.event_count, t.first_seen_at, t.last_seen_at),
         folded AS (
             INSERT INTO event_type_totals AS s (event_type, shard, event_count,
                    first_seen_at, last_seen_at, updated_at)
             SELECT event_type, '', SUM(event_count)::int8, MIN(first_seen_at),
                    MAX(last_seen_at), now()
               FROM moved GROUP BY event_type ORDER BY event_type
             {TYPE_TOTAL_CONFLICT})
         SELECT count(*)::int8 AS n FROM moved"
    ))
    .bind::<diesel::sql_types::Double, _>(IDLE_SHARD_SECONDS)
    .get_result(conn)
    .await?;
    Ok(folded.n as usize)
}

/// An event as stored, as `GET /v1/events` shows it.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = Text)]
    #[serde(rename = "type")]
    pub event_type: String,
    #[diesel(sql_type = Timestamptz)]
    #[serde(rename = "timestamp", serialize_with = "crate::domain::ts::ms")]
    pub ts: DateTime<Utc>,
    #[diesel(sql_type = Jsonb)]
    pub properties: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub received_at: DateTime<Utc>,
}

/// One account's events in id order (the primary key's: no sort), after the id `after`,
/// optionally of one type; at most `limit`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    account: &str,
    event_type: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(super::prepared::prepared(
        "SELECT id, account, event_type, ts, properties, received_at
           FROM events
          WHERE account = $1
            AND ($2::text IS NULL OR id > $2)
            AND ($3::text IS NULL OR event_type = $3)
          ORDER BY id
          LIMIT $4",
    )
    .bind::<Text, _>(account)
    .bind::<Nullable<Text>, _>(after)
    .bind::<Nullable<Text>, _>(event_type)
    .bind::<Int8, _>(limit)
    .load(conn)
    .await?)
}

/// An event with its place in the export order.
#[derive(Debug, Clone, QueryableByName)]
pub struct ExportedEvent {
    #[diesel(embed)]
    pub event: StoredEvent,
    #[diesel(sql_type = Timestamptz)]
    pub stored_at: DateTime<Utc>,
}

/// Events in (stored_at, account, id) order after the position `after` (the export's
/// cursor), across accounts, among those stored [`EXPORT_SETTLE_SECONDS`] or more ago in
/// database time; at most `limit`.
pub async fn stored_after(
    conn: &mut AsyncPgConnection,
    after: Option<(DateTime<Utc>, &str, &str)>,
    limit: i64,
) -> Result<Vec<ExportedEvent>, StoreError> {
    let (at, account, id) = match after {
        Some((at, account, id)) => (Some(at), Some(account), Some(id)),
        None => (None, None, None),
    };
    Ok(super::prepared::prepared(
        "SELECT id, account, event_type, ts, properties, received_at, stored_at
           FROM events
          WHERE stored_at < now() - make_interval(secs => $5)
            AND ($1::timestamptz IS NULL OR stored_at >= $1)
            AND ($1::timestamptz IS NULL
                 OR (stored_at, account COLLATE \"C\", id COLLATE \"C\") > ($1, $2, $3))
          ORDER BY stored_at, account COLLATE \"C\", id COLLATE \"C\"
          LIMIT $4",
    )
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<Text>, _>(account)
    .bind::<Nullable<Text>, _>(id)
    .bind::<Int8, _>(limit)
    .bind::<diesel::sql_types::Double, _>(EXPORT_SETTLE_SECONDS)
    .load(conn)
    .await?)
}

/// Opens an ingestion group's transaction, with its settings, in one round trip (ended by
/// [`end_group`]):
/// - on single-node PostgreSQL, its statements reuse generic plans. They are prepared once per
///   connection ([`super::prepared`]) and their shape is fixed (arrays bound to `UNNEST`), so
///   one plan fits every group, where the pool's `force_custom_plan` planned each group's
///   statement afresh: about 0.25 ms of the database's time for an 11-event group, as much as
///   running it (BENCHMARKS.md, twelfth session);
/// - on Citus, the rest of the transaction reaches each worker over one connection: a group's
///   few statements touch many shards, and opening a connection per shard for each of them
///   costs more than the writes. (Its statements there are `VALUES` lists, never prepared,
///   so planned at every execution whatever the mode: left as the pool sets it.)
pub async fn begin_group(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    let sql = if super::citus::active() {
        "BEGIN; SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"
    } else {
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"
    };
    if let Err(e) = AnsiTransactionManager::begin_transaction_sql(conn, sql).await {
        // The BEGIN may have run without the rest: not left open on a pooled connection.
        let _ = conn.batch_execute("ROLLBACK").await;
        return Err(e.into());
    }
    Ok(())
}

/// Ends the transaction [`begin_group`] opened: commits it after `body` succeeded, rolls it
/// back otherwise and gives `body`'s error. A connection whose rollback failed (or whose group
/// was cancelled between the two) still holds its transaction, and the pool drops it rather
/// than reuse it.
pub async fn end_group<T>(
    conn: &mut AsyncPgConnection,
    body: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match body {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = AnsiTransactionManager::rollback_transaction(conn).await {
                tracing::warn!(error = %rollback, "rolling back an ingestion group failed");
            }
            Err(e)
        }
    }
}

/// How old (database time) an event's storing transaction must be before exports show it:
/// longer than any ingest transaction can run (five statements, each bounded by the
/// statement timeout), so no event commits behind an export's cursor.
pub const EXPORT_SETTLE_SECONDS: f64 = 600.0;
