//! `test_clocks` and the accounts that live by them.

use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct TestClockRow {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub frozen_time: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub created_at: DateTime<Utc>,
}

pub async fn insert(
    conn: &mut AsyncPgConnection,
    id: &str,
    name: Option<&str>,
    frozen_time: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<TestClockRow, StoreError> {
    Ok(super::prepared::prepared(
        "INSERT INTO test_clocks (id, name, frozen_time, status, created_at)
         VALUES ($1, $2, $3, 'ready', $4)
         RETURNING id, name, frozen_time, status, created_at",
    )
    .bind::<Text, _>(id)
    .bind::<Nullable<Text>, _>(name)
    .bind::<Timestamptz, _>(frozen_time)
    .bind::<Timestamptz, _>(now)
    .get_result(conn)
    .await?)
}

pub async fn find_by_id(
    conn: &mut AsyncPgConnection,
    id: &str,
) -> Result<Option<TestClockRow>, StoreError> {
    use diesel::OptionalExtension;
    Ok(super::prepared::prepared(
        "SELECT id, name, frozen_time, status, created_at FROM test_clocks WHERE id = $1",
    )
    .bind::<Text, _>(id)
    .get_result(conn)
    .await
    .optional()?)
}

/// Sets the clock's time and status.
pub async fn set(
    conn: &mut AsyncPgConnection,
    id: &str,
    frozen_time: DateTime<Utc>,
    status: &str,
) -> Result<(), StoreError> {
    super::prepared::prepared("UPDATE test_clocks SET frozen_time = $2, status = $3 WHERE id = $1")
        .bind::<Text, _>(id)
        .bind::<Timestamptz, _>(frozen_time)
        .bind::<Text, _>(status)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct AccountTime {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = Timestamptz)]
    frozen_time: DateTime<Utc>,
}

/// The frozen time of each of these accounts that lives by a test clock.
pub async fn times_of_accounts(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
    let rows: Vec<AccountTime> = super::prepared::prepared(
        "SELECT a.account, c.frozen_time
           FROM accounts a JOIN test_clocks c ON c.id = a.test_clock
          WHERE a.account = ANY($1)",
    )
    .bind::<Array<Text>, _>(accounts)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.account, r.frozen_time))
        .collect())
}

#[derive(QueryableByName)]
struct AccountName {
    #[diesel(sql_type = Text)]
    account: String,
}

/// The accounts living by clock `id`, in account order.
pub async fn accounts_of(
    conn: &mut AsyncPgConnection,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<AccountName> = super::prepared::prepared(
        "SELECT account FROM accounts WHERE test_clock = $1 ORDER BY account",
    )
    .bind::<Text, _>(id)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.account).collect())
}

#[derive(QueryableByName)]
struct Due {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
}

/// The earliest instant after `after` at which something falls due for the accounts of clock
/// `id`: a trial end, a period end, a collection attempt.
pub async fn next_due(
    conn: &mut AsyncPgConnection,
    id: &str,
    after: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row: Due = super::prepared::prepared(
        "SELECT MIN(at) AS at FROM (
             SELECT CASE WHEN s.status = 'trialing' THEN s.trial_end ELSE s.period_end END AS at
               FROM subscriptions s JOIN accounts a ON a.account = s.account
              WHERE a.test_clock = $1 AND s.status IN ('trialing', 'active', 'past_due')
             UNION ALL
             SELECT p.next_attempt_at
               FROM invoice_payments p JOIN accounts a ON a.account = p.account
              WHERE a.test_clock = $1 AND p.state IN ('pending', 'failed')
         ) d WHERE at > $2",
    )
    .bind::<Text, _>(id)
    .bind::<Timestamptz, _>(after)
    .get_result(conn)
    .await?;
    Ok(row.at)
}

/// Sets the clock of a new account (no-op for an account already on one).
pub async fn attach(
    conn: &mut AsyncPgConnection,
    account: &str,
    id: &str,
) -> Result<(), StoreError> {
    super::prepared::prepared("UPDATE accounts SET test_clock = $2 WHERE account = $1")
        .bind::<Text, _>(account)
        .bind::<Text, _>(id)
        .execute(conn)
        .await?;
    Ok(())
}
