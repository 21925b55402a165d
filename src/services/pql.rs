//! Product-qualified leads: accounts are scored from their events, meters and firmographics as
//! they arrive (ingestion and account changes mark them; a scorer task picks them up every
//! ten seconds, and every account is rescored every ten minutes as windows slide), routed to a zone,
//! and every tier or zone change is an outbox event with its breakdown or reasons. The funnel
//! report and the attribution of conversions read the milestones kept beside the score.

use super::{outbox, Ctx, ServiceError};
use crate::domain::meter::Aggregation;
use crate::domain::plan::PlanRef;
use crate::domain::pql::{route, score, Inputs, RevOps, Rule, Tier};
use crate::store::pql::{self as pql_store, PqlRow};
use crate::store::usage::MeterSelection;
use crate::store::{self, StoreError};
use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// The RevOps configuration and the accounts waiting to be rescored.
pub struct PqlState {
    config: std::sync::RwLock<std::sync::Arc<RevOps>>,
    dirty: Mutex<HashSet<String>>,
}

impl PqlState {
    pub fn new(config: RevOps) -> Self {
        Self {
            config: std::sync::RwLock::new(std::sync::Arc::new(config)),
            dirty: Mutex::default(),
        }
    }

    pub fn config(&self) -> std::sync::Arc<RevOps> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the configuration (the one loaded at start).
    pub fn set_config(&self, config: RevOps) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(config);
    }

    /// Marks accounts whose signals may have moved.
    pub fn mark<'a>(&self, accounts: impl IntoIterator<Item = &'a str>) {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        for a in accounts {
            if !d.contains(a) {
                d.insert(a.to_owned());
            }
        }
    }

    fn take(&self) -> Vec<String> {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = d.drain().collect();
        v.sort_unstable();
        v
    }
}

/// Loads and checks `config/revops.toml` against the meter catalogue.
pub fn load_config(
    path: &std::path::Path,
    meters: &crate::catalog::meters::MeterCatalog,
) -> Result<RevOps, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let names = meters.all().iter().map(|m| m.code.clone()).collect();
    RevOps::parse(&text, &names).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

const CHUNK: usize = 500;

/// Rescores the accounts marked since the last round.
pub async fn score_dirty(ctx: &Ctx) -> Result<usize, ServiceError> {
    let accounts = ctx.pql.take();
    score_accounts(ctx, &accounts).await
}

/// Scores and routes `accounts`, writing rows and the events of every change.
pub async fn score_accounts(ctx: &Ctx, accounts: &[String]) -> Result<usize, ServiceError> {
    let mut changed = 0;
    for chunk in accounts.chunks(CHUNK) {
        changed += score_chunk(ctx, chunk).await?;
    }
    Ok(changed)
}

fn value_of(ctx: &Ctx, meter: &str, agg: &store::usage::RangeAggregate) -> Decimal {
    let aggregation = ctx
        .meters
        .get(meter)
        .map_or(Aggregation::Count, |m| m.aggregation);
    agg.value(aggregation)
}

