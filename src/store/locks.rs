//! Session advisory locks held by one pooled connection for the length of a piece of work that
//! calls out between statements (Stripe, a test clock's steps): no transaction stays open, and
//! the lock ends with the work or, if the process dies, with its connection.

use super::{Conn, StoreError};
use diesel::sql_types::{Bool, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;

/// The advisory lock namespace of accrue's session locks.
const NAMESPACE: i64 = 7462002;

/// A pooled connection holding the session lock on `key`. [`SessionLock::release`] unlocks it
/// and gives the connection back; dropped otherwise (an error, a cancelled request), the
/// connection is closed rather than returned to the pool with the lock still held.
pub struct SessionLock {
    conn: Option<Conn>,
    key: String,
}

impl SessionLock {
    /// Takes the lock on `key` with `conn`; `None` when another session holds it.
    pub async fn try_take(conn: Conn, key: String) -> Result<Option<Self>, StoreError> {
        Self::take_within(conn, key, Duration::ZERO).await
    }

    /// Takes the lock on `key` with `conn`, trying again every few milliseconds for up to
    /// `wait` while someone else holds it (such as a webhook's short transaction, which takes
    /// the same lock: [`try_for_transaction`]); `None` if it is still held then. The waiting
    /// is polling, not a blocked statement, so it is bounded whatever the holder does.
    pub async fn take_within(
        conn: Conn,
        key: String,
        wait: Duration,
    ) -> Result<Option<Self>, StoreError> {
        #[derive(QueryableByName)]
        struct Got {
            #[diesel(sql_type = Bool)]
            got: bool,
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Held as a lock from the first try: cancelled while a try that takes the lock is on
        // its way, the connection is closed (see `Drop`), never pooled with the lock held.
        let mut lock = Self {
            conn: Some(conn),
            key: key.clone(),
        };
        loop {
            let got: Got = super::prepared::prepared(
                "SELECT pg_try_advisory_lock(hashtextextended($1, $2)) AS got",
            )
            .bind::<Text, _>(&key)
            .bind::<diesel::sql_types::BigInt, _>(NAMESPACE)
            .get_result(lock.conn())
            .await?;
            if got.got {
                return Ok(Some(lock));
            }
            if tokio::time::Instant::now() >= deadline {
                // Nothing held: the connection goes back to the pool as usual.
                drop(lock.conn.take());
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn conn(&mut self) -> &mut AsyncPgConnection {
        self.conn
            .as_mut()
            .expect("a session lock holds its connection until released or dropped")
    }

    /// Unlocks and returns the connection to the pool.
    pub async fn release(mut self) -> Result<(), StoreError> {
        let key = std::mem::take(&mut self.key);
        super::prepared::prepared("SELECT pg_advisory_unlock(hashtextextended($1, $2))")
            .bind::<Text, _>(&key)
            .bind::<diesel::sql_types::BigInt, _>(NAMESPACE)
            .execute(self.conn())
            .await?;
        self.conn = None;
        Ok(())
    }
}

/// Takes the lock on `key` for the caller's transaction (released when it ends), unless a
/// session holds it ([`SessionLock`]): `false` then, at once, without waiting.
pub async fn try_for_transaction(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> Result<bool, StoreError> {
    #[derive(QueryableByName)]
    struct Got {
        #[diesel(sql_type = Bool)]
        got: bool,
    }
    let got: Got = super::prepared::prepared(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1, $2)) AS got",
    )
    .bind::<Text, _>(key)
    .bind::<diesel::sql_types::BigInt, _>(NAMESPACE)
    .get_result(conn)
    .await?;
    Ok(got.got)
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(::deadpool::managed::Object::take(conn));
        }
    }
}
