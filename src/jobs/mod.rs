//! Background work: cron schedules decide *when to look*; each firing becomes one row in the
//! `jobs` table (several instances insert it once); workers lease rows with SKIP LOCKED and run
//! them; a failed job is retried with exponential backoff. Every job is idempotent: it finds
//! what is due by itself (see `services::lifecycle::close_due_periods`).
//!
//! Time comes from the context's clock, so tests drive the scheduler with [`tick`] instead of
//! waiting.

use crate::services::{lifecycle, payments, Ctx, ServiceError};
use crate::store::{self, StoreError};
use chrono::{DateTime, Duration, Utc};
use std::str::FromStr;
use std::sync::Mutex;

/// The kinds of job accrue runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Close every period that has ended: invoices, renewals, scheduled changes, trials.
    ClosePeriods,
    /// Collect every invoice whose first attempt or dunning retry is due (with Stripe).
    CollectPayments,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ClosePeriods => "close_periods",
            JobKind::CollectPayments => "collect_payments",
        }
    }

    fn parse(s: &str) -> Option<JobKind> {
        match s {
            "close_periods" => Some(JobKind::ClosePeriods),
            "collect_payments" => Some(JobKind::CollectPayments),
            _ => None,
        }
    }
}

/// How long a leased job is someone's before another worker may take it.
const LEASE_MINUTES: i64 = 15;
/// How long finished jobs are kept (pruned after each period close).
const JOB_HISTORY_DAYS: i64 = 7;
/// Longest wait between retries of a failing job.
const MAX_BACKOFF_SECONDS: i64 = 3600;

/// The cron schedules and when they were last looked at.
pub struct Scheduler {
    schedules: Vec<(JobKind, cron::Schedule)>,
    last: Mutex<DateTime<Utc>>,
}

impl Scheduler {
    /// The default schedules (6-field cron, seconds first), starting from `now`.
    pub fn new(now: DateTime<Utc>) -> Result<Self, String> {
        Self::with(
            now,
            &[
                (JobKind::ClosePeriods, "0 * * * * *"),
                (JobKind::CollectPayments, "0 * * * * *"),
            ],
        )
    }