async fn score_chunk(ctx: &Ctx, accounts: &[String]) -> Result<usize, ServiceError> {
    let cfg = &*ctx.pql.config();
    let now = ctx.clock.now();
    let until = now + Duration::hours(1);
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let firmo: HashMap<String, store::accounts::Account> =
        store::accounts::find_by_accounts(&mut conn, accounts)
            .await?
            .into_iter()
            .map(|a| (a.account.clone(), a))
            .collect();
    let accounts: Vec<String> = accounts
        .iter()
        .filter(|a| firmo.contains_key(*a))
        .cloned()
        .collect();
    if accounts.is_empty() {
        return Ok(0);
    }
    let mut inputs: HashMap<String, Inputs> = accounts
        .iter()
        .map(|a| {
            let f = &firmo[a];
            (
                a.clone(),
                Inputs {
                    employees: f.employees,
                    industry: f.industry.clone(),
                    country: f.country.clone(),
                    email: f.email.clone(),
                    crm_owner: f.crm_owner.clone(),
                    ..Inputs::default()
                },
            )
        })
        .collect();
    // Meters over each window.
    // Each read asks only for the meters its signals use (a window's, the quotas', the
    // activation's): the distinct-key and latest-reading sorts of the others cost as much.
    let selection = |only: Vec<String>| MeterSelection::new(ctx.meters.all(), Some(only));
    for w in cfg.windows() {
        let from = now - Duration::days(w.into());
        let ranges: Vec<_> = accounts.iter().map(|a| (a.clone(), from, until)).collect();
        let found = store::usage::find_by_accounts_and_ranges(
            &mut conn,
            &ranges,
            &selection(cfg.meters_over(w)),
        )
        .await?;
        for (account, meters) in found {
            if let Some(i) = inputs.get_mut(&account) {
                for (meter, st) in meters {
                    let v = value_of(ctx, &meter, &st);
                    i.meters.insert((meter, w), v);
                }
            }
        }
    }
    for s in &cfg.signals {
        if let Rule::ActiveDays { window_days, .. } = s.rule {
            let from = now - Duration::days(window_days.into());
            let days = pql_store::active_days(&mut conn, &accounts, from, until).await?;
            for (a, i) in inputs.iter_mut() {
                i.active_days
                    .insert(window_days, days.get(a).copied().unwrap_or(0));
            }
        }
    }
    // The plan: quotas over the current period, and whether it is free.
    let subs = store::subscriptions::find_by_accounts(&mut conn, &accounts).await?;
    let plans = ctx.plans();
    let mut periods = Vec::new();
    for s in &subs {
        let Some(plan) = plans.get(&PlanRef {
            plan: s.plan.clone(),
            version: s.plan_version as u32,
        }) else {
            continue;
        };
        if let Some(i) = inputs.get_mut(&s.account) {
            i.on_free_plan =
                plan.monthly_recurring(s.seats as u32).is_zero() && plan.charges.is_empty();
            periods.push((s.account.clone(), s.period_start, s.period_end));
        }
    }
    let quota_meters = cfg.quota_meters();
    let usage = store::usage::find_by_accounts_and_ranges(
        &mut conn,
        &periods,
        &selection(quota_meters.clone()),
    )
    .await?;
    for s in &subs {
        let Some(plan) = plans.get(&PlanRef {
            plan: s.plan.clone(),
            version: s.plan_version as u32,
        }) else {
            continue;
        };
        let Some(i) = inputs.get_mut(&s.account) else {
            continue;
        };
        for (meter, limit) in plan.limits.iter().filter(|(m, _)| quota_meters.contains(m)) {
            let used = usage
                .get(&s.account)
                .and_then(|m| m.get(meter))
                .map_or(Decimal::ZERO, |st| value_of(ctx, meter, st));
            i.quota.insert(meter.clone(), (used, limit.limit));
        }
    }
    // The activation milestone, over the account's whole history (events may be backfilled),
    // for the accounts that have not reached it yet: once reached it stays (`activated_at`
    // is kept below), so their history is not read again at every scoring.
    let activated = pql_store::activated(&mut conn, &accounts).await?;
    let since: Vec<_> = accounts
        .iter()
        .filter(|a| !activated.contains(*a))
        .map(|a| (a.clone(), firmo[a].created_at - Duration::days(3650), until))
        .collect();
    let lifetime = store::usage::find_by_accounts_and_ranges(
        &mut conn,
        &since,
        &selection(vec![cfg.activation.meter.clone()]),
    )
    .await?;
    // The previous rows are read, and the new ones written, under a per-account lock that
    // conversions take too: a conversion recorded meanwhile is never overwritten, and two
    // instances scoring one account emit its tier change once (the second sees the first's).
    let n = conn
        .transaction::<usize, StoreError, _>(async |c| {
            pql_store::lock_accounts(c, &accounts).await?;
        let previous: HashMap<String, PqlRow> = pql_store::find_by_accounts(c, &accounts)
            .await?
            .into_iter()
            .map(|r| (r.account.clone(), r))
            .collect();
        let mut rows = Vec::with_capacity(accounts.len());
        let mut events = Vec::new();
        for a in &accounts {
            let i = &inputs[a];
            let scored = score(cfg, i);
            let routing = route(cfg, i);
            let prev = previous
                .get(a)
                .cloned()
                .unwrap_or_else(|| PqlRow::unscored(a, now));
            let prev_tier = Tier::parse(&prev.tier).unwrap_or(Tier::None);
            let activated = lifetime
                .get(a)
                .and_then(|m| m.get(&cfg.activation.meter))
                .is_some_and(|st| value_of(ctx, &cfg.activation.meter, st) >= cfg.activation.min);
            let routed = scored.tier.is_pql()
                || routing.zone != crate::domain::pql::Zone::SelfServe
                || routing.owner.is_some();
            let converted = prev.converted_at.is_some();
            let best = match prev.best_tier.as_deref().and_then(Tier::parse) {
                Some(b) if converted || b >= scored.tier => Some(b),
                _ if converted => None,
                _ => Some(scored.tier),
            };
            let row = PqlRow {
                account: a.clone(),
                score: scored.score as i32,
                tier: scored.tier.as_str().to_owned(),
                breakdown: json!(scored.breakdown),
                zone: routing.zone.as_str().to_owned(),
                zone_reasons: json!(routing.reasons),
                owner: routing.owner.clone(),
                scored_at: now,
                tier_since: if scored.tier != prev_tier || !previous.contains_key(a) {
                    now
                } else {
                    prev.tier_since
                },
                activated_at: prev.activated_at.or(activated.then_some(now)),
                first_pql_at: prev.first_pql_at.or(scored.tier.is_pql().then_some(now)),
                best_tier: best.map(|b| b.as_str().to_owned()),
                routed_at: prev.routed_at.or((routed && !converted).then_some(now)),
                converted_at: prev.converted_at,
                attribution: prev.attribution.clone(),
            };
            if scored.tier != prev_tier {
                events.push(outbox::event(
                    a,
                    "pql.tier_changed",
                    json!({"account": a, "from": prev_tier, "to": scored.tier, "score": scored.score,
                           "breakdown": scored.breakdown, "at": crate::domain::ts::format(&now)}),
                    now,
                ));
            }
            if row.zone != prev.zone || row.owner != prev.owner {
                events.push(outbox::event(
                    a,
                    "routing.zone_changed",
                    json!({"account": a, "from": prev.zone, "to": routing.zone, "owner": routing.owner,
                           "reasons": routing.reasons, "at": crate::domain::ts::format(&now)}),
                    now,
                ));
            }
            rows.push(row);
        }
        pql_store::upsert_many(c, &rows).await?;
            store::outbox::insert_events(c, &events).await?;
            Ok(events.len())
        })
        .await?;
    Ok(n)
}

