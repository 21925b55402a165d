//! Reads of usage: rollups over a range of buckets, and the event-type governance report.
//! Never scans `events`.

use super::StoreError;
use crate::domain::aggregate::{AggregateState, Latest};
use crate::domain::meter::Aggregation;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Numeric, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

#[derive(QueryableByName)]
struct RangeRow {
    #[diesel(sql_type = Text)]
    meter: String,
    #[diesel(sql_type = BigInt)]
    event_count: i64,
    #[diesel(sql_type = Numeric)]
    value_sum: Decimal,
    #[diesel(sql_type = Nullable<Numeric>)]
    value_max: Option<Decimal>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    latest_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    latest_event_id: Option<String>,
    #[diesel(sql_type = Nullable<Numeric>)]
    latest_value: Option<Decimal>,
    #[diesel(sql_type = Timestamptz)]
    first_event_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    last_event_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct UniqueRow {
    #[diesel(sql_type = Text)]
    meter: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Per meter, the aggregate of the account's buckets in `[from, to)`. Unique-count meters carry
/// their distinct count in `event_count`-independent form: see [`RangeAggregate::unique`].
#[derive(Debug, Clone, Default)]
pub struct RangeAggregate {
    pub state: AggregateState,
    /// Distinct keys in the range (unique_count meters).
    pub unique: i64,
}

impl RangeAggregate {
    /// The meter's value under `aggregation` (the distinct count for unique_count meters).
    pub fn value(&self, aggregation: Aggregation) -> Decimal {
        match aggregation {
            Aggregation::UniqueCount => Decimal::from(self.unique),
            other => self.state.value(other),
        }
    }
}

/// What a bulk read of usage computes: which meters, and which of them need their latest
/// reading or their distinct keys. Those two cost a sort per account and meter (the sums,
/// counts and extremes do not), so a read asks for them only where a meter's aggregation
/// uses them; the other meters come back with no latest reading and no distinct count.
/// Built only by [`MeterSelection::new`], which derives the latest and distinct-key meters
/// from the aggregations: a selection that left them out would value those meters at 0.
#[derive(Debug, Clone)]
pub struct MeterSelection {
    /// Only these meters; `None` reads every meter.
    only: Option<Vec<String>>,
    /// Meters valued by their latest reading.
    latest: Vec<String>,
    /// Meters counting distinct keys.
    unique: Vec<String>,
}

impl MeterSelection {
    /// `only` these meters (every meter when `None`), with the latest reading and distinct
    /// keys of those whose aggregation in `meters` uses them.
    pub fn new(meters: &[crate::domain::meter::Meter], only: Option<Vec<String>>) -> Self {
        let wanted = |code: &str| only.as_ref().is_none_or(|o| o.iter().any(|m| m == code));
        let with = |aggregation: Aggregation| {
            meters
                .iter()
                .filter(|m| m.aggregation == aggregation && wanted(&m.code))
                .map(|m| m.code.clone())
                .collect()
        };
        MeterSelection {
            latest: with(Aggregation::Latest),
            unique: with(Aggregation::UniqueCount),
            only,
        }
    }
}

pub async fn find_by_account_and_range(
    conn: &mut AsyncPgConnection,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<BTreeMap<String, RangeAggregate>, StoreError> {
    let rows: Vec<RangeRow> = super::prepared::prepared(
        r#"SELECT meter,
                  SUM(event_count)::int8 AS event_count,
                  SUM(value_sum) AS value_sum,
                  MAX(value_max) AS value_max,
                  (ARRAY_AGG(latest_at ORDER BY latest_at DESC NULLS LAST,
                        latest_event_id COLLATE "C" DESC))[1] AS latest_at,
                  (ARRAY_AGG(latest_event_id ORDER BY latest_at DESC NULLS LAST,
                        latest_event_id COLLATE "C" DESC))[1] AS latest_event_id,
                  (ARRAY_AGG(latest_value ORDER BY latest_at DESC NULLS LAST,
                        latest_event_id COLLATE "C" DESC))[1] AS latest_value,
                  MIN(first_event_at) AS first_event_at,
                  MAX(last_event_at) AS last_event_at
             FROM usage_rollups
            WHERE account = $1 AND bucket >= $2 AND bucket < $3
            GROUP BY meter"#,
    )
    .bind::<Text, _>(account)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?;
    let uniques: Vec<UniqueRow> = super::prepared::prepared(
        "SELECT meter, COUNT(DISTINCT key)::int8 AS n
           FROM usage_unique_keys
          WHERE account = $1 AND bucket >= $2 AND bucket < $3
          GROUP BY meter",
    )
    .bind::<Text, _>(account)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?;
    let mut out: BTreeMap<String, RangeAggregate> = rows
        .into_iter()
        .map(|r| {
            let meter = r.meter.clone();
            let state = state_of(r);
            (meter, RangeAggregate { state, unique: 0 })
        })
        .collect();
    for u in uniques {
        out.entry(u.meter).or_default().unique = u.n;
    }
    Ok(out)
}

#[derive(Debug, Clone, QueryableByName)]
pub struct EventTypeRow {
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = BigInt)]
    pub event_count: i64,
    #[diesel(sql_type = BigInt)]
    pub accounts: i64,
    #[diesel(sql_type = Timestamptz)]
    pub first_seen_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub last_seen_at: DateTime<Utc>,
}

/// Every event type seen, summed over accounts (a governance report, not a hot path): the
/// counts of both counters, per account (`event_type_counts`: what Citus counts, and what
/// single-node PostgreSQL counted before `event_type_totals`) and per type
/// (`event_type_totals`: what single-node PostgreSQL counts), and the number of accounts from
/// the first. Two queries, merged here, so that neither joins a distributed table with a
/// coordinator one on Citus; the caller runs them in one snapshot.
pub async fn event_types(conn: &mut AsyncPgConnection) -> Result<Vec<EventTypeRow>, StoreError> {
    let per_account: Vec<EventTypeRow> = super::prepared::prepared(
        "SELECT event_type, SUM(event_count)::int8 AS event_count, COUNT(*)::int8 AS accounts,
                MIN(first_seen_at) AS first_seen_at, MAX(last_seen_at) AS last_seen_at
           FROM event_type_counts
          GROUP BY event_type",
    )
    .load(conn)
    .await?;
    let per_type: Vec<EventTypeRow> = super::prepared::prepared(
        "SELECT event_type, SUM(event_count)::int8 AS event_count, 0::int8 AS accounts,
                MIN(first_seen_at) AS first_seen_at, MAX(last_seen_at) AS last_seen_at
           FROM event_type_totals
          GROUP BY event_type",
    )
    .load(conn)
    .await?;
    let mut out: BTreeMap<String, EventTypeRow> = BTreeMap::new();
    for row in per_account.into_iter().chain(per_type) {
        match out.get_mut(&row.event_type) {
            Some(o) => {
                o.event_count += row.event_count;
                o.accounts += row.accounts;
                o.first_seen_at = o.first_seen_at.min(row.first_seen_at);
                o.last_seen_at = o.last_seen_at.max(row.last_seen_at);
            }
            None => {
                out.insert(row.event_type.clone(), row);
            }
        }
    }
    Ok(out.into_values().collect())
}

#[derive(QueryableByName)]
struct BulkRangeRow {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(embed)]
    range: RangeRow,
}

