//! `subscriptions`, `quotes`, `idempotency_keys`, `subscription_changes`. Every query filters
//! on `account` (so the tables can be distributed by it); the subscription row lock serializes changes of an account.

use super::schema::{idempotency_keys, quotes, subscription_changes, subscriptions};
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable, Numeric, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = subscriptions)]
#[diesel(treat_none_as_null = true)]
pub struct SubscriptionRow {
    /// The key: never in an UPDATE's SET (Citus refuses a SET of the distribution column).
    #[diesel(skip_update)]
    pub account: String,
    pub plan: String,
    pub plan_version: i32,
    pub seats: i32,
    pub status: String,
    pub anchor: DateTime<Utc>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub trial_end: Option<DateTime<Utc>>,
    pub scheduled: Option<serde_json::Value>,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the current run of failed payments began; None when paid up.
    pub past_due_since: Option<DateTime<Utc>>,
}

pub async fn find_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Option<SubscriptionRow>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::account.eq(account))
        .select(SubscriptionRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Subscriptions past due or suspended (the dunning queue), longest overdue first. A report
/// across accounts (the console's), not a hot path.
pub async fn in_dunning(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> Result<Vec<SubscriptionRow>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::status.eq_any(["past_due", "suspended"]))
        .order((
            subscriptions::past_due_since.asc().nulls_last(),
            subscriptions::account,
        ))
        .limit(limit)
        .select(SubscriptionRow::as_select())
        .load(conn)
        .await?)
}

/// The subscriptions of several accounts (the check cache's periodic refresh).
pub async fn find_by_accounts(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
) -> Result<Vec<SubscriptionRow>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::account.eq_any(accounts))
        .select(SubscriptionRow::as_select())
        .load(conn)
        .await?)
}

/// The subscriptions on a plan version that pay or will pay (a plan migration's subscribers).
pub async fn by_plan_version(
    conn: &mut AsyncPgConnection,
    plan: &str,
    version: i32,
) -> Result<Vec<SubscriptionRow>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::plan.eq(plan))
        .filter(subscriptions::plan_version.eq(version))
        .filter(subscriptions::status.eq_any(["active", "past_due", "trialing"]))
        .order(subscriptions::account.asc())
        .select(SubscriptionRow::as_select())
        .load(conn)
        .await?)
}

/// Reads the subscription and locks it until the transaction ends.
pub async fn lock_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Option<SubscriptionRow>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::account.eq(account))
        .select(SubscriptionRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Inserts a subscription; false when the account already has one.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    row: &SubscriptionRow,
) -> Result<bool, StoreError> {
    let n = diesel::insert_into(subscriptions::table)
        .values(row)
        .on_conflict(subscriptions::account)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

pub async fn save(conn: &mut AsyncPgConnection, row: &SubscriptionRow) -> Result<(), StoreError> {
    diesel::update(subscriptions::table.filter(subscriptions::account.eq(&row.account)))
        .set(row)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = quotes)]
