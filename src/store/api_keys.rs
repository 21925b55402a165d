//! `api_keys`: a catalogue table looked up by the hash of the presented key.

use super::schema::api_keys;
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    pub account: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey<'a> {
    pub key_hash: &'a str,
    pub prefix: &'a str,
    pub name: &'a str,
    pub scopes: Vec<String>,
    pub account: Option<&'a str>,
    pub created_by: &'a str,
}

pub async fn insert(conn: &mut AsyncPgConnection, key: NewApiKey<'_>) -> Result<i64, StoreError> {
    Ok(diesel::insert_into(api_keys::table)
        .values(&key)
        .returning(api_keys::id)
        .get_result(conn)
        .await?)
}

pub async fn find_by_hash(
    conn: &mut AsyncPgConnection,
    hash: &str,
) -> Result<Option<ApiKey>, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::key_hash.eq(hash))
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()?)
}
