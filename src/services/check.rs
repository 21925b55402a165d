//! The limit check: "may this account do this?", answered from memory.
//!
//! Each instance keeps, per account it has been asked about, the subscription snapshot (plan
//! version, status, current period) and the exact aggregate of every meter over the current
//! period. The ingest lanes add each newly committed event to it before they answer the
//! request that sent it, so on one instance a check sees every acknowledged event at once.
//! Subscription changes drop the entry. Entries are reloaded from the database after
//! `staleness` (default 1 s): that is the bound on how stale a check can be about events
//! ingested or changes made through *other* instances.
//!
//! A reload reads the database while holding the account's lane gate, which the lane also holds
//! from its commit until it has updated the cache; so an event is never counted twice nor
//! missed on the instance that ingested it.

use super::{Ctx, ServiceError};
use crate::domain::aggregate::AggregateState;
use crate::domain::meter::{Aggregation, Reading};
use crate::domain::period::{period_containing, Period};
use crate::domain::plan::{LimitMode, PlanRef, PlanVersion};
use crate::store::{self, subscriptions as subs, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What the cache holds for one account.
pub struct Entry {
    loaded: Instant,
    snapshot: Option<Snapshot>,
    usage: Mutex<HashMap<String, AggregateState>>,
}

#[derive(Clone)]
struct Snapshot {
    plan: Arc<PlanVersion>,
    status: String,
    period: Period,
    seats: u32,
}

pub struct CheckCache {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    staleness: Duration,
}

impl CheckCache {
    pub fn new(staleness: Duration) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            staleness,
        }
    }

    /// Forgets an account (after a subscription change): the next check reloads it.
    pub fn invalidate(&self, account: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
    }

    fn fresh(&self, account: &str) -> Option<Arc<Entry>> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.get(account)
            .filter(|e| e.loaded.elapsed() < self.staleness)
            .cloned()
    }

    /// Adds a committed event's readings to a cached account (called by the ingest lane).
    pub fn apply(
        &self,
        account: &str,
        at: DateTime<Utc>,
        event_id: &str,
        readings: &[(String, Reading)],
    ) {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get(account) else {
            return;
        };
        let Some(s) = &entry.snapshot else {
            return;
        };
        if !s.period.contains(at) {
            return;
        }
        let mut usage = entry.usage.lock().unwrap_or_else(|e| e.into_inner());
        for (meter, reading) in readings {
            usage
                .entry(meter.clone())
                .or_default()
                .add(at, event_id, reading);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub meter: Option<String>,
    pub feature: Option<String>,
    /// Decimal string or number; defaults to 1.
    pub quantity: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    WithinLimit,
    SoftLimitExceeded,
    LimitExceeded,
    FeatureNotInPlan,
    Suspended,
    NoSubscription,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckAnswer {
    pub allowed: bool,
    pub reason: Reason,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub used: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub limit: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub remaining: Option<Decimal>,
    pub upgrade_plan: Option<String>,
}

/// What is being asked.
enum Ask {
    Meter(String, Decimal),
    Feature(String),
}

fn parse_ask(ctx: &Ctx, req: CheckRequest) -> Result<Ask, ServiceError> {
    match (req.meter, req.feature) {
        (Some(m), None) => {
            if ctx.meters.get(&m).is_none() {
                return Err(ServiceError::invalid(
                    "unknown_meter",
                    format!("unknown meter `{m}`"),
                ));
            }
            let q = match req.quantity {
                None => Decimal::ONE,
                Some(v) => crate::domain::meter::parse_number(&v).map_err(|why| {
                    ServiceError::invalid("invalid_quantity", format!("quantity {why}"))
                })?,
            };
            if q.is_sign_negative() {
                return Err(ServiceError::invalid(
                    "invalid_quantity",
                    "quantity must not be negative",
                ));
            }
            Ok(Ask::Meter(m, q))
        }
        (None, Some(f)) if !f.trim().is_empty() => Ok(Ask::Feature(f)),
        _ => Err(ServiceError::invalid(
            "invalid_check",
            "give exactly one of `meter` (with an optional `quantity`) or `feature`",
        )),
    }
}

/// Answers a check, loading the account into the cache when needed.
pub async fn check(
    ctx: &Ctx,
    account: &str,
    req: CheckRequest,
) -> Result<CheckAnswer, ServiceError> {
    let ask = parse_ask(ctx, req)?;
    let entry = match ctx.checks.fresh(account) {
        Some(e) => e,
        None => load(ctx, account).await?,
    };
    Ok(answer(ctx, &entry, &ask))
}

async fn load(ctx: &Ctx, account: &str) -> Result<Arc<Entry>, ServiceError> {
    let now = ctx.clock.now();
    let gate = ctx.ingest.gate(account);
    let _held = gate.lock().await;
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let row = subs::find_by_account(&mut conn, account).await?;
    let snapshot = match row {
        Some(r) => ctx
            .plans
            .get(&PlanRef {
                plan: r.plan.clone(),
                version: r.plan_version as u32,
            })
            .map(|p| {
                // A period that ended but was not rolled yet: the check uses the current one.
                let period = if now >= r.period_end && r.status != "trialing" {
                    period_containing(r.anchor, p.interval.months(), now)
                } else {
                    Period {
                        start: r.period_start,
                        end: r.period_end,
                    }
                };
                Snapshot {
                    plan: Arc::new(p.clone()),
                    status: r.status.clone(),
                    period,
                    seats: r.seats as u32,
                }
            }),
        None => None,
    };
    let mut usage = HashMap::new();
    if let Some(s) = &snapshot {
        let found = store::usage::find_by_account_and_range(
            &mut conn,
            account,
            s.period.start,
            s.period.end,
        )
        .await?;
        let mut keys = store::usage::unique_keys_by_account_and_range(
            &mut conn,
            account,
            s.period.start,
            s.period.end,
        )
        .await?;
        for (meter, agg) in found {
            let mut state = agg.state;
            state.keys = keys.remove(&meter).unwrap_or_default();
            usage.insert(meter, state);
        }
    }
    let entry = Arc::new(Entry {
        loaded: Instant::now(),
        snapshot,
        usage: Mutex::new(usage),
    });
    ctx.checks
        .entries
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(account.to_owned(), entry.clone());
    Ok(entry)
}

fn answer(ctx: &Ctx, entry: &Entry, ask: &Ask) -> CheckAnswer {
    let deny = |reason| CheckAnswer {
        allowed: false,
        reason,
        used: None,
        limit: None,
        remaining: None,
        upgrade_plan: None,
    };
    let Some(s) = &entry.snapshot else {
        return deny(Reason::NoSubscription);
    };
    match s.status.as_str() {
        "suspended" => return deny(Reason::Suspended),
        "canceled" => return deny(Reason::NoSubscription),
        _ => {}
    }
    match ask {
        Ask::Feature(f) => {
            if s.plan.features.get(f).copied().unwrap_or(false) {
                CheckAnswer {
                    allowed: true,
                    reason: Reason::WithinLimit,
                    used: None,
                    limit: None,
                    remaining: None,
                    upgrade_plan: None,
                }
            } else {
                let upgrade =
                    cheapest_upgrade(ctx, s, |p| p.features.get(f).copied().unwrap_or(false));
                CheckAnswer {
                    upgrade_plan: upgrade,
                    ..deny(Reason::FeatureNotInPlan)
                }
            }
        }
        Ask::Meter(m, q) => {
            let used = {
                let usage = entry.usage.lock().unwrap_or_else(|e| e.into_inner());
                let agg = ctx
                    .meters
                    .get(m)
                    .map_or(Aggregation::Count, |x| x.aggregation);
                usage.get(m).map_or(Decimal::ZERO, |st| st.value(agg))
            };
            let Some(limit) = s.plan.limits.get(m) else {
                return CheckAnswer {
                    allowed: true,
                    reason: Reason::WithinLimit,
                    used: Some(used),
                    limit: None,
                    remaining: None,
                    upgrade_plan: None,
                };
            };
            let remaining = (limit.limit - used).max(Decimal::ZERO);
            let fits = used + q <= limit.limit;
            let (allowed, reason) = match (fits, limit.mode) {
                (true, _) => (true, Reason::WithinLimit),
                (false, LimitMode::Soft) => (true, Reason::SoftLimitExceeded),
                (false, LimitMode::Hard) => (false, Reason::LimitExceeded),
            };
            let upgrade_plan = if fits {
                None
            } else {
                let need = used + q;
                cheapest_upgrade(ctx, s, |p| p.limits.get(m).is_none_or(|l| need <= l.limit))
            };
            CheckAnswer {
                allowed,
                reason,
                used: Some(used),
                limit: Some(limit.limit),
                remaining: Some(remaining),
                upgrade_plan,
            }
        }
    }
}

/// The cheapest self-serve plan that satisfies `allows`: see
/// [`super::subscriptions::cheapest_self_serve`].
fn cheapest_upgrade(
    ctx: &Ctx,
    s: &Snapshot,
    allows: impl Fn(&PlanVersion) -> bool,
) -> Option<String> {
    super::subscriptions::cheapest_self_serve(ctx, &s.plan, s.seats, allows).map(|p| p.plan)
}