pub struct QuoteRow {
    pub account: String,
    pub id: String,
    pub base_revision: i64,
    pub body: serde_json::Value,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_quote(conn: &mut AsyncPgConnection, q: &QuoteRow) -> Result<(), StoreError> {
    diesel::insert_into(quotes::table)
        .values(q)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn find_quote_by_account_and_id(
    conn: &mut AsyncPgConnection,
    account: &str,
    id: &str,
) -> Result<Option<QuoteRow>, StoreError> {
    Ok(quotes::table
        .filter(quotes::account.eq(account))
        .filter(quotes::id.eq(id))
        .select(QuoteRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn mark_quote_accepted(
    conn: &mut AsyncPgConnection,
    account: &str,
    id: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    diesel::update(
        quotes::table
            .filter(quotes::account.eq(account))
            .filter(quotes::id.eq(id)),
    )
    .set(quotes::accepted_at.eq(at))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys)]
pub struct IdempotencyRow {
    pub account: String,
    pub key: String,
    pub target: String,
    pub status: i16,
    pub response: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

pub async fn find_idempotency_by_account_and_key(
    conn: &mut AsyncPgConnection,
    account: &str,
    key: &str,
) -> Result<Option<IdempotencyRow>, StoreError> {
    Ok(idempotency_keys::table
        .filter(idempotency_keys::account.eq(account))
        .filter(idempotency_keys::key.eq(key))
        .select(IdempotencyRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn insert_idempotency(
    conn: &mut AsyncPgConnection,
    row: &IdempotencyRow,
) -> Result<(), StoreError> {
    diesel::insert_into(idempotency_keys::table)
        .values(row)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = subscription_changes)]
pub struct NewChange {
    pub account: String,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub quote_id: Option<String>,
    pub from_plan: Option<String>,
    pub from_version: Option<i32>,
    pub from_seats: Option<i32>,
    pub to_plan: Option<String>,
    pub to_version: Option<i32>,
    pub to_seats: Option<i32>,
    pub lines: serde_json::Value,
    pub amount: Decimal,
    pub currency: Option<String>,
}

pub async fn insert_change(conn: &mut AsyncPgConnection, c: &NewChange) -> Result<i64, StoreError> {
    Ok(diesel::insert_into(subscription_changes::table)
        .values(c)
        .returning(subscription_changes::id)
        .get_result(conn)
        .await?)
}

/// An accepted change. Shown with `from` and `to` as `{plan, version, seats}` (as a quote
/// shows them), `null` where a side does not exist (a new subscription has no `from`).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = subscription_changes)]
pub struct ChangeRow {
    pub id: i64,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub quote_id: Option<String>,
    pub from_plan: Option<String>,
    pub from_version: Option<i32>,
    pub from_seats: Option<i32>,
    pub to_plan: Option<String>,
    pub to_version: Option<i32>,
    pub to_seats: Option<i32>,
    pub lines: serde_json::Value,
    pub amount: Decimal,
    pub currency: Option<String>,
}

impl serde::Serialize for ChangeRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let side = |plan: &Option<String>, version: Option<i32>, seats: Option<i32>| {
            plan.as_ref()
                .map(|p| serde_json::json!({"plan": p, "version": version, "seats": seats}))
        };
        serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "at": crate::domain::ts::format(&self.at),
            "quote_id": self.quote_id,
            "from": side(&self.from_plan, self.from_version, self.from_seats),
            "to": side(&self.to_plan, self.to_version, self.to_seats),
            "lines": self.lines,
            "amount": self.amount.to_string(),
            "currency": self.currency,
        })
        .serialize(s)
    }
}

pub async fn changes_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<ChangeRow>, StoreError> {
    Ok(subscription_changes::table
        .filter(subscription_changes::account.eq(account))
        .filter(subscription_changes::id.gt(after.unwrap_or(0)))
        .order(subscription_changes::id)
        .limit(limit)
        .select(ChangeRow::as_select())
        .load(conn)
        .await?)
}

/// Accounts whose period or trial has ended by `now`, after `after` in account order, with the
/// period (or trial) that ended (a plain read: the caller locks each one with SKIP LOCKED).
pub async fn due_accounts(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, DateTime<Utc>, DateTime<Utc>)>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::account.gt(after))
        .filter(
            subscriptions::period_end
                .le(now)
                .and(subscriptions::status.eq_any(["active", "past_due"]))
                .or(subscriptions::status
                    .eq("trialing")
                    .and(subscriptions::trial_end.le(now))),
        )
        .order(subscriptions::account)
        .limit(limit)
        .select((
            subscriptions::account,
            subscriptions::period_start,
            subscriptions::period_end,
        ))
        .load(conn)
        .await?)
}

/// Locks the account's subscription unless another transaction holds it.
pub async fn lock_by_account_skip_locked(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Option<SubscriptionRow>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::account.eq(account))
        .select(SubscriptionRow::as_select())
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()?)
}

