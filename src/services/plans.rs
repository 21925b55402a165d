//! Publishing plan versions (immutable, content-hashed, audited) and reading them back.

use super::ServiceError;
use crate::catalog::plans::{content_hash, PlanCatalog};
use crate::domain::plan::PlanRef;
use crate::store::plans::{self as store_plans, NewAuditEntry, PublishedVersion};
use crate::store::{Pool, StoreError};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishStatus {
    /// Stored now.
    Published,
    /// Already published with the same content.
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishResult {
    pub plan: PlanRef,
    pub status: PublishStatus,
    pub content_hash: String,
}

/// Publishes every version of the catalogue, all or nothing. A version already published with
/// different content refuses the whole publish (and the refusal is audited).
pub async fn publish(
    pool: &Pool,
    catalog: &PlanCatalog,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<PublishResult>, ServiceError> {
    let mut conn = pool.get().await.map_err(StoreError::from)?;
    let versions: Vec<_> = catalog.all().cloned().collect();
    let outcome = conn
        .transaction::<Vec<PublishResult>, TxError, _>(async |c| {
            let mut results = Vec::new();
            let mut refused = Vec::new();
            for v in &versions {
                let hash = content_hash(v);
                let row = PublishedVersion {
                    plan: v.plan.clone(),
                    version: v.version as i32,
                    name: v.name.clone(),
                    self_serve: v.self_serve,
                    content_hash: hash.clone(),
                    definition: serde_json::to_value(v).unwrap_or_default(),
                    published_at: now,
                    published_by: actor.to_owned(),
                };
                if store_plans::insert_if_absent(c, &row).await? {
                    store_plans::append_audit(
                        c,
                        NewAuditEntry {
                            action: "published",
                            plan: &v.plan,
                            version: v.version as i32,
                            content_hash: &hash,
                            actor,
                            detail: "",
                            at: now,
                        },
                    )
                    .await?;
                    results.push(PublishResult {
                        plan: v.plan_ref(),
                        status: PublishStatus::Published,
                        content_hash: hash,
                    });
                    continue;
                }
                let existing = store_plans::find_by_plan_and_version(c, &v.plan, v.version as i32)
                    .await?
                    .map(|e| e.content_hash)
                    .unwrap_or_default();
                if existing == hash {
                    results.push(PublishResult {
                        plan: v.plan_ref(),
                        status: PublishStatus::Unchanged,
                        content_hash: hash,
                    });
                } else {
                    refused.push((v.plan_ref(), existing, hash));
                }
            }
            if refused.is_empty() {
                Ok(results)
            } else {
                // Roll back everything this publish wrote; the refusal is audited below.
                Err(TxError::Refused(refused))
            }
        })
        .await;
    match outcome {
        Ok(results) => Ok(results),
        Err(TxError::Refused(refused)) => {
            let next = |r: &PlanRef| {
                catalog
                    .latest(&r.plan)
                    .map_or(r.version + 1, |l| l.version + 1)
            };
            for (r, old, new) in &refused {
                store_plans::append_audit(
                    &mut conn,
                    NewAuditEntry {
                        action: "refused",
                        plan: &r.plan,
                        version: r.version as i32,
                        content_hash: new,
                        actor,
                        detail: &format!("published content hash is {old}"),
                        at: now,
                    },
                )
                .await?;
            }
            let message = refused
                .iter()
                .map(|(r, _, _)| {
                    format!(
                        "{r} is already published and its file now differs; published versions never change: \
                         put the change in a new version (pricing-plans/{}/v{}.toml) and publish that",
                        r.plan,
                        next(r)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            Err(ServiceError::invalid("version_changed", message))
        }
        Err(TxError::Store(e)) => Err(e.into()),
    }
}

/// Why the publish transaction rolled back.
enum TxError {
    Store(StoreError),
    /// (version, published hash, file hash) of each version whose file changed.
    Refused(Vec<(PlanRef, String, String)>),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Store(e.into())
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub plan: String,
    pub name: String,
    pub self_serve: bool,
    pub latest_version: i32,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub version: i32,
    pub content_hash: String,
    pub published_at: DateTime<Utc>,
}

/// Published plans, each with its versions (name and self-serve from the latest).
pub async fn list(pool: &Pool) -> Result<Vec<PlanSummary>, ServiceError> {
    let mut conn = pool.get().await.map_err(StoreError::from)?;
    let rows = store_plans::list_all(&mut conn).await?;
    let mut out: Vec<PlanSummary> = Vec::new();
    for r in rows {
        let summary = VersionSummary {
            version: r.version,
            content_hash: r.content_hash,
            published_at: r.published_at,
        };
        match out.last_mut() {
            Some(p) if p.plan == r.plan => {
                p.latest_version = r.version;
                p.name = r.name;
                p.self_serve = r.self_serve;
                p.versions.push(summary);
            }
            _ => out.push(PlanSummary {
                plan: r.plan,
                name: r.name,
                self_serve: r.self_serve,
                latest_version: r.version,
                versions: vec![summary],
            }),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionDetail {
    pub plan: String,
    pub version: i32,
    pub content_hash: String,
    pub published_at: DateTime<Utc>,
    pub published_by: String,
    pub definition: serde_json::Value,
}

pub async fn get(pool: &Pool, plan: &str, version: i32) -> Result<VersionDetail, ServiceError> {
    let mut conn = pool.get().await.map_err(StoreError::from)?;
    let row = store_plans::find_by_plan_and_version(&mut conn, plan, version)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("plan {plan}@{version} is not published")))?;
    Ok(VersionDetail {
        plan: row.plan,
        version: row.version,
        content_hash: row.content_hash,
        published_at: row.published_at,
        published_by: row.published_by,
        definition: row.definition,
    })
}
