//! Publishing plan versions (immutable, content-hashed, audited) and reading them back, and
//! the live catalogue a server runs: the database is the source of truth for published
//! versions, and every instance reloads them within [`REFRESH_EVERY`] of a publish (without a
//! restart or copying files).

use super::ServiceError;
use crate::catalog::plans::{content_hash, PlanCatalog};
use crate::domain::plan::{PlanRef, PlanVersion};
use crate::store::plans::{self as store_plans, NewAuditEntry, PublishedVersion};
use crate::store::{Pool, StoreError};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishStatus {
    /// Stored now.
    Published,
    /// Already published with the same content.
    Unchanged,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
                let existing =
                    store_plans::find_by_plan_and_version(c, &v.plan, v.version as i32).await?;
                let (old_hash, old) = match existing {
                    Some(e) => (
                        e.content_hash,
                        serde_json::from_value::<PlanVersion>(e.definition).ok(),
                    ),
                    None => (String::new(), None),
                };
                // Equal in value is unchanged, however the file writes it ("49.00" = "49.0").
                if old_hash == hash || old.as_ref() == Some(v) {
                    results.push(PublishResult {
                        plan: v.plan_ref(),
                        status: PublishStatus::Unchanged,
                        content_hash: old_hash,
                    });
                } else {
                    let what = old.map_or_else(
                        || "its published definition cannot be read".to_owned(),
                        |o| what_differs(&o, v),
                    );
                    refused.push((v.plan_ref(), old_hash, hash, what));
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
            // The next free version: past both the published ones and those given here.
            let mut next = std::collections::BTreeMap::new();
            for (r, _, _, _) in &refused {
                let published = store_plans::find_latest_by_plan(&mut conn, &r.plan)
                    .await?
                    .map_or(0, |p| p.version as u32);
                let given = catalog.latest(&r.plan).map_or(0, |l| l.version);
                next.insert(r.plan.clone(), published.max(given) + 1);
            }
            let next = |r: &PlanRef| next.get(&r.plan).copied().unwrap_or(r.version + 1);
            for (r, old, new, _) in &refused {
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
                .map(|(r, _, _, what)| {
                    format!(
                        "{r} is already published and differs ({what}); published versions never change: \
                         put the change in a new version ({}/v{}.toml) and publish that",
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

/// The fields that differ between a published version and its new content, in one line.
fn what_differs(published: &PlanVersion, new: &PlanVersion) -> String {
    let changes = crate::catalog::diff::diff(published, new);
    if changes.is_empty() {
        return "no field differs in value".into();
    }
    changes
        .iter()
        .map(|c| {
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .map_or_else(|| "(none)".to_owned(), |v| v.to_string())
            };
            format!("{}: {} → {}", c.field, show(&c.before), show(&c.after))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the publish transaction rolled back.
enum TxError {
    Store(StoreError),
    /// (version, published hash, file hash, what differs) of each version whose file changed.
    Refused(Vec<(PlanRef, String, String, String)>),
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanSummary {
    pub plan: String,
    pub name: String,
    pub self_serve: bool,
    pub latest_version: i32,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionSummary {
    pub version: i32,
    pub content_hash: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionDetail {
    pub plan: String,
    pub version: i32,
    pub content_hash: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
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

/// How often each instance looks for newly published versions.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The catalogue a server runs: its plan files overlaid with every version published in the
/// database (published definitions win), swapped whole when a publish is seen.
pub struct LivePlans {
    files: PlanCatalog,
    /// How many versions were published when `current` was built (-1: not loaded yet).
    current: std::sync::RwLock<(i64, std::sync::Arc<PlanCatalog>)>,
}

impl LivePlans {
    pub fn new(files: PlanCatalog) -> Self {
        let current = std::sync::Arc::new(files.clone());
        Self {
            files,
            current: std::sync::RwLock::new((-1, current)),
        }
    }

    /// The catalogue as last loaded.
    pub fn current(&self) -> std::sync::Arc<PlanCatalog> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Reloads when the published versions changed (versions are only ever added, so their
    /// count tells). A definition this build cannot read is skipped with a warning.
    pub async fn refresh(&self, pool: &Pool) -> Result<(), StoreError> {
        let mut conn = pool.get().await?;
        let count = store_plans::count(&mut conn).await?;
        let seen = self.current.read().unwrap_or_else(|e| e.into_inner()).0;
        if count == seen {
            return Ok(());
        }
        let rows = store_plans::list_all(&mut conn).await?;
        drop(conn);
        let mut published = Vec::with_capacity(rows.len());
        for r in rows {
            match serde_json::from_value::<PlanVersion>(r.definition) {
                Ok(v) if v.plan == r.plan && v.version as i32 == r.version => published.push(v),
                Ok(_) => {
                    tracing::warn!(plan = %r.plan, version = r.version, "published definition names another version: skipped")
                }
                Err(e) => {
                    tracing::warn!(plan = %r.plan, version = r.version, error = %e, "published definition cannot be read by this build: skipped")
                }
            }
        }
        let n = published.len();
        let catalog = std::sync::Arc::new(PlanCatalog::overlaid(&self.files, published));
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if cur.0 < count {
            *cur = (count, catalog);
            tracing::info!(published = n, "plan catalogue loaded");
        }
        Ok(())
    }
}

/// Reloads the live catalogue every [`REFRESH_EVERY`] (the first time at once).
pub async fn refresh_loop(plans: std::sync::Arc<LivePlans>, pool: Pool) {
    loop {
        if let Err(e) = plans.refresh(&pool).await {
            tracing::warn!(error = %e, "plan catalogue refresh failed");
        }
        tokio::time::sleep(REFRESH_EVERY).await;
    }
}

/// Publishes plan files given as text (`POST /v1/plans/publish`): each `<plan>/v<N>.toml` is
/// validated as `accrue plans validate` does (a fallback may name a plan published or given
/// here), published all or nothing as [`publish`] does, and this instance's catalogue reloaded
/// at once (the others within [`REFRESH_EVERY`]).
pub async fn publish_files(
    ctx: &super::Ctx,
    files: &std::collections::BTreeMap<String, String>,
    actor: &str,
) -> Result<Vec<PublishResult>, ServiceError> {
    let mut versions = Vec::new();
    let mut problems = Vec::new();
    for (name, text) in files {
        let well_named = name.split('/').count() == 2
            && !name.contains("..")
            && !name.starts_with('/')
            && name.ends_with(".toml");
        if !well_named {
            problems.push(format!("{name}: name a file `<plan>/v<N>.toml`"));
            continue;
        }
        match crate::catalog::plans::parse_plan_file(std::path::Path::new(name), text, &ctx.meters)
        {
            Ok(v) => versions.push(v),
            Err(errs) => problems.extend(errs.iter().map(ToString::to_string)),
        }
    }
    let known = ctx.plans();
    for v in &versions {
        // With Stripe collecting, a currency Stripe cannot charge exactly is refused (as
        // `accrue plans publish` and `serve` refuse it).
        if ctx.payments.is_some() {
            if let Some(why) = crate::payments::unpresentable(v.currency) {
                problems.push(format!("{}/v{}.toml: {why}", v.plan, v.version));
            }
        }
        if let Some(fb) = &v.fallback {
            let given = versions.iter().any(|o| &o.plan == fb);
            if !given && known.latest_published(fb).is_none() {
                problems.push(format!(
                    "{}/v{}.toml: fallback: names plan `{fb}`, which is neither published nor given",
                    v.plan, v.version
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(ServiceError::invalid("invalid_plan", problems.join("; ")));
    }
    let catalog = PlanCatalog::from_versions(versions);
    let results = publish(&ctx.pool, &catalog, actor, ctx.clock.now()).await?;
    ctx.refresh_plans().await?;
    Ok(results)
}