#[derive(QueryableByName)]
struct BulkUniqueRow {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = Text)]
    meter: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// One distinct key of a unique_count meter.
#[derive(Debug, Clone, QueryableByName)]
pub struct UniqueKey {
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = Text)]
    pub meter: String,
    #[diesel(sql_type = Text)]
    pub key: String,
}

/// Per account, per meter: the aggregate and distinct count over each account's own range, in
/// one query, and a second for the distinct keys when the selection has a unique-count meter
/// (billing's period close and PQL scoring read many accounts this way). `ranges`
/// are (account, from, to).
pub async fn find_by_accounts_and_ranges(
    conn: &mut AsyncPgConnection,
    ranges: &[(String, DateTime<Utc>, DateTime<Utc>)],
    meters: &MeterSelection,
) -> Result<BTreeMap<String, BTreeMap<String, RangeAggregate>>, StoreError> {
    if ranges.is_empty() || meters.only.as_ref().is_some_and(|o| o.is_empty()) {
        return Ok(BTreeMap::new());
    }
    let states = rollups_by_accounts_and_ranges(conn, ranges, meters).await?;
    let mut out: BTreeMap<String, BTreeMap<String, RangeAggregate>> = states
        .into_iter()
        .map(|(account, meters)| {
            let meters = meters
                .into_iter()
                .map(|(m, state)| (m, RangeAggregate { state, unique: 0 }))
                .collect();
            (account, meters)
        })
        .collect();
    if meters.unique.is_empty() {
        return Ok(out);
    }
    let (accounts, froms, tos) = columns(ranges);
    let uniques: Vec<BulkUniqueRow> = super::prepared::prepared(if super::citus::active() {
        "SELECT k.account, k.meter, COUNT(DISTINCT k.key)::int8 AS n
           FROM usage_unique_keys k
           JOIN UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS p(account, s, e)
             ON k.account = p.account AND k.bucket >= p.s AND k.bucket < p.e
          WHERE k.account = ANY($1) AND k.meter = ANY($4)
          GROUP BY k.account, k.meter"
    } else {
        // One PostgreSQL: LATERAL with OFFSET 0 (so the planner cannot flatten it into a
        // hash join over whole tables): one index range scan per account. Citus cannot push
        // that down.
        "SELECT k.account, k.meter, COUNT(DISTINCT k.key)::int8 AS n
           FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS p(account, s, e)
           CROSS JOIN LATERAL (
               SELECT * FROM usage_unique_keys x
                WHERE x.account = p.account AND x.meter = ANY($4)
                  AND x.bucket >= p.s AND x.bucket < p.e
               OFFSET 0) k
          GROUP BY k.account, k.meter"
    })
    .bind::<diesel::sql_types::Array<Text>, _>(&accounts)
    .bind::<diesel::sql_types::Array<Timestamptz>, _>(&froms)
    .bind::<diesel::sql_types::Array<Timestamptz>, _>(&tos)
    .bind::<diesel::sql_types::Array<Text>, _>(&meters.unique)
    .load(conn)
    .await?;
    for u in uniques {
        out.entry(u.account)
            .or_default()
            .entry(u.meter)
            .or_default()
            .unique = u.n;
    }
    Ok(out)
}

