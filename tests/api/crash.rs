//! The crash test: a client sends events continuously while the server is SIGKILLed and
//! restarted; the client retries whatever was not acknowledged. At the end every distinct event
//! is stored exactly once, every acknowledged one is there, and the rollups agree.

use crate::helpers::*;
use crate::restart::cli_key;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BATCH: usize = 50;
const KILLS: usize = 5;
const CLIENTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_continuous_ingestion_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let key = cli_key(&db.url, "ingest,check");
    let port = free_port();
    let server = Arc::new(Mutex::new(Some(ServerProcess::start(&db.url, port).await)));
    let base = format!("http://127.0.0.1:{port}");
    let done = Arc::new(AtomicBool::new(false));
    let next_batch = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let retries = Arc::new(AtomicUsize::new(0));

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (base, key, done, next_batch, acked, retries) = (
            base.clone(),
            key.clone(),
            done.clone(),
            next_batch.clone(),
            acked.clone(),
            retries.clone(),
        );
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while !done.load(Ordering::SeqCst) {
                let b = next_batch.fetch_add(1, Ordering::SeqCst);
                let ids: Vec<String> = (0..BATCH).map(|i| format!("b{b}-{i}")).collect();
                let body = json!({"events": ids.iter().map(|id| json!({"id": id, "account": "acme", "type": "api.request"})).collect::<Vec<_>>()});
                // Retry this exact batch until it is acknowledged.
                loop {
                    match http.post(format!("{base}/v1/events")).bearer_auth(&key).json(&body).send().await {
                        Ok(res) if res.status().as_u16() == 200 => {
                            let v: Value = match res.json().await {
                                Ok(v) => v,
                                Err(_) => { retries.fetch_add(1, Ordering::SeqCst); continue; }
                            };
                            let n = v["accepted"].as_u64().unwrap() + v["duplicates"].as_u64().unwrap();
                            assert_eq!(n as usize, BATCH, "{v}");
                            acked.lock().unwrap().extend(ids.iter().cloned());
                            break;
                        }
                        _ => {
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }));
    }

    // Kill and restart the server several times while the clients keep sending.
    let mut rnd = [0u8; KILLS];
    getrandom::fill(&mut rnd).unwrap();
    for r in rnd {
        tokio::time::sleep(Duration::from_millis(300 + r as u64 * 2)).await;
        let mut old = server.lock().unwrap().take().unwrap();
        old.kill();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fresh = ServerProcess::start(&db.url, port).await;
        *server.lock().unwrap() = Some(fresh);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let sent_batches = next_batch.load(Ordering::SeqCst);
    let distinct = (sent_batches * BATCH) as i64;
    let acked = acked.lock().unwrap().clone();
    // Every batch taken by a client was retried until acknowledged.
    assert_eq!(acked.len() as i64, distinct);
    assert!(
        retries.load(Ordering::SeqCst) > 0,
        "the kills never interrupted a request"
    );
    assert_eq!(
        db.count("(SELECT COUNT(*) FROM events)::int8").await,
        distinct
    );
    let present = db
        .count(&format!(
            "(SELECT COUNT(*) FROM events WHERE account = 'acme' AND id = ANY(ARRAY[{}]))::int8",
            acked
                .iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .await;
    assert_eq!(present, distinct);
    // The rollups counted each stored event once.
    let rolled = db
        .count("(SELECT COALESCE(SUM(event_count), 0) FROM usage_rollups WHERE meter = 'api_calls')::int8")
        .await;
    assert_eq!(rolled, distinct);
    eprintln!(
        "crash test: {distinct} events in {sent_batches} batches, {KILLS} SIGKILLs, {} retried requests",
        retries.load(Ordering::SeqCst)
    );
}
