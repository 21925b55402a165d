//! `plan_versions` (published, immutable plan versions) and `catalogue_audit` (append-only).

use super::schema::{catalogue_audit, plan_versions};
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = plan_versions)]
pub struct PublishedVersion {
    pub plan: String,
    pub version: i32,
    pub name: String,
    pub self_serve: bool,
    pub content_hash: String,
    pub definition: serde_json::Value,
    pub published_at: DateTime<Utc>,
    pub published_by: String,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = catalogue_audit)]
pub struct NewAuditEntry<'a> {
    pub action: &'a str,
    pub plan: &'a str,
    pub version: i32,
    pub content_hash: &'a str,
    pub actor: &'a str,
    pub detail: &'a str,
    pub at: DateTime<Utc>,
}

pub async fn find_by_plan_and_version(
    conn: &mut AsyncPgConnection,
    plan: &str,
    version: i32,
) -> Result<Option<PublishedVersion>, StoreError> {
    Ok(plan_versions::table
        .filter(plan_versions::plan.eq(plan))
        .filter(plan_versions::version.eq(version))
        .select(PublishedVersion::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Inserts a version unless one with the same (plan, version) exists; true when inserted.
pub async fn insert_if_absent(
    conn: &mut AsyncPgConnection,
    v: &PublishedVersion,
) -> Result<bool, StoreError> {
    let n = diesel::insert_into(plan_versions::table)
        .values(v)
        .on_conflict((plan_versions::plan, plan_versions::version))
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// How many versions are published (they are only ever added).
pub async fn count(conn: &mut AsyncPgConnection) -> Result<i64, StoreError> {
    Ok(plan_versions::table.count().get_result(conn).await?)
}

pub async fn list_all(conn: &mut AsyncPgConnection) -> Result<Vec<PublishedVersion>, StoreError> {
    Ok(plan_versions::table
        .order((plan_versions::plan, plan_versions::version))
        .select(PublishedVersion::as_select())
        .load(conn)
        .await?)
}

pub async fn append_audit(
    conn: &mut AsyncPgConnection,
    entry: NewAuditEntry<'_>,
) -> Result<(), StoreError> {
    diesel::insert_into(catalogue_audit::table)
        .values(&entry)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = catalogue_audit)]
pub struct AuditEntry {
    pub action: String,
    pub plan: String,
    pub version: i32,
    pub content_hash: String,
    pub actor: String,
    pub detail: String,
    pub at: DateTime<Utc>,
}

pub async fn audit_log(conn: &mut AsyncPgConnection) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(catalogue_audit::table
        .order(catalogue_audit::id)
        .select(AuditEntry::as_select())
        .load(conn)
        .await?)
}

/// The highest published version of `plan` with its content hash.
/// The highest published version of `plan`.
pub async fn find_latest_by_plan(
    conn: &mut AsyncPgConnection,
    plan: &str,
) -> Result<Option<PublishedVersion>, StoreError> {
    Ok(plan_versions::table
        .filter(plan_versions::plan.eq(plan))
        .order(plan_versions::version.desc())
        .select(PublishedVersion::as_select())
        .first(conn)
        .await
        .optional()?)
}
