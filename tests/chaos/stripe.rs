//! Stripe faults against the release binary: Stripe unreachable, then answering only after
//! 10 s. Collection waits (no dunning step, no charge recorded), and nothing else does: the
//! API answers as fast as before and the period close still runs on time.

use crate::harness::*;
use serde_json::json;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOWN: u8 = 0;
const SLOW: u8 = 1;

/// A Stripe that is down (the connection is cut at once) or slow (answers 503 after 10 s).
async fn bad_stripe(mode: Arc<AtomicU8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mode = mode.clone();
            tokio::spawn(async move {
                if mode.load(Ordering::SeqCst) == DOWN {
                    return; // dropped: connection closed without an answer
                }
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    url
}

fn p99(mut lat: Vec<Duration>) -> Duration {
    lat.sort();
    lat.get(lat.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

/// Checks and ingestion batches for `secs`, one client each; the answer times.
async fn api_latencies(base: &str, key: &str, secs: u64, tag: &str) -> (Vec<Duration>, usize) {
    let http = http_client();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut lat = Vec::new();
    let mut failures = 0;
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let started = Instant::now();
        let check = http
            .post(format!("{base}/v1/accounts/s6-free/check"))
            .bearer_auth(key)
            .json(&json!({"meter": "api_calls", "quantity": "1"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        lat.push(started.elapsed());
        let started = Instant::now();
        let ingest = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(key)
            .json(&json!({"id": format!("{tag}-{n}"), "account": "s6-free", "type": "api.request"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        lat.push(started.elapsed());
        failures += usize::from(check != 200) + usize::from(ingest != 200);
    }
    (lat, failures)
}

/// Scenario 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_down_or_slow_defers_collection_and_nothing_else() {
    let _one = crate::SERIAL.lock().await;
    let mode = Arc::new(AtomicU8::new(DOWN));
    let stripe = bad_stripe(mode.clone()).await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_stripe");
    let key = prepare(&db, "ingest,billing,check,finance");
    let env = [
        ("STRIPE_SECRET_KEY", "sk_test_chaos"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_chaos"),
        ("STRIPE_API_BASE", stripe.as_str()),
    ];
    publish_plans(&db, &env);
    let server = Server::start(&db, &env).await;
    let base = server.base.clone();
    let http = http_client();
    let subscribe = |account: String, plan: &'static str| {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        async move {
            let started = Instant::now();
            let res = http
                .post(format!("{base}/v1/accounts/{account}/subscription"))
                .bearer_auth(&key)
                .json(&json!({"plan": plan, "seats": 3}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
            started.elapsed()
        }
    };
    subscribe("s6-free".into(), "free").await;
    let (before, failures) = api_latencies(&base, &key, 3, "before").await;
    assert_eq!(failures, 0);

    // Stripe down: paid subscriptions still answer at once; their collection waits.
    let mut subscribe_times = Vec::new();
    for i in 0..3 {
        subscribe_times.push(subscribe(format!("s6-down-{i}"), "team").await);
    }
    // Stripe slow: every call takes 10 s and fails.
    mode.store(SLOW, Ordering::SeqCst);
    for i in 0..3 {
        subscribe_times.push(subscribe(format!("s6-slow-{i}"), "team").await);
    }
    // A period ends meanwhile (moved into the past): the close must not wait for Stripe.
    let mut c = {
        use diesel_async::AsyncConnection;
        diesel_async::AsyncPgConnection::establish(&db)
            .await
            .unwrap()
    };
    {
        use diesel_async::SimpleAsyncConnection;
        c.batch_execute(
            "UPDATE subscriptions SET period_start = now() - interval '1 month',
                    period_end = date_trunc('hour', now()) WHERE account = 's6-free'",
        )
        .await
        .unwrap();
    }
    let ended = Instant::now();
    let (during, failures) = api_latencies(&base, &key, 12, "during").await;
    assert_eq!(failures, 0, "the API kept answering 200");
    let closed = loop {
        let n = count(
            &db,
            "(SELECT count(*) FROM subscriptions WHERE account = 's6-free' AND period_end > now())::int8",
        )
        .await;
        if n == 1 {
            break ended.elapsed();
        }
        assert!(
            ended.elapsed() < Duration::from_secs(75),
            "the period close waited on Stripe"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Nothing was charged or counted as a dunning attempt; every paid start invoice waits.
    let pending = count(
        &db,
        "(SELECT count(*) FROM invoice_payments WHERE state = 'pending' AND attempts = 0)::int8",
    )
    .await;
    assert_eq!(pending, 6, "six start invoices wait for Stripe");
    let steps = count(&db, "(SELECT count(*) FROM dunning_steps)::int8").await;
    assert_eq!(steps, 0, "no dunning step for an unreachable Stripe");
    let deferred = count(
        &db,
        "(SELECT count(*) FROM invoice_payments WHERE last_error LIKE '%unavailable%')::int8",
    )
    .await;
    let slowest_subscribe = subscribe_times.iter().max().copied().unwrap_or_default();
    assert!(
        slowest_subscribe < Duration::from_secs(2),
        "{slowest_subscribe:?}"
    );
    let (p_before, p_during) = (p99(before), p99(during.clone()));
    assert!(
        p_during < Duration::from_secs(1),
        "checks and ingestion stayed fast while Stripe stalled: p99 {p_during:?}"
    );
    println!(
        "chaos/stripe-down-and-slow: subscribing answered in at most {slowest_subscribe:?}; API \
         p99 {p_before:?} before, {p_during:?} while Stripe was down then slow ({} requests, \
         0 failed); the period close ran {closed:?} after the period ended; 6 invoices pending, \
         {deferred} with Stripe's failure recorded, 0 dunning steps, 0 charges",
        during.len()
    );
}
