//! `account_mrr` and `revenue_movements`. Writes happen under the account's subscription lock,
//! in the transaction of the change that moved the MRR.

use super::schema::{account_mrr, revenue_movements};
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Numeric, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = account_mrr)]
pub struct MrrRow {
    pub account: String,
    pub mrr: Decimal,
    pub usage_mrr: Decimal,
    pub currency: String,
    pub had_mrr: bool,
    pub updated_at: DateTime<Utc>,
}

pub async fn find_by_accounts(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
) -> Result<Vec<MrrRow>, StoreError> {
    super::rows_of_accounts(conn, super::of_accounts!("*", "account_mrr"), accounts).await
}

/// Writes the accounts' MRR (one row per account in `rows`): on one PostgreSQL in one
/// statement over arrays, on Citus as `VALUES` in chunks (see `store::invoices`).
pub async fn upsert_many(conn: &mut AsyncPgConnection, rows: &[MrrRow]) -> Result<(), StoreError> {
    use diesel::upsert::excluded;
    if rows.is_empty() {
        return Ok(());
    }
    if super::citus::active() {
        for chunk in rows.chunks(2000) {
            diesel::insert_into(account_mrr::table)
                .values(chunk)
                .on_conflict(account_mrr::account)
                .do_update()
                .set((
                    account_mrr::mrr.eq(excluded(account_mrr::mrr)),
                    account_mrr::usage_mrr.eq(excluded(account_mrr::usage_mrr)),
                    account_mrr::currency.eq(excluded(account_mrr::currency)),
                    account_mrr::had_mrr.eq(excluded(account_mrr::had_mrr)),
                    account_mrr::updated_at.eq(excluded(account_mrr::updated_at)),
                ))
                .execute(conn)
                .await?;
        }
        return Ok(());
    }
    super::prepared::prepared(
        "INSERT INTO account_mrr (account, mrr, usage_mrr, currency, had_mrr, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::numeric[], $3::numeric[], $4::text[], $5::bool[],
                $6::timestamptz[])
         ON CONFLICT (account) DO UPDATE SET mrr = EXCLUDED.mrr, usage_mrr = EXCLUDED.usage_mrr,
                currency = EXCLUDED.currency, had_mrr = EXCLUDED.had_mrr,
                updated_at = EXCLUDED.updated_at",
    )
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.account.as_str()).collect::<Vec<_>>())
    .bind::<Array<Numeric>, _>(super::column(rows, |r| r.mrr))
    .bind::<Array<Numeric>, _>(super::column(rows, |r| r.usage_mrr))
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(super::column(rows, |r| r.had_mrr))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = revenue_movements)]
pub struct NewMovement {
    pub account: String,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub cause: String,
    pub mrr_before: Decimal,
    pub mrr_after: Decimal,
    pub currency: String,
    pub ref_kind: String,
    pub ref_id: i64,
}

/// Inserts movements; returns their ids matched by (account, at, cause), not by position.
pub async fn insert_movements(
    conn: &mut AsyncPgConnection,
    rows: &[NewMovement],
) -> Result<Vec<(String, DateTime<Utc>, String, i64)>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    if super::citus::active() {
        let mut ids = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(2000) {
            let got: Vec<(String, DateTime<Utc>, String, i64)> =
                diesel::insert_into(revenue_movements::table)
                    .values(chunk)
                    .returning((
                        revenue_movements::account,
                        revenue_movements::at,
                        revenue_movements::cause,
                        revenue_movements::id,
                    ))
                    .get_results(conn)
                    .await?;
            ids.extend(got);
        }
        return Ok(ids);
    }
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = Text)]
        account: String,
        #[diesel(sql_type = Timestamptz)]
        at: DateTime<Utc>,
        #[diesel(sql_type = Text)]
        cause: String,
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let got: Vec<Inserted> = super::prepared::prepared(
        "INSERT INTO revenue_movements (account, at, kind, cause, mrr_before, mrr_after, currency,
                ref_kind, ref_id)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                $5::numeric[], $6::numeric[], $7::text[], $8::text[], $9::int8[])
         RETURNING account, at, cause, id",
    )
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.account))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.at))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.kind))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.cause))
    .bind::<Array<Numeric>, _>(super::column(rows, |r| r.mrr_before))
    .bind::<Array<Numeric>, _>(super::column(rows, |r| r.mrr_after))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.currency))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.ref_kind))
    .bind::<Array<BigInt>, _>(super::column(rows, |r| r.ref_id))
    .load(conn)
    .await?;
    Ok(got
        .into_iter()
        .map(|r| (r.account, r.at, r.cause, r.id))
        .collect())
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = revenue_movements)]
pub struct MovementRow {
    pub account: String,
    pub id: i64,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub at: DateTime<Utc>,
    pub kind: String,
    pub cause: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub mrr_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub mrr_after: Decimal,
    pub currency: String,
    pub ref_kind: String,
    pub ref_id: i64,
}

/// Movements in [from, to), oldest first, optionally of one account (all of them: reports).
pub async fn between(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    account: Option<&str>,
) -> Result<Vec<MovementRow>, StoreError> {
    page_between(conn, from, to, account, None, i64::MAX).await
}

/// One page of the ledger in [from, to) in (at, id) order: the movements after the one with id
/// `after`, at most `limit`.
pub async fn page_between(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    account: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<MovementRow>, StoreError> {
    let mut q = revenue_movements::table
        .filter(revenue_movements::at.ge(from))
        .filter(revenue_movements::at.lt(to))
        .into_boxed();
    if let Some(a) = account {
        q = q.filter(revenue_movements::account.eq(a.to_owned()));
    }
    if let Some(after) = after {
        let at: Option<DateTime<Utc>> = revenue_movements::table
            .filter(revenue_movements::id.eq(after))
            .select(revenue_movements::at)
            .first(conn)
            .await
            .optional()?;
        // A cursor that names no movement starts nowhere: the page is empty.
        let Some(at) = at else { return Ok(Vec::new()) };
        q = q.filter(
            revenue_movements::at.gt(at).or(revenue_movements::at
                .eq(at)
                .and(revenue_movements::id.gt(after))),
        );
    }
    Ok(
        q.order((revenue_movements::at.asc(), revenue_movements::id.asc()))
            .limit(limit)
            .select(MovementRow::as_select())
            .load(conn)
            .await?,
    )
}

#[derive(QueryableByName)]
struct MrrAt {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = Numeric)]
    mrr: Decimal,
    #[diesel(sql_type = Text)]
    currency: String,
}

/// Every account's MRR just before `at` (its last movement before it), with its currency.
pub async fn mrr_before(
    conn: &mut AsyncPgConnection,
    at: DateTime<Utc>,
) -> Result<Vec<(String, Decimal, String)>, StoreError> {
    let rows: Vec<MrrAt> = super::prepared::prepared(
        "SELECT DISTINCT ON (account) account, mrr_after AS mrr, currency
           FROM revenue_movements WHERE at < $1
          ORDER BY account, at DESC, id DESC",
    )
    .bind::<Timestamptz, _>(at)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.account, r.mrr, r.currency))
        .collect())
}