/// Records conversions to paid (`new` movements: account, time, whether the plan is
/// self-serve) and how each is attributed: sales-led when the plan is sold by sales or the
/// account has a CRM owner, PLG-assisted when the account was routed to sales before, self-serve
/// otherwise. Runs in the movements' transaction, in a few statements whatever the count; a
/// transaction holding the invoice counter has taken these accounts' scorer locks before it
/// (`revenue::apply` says why).
pub async fn on_conversions(
    c: &mut AsyncPgConnection,
    conversions: &[(String, DateTime<Utc>, bool)],
) -> Result<(), StoreError> {
    if conversions.is_empty() {
        return Ok(());
    }
    let accounts: Vec<String> = conversions.iter().map(|x| x.0.clone()).collect();
    pql_store::lock_accounts(c, &accounts).await?;
    let mut rows: HashMap<String, PqlRow> = pql_store::find_by_accounts(c, &accounts)
        .await?
        .into_iter()
        .map(|r| (r.account.clone(), r))
        .collect();
    let owners: HashSet<String> = store::accounts::with_crm_owner(c, &accounts).await?;
    let mut changed = Vec::new();
    for (account, at, self_serve_plan) in conversions {
        let row = rows
            .entry(account.clone())
            .or_insert_with(|| PqlRow::unscored(account, *at));
        if row.converted_at.is_some() {
            continue;
        }
        let attribution = if !self_serve_plan || owners.contains(account) {
            "sales_led"
        } else if row.routed_at.is_some_and(|r| r <= *at) {
            "plg_assisted"
        } else {
            "self_serve"
        };
        row.converted_at = Some(*at);
        row.attribution = Some(attribution.to_owned());
        changed.push(row.clone());
    }
    // A bulk write (a period close's batch converts up to 500 accounts): the foreign-key
    // check of each new row may reuse a generic plan (half the statement's time at 500 rows).
    store::generic_plans(c).await?;
    pql_store::upsert_many(c, &changed).await?;
    store::custom_plans(c).await
}

#[derive(Debug, Clone, Serialize)]
pub struct PqlView {
    #[serde(flatten)]
    pub row: PqlRow,
}

pub async fn account_view(ctx: &Ctx, account: &str) -> Result<PqlRow, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    if let Some(r) = pql_store::find_by_account(&mut conn, account).await? {
        return Ok(r);
    }
    drop(conn);
    // Never scored yet: score it now.
    score_accounts(ctx, &[account.to_owned()]).await?;
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    pql_store::find_by_account(&mut conn, account)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("account `{account}` not found")))
}

/// The sales queue of `tier`, newest first: a page after the cursor `after` (see [`cursor`]).
pub async fn queue(
    ctx: &Ctx,
    tier: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<PqlRow>, ServiceError> {
    if Tier::parse(tier).is_none() {
        return Err(ServiceError::invalid_field(
            "invalid_tier",
            "tier",
            "tier must be hot, warm, watching or none",
        ));
    }
    let after = match after {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            ServiceError::invalid(
                "invalid_query",
                "after: give the `next_cursor` of the previous page",
            )
        })?),
    };
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(pql_store::queue(&mut conn, tier, after, limit).await?)
}

