//! The `/metrics` page: this instance's counters and histograms (recorded where things happen),
//! with gauges of its state read as the page is rendered: ingest queues, the check cache, the
//! database pool, subscriptions by status (the dunning states) and the outbound webhooks' lag.
//! The database's gauges are read at most every 15 s (a scrape needs no key); a database that
//! cannot be read leaves them out, and the page itself always renders.

use super::Ctx;
use crate::store;
use crate::telemetry::{DbGauges, DB_GAUGES_TTL};

/// Every subscription status, so a status with none reads 0 rather than disappearing.
const STATUSES: &[&str] = &["trialing", "active", "past_due", "suspended", "canceled"];

pub async fn render(ctx: &Ctx) -> String {
    let pool = ctx.pool.status();
    let now = ctx.clock.now();
    let db = db_gauges(ctx).await;
    ctx.metrics.record(|| {
        let in_use = pool.size.saturating_sub(pool.available);
        metrics::gauge!("accrue_db_pool_connections", "state" => "in_use").set(in_use as f64);
        metrics::gauge!("accrue_db_pool_connections", "state" => "idle").set(pool.available as f64);
        metrics::gauge!("accrue_db_pool_max").set(pool.max_size as f64);
        metrics::gauge!("accrue_db_pool_waiting").set(pool.waiting as f64);
        for (lane, depth) in ctx.ingest.queue_depths().into_iter().enumerate() {
            metrics::gauge!("accrue_ingest_lane_queue_depth", "lane" => lane.to_string())
                .set(depth as f64);
        }
        metrics::gauge!("accrue_ingest_in_flight_events").set(ctx.ingest.in_flight_events() as f64);
        metrics::gauge!("accrue_check_cache_entries").set(ctx.checks.len() as f64);
        metrics::gauge!("accrue_check_cache_staleness_seconds").set(ctx.checks.staleness_seconds());
        if let Some(g) = &db {
            for status in STATUSES {
                let n = g
                    .subscriptions
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("accrue_subscriptions", "status" => *status).set(n as f64);
            }
            metrics::gauge!("accrue_webhook_pending_deliveries").set(g.pending_deliveries as f64);
            let lag = g
                .oldest_pending
                .map_or(0.0, |o| (now - o).num_milliseconds().max(0) as f64 / 1000.0);
            metrics::gauge!("accrue_webhook_lag_seconds").set(lag);
        }
    });
    ctx.metrics.render()
}

/// The database's gauges: the last ones read when younger than [`DB_GAUGES_TTL`], else read
/// now (bounded to 2 s; `None` when the database cannot answer).
async fn db_gauges(ctx: &Ctx) -> Option<DbGauges> {
    let cached = ctx
        .metrics
        .db_gauges
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some((at, g)) = cached {
        if at.elapsed() < DB_GAUGES_TTL {
            return Some(g);
        }
    }
    let read = async {
        let mut conn = ctx.pool.get().await.map_err(store::StoreError::from)?;
        let subscriptions = store::subscriptions::count_by_status(&mut conn).await?;
        let (pending_deliveries, oldest_pending) =
            store::outbox::pending_deliveries(&mut conn).await?;
        Ok::<_, store::StoreError>(DbGauges {
            subscriptions,
            pending_deliveries,
            oldest_pending,
        })
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Ok(g)) => {
            *ctx.metrics
                .db_gauges
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), g.clone()));
            Some(g)
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics: database gauges left out");
            None
        }
        Err(_) => None,
    }
}
