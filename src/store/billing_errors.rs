//! Accounts the period close failed to move: one row per account, kept open until a later
//! close of that account succeeds.

use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

#[derive(Debug, Clone, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct BillingErrorRow {
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub first_failed_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub last_failed_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Text)]
    pub code: String,
    #[diesel(sql_type = Text)]
    pub message: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Records (or counts again) a failed close of `account`.
pub async fn record(
    conn: &mut AsyncPgConnection,
    account: &str,
    code: &str,
    message: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    super::prepared::prepared(
        "INSERT INTO billing_errors (account, first_failed_at, last_failed_at, attempts, code, message)
         VALUES ($1, $2, $2, 1, $3, $4)
         ON CONFLICT (account) DO UPDATE
            SET first_failed_at = CASE WHEN billing_errors.resolved_at IS NULL
                                       THEN billing_errors.first_failed_at ELSE EXCLUDED.first_failed_at END,
                attempts = CASE WHEN billing_errors.resolved_at IS NULL
                                THEN billing_errors.attempts + 1 ELSE 1 END,
                last_failed_at = EXCLUDED.last_failed_at,
                code = EXCLUDED.code,
                message = EXCLUDED.message,
                resolved_at = NULL",
    )
    .bind::<Text, _>(account)
    .bind::<Timestamptz, _>(at)
    .bind::<Text, _>(code)
    .bind::<Text, _>(message)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the open errors of these accounts resolved (their close succeeded).
pub async fn resolve(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    super::prepared::prepared(
        "UPDATE billing_errors SET resolved_at = $2
          WHERE account = ANY($1) AND resolved_at IS NULL",
    )
    .bind::<Array<Text>, _>(accounts)
    .bind::<Timestamptz, _>(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Open errors by account, after the cursor `after` (an account) when given.
pub async fn open(
    conn: &mut AsyncPgConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<BillingErrorRow>, StoreError> {
    Ok(super::prepared::prepared(
        "SELECT account, first_failed_at, last_failed_at, attempts, code, message, resolved_at
           FROM billing_errors
          WHERE resolved_at IS NULL AND ($1::text IS NULL OR account > $1)
          ORDER BY account
          LIMIT $2",
    )
    .bind::<Nullable<Text>, _>(after)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await?)
}
