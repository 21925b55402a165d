//! Dedup survives restarts of the real server process (graceful and SIGKILL), and a pooled
//! connection survives the end of the HTTP worker runtime that first asked for it.

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

/// What a pooled connection's query answers after the runtime that first asked the pool for
/// it has ended, the connection checked out meanwhile on the test's own runtime.
async fn query_after_the_opening_runtime_ends(pool: accrue::store::Pool) -> Result<i32, String> {
    use diesel::dsl::sql;
    use diesel::sql_types::Integer;
    use diesel_async::RunQueryDsl;
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let worker_pool = pool.clone();
    // An HTTP worker: a current-thread runtime of its own on its own thread, as actix runs
    // each worker, whose request is the first to need a connection.
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = worker_pool.get().await.unwrap();
            let one: i32 = diesel::select(sql::<Integer>("1"))
                .get_result(&mut conn)
                .await
                .unwrap();
            assert_eq!(one, 1);
        });
        opened_tx.send(()).unwrap();
        // The worker stays up while the connection is checked out elsewhere, then stops (a
        // graceful stop ends each worker's runtime).
        end_rx.recv().unwrap();
        drop(rt);
    });
    opened_rx.recv().unwrap();
    // An ingest lane or a job takes the (one) connection, and holds it across the stop.
    let mut conn = pool.get().await.unwrap();
    end_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || worker.join().unwrap())
        .await
        .unwrap();
    // Bounded: a connection whose driver is gone could as well never answer.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        diesel::select(sql::<Integer>("7")).get_result(&mut conn),
    )
    .await
    .map_err(|_| "no answer in 10 s".to_owned())?
    .map_err(|e| e.to_string())
}

/// diesel-async runs a connection's driver as a task on the runtime that opened it. A
/// connection first opened by an HTTP handler (an actix worker's runtime) died when a graceful
/// stop ended that worker, failing the ingest lane that held it: its request answered 503 when
/// it should have committed (chaos scenario 9). The pool opens connections on the runtime it
/// was made on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_outlives_the_worker_runtime_that_first_asked_for_it() {
    let db = TestDb::new().await;
    let pool = accrue::store::pool(&db.url, 1).unwrap();
    assert_eq!(
        query_after_the_opening_runtime_ends(pool).await,
        Ok(7),
        "the connection died with the worker runtime that opened it"
    );
}
