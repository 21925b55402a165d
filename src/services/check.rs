//! The limit check: "may this account do this?", answered from memory.
//!
//! Each instance keeps, per account it has been asked about, the subscription snapshot (plan
//! version, status, current period) and the exact aggregate of every meter over the current
//! period. The ingest lanes add each newly committed event to it before they answer the
//! request that sent it, so on one instance a check sees every acknowledged event at once.
//! Subscription changes drop the entry; checks that then find an account uncached at once
//! read it once between them ([`load`]). A background refresher (a serving instance's, see
//! [`super::Ctx::refreshing`]) reloads every cached account in bulk once per `staleness` (default 1 s), answering from the entries meanwhile: the bound on
//! how stale a check can be about events ingested or changes made through *other* instances is
//! `staleness` plus one reload (a few milliseconds).
//!
//! A reload must not race a lane's commit of the same account (it could count an event twice:
//! once from the database, once from the lane). Lanes announce the accounts they are writing
//! from before their commit until their events are applied; a reload registers itself before
//! reading, and installs its entry only if no write of that account overlapped its reads (it
//! retries otherwise; if writes keep overlapping it answers once from its read and installs
//! nothing).
//!
//! Unique-count meters need their distinct keys, not only a count, so that a key ingested here
//! is counted once. An entry keeps its keys (as 16-byte digests, [`usage`]), and a reload of an account whose period has not
//! changed reads from the database only the keys written since the previous read (less a grace
//! for transactions that wrote before that read and committed after it), so an account with
//! millions of distinct users costs the database its new keys per round, not all of them (the
//! kept digests are still copied into the new entry in memory).
//!
//! An entry is small (under 1 KB for an account with a few meters): it shares its plan
//! version with the catalogue and keeps per meter only what the meter's aggregation reads.

mod usage;

use super::{Ctx, ServiceError};
use crate::domain::meter::{Aggregation, Reading};
use crate::domain::period::{period_containing, Period};
use crate::domain::plan::{LimitMode, PlanRef, PlanVersion};
use crate::store::{self, subscriptions as subs, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use usage::Usage;

/// What the cache holds for one account.
pub struct Entry {
    /// Checked since the last refresh round (idle entries are dropped).
    used: AtomicBool,
    snapshot: Option<Snapshot>,
    usage: Mutex<Usage>,
    /// (meter, threshold) alerts this entry already reported (the database de-duplicates
    /// across entries and instances).
    alerted: Mutex<std::collections::HashSet<(String, i16)>>,
    /// Database time from which the next reload of the same period reads distinct keys.
    keys_since: Option<DateTime<Utc>>,
    /// Whether a check evaluated this entry's usage alerts. Its usage changes only by
    /// [`CheckCache::apply`], after which the lane evaluates them, so a check evaluates them
    /// once per entry (when it is loaded), not on every answer.
    alerts_evaluated: AtomicBool,
}

/// How long before a read an ingest transaction may have written a distinct key and still
/// commit after the read (the same grace as an invoice's `usage_mark`).
const KEY_WRITE_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// A subscription's status as far as the check is concerned: suspended and canceled refuse,
/// every other status (active, trialing, past due within its grace, on the fallback plan)
/// answers from the plan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    Answering,
    Suspended,
    Canceled,
}

impl Standing {
    fn of(status: &str) -> Self {
        match status {
            "suspended" => Standing::Suspended,
            "canceled" => Standing::Canceled,
            _ => Standing::Answering,
        }
    }
}

#[derive(Clone)]
struct Snapshot {
    plan: Arc<PlanVersion>,
    /// What the check needs of the subscription's status (the rest answer alike).
    standing: Standing,
    period: Period,
    seats: u32,
}

