//! `pql_scores` and the reads scoring and the funnel need.

use super::schema::{accounts, pql_scores};
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use std::collections::HashMap;

#[derive(
    Debug,
    Clone,
    Queryable,
    QueryableByName,
    Selectable,
    Insertable,
    AsChangeset,
    Serialize,
    utoipa::ToSchema,
)]
#[diesel(table_name = pql_scores)]
#[diesel(treat_none_as_null = true)]
pub struct PqlRow {
    /// The key: never in an UPDATE's SET (Citus refuses a SET of the distribution column).
    #[diesel(skip_update)]
    pub account: String,
    pub score: i32,
    pub tier: String,
    pub breakdown: serde_json::Value,
    pub zone: String,
    pub zone_reasons: serde_json::Value,
    pub owner: Option<String>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub scored_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub tier_since: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub activated_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub first_pql_at: Option<DateTime<Utc>>,
    pub best_tier: Option<String>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub routed_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub converted_at: Option<DateTime<Utc>>,
    pub attribution: Option<String>,
}

impl PqlRow {
    /// An account not scored yet.
    pub fn unscored(account: &str, at: DateTime<Utc>) -> Self {
        Self {
            account: account.to_owned(),
            score: 0,
            tier: "none".into(),
            breakdown: serde_json::json!([]),
            zone: "self_serve".into(),
            zone_reasons: serde_json::json!([]),
            owner: None,
            scored_at: at,
            tier_since: at,
            activated_at: None,
            first_pql_at: None,
            best_tier: None,
            routed_at: None,
            converted_at: None,
            attribution: None,
        }
    }
}

pub async fn find_by_accounts(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
) -> Result<Vec<PqlRow>, StoreError> {
    super::rows_of_accounts(conn, super::of_accounts!("*", "pql_scores"), accounts).await
}

/// Which of `accounts` have reached their activation milestone (it is never unset).
pub async fn activated(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    Ok(pql_scores::table
        .filter(pql_scores::account.eq_any(accounts))
        .filter(pql_scores::activated_at.is_not_null())
        .select(pql_scores::account)
        .load::<String>(conn)
        .await?
        .into_iter()
        .collect())
}

pub async fn find_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Option<PqlRow>, StoreError> {
    Ok(pql_scores::table
        .filter(pql_scores::account.eq(account))
        .select(PqlRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Takes the PQL lock of each account until the transaction ends (in account order, in one
/// statement, so two transactions never wait on each other in a cycle): scoring and
/// conversions serialize per account, across instances. Issuing invoices takes the lock of
/// their accounts before the invoice counter (`billing::issue` says why).
pub async fn lock_accounts(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
) -> Result<(), StoreError> {
    if accounts.is_empty() {
        return Ok(());
    }
    let mut sorted = accounts.to_vec();
    sorted.sort();
    sorted.dedup();
    super::prepared::prepared(
        "SELECT pg_advisory_xact_lock(hashtextextended('pql/' || a, 0))
           FROM unnest($1::text[]) WITH ORDINALITY AS u(a, n) ORDER BY n",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(sorted)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes rows (one per account). A conversion already recorded is kept whatever the row says
/// (a scorer's copy read before it must not erase it). On one PostgreSQL in one statement over
/// arrays (a `VALUES` list of 15 values a row is parsed and planned afresh at every call); on Citus
/// as `VALUES` in chunks, which it routes row by row to the shards.
pub async fn upsert_many(conn: &mut AsyncPgConnection, rows: &[PqlRow]) -> Result<(), StoreError> {
    use diesel::upsert::excluded;
    use pql_scores::*;
    if rows.is_empty() {
        return Ok(());
    }
    if !super::citus::active() {
        return upsert_unnest(conn, rows).await;
    }
    for chunk in rows.chunks(1000) {
        diesel::insert_into(table)
            .values(chunk)
            .on_conflict(account)
            .do_update()
            .set((
                score.eq(excluded(score)),
                tier.eq(excluded(tier)),
                breakdown.eq(excluded(breakdown)),
                zone.eq(excluded(zone)),
                zone_reasons.eq(excluded(zone_reasons)),
                owner.eq(excluded(owner)),
                scored_at.eq(excluded(scored_at)),
                tier_since.eq(excluded(tier_since)),
                activated_at.eq(excluded(activated_at)),
                first_pql_at.eq(excluded(first_pql_at)),
                best_tier.eq(excluded(best_tier)),
                routed_at.eq(excluded(routed_at)),
                converted_at.eq(diesel::dsl::sql::<
                    diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
                >(
                    "COALESCE(pql_scores.converted_at, excluded.converted_at)"
                )),
                attribution.eq(diesel::dsl::sql::<
                    diesel::sql_types::Nullable<diesel::sql_types::Text>,
                >(
                    "CASE WHEN pql_scores.converted_at IS NULL THEN excluded.attribution \
                     ELSE pql_scores.attribution END",
                )),
            ))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// [`upsert_many`] on one PostgreSQL: the same rows and conflict rules over arrays.
async fn upsert_unnest(conn: &mut AsyncPgConnection, rows: &[PqlRow]) -> Result<(), StoreError> {
    use diesel::sql_types::{Integer, Jsonb};
    super::prepared::prepared(
        "INSERT INTO pql_scores AS s (account, score, tier, breakdown, zone, zone_reasons, owner,
                scored_at, tier_since, activated_at, first_pql_at, best_tier, routed_at,
                converted_at, attribution)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::jsonb[], $5::text[],
                $6::jsonb[], $7::text[], $8::timestamptz[], $9::timestamptz[],
                $10::timestamptz[], $11::timestamptz[], $12::text[], $13::timestamptz[],
                $14::timestamptz[], $15::text[])
         ON CONFLICT (account) DO UPDATE SET
                score = excluded.score, tier = excluded.tier, breakdown = excluded.breakdown,
                zone = excluded.zone, zone_reasons = excluded.zone_reasons,
                owner = excluded.owner, scored_at = excluded.scored_at,
                tier_since = excluded.tier_since, activated_at = excluded.activated_at,
                first_pql_at = excluded.first_pql_at, best_tier = excluded.best_tier,
                routed_at = excluded.routed_at,
                converted_at = COALESCE(s.converted_at, excluded.converted_at),
                attribution = CASE WHEN s.converted_at IS NULL THEN excluded.attribution
                                   ELSE s.attribution END",
    )
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.account))
    .bind::<Array<Integer>, _>(super::column(rows, |r| r.score))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.tier))
    .bind::<Array<Jsonb>, _>(super::column(rows, |r| &r.breakdown))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.zone))
    .bind::<Array<Jsonb>, _>(super::column(rows, |r| &r.zone_reasons))
    .bind::<Array<Nullable<Text>>, _>(super::column(rows, |r| r.owner.as_deref()))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.scored_at))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.tier_since))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(rows, |r| r.activated_at))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(rows, |r| r.first_pql_at))
    .bind::<Array<Nullable<Text>>, _>(super::column(rows, |r| r.best_tier.as_deref()))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(rows, |r| r.routed_at))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(rows, |r| r.converted_at))
    .bind::<Array<Nullable<Text>>, _>(super::column(rows, |r| r.attribution.as_deref()))
    .execute(conn)
    .await?;
    Ok(())
}
/// The sales queue: accounts in `tier`, newest first (then by account), after the row at
/// `after` (its `tier_since` and account).
pub async fn queue(
    conn: &mut AsyncPgConnection,
    tier: &str,
    after: Option<(DateTime<Utc>, &str)>,
    limit: i64,
) -> Result<Vec<PqlRow>, StoreError> {
    let mut q = pql_scores::table
        .filter(pql_scores::tier.eq(tier))
        .into_boxed();
    if let Some((since, account)) = after {
        q = q.filter(
            pql_scores::tier_since.lt(since).or(pql_scores::tier_since
                .eq(since)
                .and(pql_scores::account.gt(account.to_owned()))),
        );
    }
    Ok(
        q.order((pql_scores::tier_since.desc(), pql_scores::account.asc()))
            .limit(limit)
            .select(PqlRow::as_select())
            .load(conn)
            .await?,
    )
}

