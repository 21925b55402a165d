//! `jobs`: the queue cron schedules feed and workers lease with FOR UPDATE SKIP LOCKED.

use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Adds a job unless one with the same (kind, due_key) exists; true when added.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    kind: &str,
    due_key: &str,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = super::prepared::prepared(
        "INSERT INTO jobs (kind, due_key, run_at, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (kind, due_key) DO NOTHING",
    )
    .bind::<Text, _>(kind)
    .bind::<Text, _>(due_key)
    .bind::<Timestamptz, _>(run_at)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

#[derive(Debug, Clone, QueryableByName)]
pub struct Leased {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// Leases the oldest runnable job until `until`; a worker that dies loses the lease then.
/// Leases the next runnable job of one of `kinds`.
pub async fn lease(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    kinds: &[&str],
) -> Result<Option<Leased>, StoreError> {
    let rows: Vec<Leased> = super::prepared::prepared(
        "UPDATE jobs SET leased_until = $2, attempts = attempts + 1
          WHERE id = (SELECT id FROM jobs
                       WHERE done_at IS NULL AND run_at <= $1
                         AND (leased_until IS NULL OR leased_until < $1)
                         AND kind = ANY($3)
                       ORDER BY run_at, id LIMIT 1
                       FOR UPDATE SKIP LOCKED)
          RETURNING id, kind, attempts",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(until)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(kinds)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

pub async fn complete(
    conn: &mut AsyncPgConnection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    super::prepared::prepared("UPDATE jobs SET done_at = $2, leased_until = NULL WHERE id = $1")
        .bind::<BigInt, _>(id)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a failure and when to try again.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    id: i64,
    error: &str,
    retry_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    super::prepared::prepared(
        "UPDATE jobs SET last_error = $2, run_at = $3, leased_until = NULL WHERE id = $1",
    )
    .bind::<BigInt, _>(id)
    .bind::<Text, _>(error)
    .bind::<Timestamptz, _>(retry_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets jobs finished before `before` (the table would otherwise grow by a few rows a
/// minute forever). Returns how many were removed.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> Result<usize, StoreError> {
    Ok(
        super::prepared::prepared("DELETE FROM jobs WHERE done_at < $1")
            .bind::<Timestamptz, _>(before)
            .execute(conn)
            .await?,
    )
}