fn columns(
    ranges: &[(String, DateTime<Utc>, DateTime<Utc>)],
) -> (Vec<&str>, Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    (
        ranges.iter().map(|r| r.0.as_str()).collect(),
        ranges.iter().map(|r| r.1).collect(),
        ranges.iter().map(|r| r.2).collect(),
    )
}

/// Per account, per meter: the rollup aggregate over each account's own range (without
/// distinct keys), in one query, of the `meters` selected (the latest reading only of those
/// selected for it). `ranges` are (account, from, to).
pub async fn rollups_by_accounts_and_ranges(
    conn: &mut AsyncPgConnection,
    ranges: &[(String, DateTime<Utc>, DateTime<Utc>)],
    meters: &MeterSelection,
) -> Result<BTreeMap<String, BTreeMap<String, AggregateState>>, StoreError> {
    let (accounts, froms, tos) = columns(ranges);
    let rows: Vec<BulkRangeRow> = super::prepared::prepared(if super::citus::active() {
        r#"SELECT r.account, r.meter,
                  SUM(r.event_count)::int8 AS event_count,
                  SUM(r.value_sum) AS value_sum,
                  MAX(r.value_max) AS value_max,
                  (ARRAY_AGG(r.latest_at ORDER BY r.latest_at DESC NULLS LAST,
                        r.latest_event_id COLLATE "C" DESC)
                        FILTER (WHERE r.meter = ANY($5)))[1] AS latest_at,
                  (ARRAY_AGG(r.latest_event_id ORDER BY r.latest_at DESC NULLS LAST,
                        r.latest_event_id COLLATE "C" DESC)
                        FILTER (WHERE r.meter = ANY($5)))[1] AS latest_event_id,
                  (ARRAY_AGG(r.latest_value ORDER BY r.latest_at DESC NULLS LAST,
                        r.latest_event_id COLLATE "C" DESC)
                        FILTER (WHERE r.meter = ANY($5)))[1] AS latest_value,
                  MIN(r.first_event_at) AS first_event_at,
                  MAX(r.last_event_at) AS last_event_at
             FROM usage_rollups r
             JOIN UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS p(account, s, e)
               ON r.account = p.account AND r.bucket >= p.s AND r.bucket < p.e
            -- `account = ANY`: index lookups of these accounts only, never a scan of the
            -- whole table; on Citus, only the shards that hold them.
            WHERE r.account = ANY($1) AND ($4::text[] IS NULL OR r.meter = ANY($4))
            GROUP BY r.account, r.meter"#
    } else {
        // One PostgreSQL: LATERAL with OFFSET 0 (so the planner cannot flatten it into a
        // hash join over whole tables): one index range scan per account. Citus cannot push
        // that down.
        r#"SELECT r.account, r.meter,
                  SUM(r.event_count)::int8 AS event_count,
                  SUM(r.value_sum) AS value_sum,
                  MAX(r.value_max) AS value_max,
                  (ARRAY_AGG(r.latest_at ORDER BY r.latest_at DESC NULLS LAST,
                        r.latest_event_id COLLATE "C" DESC)
                        FILTER (WHERE r.meter = ANY($5)))[1] AS latest_at,
                  (ARRAY_AGG(r.latest_event_id ORDER BY r.latest_at DESC NULLS LAST,
                        r.latest_event_id COLLATE "C" DESC)
                        FILTER (WHERE r.meter = ANY($5)))[1] AS latest_event_id,
                  (ARRAY_AGG(r.latest_value ORDER BY r.latest_at DESC NULLS LAST,
                        r.latest_event_id COLLATE "C" DESC)
                        FILTER (WHERE r.meter = ANY($5)))[1] AS latest_value,
                  MIN(r.first_event_at) AS first_event_at,
                  MAX(r.last_event_at) AS last_event_at
             FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS p(account, s, e)
             -- LATERAL with OFFSET 0 (so the planner cannot flatten it into a hash join over
             -- the whole table): one index range scan per account.
             CROSS JOIN LATERAL (
                 SELECT * FROM usage_rollups x
                  WHERE x.account = p.account AND ($4::text[] IS NULL OR x.meter = ANY($4))
                    AND x.bucket >= p.s AND x.bucket < p.e
                 OFFSET 0) r
            GROUP BY r.account, r.meter"#
    })
    .bind::<diesel::sql_types::Array<Text>, _>(&accounts)
    .bind::<diesel::sql_types::Array<Timestamptz>, _>(&froms)
    .bind::<diesel::sql_types::Array<Timestamptz>, _>(&tos)
    .bind::<Nullable<diesel::sql_types::Array<Text>>, _>(&meters.only)
    .bind::<diesel::sql_types::Array<Text>, _>(&meters.latest)
    .load(conn)
    .await?;
    let mut out: BTreeMap<String, BTreeMap<String, AggregateState>> = BTreeMap::new();
    for r in rows {
        out.entry(r.account)
            .or_default()
            .insert(r.range.meter.clone(), state_of(r.range));
    }
    Ok(out)
}