pub struct CheckCache {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    /// Aggregations of the meters (usage alerts compare aggregate values).
    meters: Arc<crate::catalog::meters::MeterCatalog>,
    staleness: Duration,
    sync: Mutex<WriteTracking>,
    /// Distinct keys read from the database by reloads, in total (their cost).
    keys_read: AtomicU64,
    /// Accounts a check is loading, each with its gate: the checks that miss the same account
    /// at once take turns there, and the first loads it for all of them ([`load`]).
    loading: Mutex<HashMap<String, Gate>>,
    /// Accounts checks have read from the database, in total.
    loads: AtomicU64,
    /// When the last refresh round ended (the cache's creation before the first).
    refreshed: Mutex<std::time::Instant>,
}

/// Which accounts lanes are writing, and how many writes touched accounts being reloaded.
#[derive(Default)]
struct WriteTracking {
    /// account → lane groups between "begin" and "end".
    writing: HashMap<String, u32>,
    /// account → (reloads in progress, writes that began or ended meanwhile).
    reloading: HashMap<String, (u32, u64)>,
}

impl CheckCache {
    pub fn new(staleness: Duration, meters: Arc<crate::catalog::meters::MeterCatalog>) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            meters,
            staleness,
            sync: Mutex::new(WriteTracking::default()),
            keys_read: AtomicU64::new(0),
            loading: Mutex::default(),
            loads: AtomicU64::new(0),
            refreshed: Mutex::new(std::time::Instant::now()),
        }
    }

    /// Seconds since the last refresh round ended: how stale entries can be about other
    /// instances' writes.
    pub fn staleness_seconds(&self) -> f64 {
        self.refreshed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            .as_secs_f64()
    }

    /// How many distinct keys reloads have read from the database since the start.
    pub fn keys_read(&self) -> u64 {
        self.keys_read.load(Ordering::Relaxed)
    }

    /// How many reads of one account checks have made since the start (by a check that found
    /// its account uncached, retries included; refresh rounds are not counted).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The account's load gate, kept in the map until the returned guard drops.
    fn load_gate(&self, account: &str) -> LoadGate<'_> {
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account.to_owned())
            .or_default()
            .clone();
        LoadGate {
            cache: self,
            account: account.to_owned(),
            gate,
        }
    }

    /// A lane is about to commit events of these accounts.
    pub fn begin_writes<S: std::hash::BuildHasher>(
        &self,
        accounts: &std::collections::HashSet<&str, S>,
    ) {
        let mut t = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        for a in accounts {
            *t.writing.entry((*a).to_owned()).or_default() += 1;
            if let Some(r) = t.reloading.get_mut(*a) {
                r.1 += 1;
            }
        }
    }

    /// The lane has committed and applied (or failed) its events of these accounts.
    pub fn end_writes<S: std::hash::BuildHasher>(
        &self,
        accounts: &std::collections::HashSet<&str, S>,
    ) {
        let mut t = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        for a in accounts {
            if let Some(n) = t.writing.get_mut(*a) {
                *n -= 1;
                if *n == 0 {
                    t.writing.remove(*a);
                }
            }
            if let Some(r) = t.reloading.get_mut(*a) {
                r.1 += 1;
            }
        }
    }

    /// Marks `account` as being changed (subscription writes) until the guard drops, when its
    /// entry is dropped too: a reload overlapping the change cannot install a stale snapshot.
    pub fn write_guard<'a>(&'a self, account: &str) -> WriteGuard<'a> {
        let mut one = std::collections::HashSet::new();
        one.insert(account);
        self.begin_writes(&one);
        WriteGuard {
            cache: self,
            account: account.to_owned(),
        }
    }

    /// Registers a reload; returns the account's write count to compare with later.
    fn begin_reload(&self, account: &str) -> u64 {
        let mut t = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        let r = t.reloading.entry(account.to_owned()).or_default();
        r.0 += 1;
        r.1
    }

    /// Ends a reload that read nothing.
    fn abandon_reload(&self, account: &str, _mark: u64) {
        let mut t = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = t.reloading.get_mut(account) {
            r.0 -= 1;
            if r.0 == 0 {
                t.reloading.remove(account);
            }
        }
    }

    /// Ends a reload: installs `entry` when no write of the account overlapped the reload.
    fn end_reload(&self, account: &str, mark: u64, entry: &Arc<Entry>) -> bool {
        let mut t = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        let clean = !t.writing.contains_key(account)
            && t.reloading.get(account).is_some_and(|r| r.1 == mark);
        if let Some(r) = t.reloading.get_mut(account) {
            r.0 -= 1;
            if r.0 == 0 {
                t.reloading.remove(account);
            }
        }
        if clean {
            // Installed under the tracking lock, so no lane can begin in between.
            self.entries
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(account.to_owned(), entry.clone());
        }
        clean
    }

    /// Usage thresholds (50, 80, 100 % of a limit) a cached account has reached and this entry
    /// has not reported yet, with the period they belong to.
    pub fn new_alerts(&self, account: &str) -> Option<(Period, Vec<Alert>)> {
        self.alerts_of(&*self.lookup(account)?)
    }

    /// [`Self::new_alerts`] of an entry in hand.
    fn alerts_of(&self, entry: &Entry) -> Option<(Period, Vec<Alert>)> {
        let s = entry.snapshot.as_ref()?;
        if s.plan.limits.is_empty() {
            return None;
        }
        let usage = entry.usage.lock().unwrap_or_else(|e| e.into_inner());
        let mut alerted = entry.alerted.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (meter, limit) in &s.plan.limits {
            if limit.limit <= Decimal::ZERO {
                continue;
            }
            let used = usage.value(meter);
            for threshold in [50i16, 80, 100] {
                if used * Decimal::from(100) >= limit.limit * Decimal::from(threshold)
                    && alerted.insert((meter.clone(), threshold))
                {
                    out.push(Alert {
                        meter: meter.clone(),
                        threshold,
                        used,
                        limit: limit.limit,
                    });
                }
            }
        }
        (!out.is_empty()).then_some((s.period, out))
    }

    /// Marks a refused request (a limit hit) of a cached account; Some the first time per entry.
    fn hit_alert(
        &self,
        entry: &Entry,
        meter: &str,
        used: Decimal,
        limit: Decimal,
    ) -> Option<(Period, Vec<Alert>)> {
        let s = entry.snapshot.as_ref()?;
        let mut alerted = entry.alerted.lock().unwrap_or_else(|e| e.into_inner());
        alerted.insert((meter.to_owned(), 0)).then(|| {
            (
                s.period,
                vec![Alert {
                    meter: meter.to_owned(),
                    threshold: 0,
                    used,
                    limit,
                }],
            )
        })
    }

    /// Forgets an account (after a subscription change): the next check reloads it.
    pub fn invalidate(&self, account: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
    }

    fn lookup(&self, account: &str) -> Option<Arc<Entry>> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.get(account).cloned()
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
            usage.add(meter, self.aggregation(meter), at, event_id, reading);
        }
    }

    /// A meter's aggregation (count for a meter the catalogue no longer has).
    fn aggregation(&self, meter: &str) -> Aggregation {
        self.meters
            .get(meter)
            .map_or(Aggregation::Count, |m| m.aggregation)
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A usage alert: `threshold` percent of a limit reached (50, 80, 100), or 0 for a request
/// the limit refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub meter: String,
    pub threshold: i16,
    pub used: Decimal,
    pub limit: Decimal,
}