/// Every account (the periodic rescoring, as windows slide).
pub async fn all_accounts(conn: &mut AsyncPgConnection) -> Result<Vec<String>, StoreError> {
    Ok(accounts::table
        .select(accounts::account)
        .order(accounts::account.asc())
        .load(conn)
        .await?)
}

#[derive(QueryableByName)]
struct DaysRow {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = BigInt)]
    days: i64,
}

/// Distinct UTC days with any event in [from, to), per account.
pub async fn active_days(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<HashMap<String, u32>, StoreError> {
    let rows: Vec<DaysRow> = super::prepared::prepared(if super::citus::active() {
        "SELECT r.account, COUNT(DISTINCT date_trunc('day', r.bucket))::int8 AS days
           FROM usage_rollups r
          WHERE r.account = ANY($1) AND r.bucket >= $2 AND r.bucket < $3
            AND r.event_count > 0
          GROUP BY r.account"
    } else {
        // One PostgreSQL: a LATERAL index range scan per account (see store::usage).
        "SELECT p.account, COUNT(DISTINCT date_trunc('day', r.bucket))::int8 AS days
           FROM UNNEST($1::text[]) AS p(account)
           CROSS JOIN LATERAL (
               SELECT bucket FROM usage_rollups x
                WHERE x.account = p.account AND x.bucket >= $2 AND x.bucket < $3
                  AND x.event_count > 0
               OFFSET 0) r
          GROUP BY p.account"
    })
    .bind::<Array<Text>, _>(accounts)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.account, r.days as u32))
        .collect())
}

#[derive(Debug, Clone, QueryableByName)]
pub struct FunnelRow {
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub activated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub first_pql_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub best_tier: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub converted_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub attribution: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub expanded_at: Option<DateTime<Utc>>,
}

/// The accounts that signed up in [from, to) with their funnel milestones.
pub async fn funnel(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<FunnelRow>, StoreError> {
    Ok(super::prepared::prepared(
        "SELECT a.account, p.activated_at, p.first_pql_at, p.best_tier, p.converted_at,
                p.attribution,
                (SELECT MIN(m.at) FROM revenue_movements m
                  WHERE m.account = a.account AND m.kind = 'expansion'
                    AND p.converted_at IS NOT NULL AND m.at >= p.converted_at) AS expanded_at
           FROM accounts a
           LEFT JOIN pql_scores p ON p.account = a.account
          WHERE a.created_at >= $1 AND a.created_at < $2
          ORDER BY a.account",
    )
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?)
}