/// An account's range `[from, to)`, with the time from which its distinct keys are wanted.
pub type KeyRange = (String, DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>);

/// The distinct keys in each account's range (account, from, to, since) written at or after
/// `since` (all of them when `since` is `None`).
pub async fn unique_keys_written_since(
    conn: &mut AsyncPgConnection,
    ranges: &[KeyRange],
) -> Result<Vec<UniqueKey>, StoreError> {
    let accounts: Vec<&str> = ranges.iter().map(|r| r.0.as_str()).collect();
    let froms: Vec<DateTime<Utc>> = ranges.iter().map(|r| r.1).collect();
    let tos: Vec<DateTime<Utc>> = ranges.iter().map(|r| r.2).collect();
    let sinces: Vec<Option<DateTime<Utc>>> = ranges.iter().map(|r| r.3).collect();
    Ok(super::prepared::prepared(if super::citus::active() {
        "SELECT DISTINCT k.account, k.meter, k.key
           FROM usage_unique_keys k
           JOIN UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[])
                AS p(account, s, e, since)
             ON k.account = p.account AND k.bucket >= p.s AND k.bucket < p.e
                AND (p.since IS NULL OR k.written_at >= p.since)
          WHERE k.account = ANY($1)"
    } else {
        // One PostgreSQL: LATERAL with OFFSET 0 (so the planner cannot flatten it into a
        // hash join over whole tables): one index range scan per account. Citus cannot push
        // that down.
        "SELECT DISTINCT k.account, k.meter, k.key
           FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[])
                AS p(account, s, e, since)
           CROSS JOIN LATERAL (
               SELECT * FROM usage_unique_keys x
                WHERE x.account = p.account AND x.bucket >= p.s AND x.bucket < p.e
                  AND (p.since IS NULL OR x.written_at >= p.since)
               OFFSET 0) k"
    })
    .bind::<diesel::sql_types::Array<Text>, _>(&accounts)
    .bind::<diesel::sql_types::Array<Timestamptz>, _>(&froms)
    .bind::<diesel::sql_types::Array<Timestamptz>, _>(&tos)
    .bind::<diesel::sql_types::Array<Nullable<Timestamptz>>, _>(&sinces)
    .load(conn)
    .await?)
}

#[derive(QueryableByName)]
struct NowRow {
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// The database's clock (the start of this statement).
pub async fn database_now(conn: &mut AsyncPgConnection) -> Result<DateTime<Utc>, StoreError> {
    let r: NowRow = super::prepared::prepared("SELECT statement_timestamp() AS now")
        .get_result(conn)
        .await?;
    Ok(r.now)
}

fn state_of(r: RangeRow) -> AggregateState {
    let latest = match (r.latest_at, r.latest_event_id, r.latest_value) {
        (Some(at), Some(event_id), Some(value)) => Some(Latest {
            at,
            event_id,
            value,
        }),
        _ => None,
    };
    AggregateState {
        event_count: r.event_count,
        sum: r.value_sum,
        max: r.value_max,
        latest,
        first_at: Some(r.first_event_at),
        last_at: Some(r.last_event_at),
        keys: Default::default(),
    }
}