/// Records alerts (once per account, meter, period and threshold) with their outbox events.
pub async fn record_alerts(
    pool: &store::Pool,
    account: &str,
    period: Period,
    alerts: &[Alert],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    use diesel_async::AsyncConnection;
    let mut conn = pool.get().await?;
    conn.transaction::<usize, StoreError, _>(async |c| {
        let keys: Vec<(String, i16)> = alerts
            .iter()
            .map(|a| (a.meter.clone(), a.threshold))
            .collect();
        let fresh = store::outbox::record_alerts(c, account, period.start, &keys, now).await?;
        let events: Vec<_> = alerts
            .iter()
            .filter(|a| fresh.contains(&(a.meter.clone(), a.threshold)))
            .map(|a| {
                let (kind, data) = if a.threshold == 0 {
                    (
                        "limit.hit",
                        serde_json::json!({"account": account, "meter": a.meter,
                            "used": a.used.normalize().to_string(), "limit": a.limit.normalize().to_string(),
                            "period": {"start": crate::domain::ts::format(&period.start), "end": crate::domain::ts::format(&period.end)}}),
                    )
                } else {
                    (
                        "usage.threshold",
                        serde_json::json!({"account": account, "meter": a.meter,
                            "threshold_percent": a.threshold,
                            "used": a.used.normalize().to_string(), "limit": a.limit.normalize().to_string(),
                            "period": {"start": crate::domain::ts::format(&period.start), "end": crate::domain::ts::format(&period.end)}}),
                    )
                };
                super::outbox::event(account, kind, data, now)
            })
            .collect();
        store::outbox::insert_events(c, &events).await?;
        Ok(events.len())
    })
    .await
}