    pub fn with(now: DateTime<Utc>, specs: &[(JobKind, &str)]) -> Result<Self, String> {
        let schedules = specs
            .iter()
            .map(|(k, s)| {
                cron::Schedule::from_str(s)
                    .map(|c| (*k, c))
                    .map_err(|e| format!("schedule `{s}` for {}: {e}", k.as_str()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            schedules,
            last: Mutex::new(now),
        })
    }

    /// The latest firing of each schedule in (last, now], and moves `last` to `now`.
    fn fired(&self, now: DateTime<Utc>) -> Vec<(JobKind, DateTime<Utc>)> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let from = *last;
        *last = now.max(from);
        self.schedules
            .iter()
            .filter_map(|(k, s)| {
                s.after(&from)
                    .take_while(|t| *t <= now)
                    .last()
                    .map(|t| (*k, t))
            })
            .collect()
    }
}

/// One scheduler step: enqueue what fired, then run every runnable job. Returns jobs run.
pub async fn tick(ctx: &Ctx, scheduler: &Scheduler) -> Result<usize, ServiceError> {
    let now = ctx.clock.now();
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    for (kind, at) in scheduler.fired(now) {
        store::jobs::enqueue(&mut conn, kind.as_str(), &at.to_rfc3339(), at, now).await?;
    }
    drop(conn);
    run_pending(ctx).await
}

/// Every job kind.
const ALL: &[JobKind] = &[JobKind::ClosePeriods, JobKind::CollectPayments];

/// Runs runnable jobs until none is left; returns how many ran (successfully or not).
pub async fn run_pending(ctx: &Ctx) -> Result<usize, ServiceError> {
    run_pending_of(ctx, ALL).await
}

/// Runs runnable jobs of `kinds` until none is left.
pub async fn run_pending_of(ctx: &Ctx, kinds: &[JobKind]) -> Result<usize, ServiceError> {
    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    let mut ran = 0;
    loop {
        let now = ctx.clock.now();
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        let Some(job) = store::jobs::lease(
            &mut conn,
            now,
            now + Duration::minutes(LEASE_MINUTES),
            &kinds,
        )
        .await?
        else {
            return Ok(ran);
        };
        drop(conn);
        let result = match JobKind::parse(&job.kind) {
            Some(JobKind::ClosePeriods) => lifecycle::close_due_periods(ctx).await.map(|r| {
                tracing::info!(
                    accounts = r.accounts,
                    invoices = r.invoices,
                    "periods closed"
                );
            }),
            Some(JobKind::CollectPayments) => payments::collect_due(ctx).await.map(|r| {
                if r != payments::CollectReport::default() {
                    tracing::info!(
                        paid = r.paid,
                        failed = r.failed,
                        deferred = r.deferred,
                        "payments collected"
                    );
                }
            }),
            None => Err(ServiceError::invalid(
                "unknown_job",
                format!("unknown job kind `{}`", job.kind),
            )),
        };
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        let now = ctx.clock.now();
        match result {
            Ok(()) => {
                store::jobs::complete(&mut conn, job.id, now).await?;
                if JobKind::parse(&job.kind) == Some(JobKind::ClosePeriods) {
                    store::jobs::prune(&mut conn, now - Duration::days(JOB_HISTORY_DAYS)).await?;
                }
            }
            Err(e) => {
                let backoff = (1i64 << job.attempts.clamp(0, 12)).min(MAX_BACKOFF_SECONDS);
                tracing::error!(job = job.id, kind = %job.kind, attempts = job.attempts, error = %e, "job failed; will retry");
                store::jobs::fail(
                    &mut conn,
                    job.id,
                    &e.to_string(),
                    now + Duration::seconds(backoff),
                )
                .await?;
            }
        }
        ran += 1;
    }
}

/// Runs the scheduler every second until the process stops (`accrue serve`). Collection runs
/// on a worker of its own: a slow or unreachable Stripe delays collection only, never the
/// period close.
pub async fn run_forever(ctx: Ctx) {
    let scheduler = match Scheduler::new(ctx.clock.now()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the scheduler cannot start: no periods will close");
            return;
        }
    };
    tokio::spawn(collect_forever(ctx.clone()));
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        interval.tick().await;
        let enqueued = async {
            let now = ctx.clock.now();
            let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
            for (kind, at) in scheduler.fired(now) {
                store::jobs::enqueue(&mut conn, kind.as_str(), &at.to_rfc3339(), at, now).await?;
            }
            drop(conn);
            run_pending_of(&ctx, &[JobKind::ClosePeriods]).await
        };
        if let Err(e) = enqueued.await {
            tracing::warn!(error = %e, "scheduler tick failed");
        }
    }
}

/// The collection worker: resumes what a stopped instance left half-way, then runs the
/// collection jobs the scheduler enqueues.
async fn collect_forever(ctx: Ctx) {
    if let Err(e) = payments::collect_due(&ctx).await {
        tracing::warn!(error = %e, "collection at start failed; the schedule will retry");
    }
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        interval.tick().await;
        if let Err(e) = run_pending_of(&ctx, &[JobKind::CollectPayments]).await {
            tracing::warn!(error = %e, "collection worker failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_schedule_fires_once_per_look_with_its_latest_time() {
        let s = Scheduler::with(
            t("2026-11-25T12:00:30Z"),
            &[(JobKind::ClosePeriods, "0 * * * * *")],
        )
        .unwrap();
        assert!(s.fired(t("2026-11-25T12:00:59Z")).is_empty());
        assert_eq!(
            s.fired(t("2026-11-25T12:05:10Z")),
            vec![(JobKind::ClosePeriods, t("2026-11-25T12:05:00Z"))]
        );
        assert!(s.fired(t("2026-11-25T12:05:20Z")).is_empty());
        assert!(Scheduler::new(t("2026-11-25T12:00:00Z")).is_ok());
        assert!(Scheduler::with(
            t("2026-11-25T12:00:00Z"),
            &[(JobKind::ClosePeriods, "* * * *")]
        )
        .is_err());
    }
}
