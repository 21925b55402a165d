//! Ingestion load tool and benchmark: `cargo bench --bench ingest_load`.
//!
//! By default it starts the release `accrue serve` binary on a fresh database on the local
//! PostgreSQL (`ACCRUE_TEST_PG`, default postgres://postgres@127.0.0.1:5432), creates a key with
//! the CLI, and measures over loopback HTTP:
//! 1. durable batched ingestion (events/s, 1,000-event batches, several connections);
//! 2. single-event requests (requests/s, p50/p99 acknowledgement latency);
//! 3. the delay from an event's acknowledgement to it showing in `/usage` (p50/p99).
//!
//! Against a server you run yourself: `ACCRUE_LOAD_URL=http://host:port ACCRUE_LOAD_KEY=acr_...`.
//! Sizes: `LOAD_EVENTS` (default 300000), `LOAD_CONCURRENCY` (8), `LOAD_SINGLE` (20000),
//! `LOAD_SINGLE_CONCURRENCY` (32), `LOAD_VISIBILITY_SAMPLES` (300), `LOAD_ACCOUNTS` (1000).

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    child: Option<Child>,
    base: String,
    key: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn start_server() -> Server {
    if let (Ok(base), Ok(key)) = (
        std::env::var("ACCRUE_LOAD_URL"),
        std::env::var("ACCRUE_LOAD_KEY"),
    ) {
        return Server {
            child: None,
            base,
            key,
        };
    }
    let pg = std::env::var("ACCRUE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut rnd = [0u8; 6];
    getrandom::fill(&mut rnd).unwrap();
    let db = format!("{pg}/accrue_bench_{}", hex::encode(rnd));
    let bin = env!("CARGO_BIN_EXE_accrue");
    // Only `migrate` and `serve` create a database.
    let out = Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .env("RUST_LOG", "error")
        .output()
        .expect("run accrue migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin)
        .args([
            "keys",
            "create",
            "--name",
            "load",
            "--scopes",
            "ingest,check",
        ])
        .env("DATABASE_URL", &db)
        .env("RUST_LOG", "error")
        .output()
        .expect("run accrue keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(bin)
        .arg("serve")
        .env("DATABASE_URL", &db)
        .env("ACCRUE_BIND", format!("127.0.0.1:{port}"))
        .env(
            "ACCRUE_PLANS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/pricing-plans"),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start accrue serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                eprintln!("server ready on {base}, database {db}");
                return Server {
                    child: Some(child),
                    base,
                    key,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start");
}

fn event(run: &str, i: usize) -> Value {
    let account = format!("acct{}", i % accounts());
    let id = format!("{run}-{i}");
    match i % 4 {
        0 | 1 => json!({"id": id, "account": account, "type": "api.request"}),
        2 => json!({"id": id, "account": account, "type": "job.completed",
                    "properties": {"minutes": "1.25", "runner": if i % 8 == 2 { "gpu" } else { "cpu" }}}),
        _ => json!({"id": id, "account": account, "type": "user.active",
                    "properties": {"user_id": format!("u{}", i % 37)}}),
    }
}

/// `LOAD_ACCOUNTS` (default 1,000): events cycle through this many accounts, so a batch of
/// 1,000 touches min(1,000, accounts) accounts' rollup rows.
fn accounts() -> usize {
    env_usize("LOAD_ACCOUNTS", 1000).max(1)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn batched(server: &Server, run: &str, total: usize, concurrency: usize) {
    let batches: Vec<Value> = (0..total)
        .step_by(1000)
        .map(|start| {
            let evs: Vec<Value> = (start..(start + 1000).min(total))
                .map(|i| event(run, i))
                .collect();
            json!({ "events": evs })
        })
        .collect();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        batches
            .iter()
            .map(|b| serde_json::to_vec(b).unwrap())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (bodies, next, accepted, client) = (
            bodies.clone(),
            next.clone(),
            accepted.clone(),
            client.clone(),
        );
        let url = format!("{}/v1/events", server.base);
        let key = server.key.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let res = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("request");
                assert_eq!(res.status().as_u16(), 200);
                let v: Value = res.json().await.unwrap();
                accepted.fetch_add(v["accepted"].as_u64().unwrap() as usize, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = accepted.load(Ordering::Relaxed);
    assert_eq!(n, total, "every event accepted once");
    println!(
        "batched ingestion: {n} events in {secs:.2} s = {:.0} events/s (batches of 1000, {concurrency} connections, {} accounts)",
        n as f64 / secs,
        accounts()
    );
}

async fn singles(server: &Server, run: &str, total: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, client) = (next.clone(), client.clone());
        let url = format!("{}/v1/events", server.base);
        let key = server.key.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = serde_json::to_vec(&event(&run, i)).unwrap();
                let t0 = Instant::now();
                let res = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(res.status().as_u16(), 200);
                let _ = res.bytes().await.unwrap();
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "single-event requests: {} in {secs:.2} s = {:.0} req/s ({concurrency} connections), ack latency p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        lat.len() as f64 / secs,
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
}

async fn visibility(server: &Server, run: &str, samples: usize) {
    let client = reqwest::Client::new();
    let mut delays = Vec::new();
    for s in 0..samples {
        let account = format!("{run}-vis{s}");
        let body = json!({"id": "v", "account": account, "type": "api.request"});
        let res = client
            .post(format!("{}/v1/events", server.base))
            .bearer_auth(&server.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let _ = res.bytes().await.unwrap();
        let acked = Instant::now();
        loop {
            let v: Value = client
                .get(format!("{}/v1/accounts/{account}/usage", server.base))
                .bearer_auth(&server.key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let seen = v["meters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["meter"] == "api_calls" && m["value"] == "1");
            if seen {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(10),
                "event never became visible"
            );
        }
        delays.push(acked.elapsed());
    }
    delays.sort();
    println!(
        "ack -> visible in /usage: {samples} samples, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&delays, 0.50).as_secs_f64() * 1e3,
        percentile(&delays, 0.99).as_secs_f64() * 1e3,
        delays.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful either way.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = start_server().await;
        let mut rnd = [0u8; 4];
        getrandom::fill(&mut rnd).unwrap();
        let run = hex::encode(rnd);
        // Warm-up: connections, statement caches.
        batched(&server, &format!("{run}w"), 20_000, 4).await;
        batched(
            &server,
            &run,
            env_usize("LOAD_EVENTS", 300_000),
            env_usize("LOAD_CONCURRENCY", 8),
        )
        .await;
        singles(
            &server,
            &format!("{run}s"),
            env_usize("LOAD_SINGLE", 20_000),
            env_usize("LOAD_SINGLE_CONCURRENCY", 32),
        )
        .await;
        visibility(&server, &run, env_usize("LOAD_VISIBILITY_SAMPLES", 300)).await;
    });
}