/// Writes alerts in the background (a check or an ingest never waits for them).
pub fn spawn_alerts(
    pool: store::Pool,
    account: String,
    period: Period,
    alerts: Vec<Alert>,
    now: DateTime<Utc>,
) {
    tokio::spawn(async move {
        if let Err(e) = record_alerts(&pool, &account, period, &alerts, now).await {
            tracing::warn!(account, error = %e, "usage alerts not recorded");
        }
    });
}

/// See [`CheckCache::write_guard`].
pub struct WriteGuard<'a> {
    cache: &'a CheckCache,
    account: String,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.cache.invalidate(&self.account);
        let mut one = std::collections::HashSet::new();
        one.insert(self.account.as_str());
        self.cache.end_writes(&one);
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub meter: Option<String>,
    pub feature: Option<String>,
    /// Decimal string or number; defaults to 1.
    pub quantity: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    WithinLimit,
    SoftLimitExceeded,
    LimitExceeded,
    FeatureNotInPlan,
    Suspended,
    NoSubscription,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
                return Err(ServiceError::invalid_field(
                    "unknown_meter",
                    "meter",
                    format!("unknown meter `{m}`"),
                ));
            }
            let q = match req.quantity {
                None => Decimal::ONE,
                Some(v) => crate::domain::meter::parse_number(&v).map_err(|why| {
                    ServiceError::invalid_field(
                        "invalid_quantity",
                        "quantity",
                        format!("quantity {why}"),
                    )
                })?,
            };
            if q.is_sign_negative() {
                return Err(ServiceError::invalid_field(
                    "invalid_quantity",
                    "quantity",
                    "quantity must not be negative",
                ));
            }
            Ok(Ask::Meter(m, q))
        }
        (None, Some(f)) if !f.trim().is_empty() => {
            if req.quantity.is_some() {
                return Err(ServiceError::invalid(
                    "invalid_check",
                    "`quantity` goes with `meter`; a feature is on or off",
                ));
            }
            // A misspelt feature would otherwise be a silent `feature_not_in_plan`.
            if !ctx.plans().all().any(|p| p.features.contains_key(&f)) {
                return Err(ServiceError::invalid_field(
                    "unknown_feature",
                    "feature",
                    format!("unknown feature `{f}`: no plan in the catalogue has it"),
                ));
            }
            Ok(Ask::Feature(f))
        }
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
    let cached = ctx.checks.lookup(account);
    ctx.metrics.check_lookup(cached.is_some());
    let entry = match cached {
        Some(e) => e,
        None => load(ctx, account).await?,
    };
    entry.used.store(true, Ordering::Relaxed);
    let a = answer(ctx, &entry, &ask);
    // The clock is read only when an alert is sent (rarely: most checks send none).
    if !entry.alerts_evaluated.swap(true, Ordering::Relaxed) {
        if let Some((period, alerts)) = ctx.checks.alerts_of(&entry) {
            let now = ctx.clock.now();
            spawn_alerts(ctx.pool.clone(), account.to_owned(), period, alerts, now);
        }
    }
    if let (Reason::LimitExceeded, Ask::Meter(m, _), Some(used), Some(limit)) =
        (a.reason, &ask, a.used, a.limit)
    {
        if let Some((period, alerts)) = ctx.checks.hit_alert(&entry, m, used, limit) {
            let now = ctx.clock.now();
            spawn_alerts(ctx.pool.clone(), account.to_owned(), period, alerts, now);
        }
    }
    Ok(a)
}

