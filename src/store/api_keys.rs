//! `api_keys`: a catalogue table of key hashes. Instances hold the live keys in memory and
//! reload them when the table's version (count, latest `changed_at`) moves.

use super::schema::api_keys;
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use serde::Serialize;

/// A key as authentication needs it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    pub id: i64,
    pub key_hash: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub account: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key as operators see it (`accrue keys list`, `GET /v1/keys`): never the secret or hash.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = api_keys)]
pub struct KeyInfo {
    pub id: i64,
    /// The first characters of the key (`acr_` and 8 hex), to recognise it.
    pub prefix: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub account: Option<String>,
    pub created_by: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
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
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut AsyncPgConnection, key: NewApiKey<'_>) -> Result<i64, StoreError> {
    Ok(diesel::insert_into(api_keys::table)
        .values(&key)
        .returning(api_keys::id)
        .get_result(conn)
        .await?)
}

/// The table's version: how many keys, how many revoked, and the latest change (create,
/// revoke, expiry set). Any of them moving means the live set changed.
pub type Version = (i64, i64, Option<DateTime<Utc>>);

pub async fn version(conn: &mut AsyncPgConnection) -> Result<Version, StoreError> {
    Ok(api_keys::table
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::count(api_keys::revoked_at),
            diesel::dsl::max(api_keys::changed_at),
        ))
        .first(conn)
        .await?)
}

/// Every key that is not revoked (expired ones too: expiry is checked at each use).
pub async fn live(conn: &mut AsyncPgConnection) -> Result<Vec<ApiKey>, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKey::as_select())
        .load(conn)
        .await?)
}

/// Keys by id, oldest first, after `after`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<KeyInfo>, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::id.gt(after.unwrap_or(0)))
        .order(api_keys::id.asc())
        .limit(limit)
        .select(KeyInfo::as_select())
        .load(conn)
        .await?)
}

pub async fn find(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<KeyInfo>, StoreError> {
    Ok(api_keys::table
        .filter(api_keys::id.eq(id))
        .select(KeyInfo::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The database's clock now, for a key's change stamp: read first and bound, because Citus
/// refuses a volatile function (`clock_timestamp()`) in an UPDATE of a reference table.
async fn database_time(conn: &mut AsyncPgConnection) -> Result<DateTime<Utc>, StoreError> {
    Ok(
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
            "clock_timestamp()",
        ))
        .get_result(conn)
        .await?,
    )
}

/// Revokes a key now (a no-op on a key already revoked); returns it.
pub async fn revoke(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<KeyInfo>, StoreError> {
    let changed = database_time(conn).await?;
    diesel::update(
        api_keys::table
            .filter(api_keys::id.eq(id))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set((
        api_keys::revoked_at.eq(diesel::dsl::now),
        api_keys::changed_at.eq(changed),
    ))
    .execute(conn)
    .await?;
    find(conn, id).await
}

/// Makes a key expire at `at` (rotation's grace period for the old key), or sooner if it
/// already expired or was set to.
pub async fn expire_at(
    conn: &mut AsyncPgConnection,
    id: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let changed = database_time(conn).await?;
    diesel::update(api_keys::table.filter(api_keys::id.eq(id)))
        .set((
            api_keys::expires_at.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("LEAST(expires_at, ")
            .bind::<diesel::sql_types::Timestamptz, _>(at)
            .sql(")")),
            api_keys::changed_at.eq(changed),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Records when keys were last used (batched by each instance; does not move the version).
pub async fn touch(
    conn: &mut AsyncPgConnection,
    used: &[(i64, DateTime<Utc>)],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = used.iter().map(|(id, _)| *id).collect();
    let times: Vec<DateTime<Utc>> = used.iter().map(|(_, t)| *t).collect();
    super::prepared::prepared(
        "UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.t)
           FROM unnest($1::int8[], $2::timestamptz[]) AS u(id, t) WHERE k.id = u.id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Timestamptz>, _>(times)
    .execute(conn)
    .await?;
    Ok(())
}
