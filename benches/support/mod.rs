//! What the database-backed benchmarks share: a fresh migrated database, the shipped
//! catalogue, a runtime, and environment knobs.

use accrue::catalog::meters::MeterCatalog;
use accrue::catalog::plans::PlanCatalog;
use std::path::Path;

/// A usize from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` on a two-worker runtime (the machine has two cores).
pub fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// A fresh, migrated database on the local PostgreSQL (`ACCRUE_TEST_PG`); returns its URL.
pub async fn fresh_database() -> String {
    let pg = std::env::var("ACCRUE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut rnd = [0u8; 6];
    getrandom::fill(&mut rnd).unwrap();
    let db = format!("{pg}/accrue_bench_{}", hex::encode(rnd));
    accrue::store::ensure_database(&db).await.unwrap();
    accrue::store::run_migrations(&db).await.unwrap();
    db
}

/// The shipped meters and plans.
pub fn catalogue() -> (MeterCatalog, PlanCatalog) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing-plans");
    let meters = MeterCatalog::load(&dir).unwrap();
    let plans = PlanCatalog::load(&dir, &meters).unwrap();
    (meters, plans)
}

/// Drops a database made by [`fresh_database`], closing its connections (those of the
/// benchmark's context too): a benchmark's database is several hundred MB, and autovacuum
/// working through those left behind would be timed by the next run.
pub async fn drop_database(url: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let (admin, name) = accrue::store::split_database_url(url).unwrap();
    let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
    let quoted = name.replace('"', "\"\"");
    conn.batch_execute(&format!("DROP DATABASE \"{quoted}\" WITH (FORCE)"))
        .await
        .unwrap();
}