/// Accounts refreshed per round trip by the refresher.
const REFRESH_CHUNK: usize = 500;

/// Keeps every cached account fresh: every `staleness`, reloads all of them in bulk (a few
/// queries per 500 accounts), and forgets accounts not checked since the previous round.
/// The bound on a check's staleness about other instances' writes is one round plus its
/// queries.
pub async fn refresh_loop(ctx: Ctx) {
    loop {
        tokio::time::sleep(ctx.checks.staleness).await;
        if let Err(e) = refresh_all(&ctx).await {
            tracing::warn!(error = %e, "check cache refresh failed");
        }
    }
}

/// One refresh round (public so tests and benchmarks can drive it).
pub async fn refresh_all(ctx: &Ctx) -> Result<(), ServiceError> {
    let accounts: Vec<String> = {
        let mut map = ctx
            .checks
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Idle accounts leave the cache; the next check loads them again.
        map.retain(|_, e| e.used.swap(false, Ordering::Relaxed));
        map.keys().cloned().collect()
    };
    for chunk in accounts.chunks(REFRESH_CHUNK) {
        let marks: Vec<u64> = chunk.iter().map(|a| ctx.checks.begin_reload(a)).collect();
        let read = read_entries(ctx, chunk).await;
        let mut entries = match read {
            Ok(e) => e,
            Err(e) => {
                for (a, m) in chunk.iter().zip(&marks) {
                    ctx.checks.abandon_reload(a, *m);
                }
                return Err(e);
            }
        };
        for (a, m) in chunk.iter().zip(marks) {
            let entry = Arc::new(entries.remove(a).unwrap_or_else(empty_entry));
            // Kept in use: a refreshed entry counts as used until the next round.
            entry.used.store(true, Ordering::Relaxed);
            ctx.checks.end_reload(a, m, &entry);
        }
    }
    *ctx.checks
        .refreshed
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    Ok(())
}

fn empty_entry() -> Entry {
    Entry {
        used: AtomicBool::new(false),
        snapshot: None,
        usage: Mutex::default(),
        alerted: Mutex::default(),
        keys_since: None,
        alerts_evaluated: AtomicBool::new(false),
    }
}

