//! Scenario 5: the process running the outbox dispatcher SIGKILLed while deliveries are in
//! flight to a receiver that fails one request in five. Restarted, it delivers every event at
//! least once (the killed deliveries come back when their lease ends), none is missing, and
//! every delivered signature verifies.

use crate::harness::*;
use crate::receiver::start_receiver;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_delivery_still_delivers_every_event_signed() {
    let _one = crate::SERIAL.lock().await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_outbox");
    let key = prepare(&db, "billing,finance,admin");
    let env = [("ACCRUE_WEBHOOKS_ALLOW_PRIVATE", "true")];
    publish_plans(&db, &env);
    let mut server = Server::start(&db, &env).await;
    let http = http_client();
    // The receiver answers after 400 ms, so a dispatch round's deliveries are in flight
    // together for that long.
    let secret = Arc::new(Mutex::new(String::new()));
    let (url, received) = start_receiver(secret.clone(), 400).await;
    let ep: Value = http
        .post(format!("{}/v1/webhook-endpoints", server.base))
        .bearer_auth(&key)
        .json(&json!({"url": url, "kinds": ["revenue.movement"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    *secret.lock().unwrap() = ep["secret"].as_str().expect("an endpoint").to_owned();

    // Each subscription is a revenue movement, delivered by the dispatcher within a second.
    for i in 0..ACCOUNTS {
        let res = http
            .post(format!("{}/v1/accounts/o{i:02}/subscription", server.base))
            .bearer_auth(&key)
            .json(&json!({"plan": "team", "seats": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let feed: Value = http
        .get(format!("{}/v1/feed?after=0&limit=1000", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected: BTreeSet<String> = feed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "revenue.movement")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(expected.len(), ACCOUNTS);

    // SIGKILL while deliveries are in flight (arrived at the receiver, not yet answered).
    let waited = Instant::now();
    loop {
        let in_flight = {
            let r = received.lock().unwrap();
            r.arrived > r.requests
        };
        if in_flight {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "no delivery started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (in_flight, accepted_before) = {
        let r = received.lock().unwrap();
        (r.arrived - r.requests, r.accepted.len())
    };

    // Restarted: the deliveries the dead process had leased come back after their lease
    // (60 s); failed ones after their backoff.
    let killed_at = Instant::now();
    let server = Server::start(&db, &env).await;
    let done = loop {
        let got: BTreeSet<String> = {
            let r = received.lock().unwrap();
            r.accepted.iter().map(|(id, _)| id.clone()).collect()
        };
        if got == expected {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(240),
            "{} of {} events delivered 240 s after the kill",
            got.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let dead = count(
        &db,
        "(SELECT count(*) FROM webhook_deliveries WHERE state = 'dead')::int8",
    )
    .await;
    assert_eq!(dead, 0);
    let r = received.lock().unwrap();
    assert!(
        r.accepted.iter().all(|(_, ok)| *ok),
        "every signature verifies"
    );
    let failed = r.requests - r.accepted.len();
    assert!(failed > 0, "the receiver did fail some requests");
    let unknown = r
        .accepted
        .iter()
        .filter(|(id, _)| !expected.contains(id))
        .count();
    assert_eq!(unknown, 0, "only the feed's events were delivered");
    println!(
        "chaos/dispatcher-killed-mid-delivery: {} events; killed with {in_flight} deliveries in \
         flight ({accepted_before} accepted before); every event delivered {done:?} after the \
         restart; {} requests answered, {failed} failed by the receiver (1 in 5), {} accepted \
         ({} duplicates, at least once), every signature valid",
        expected.len(),
        r.requests,
        r.accepted.len(),
        r.accepted.len() - expected.len()
    );
    drop(server);
}
