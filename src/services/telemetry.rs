//! The `/metrics` page: this instance's counters and histograms (recorded where things happen),
//! with gauges of its state read as the page is rendered: ingest queues, the check cache, the
//! database pool, subscriptions by status (the dunning states) and the outbound webhooks' lag.
//! A database that cannot be read leaves its gauges out; the page itself always renders.

use super::Ctx;
use crate::store;

/// Every subscription status, so a status with none reads 0 rather than disappearing.
const STATUSES: &[&str] = &["trialing", "active", "past_due", "suspended", "canceled"];

pub async fn render(ctx: &Ctx) -> String {
    let pool = ctx.pool.status();
    let now = ctx.clock.now();
    let read = async {
        let mut conn = ctx.pool.get().await.map_err(store::StoreError::from)?;
        let subs = store::subscriptions::count_by_status(&mut conn).await?;
        let pending = store::outbox::pending_deliveries(&mut conn).await?;
        Ok::<_, store::StoreError>((subs, pending))
    };
    let db = match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Ok(found)) => Some(found),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics: database gauges left out");
            None
        }
        Err(_) => None,
    };
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
        if let Some((subs, (pending, oldest))) = &db {
            for status in STATUSES {
                let n = subs
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("accrue_subscriptions", "status" => *status).set(n as f64);
            }
            metrics::gauge!("accrue_webhook_pending_deliveries").set(*pending as f64);
            let lag = oldest.map_or(0.0, |o| (now - o).num_milliseconds().max(0) as f64 / 1000.0);
            metrics::gauge!("accrue_webhook_lag_seconds").set(lag);
        }
    });
    ctx.metrics.render()
}