/// Reads several accounts' snapshots and current-period usage in a few queries.
async fn read_entries(
    ctx: &Ctx,
    accounts: &[String],
) -> Result<HashMap<String, Entry>, ServiceError> {
    let now = ctx.clock.now();
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let rows = subs::find_by_accounts(&mut conn, accounts).await?;
    let clocked = ctx.clock_times(&mut conn, accounts).await?;
    let mut snapshots = HashMap::new();
    for r in rows {
        let now = clocked.get(&r.account).copied().unwrap_or(now);
        if let Some(s) = snapshot_of(ctx, &r, now) {
            snapshots.insert(r.account.clone(), s);
        }
    }
    let ranges: Vec<_> = snapshots
        .iter()
        .map(|(a, s)| (a.clone(), s.period.start, s.period.end))
        .collect();
    // Keys are read from this time on next round (taken before the keys are read).
    let read_at = store::usage::database_now(&mut conn).await?;
    let every_meter = store::usage::MeterSelection::new(ctx.meters.all(), None);
    let usage =
        store::usage::rollups_by_accounts_and_ranges(&mut conn, &ranges, &every_meter).await?;
    // An entry of the same period keeps its keys and reads only those written since.
    let mut kept: HashMap<String, Vec<(String, usage::Digests)>> = HashMap::new();
    let mut key_ranges = Vec::with_capacity(snapshots.len());
    for (a, s) in &snapshots {
        let previous = ctx.checks.lookup(a).filter(|e| {
            e.snapshot
                .as_ref()
                .is_some_and(|p| p.period == s.period && e.keys_since.is_some())
        });
        let since = previous.as_ref().and_then(|e| e.keys_since);
        if let Some(e) = previous {
            let keys = e.usage.lock().unwrap_or_else(|e| e.into_inner()).digests();
            kept.insert(a.clone(), keys);
        }
        key_ranges.push((a.clone(), s.period.start, s.period.end, since));
    }
    let keys = store::usage::unique_keys_written_since(&mut conn, &key_ranges).await?;
    ctx.checks
        .keys_read
        .fetch_add(keys.len() as u64, Ordering::Relaxed);
    let mut usage: HashMap<String, Usage> = usage
        .into_iter()
        .map(|(a, states)| (a, Usage::of_states(states, |m| ctx.checks.aggregation(m))))
        .collect();
    for (a, meters) in kept {
        let u = usage.entry(a).or_default();
        for (m, digests) in meters {
            u.add_digests(&m, ctx.checks.aggregation(&m), digests);
        }
    }
    for k in keys {
        usage.entry(k.account).or_default().add_digests(
            &k.meter,
            ctx.checks.aggregation(&k.meter),
            [usage::digest(&k.key)],
        );
    }
    Ok(snapshots
        .into_iter()
        .map(|(a, s)| {
            let entry = Entry {
                used: AtomicBool::new(false),
                snapshot: Some(s),
                usage: Mutex::new(usage.remove(&a).unwrap_or_default()),
                alerted: Mutex::default(),
                keys_since: Some(read_at - KEY_WRITE_GRACE),
                alerts_evaluated: AtomicBool::new(false),
            };
            (a, entry)
        })
        .collect())
}

fn snapshot_of(ctx: &Ctx, r: &subs::SubscriptionRow, now: DateTime<Utc>) -> Option<Snapshot> {
    let plans = ctx.plans();
    // Suspended, or past due beyond the grace period: the plan's fallback decides.
    let beyond_grace = r.status == "past_due"
        && r.past_due_since.is_some_and(|since| {
            let policy = ctx
                .payments
                .as_ref()
                .map(|p| p.policy.clone())
                .unwrap_or_default();
            !policy.in_grace(since, now)
        });
    if r.status == "suspended" || beyond_grace {
        // The subscriber's own version names its fallback.
        let fallback = plans
            .get(&PlanRef {
                plan: r.plan.clone(),
                version: r.plan_version as u32,
            })
            .and_then(|p| p.fallback.as_deref())
            .and_then(|fb| plans.latest_shared(fb));
        return Some(match fallback {
            Some(fb) => Snapshot {
                plan: fb.clone(),
                standing: Standing::Answering,
                period: period_containing(r.anchor, fb.interval.months(), now),
                seats: fb.seats.as_ref().map_or(0, |s| s.min),
            },
            None => Snapshot {
                plan: plans.latest_shared(&r.plan)?.clone(),
                standing: Standing::Suspended,
                period: Period {
                    start: r.period_start,
                    end: r.period_end,
                },
                seats: r.seats as u32,
            },
        });
    }
    plans
        .get_shared(&PlanRef {
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
                plan: p.clone(),
                standing: Standing::of(&r.status),
                period,
                seats: r.seats as u32,
            }
        })
}

/// How often a reload retries when writes of the same account overlap it.
pub const LOAD_ATTEMPTS: usize = 4;

/// Where the checks that miss one account at once take turns: the lock is a turn at reading
/// it, and holds what the last turn's read gave when it did not install an entry.
type Gate = Arc<tokio::sync::Mutex<Option<LastRead>>>;

/// A read at a [`Gate`] that installed nothing: when it began and ended, and the entry it
/// read (writes kept overlapping it), or none (it failed).
struct LastRead {
    began: std::time::Instant,
    ended: std::time::Instant,
    entry: Option<Arc<Entry>>,
}

