//! Dedup survives restarts of the real server process (graceful and SIGKILL).

use crate::helpers::*;
use serde_json::{json, Value};
use std::process::Command;

/// Creates a key with the CLI, as an operator would; returns what it printed.
pub fn cli_key(db_url: &str, scopes: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "keys",
            "create",
            "--name",
            "test-client",
            "--scopes",
            scopes,
        ])
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = key.lines().collect();
    assert_eq!(lines.len(), 1, "keys create prints the key alone: {key:?}");
    lines[0].to_owned()
}

async fn post(base: &str, key: &str, body: &Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_recognised_after_a_graceful_restart_and_after_sigkill() {
    let db = TestDb::new().await;
    let key = cli_key(&db.url, "ingest");
    let port = free_port();
    let batch = json!({"events": (0..100).map(|i| json!({"id": format!("r{i}"), "account": "acme", "type": "api.request"})).collect::<Vec<_>>()});

    let mut server = ServerProcess::start(&db.url, port).await;
    let first = post(&server.base, &key, &batch).await;
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(100), Some(0))
    );
    server.stop();

    let mut server = ServerProcess::start(&db.url, port).await;
    let again = post(&server.base, &key, &batch).await;
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(100))
    );
    server.kill();

    let server = ServerProcess::start(&db.url, port).await;
    let third = post(&server.base, &key, &batch).await;
    assert_eq!(
        (third["accepted"].as_u64(), third["duplicates"].as_u64()),
        (Some(0), Some(100))
    );
    assert_eq!(db.count("(SELECT COUNT(*) FROM events)::int8").await, 100);
}