/// A queue row's cursor: when it entered the tier (microseconds since 1970) and its account,
/// as `<micros>:<account>`.
pub fn cursor(row: &PqlRow) -> String {
    format!("{}:{}", row.tier_since.timestamp_micros(), row.account)
}

fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, &str)> {
    let (micros, account) = c.split_once(':')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        account,
    ))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stage {
    pub stage: &'static str,
    pub accounts: usize,
    /// Of the previous stage (None for sign-ups or an empty previous stage).
    pub rate: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TierConversion {
    pub tier: &'static str,
    pub pqls: usize,
    /// Of those PQLs, the accounts that paid.
    pub paid_accounts: usize,
    pub rate: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Funnel {
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub to: DateTime<Utc>,
    pub stages: Vec<Stage>,
    pub pql_to_paid_by_tier: Vec<TierConversion>,
    /// Conversions of the cohort by attribution.
    pub attribution: BTreeMap<String, usize>,
}

fn rate(n: usize, of: usize) -> Option<String> {
    (of > 0).then(|| {
        (Decimal::from(n as u64) / Decimal::from(of as u64))
            .round_dp(4)
            .normalize()
            .to_string()
    })
}

/// Sign-up → activated → PQL → paid → expanded for the accounts that signed up in [from, to),
/// each milestone reached by `to`.
pub async fn funnel(
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Funnel, ServiceError> {
    if from >= to {
        return Err(ServiceError::invalid_field(
            "invalid_window",
            "from",
            "`from` must be before `to`",
        ));
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let rows = pql_store::funnel(&mut conn, from, to).await?;
    let by = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t < to);
    let signups = rows.len();
    let activated = rows.iter().filter(|r| by(r.activated_at)).count();
    let pql = rows.iter().filter(|r| by(r.first_pql_at)).count();
    let paid = rows.iter().filter(|r| by(r.converted_at)).count();
    let expanded = rows.iter().filter(|r| by(r.expanded_at)).count();
    let stages = vec![
        Stage {
            stage: "signed_up",
            accounts: signups,
            rate: None,
        },
        Stage {
            stage: "activated",
            accounts: activated,
            rate: rate(activated, signups),
        },
        Stage {
            stage: "pql",
            accounts: pql,
            rate: rate(pql, activated),
        },
        Stage {
            stage: "paid",
            accounts: paid,
            rate: rate(paid, pql),
        },
        Stage {
            stage: "expanded",
            accounts: expanded,
            rate: rate(expanded, paid),
        },
    ];
    let pql_to_paid_by_tier = ["hot", "warm"]
        .into_iter()
        .map(|tier| {
            let pqls: Vec<_> = rows
                .iter()
                .filter(|r| by(r.first_pql_at) && r.best_tier.as_deref() == Some(tier))
                .collect();
            let converted = pqls.iter().filter(|r| by(r.converted_at)).count();
            TierConversion {
                tier,
                pqls: pqls.len(),
                paid_accounts: converted,
                rate: rate(converted, pqls.len()),
            }
        })
        .collect();
    let mut attribution = BTreeMap::new();
    for r in rows.iter().filter(|r| by(r.converted_at)) {
        *attribution
            .entry(r.attribution.clone().unwrap_or_else(|| "self_serve".into()))
            .or_insert(0) += 1;
    }
    Ok(Funnel {
        from,
        to,
        stages,
        pql_to_paid_by_tier,
        attribution,
    })
}

/// How often marked accounts are rescored: score and zone changes must be out within a minute
/// of their cause (DESIGN), and an account busy with events is marked again at once, so a
/// shorter round rescores the same busy accounts over and over (at one second, a 1,000-account
/// ingestion load spent a tenth of the server's CPU rescoring them).
const ROUND: std::time::Duration = std::time::Duration::from_secs(10);
/// Rounds between rescoring every account (ten minutes), as windows slide.
const ROUNDS_PER_FULL: u64 = 60;

/// Rescores marked accounts every [`ROUND`] and every account every ten minutes.
pub async fn run_forever(ctx: Ctx) {
    let mut interval = tokio::time::interval(ROUND);
    let mut rounds: u64 = 0;
    loop {
        interval.tick().await;
        rounds += 1;
        let result = if rounds % ROUNDS_PER_FULL == 0 {
            match ctx.pool.get().await {
                Ok(mut conn) => match pql_store::all_accounts(&mut conn).await {
                    Ok(all) => {
                        drop(conn);
                        score_accounts(&ctx, &all).await
                    }
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(StoreError::from(e).into()),
            }
        } else {
            score_dirty(&ctx).await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "PQL scoring failed");
        }
    }
}