/// A check's place at its account's [`Gate`] ([`CheckCache::load_gate`]): dropped (however
/// the check ends, cancelled too), the gate leaves the map once no other check holds it.
struct LoadGate<'a> {
    cache: &'a CheckCache,
    account: String,
    gate: Gate,
}

impl Drop for LoadGate<'_> {
    fn drop(&mut self) {
        let mut loading = self.cache.loading.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are made under this lock only: the map's and this one left means no other
        // check waits at the gate.
        if Arc::strong_count(&self.gate) == 2 {
            loading.remove(&self.account);
        }
    }
}

/// Reads an uncached account and installs it. Checks that miss the same account at once (a
/// burst on an account that was idle, or whose subscription just changed) take turns: the
/// first reads it, and the others find it cached then, so a busy account costs one read, not
/// one per check in flight, each holding a pooled connection other accounts' requests need.
/// A read that installed nothing serves the checks that were waiting: one that failed
/// answers those that came before it ended (unavailable: during an outage, one failure per
/// account, not one per check in turn), and an entry read while writes kept overlapping
/// answers those that came before it began (it holds every event committed before then).
/// Checks that came later read again.
async fn load(ctx: &Ctx, account: &str) -> Result<Arc<Entry>, ServiceError> {
    let gate = ctx.checks.load_gate(account);
    let came = std::time::Instant::now();
    let mut turn = gate.gate.lock().await;
    if let Some(entry) = ctx.checks.lookup(account) {
        return Ok(entry);
    }
    match turn.as_ref() {
        Some(LastRead {
            began,
            entry: Some(entry),
            ..
        }) if came <= *began => {
            return Ok(entry.clone());
        }
        Some(LastRead {
            ended, entry: None, ..
        }) if came <= *ended => {
            return Err(unloaded());
        }
        _ => {}
    }
    let began = std::time::Instant::now();
    let read = read_and_install(ctx, account).await;
    *turn = match &read {
        Ok((_, true)) => None,
        Ok((entry, false)) => Some(LastRead {
            // The first attempt's: the entry is of a later one, which holds even more.
            began,
            ended: std::time::Instant::now(),
            entry: Some(entry.clone()),
        }),
        Err(_) => Some(LastRead {
            began,
            ended: std::time::Instant::now(),
            entry: None,
        }),
    };
    read.map(|(entry, _)| entry)
}

fn unloaded() -> ServiceError {
    ServiceError::Unavailable("the check cache could not load the account".into())
}

/// [`load`]'s read, retried while writes of the account overlap it: the entry and whether it
/// is installed.
async fn read_and_install(ctx: &Ctx, account: &str) -> Result<(Arc<Entry>, bool), ServiceError> {
    let mut last = None;
    for _ in 0..LOAD_ATTEMPTS {
        let mark = ctx.checks.begin_reload(account);
        ctx.checks.loads.fetch_add(1, Ordering::Relaxed);
        let entry = match read_entry(ctx, account).await {
            Ok(entry) => Arc::new(entry),
            Err(e) => {
                ctx.checks.abandon_reload(account, mark);
                return Err(e);
            }
        };
        if ctx.checks.end_reload(account, mark, &entry) {
            return Ok((entry, true));
        }
        last = Some(entry);
    }
    // Writes keep overlapping: answer from the last read (it holds every event committed
    // before it began) without caching it.
    last.map(|entry| (entry, false)).ok_or_else(unloaded)
}

/// Reads an account's subscription snapshot and current-period usage from the database.
async fn read_entry(ctx: &Ctx, account: &str) -> Result<Entry, ServiceError> {
    let mut entries = read_entries(ctx, &[account.to_owned()]).await?;
    Ok(entries.remove(account).unwrap_or_else(empty_entry))
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
    match s.standing {
        Standing::Suspended => return deny(Reason::Suspended),
        Standing::Canceled => return deny(Reason::NoSubscription),
        Standing::Answering => {}
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
            let used = entry
                .usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .value(m);
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
    super::subscriptions::cheapest_self_serve(&ctx.plans(), &s.plan, s.seats, allows)
        .map(|p| p.plan.clone())
}
