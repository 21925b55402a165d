//! `web_sessions`: the pages' sign-ins by the hash of their token: portal links (opened once),
//! the portal sessions they become, and console sessions. A global table looked up by hash
//! (on Citus it stays on the coordinator, as `jobs` does).

use super::schema::web_sessions;
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = web_sessions)]
pub struct WebSession {
    pub token_hash: String,
    /// `portal_link`, `portal` or `console`.
    pub kind: String,
    pub account: Option<String>,
    pub key_id: Option<i64>,
    pub csrf: String,
    pub return_url: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Stores a new link or session, and drops those that ended before `now` (so the table holds
/// only live sign-ins; the index on `expires_at` keeps that cheap).
pub async fn insert(conn: &mut AsyncPgConnection, s: &WebSession) -> Result<(), StoreError> {
    diesel::delete(web_sessions::table.filter(web_sessions::expires_at.lt(s.created_at)))
        .execute(conn)
        .await?;
    diesel::insert_into(web_sessions::table)
        .values(s)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks the unopened, unexpired portal link `token_hash` opened at `now` and returns it; None
/// when there is no such link (unknown, expired, or opened before). One statement, so two
/// tabs opening the same link cannot both get it.
pub async fn open_link(
    conn: &mut AsyncPgConnection,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<WebSession>, StoreError> {
    Ok(diesel::update(
        web_sessions::table
            .filter(web_sessions::token_hash.eq(token_hash))
            .filter(web_sessions::kind.eq("portal_link"))
            .filter(web_sessions::used_at.is_null())
            .filter(web_sessions::expires_at.gt(now)),
    )
    .set(web_sessions::used_at.eq(now))
    .returning(WebSession::as_returning())
    .get_result(conn)
    .await
    .optional()?)
}

/// The live session `token_hash` of `kind` (`portal` or `console`) at `now`.
pub async fn find_live(
    conn: &mut AsyncPgConnection,
    token_hash: &str,
    kind: &str,
    now: DateTime<Utc>,
) -> Result<Option<WebSession>, StoreError> {
    Ok(web_sessions::table
        .filter(web_sessions::token_hash.eq(token_hash))
        .filter(web_sessions::kind.eq(kind))
        .filter(web_sessions::expires_at.gt(now))
        .select(WebSession::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Ends the session `token_hash` (signing out).
pub async fn delete(conn: &mut AsyncPgConnection, token_hash: &str) -> Result<(), StoreError> {
    diesel::delete(web_sessions::table.filter(web_sessions::token_hash.eq(token_hash)))
        .execute(conn)
        .await?;
    Ok(())
}