/// Locks the subscriptions of `accounts` that no other transaction holds, in account order
/// (the order every batch takes them in, so batches cannot deadlock), and returns them by
/// account. One statement on one PostgreSQL; on Citus, which takes row locks in a single
/// shard's statement only, one per account.
pub async fn lock_many_skip_locked(
    conn: &mut AsyncPgConnection,
    accounts: &[&str],
) -> Result<std::collections::HashMap<String, SubscriptionRow>, StoreError> {
    let mut sorted = accounts.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let rows: Vec<SubscriptionRow> = if super::citus::active() {
        let mut rows = Vec::with_capacity(sorted.len());
        for a in sorted {
            rows.extend(lock_by_account_skip_locked(conn, a).await?);
        }
        rows
    } else {
        subscriptions::table
            .filter(subscriptions::account.eq_any(&sorted))
            .order(subscriptions::account.asc())
            .select(SubscriptionRow::as_select())
            .for_update()
            .skip_locked()
            .load(conn)
            .await?
    };
    Ok(rows.into_iter().map(|r| (r.account.clone(), r)).collect())
}

#[derive(QueryableByName)]
struct ChangeId {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Timestamptz)]
    at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Inserts changes; returns (account, kind, at, id) of each, to be matched by value (not by
/// position: a bulk insert returns its rows in no promised order). On one PostgreSQL in one
/// statement over arrays; on Citus as `VALUES` in chunks, which it routes row by row.
pub async fn insert_changes(
    conn: &mut AsyncPgConnection,
    changes: &[NewChange],
) -> Result<Vec<(String, String, DateTime<Utc>, i64)>, StoreError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    if !super::citus::active() {
        let rows: Vec<ChangeId> = super::prepared::prepared(
            "INSERT INTO subscription_changes (account, kind, at, quote_id, from_plan,
                    from_version, from_seats, to_plan, to_version, to_seats, lines, amount,
                    currency)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[],
                    $5::text[], $6::int4[], $7::int4[], $8::text[], $9::int4[], $10::int4[],
                    $11::jsonb[], $12::numeric[], $13::text[])
             RETURNING account, kind, at, id",
        )
        .bind::<Array<Text>, _>(super::column(changes, |c| &c.account))
        .bind::<Array<Text>, _>(super::column(changes, |c| &c.kind))
        .bind::<Array<Timestamptz>, _>(super::column(changes, |c| c.at))
        .bind::<Array<Nullable<Text>>, _>(super::column(changes, |c| c.quote_id.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(super::column(changes, |c| c.from_plan.as_deref()))
        .bind::<Array<Nullable<Integer>>, _>(super::column(changes, |c| c.from_version))
        .bind::<Array<Nullable<Integer>>, _>(super::column(changes, |c| c.from_seats))
        .bind::<Array<Nullable<Text>>, _>(super::column(changes, |c| c.to_plan.as_deref()))
        .bind::<Array<Nullable<Integer>>, _>(super::column(changes, |c| c.to_version))
        .bind::<Array<Nullable<Integer>>, _>(super::column(changes, |c| c.to_seats))
        .bind::<Array<Jsonb>, _>(super::column(changes, |c| &c.lines))
        .bind::<Array<Numeric>, _>(super::column(changes, |c| c.amount))
        .bind::<Array<Nullable<Text>>, _>(super::column(changes, |c| c.currency.as_deref()))
        .load(conn)
        .await?;
        return Ok(rows
            .into_iter()
            .map(|r| (r.account, r.kind, r.at, r.id))
            .collect());
    }
    let mut ids = Vec::with_capacity(changes.len());
    for chunk in changes.chunks(2000) {
        let got: Vec<(String, String, DateTime<Utc>, i64)> =
            diesel::insert_into(subscription_changes::table)
                .values(chunk)
                .returning((
                    subscription_changes::account,
                    subscription_changes::kind,
                    subscription_changes::at,
                    subscription_changes::id,
                ))
                .get_results(conn)
                .await?;
        ids.extend(got);
    }
    Ok(ids)
}

