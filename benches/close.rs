//! Period-close benchmark: `cargo bench --bench close`.
//!
//! On a fresh database: `CLOSE_ACCOUNTS` (default 10,000) subscriptions to team@2 (three
//! metered charges: graduated API calls, graduated storage, packaged compute), each with
//! `CLOSE_EVENTS` (default 3) usage events per meter ingested through the real ingest path; then
//! the clock passes the period end and one `close_due_periods` sweep issues every invoice.
//! Run it with a small and a large `CLOSE_EVENTS` to see that the close does not depend on the
//! number of events behind the usage (it reads the hourly rollups only). `CLOSE_BATCH` and
//! `CLOSE_WORKERS` set the sweep's accounts per transaction and transactions at once (the
//! service's sizes unless set).

mod support;
use support::env_usize;

use accrue::domain::clock::{Clock, ManualClock};
use accrue::services::{ingest, lifecycle, plans, Ctx};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn main() {
    support::run(run());
}

async fn run() {
    let n = env_usize("CLOSE_ACCOUNTS", 10_000);
    let per_meter = env_usize("CLOSE_EVENTS", 3);
    // The sweep's sizes, the service's unless set (to try others).
    let d = lifecycle::SweepSizes::DEFAULT;
    let sizes = lifecycle::SweepSizes {
        page: d.page,
        batch: env_usize("CLOSE_BATCH", d.batch),
        workers: env_usize("CLOSE_WORKERS", d.workers),
    };
    let db = support::fresh_database().await;
    let (meters, catalog) = support::catalogue();
    let pool = accrue::store::pool(&db, 8).unwrap();
    let clock = Arc::new(ManualClock::new(t("2026-11-15T00:00:00Z")));
    let ctx = Ctx::new(
        pool.clone(),
        meters,
        catalog,
        clock.clone() as Arc<dyn Clock>,
        4,
        Duration::from_secs(3600),
    )
    .refreshing();
    plans::publish(&pool, &ctx.plans(), "bench", clock.now())
        .await
        .unwrap();

    // Subscriptions straight into the tables (setup, not what is measured).
    let mut conn = AsyncPgConnection::establish(&db).await.unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO accounts (account, currency, created_at, updated_at)
           SELECT 'b' || g, 'USD', now(), now() FROM generate_series(1, {n}) g;
         INSERT INTO subscriptions (account, plan, plan_version, seats, status, anchor, period_start,
                period_end, revision, created_at, updated_at)
           SELECT 'b' || g, 'team', 2, 5, 'active', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z',
                  '2026-12-01T00:00:00Z', 1, now(), now() FROM generate_series(1, {n}) g;"
    ))
    .await
    .unwrap();

    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    let mut sent = 0usize;
    for a in 1..=n {
        for e in 0..per_meter {
            // Three hours of usage per meter however many events: the rollup rows (what the
            // close reads) stay the same, only the events behind them grow.
            let ts = format!(
                "2026-11-{:02}T10:{:02}:{:02}Z",
                2 + e % 3,
                (e / 3) % 60,
                (e / 180) % 60
            );
            batch.push(json!({"id": format!("c{e}"), "account": format!("b{a}"), "type": "api.request", "timestamp": ts}));
            batch.push(json!({"id": format!("s{e}"), "account": format!("b{a}"), "type": "storage.snapshot", "timestamp": ts, "properties": {"gb": 40 + e % 30}}));
            batch.push(json!({"id": format!("j{e}"), "account": format!("b{a}"), "type": "job.completed", "timestamp": ts, "properties": {"minutes": "12.5"}}));
            if batch.len() >= 999 {
                sent += batch.len();
                ingest::ingest(&ctx, std::mem::take(&mut batch), None)
                    .await
                    .unwrap();
            }
        }
    }
    sent += batch.len();
    ingest::ingest(&ctx, batch, None).await.unwrap();
    let rollups: i64 = {
        use diesel_async::RunQueryDsl;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT COUNT(*) FROM usage_rollups)::int8",
        ))
        .get_result(&mut conn)
        .await
        .unwrap()
    };
    eprintln!(
        "setup: {n} subscriptions, {sent} events ingested in {:.1} s, {rollups} rollup rows",
        started.elapsed().as_secs_f64()
    );

    clock.set(t("2026-12-01T00:05:00Z"));
    let started = Instant::now();
    let report = lifecycle::close_due_periods_sized(&ctx, sizes)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "period close: {} subscriptions, {} invoices ({} usage events behind them, {} per meter per account) in {secs:.2} s = {:.0} subscriptions/s ({} transactions of {} at once)",
        report.accounts,
        report.invoices,
        sent,
        per_meter,
        report.accounts as f64 / secs,
        sizes.workers,
        sizes.batch
    );
    assert_eq!(report.invoices, n);
    support::drop_database(&db).await;
}
