//! Limit-check benchmark: `cargo bench --bench check`.
//!
//! On a fresh database on the local PostgreSQL (`ACCRUE_TEST_PG`), subscribes `CHECK_ACCOUNTS`
//! accounts (default 2,000) to free/team/business, ingests some usage for each, then:
//! 1. memory per cached account: the heap bytes live after loading every account less before
//!    (counted by the allocator), and resident memory before and after;
//! 2. in-process check latency (p50/p99/max) over `CHECK_CALLS` calls (default 300,000) on
//!    random accounts, meters and features, all answered from the cache;
//! 3. over HTTP on loopback: starts the release `accrue serve` on the same database and runs
//!    `wrk` (Debian package `wrk`) for 10 s with `CHECK_WRK_CONNECTIONS` (default 16)
//!    connections against random accounts, then /healthz the same way as the reference, and
//!    prints the ratio (checks per second over /healthz requests per second).

mod support;
use support::env_usize;

use accrue::domain::clock::Clock;
use accrue::domain::scope::Scope;
use accrue::services::auth::Principal;
use accrue::services::check::{check, CheckRequest};
use accrue::services::subscriptions::{subscribe, SubscribeRequest};
use accrue::services::{ingest, plans, Ctx};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Now;
impl Clock for Now {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system allocator, counting the bytes live: the cache's own size, apart from what the
/// allocator keeps of transient buffers (which resident memory also counts).
struct Counting;

static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(
            new as i64 - layout.size() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> i64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    support::run(run());
}

async fn run() {
    let n = env_usize("CHECK_ACCOUNTS", 2000);
    let calls = env_usize("CHECK_CALLS", 300_000);
    let db = support::fresh_database().await;
    let (meters, catalog) = support::catalogue();
    let pool = accrue::store::pool(&db, 8).unwrap();
    // Staleness long enough that every call below is a cache hit: this measures the hot path.
    let ctx = Ctx::new(
        pool.clone(),
        meters,
        catalog,
        Arc::new(Now),
        2,
        Duration::from_secs(3600),
    )
    .refreshing();
    plans::publish(&pool, &ctx.plans(), "bench", Utc::now())
        .await
        .unwrap();
    let admin = Principal {
        key_id: 0,
        name: "bench".into(),
        scopes: vec![Scope::Admin],
        account: None,
    };
    let started = Instant::now();
    for i in 0..n {
        let plan = ["free", "team", "business"][i % 3];
        let seats = if plan == "business" { 12 } else { 3 };
        subscribe(
            &ctx,
            &admin,
            &format!("a{i}"),
            SubscribeRequest {
                plan: plan.into(),
                version: None,
                seats: Some(seats),
                trial: false,
            },
            None,
        )
        .await
        .unwrap();
        let mut evs = Vec::new();
        for j in 0..20 {
            evs.push(
                json!({"id": format!("r{j}"), "account": format!("a{i}"), "type": "api.request"}),
            );
        }
        for u in 0..5 {
            evs.push(json!({"id": format!("u{u}"), "account": format!("a{i}"), "type": "user.active", "properties": {"user_id": format!("user-{u}@a{i}.example")}}));
        }
        evs.push(json!({"id": "s", "account": format!("a{i}"), "type": "storage.snapshot", "properties": {"gb": "0.5"}}));
        ingest::ingest(&ctx, evs, None).await.unwrap();
    }
    eprintln!(
        "set up {n} accounts in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let before = rss_bytes();
    let live_before = live_bytes();
    for i in 0..n {
        check(
            &ctx,
            &format!("a{i}"),
            CheckRequest {
                meter: Some("api_calls".into()),
                feature: None,
                quantity: None,
            },
        )
        .await
        .unwrap();
    }
    let after = rss_bytes();
    let live = live_bytes() - live_before;
    println!(
        "check cache: heap held after loading {} accounts: +{} KiB = {} bytes per cached account (allocations live, counted by the allocator)",
        ctx.checks.len(),
        live / 1024,
        live / n as i64
    );
    println!(
        "check cache: {} accounts loaded, resident memory +{} KiB = {} bytes per cached account (3 meters with usage, 5 distinct users each)",
        ctx.checks.len(),
        (after.saturating_sub(before)) / 1024,
        after.saturating_sub(before) / n as u64
    );

    let asks = [
        (Some("api_calls"), None),
        (Some("active_users"), None),
        (Some("storage_gb"), None),
        (None, Some("sso")),
    ];
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut lat = Vec::with_capacity(calls);
    let t0 = Instant::now();
    for _ in 0..calls {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let account = format!("a{}", (seed >> 33) as usize % n);
        let (meter, feature) = asks[(seed >> 20) as usize % asks.len()];
        let req = CheckRequest {
            meter: meter.map(Into::into),
            feature: feature.map(Into::into),
            quantity: None,
        };
        let s = Instant::now();
        let answer = check(&ctx, &account, req).await.unwrap();
        lat.push(s.elapsed());
        std::hint::black_box(answer);
    }
    let total = t0.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "in-process check: {calls} calls, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs, {:.0} checks/s on one thread",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().unwrap().as_secs_f64() * 1e6,
        calls as f64 / total
    );

    http(&db, n).await;
    support::drop_database(&db).await;
}

async fn http(db: &str, n: usize) {
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("http check: skipped, `wrk` is not installed (apt-get install wrk)");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_accrue");
    let out = Command::new(bin)
        .args(["keys", "create", "--name", "bench", "--scopes", "check"])
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(bin)
        .arg("serve")
        .env("DATABASE_URL", db)
        .env("ACCRUE_BIND", format!("127.0.0.1:{port}"))
        .env(
            "ACCRUE_PLANS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/pricing-plans"),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..400 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let script = std::env::temp_dir().join("accrue-check.lua");
    std::fs::write(
        &script,
        format!(
            r#"wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"meter": "api_calls", "quantity": "1"}}'
request = function()
  return wrk.format(nil, "/v1/accounts/a" .. math.random(0, {last}) .. "/check")
end
"#,
            last = n - 1
        ),
    )
    .unwrap();
    // Warm the server's cache (one load per account), then measure.
    let _ = Command::new("wrk")
        .args(["-t2", "-c32", "-d3s", "-s"])
        .arg(&script)
        .arg(&base)
        .output();
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", env_usize("CHECK_WRK_CONNECTIONS", 16)),
            "-d10s",
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(&base)
        .output()
        .unwrap();
    let checks = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "http check (wrk -t2 -c{} -d10s, random accounts, refresh every {} ms):\n{checks}",
        env_usize("CHECK_WRK_CONNECTIONS", 16),
        env_usize("ACCRUE_CHECK_STALENESS_MS", 1000),
    );
    // The reference in the same run: the same server answering /healthz (routing, the
    // middleware, metrics and JSON, no key, no cache). Machines swing ±30 % between runs; the
    // ratio does not.
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", env_usize("CHECK_WRK_CONNECTIONS", 16)),
            "-d10s",
            "--latency",
        ])
        .arg(format!("{base}/healthz"))
        .output()
        .unwrap();
    let health = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("reference, GET /healthz (same wrk settings):\n{health}");
    if let (Some(c), Some(h)) = (requests_per_sec(&checks), requests_per_sec(&health)) {
        println!("checks/s ÷ /healthz req/s = {:.2} ({c:.0} / {h:.0})", c / h);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// wrk's "Requests/sec:" figure.
fn requests_per_sec(report: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}