/// Writes several (locked) subscription rows back in one statement: on one PostgreSQL over
/// arrays, on Citus as `VALUES` in chunks.
pub async fn save_many(
    conn: &mut AsyncPgConnection,
    rows: &[SubscriptionRow],
) -> Result<(), StoreError> {
    use diesel::upsert::excluded;
    use subscriptions::*;
    if rows.is_empty() {
        return Ok(());
    }
    if !super::citus::active() {
        return save_many_unnest(conn, rows).await;
    }
    for chunk in rows.chunks(1000) {
        diesel::insert_into(table)
            .values(chunk)
            .on_conflict(account)
            .do_update()
            .set((
                plan.eq(excluded(plan)),
                plan_version.eq(excluded(plan_version)),
                seats.eq(excluded(seats)),
                status.eq(excluded(status)),
                anchor.eq(excluded(anchor)),
                period_start.eq(excluded(period_start)),
                period_end.eq(excluded(period_end)),
                trial_end.eq(excluded(trial_end)),
                scheduled.eq(excluded(scheduled)),
                revision.eq(excluded(revision)),
                updated_at.eq(excluded(updated_at)),
                past_due_since.eq(excluded(past_due_since)),
            ))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// [`save_many`] on one PostgreSQL: the same rows and conflict rule over arrays.
async fn save_many_unnest(
    conn: &mut AsyncPgConnection,
    rows: &[SubscriptionRow],
) -> Result<(), StoreError> {
    super::prepared::prepared(
        "INSERT INTO subscriptions (account, plan, plan_version, seats, status, anchor,
                period_start, period_end, trial_end, scheduled, revision, created_at,
                updated_at, past_due_since)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int4[], $5::text[],
                $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[],
                $10::jsonb[], $11::int8[], $12::timestamptz[], $13::timestamptz[],
                $14::timestamptz[])
         ON CONFLICT (account) DO UPDATE SET
                plan = excluded.plan, plan_version = excluded.plan_version,
                seats = excluded.seats, status = excluded.status, anchor = excluded.anchor,
                period_start = excluded.period_start, period_end = excluded.period_end,
                trial_end = excluded.trial_end, scheduled = excluded.scheduled,
                revision = excluded.revision, updated_at = excluded.updated_at,
                past_due_since = excluded.past_due_since",
    )
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.account))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.plan))
    .bind::<Array<Integer>, _>(super::column(rows, |r| r.plan_version))
    .bind::<Array<Integer>, _>(super::column(rows, |r| r.seats))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.status))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.anchor))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.period_start))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.period_end))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(rows, |r| r.trial_end))
    .bind::<Array<Nullable<Jsonb>>, _>(
        rows.iter()
            .map(|r| r.scheduled.as_ref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(super::column(rows, |r| r.revision))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.created_at))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.updated_at))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(rows, |r| r.past_due_since))
    .execute(conn)
    .await?;
    Ok(())
}
/// A change-history row for `row` as it is now, changed from `from` (plan, version, seats).
pub fn change(
    row: &SubscriptionRow,
    kind: &str,
    at: DateTime<Utc>,
    from: Option<(&str, i32, i32)>,
    lines: serde_json::Value,
    amount: Decimal,
    currency: &str,
) -> NewChange {
    NewChange {
        account: row.account.clone(),
        kind: kind.to_owned(),
        at,
        quote_id: None,
        from_plan: from.map(|f| f.0.to_owned()),
        from_version: from.map(|f| f.1),
        from_seats: from.map(|f| f.2),
        to_plan: Some(row.plan.clone()),
        to_version: Some(row.plan_version),
        to_seats: Some(row.seats),
        lines,
        amount,
        currency: Some(currency.to_owned()),
    }
}

/// Canceled subscriptions whose (last) period ended after `since`, with that end: where late
/// usage may still arrive.
pub async fn recently_canceled(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    Ok(subscriptions::table
        .filter(subscriptions::status.eq("canceled"))
        .filter(subscriptions::period_end.gt(since))
        .order(subscriptions::account)
        .select((subscriptions::account, subscriptions::period_end))
        .load(conn)
        .await?)
}

/// How many subscriptions are in each status (the `/metrics` page).
pub async fn count_by_status(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(subscriptions::table
        .group_by(subscriptions::status)
        .select((subscriptions::status, diesel::dsl::count_star()))
        .load(conn)
        .await?)
}
