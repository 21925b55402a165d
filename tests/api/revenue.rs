//! Revenue movements and retention through the real write paths, and outbound events: the
//! dispatcher against a flaky receiver (and a killed dispatcher), signatures checked by an
//! independent HMAC, and the feed.

use crate::helpers::*;
use crate::receiver::start_receiver;
use accrue::domain::clock::Clock;
use accrue::jobs::{tick, Scheduler};
use accrue::services::outbox;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

async fn quote_and_accept(app: &TestApp, key: &str, account: &str, body: Value) -> Value {
    app.quote_and_accept(key, account, body).await.1
}

/// (kind, cause, before, after) of an account's movements, in order.
async fn movements_of(
    app: &TestApp,
    key: &str,
    account: &str,
) -> Vec<(String, String, String, String)> {
    let (status, body) = app
        .get(
            key,
            &format!(
                "/v1/movements?from=2026-01-01T00:00:00Z&to=2028-01-01T00:00:00Z&account={account}&limit=1000"
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            (s("kind"), s("cause"), s("mrr_before"), s("mrr_after"))
        })
        .collect()
}

fn mv(kind: &str, cause: &str, before: &str, after: &str) -> (String, String, String, String) {
    (kind.into(), cause.into(), before.into(), after.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_writes_its_movement_with_the_right_kind_and_delta() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();

    // Team v2: 59 base, 3 seats included, 12 per extra seat. Business: 199, 10 included.
    app.subscribe(&key, "grows", json!({"plan": "team", "seats": 3}))
        .await;
    quote_and_accept(&app, &key, "grows", json!({"seats": 5})).await;
    quote_and_accept(&app, &key, "grows", json!({"plan": "business"})).await;
    // Fewer seats within Business's included ten: MRR does not move, no movement.
    quote_and_accept(&app, &key, "grows", json!({"seats": 6})).await;
    // A downgrade waits for the period end.
    quote_and_accept(&app, &key, "grows", json!({"plan": "team", "seats": 3})).await;

    app.subscribe(&key, "uses", json!({"plan": "team", "seats": 3}))
        .await;
    let evs: Vec<Value> = (0..15)
        .map(|i| json!({"id": format!("u{i}"), "account": "uses", "type": "job.completed", "timestamp": "2026-11-25T12:30:00.000Z", "properties": {"minutes": 100}}))
        .collect();
    let (status, body) = app.send(&key, &json!({ "events": evs })).await;
    assert_eq!(status, 200, "{body}");

    app.subscribe(
        &key,
        "tries",
        json!({"plan": "team", "seats": 3, "trial": true}),
    )
    .await;
    app.subscribe(&key, "leaves", json!({"plan": "team", "seats": 3}))
        .await;
    quote_and_accept(&app, &key, "leaves", json!({"cancel": true})).await;

    // The trial ends (14 days), then the first period closes, then the second.
    for at in [
        "2026-12-09T13:00:00.000Z",
        "2026-12-25T12:01:00.000Z",
        "2027-01-25T12:01:00.000Z",
    ] {
        app.clock.set(t(at));
        tick(&app.ctx, &scheduler).await.unwrap();
    }

    assert_eq!(
        movements_of(&app, &key, "grows").await,
        vec![
            mv("new", "plan_upgrade", "0.00", "59.00"),
            mv("expansion", "seats_added", "59.00", "83.00"),
            mv("expansion", "plan_upgrade", "83.00", "199.00"),
            mv("contraction", "plan_downgrade", "199.00", "59.00"),
        ]
    );
    // 1,500 compute minutes: one 8.00 package above the 500 free, then none.
    assert_eq!(
        movements_of(&app, &key, "uses").await,
        vec![
            mv("new", "plan_upgrade", "0.00", "59.00"),
            mv("expansion", "usage_growth", "59.00", "67.00"),
            mv("contraction", "usage_decline", "67.00", "59.00"),
        ]
    );
    assert_eq!(
        movements_of(&app, &key, "tries").await,
        vec![mv("new", "trial_converted", "0.00", "59.00")]
    );
    assert_eq!(
        movements_of(&app, &key, "leaves").await,
        vec![
            mv("new", "plan_upgrade", "0.00", "59.00"),
            mv("churn", "cancellation", "59.00", "0.00"),
        ]
    );
    // Each movement points at what caused it, and went to the outbox with it.
    let (_, body) = app
        .get(
            &key,
            "/v1/movements?from=2026-01-01T00:00:00Z&to=2028-01-01T00:00:00Z&account=uses",
        )
        .await;
    assert_eq!(body["data"][1]["ref_kind"], "invoice");
    assert_eq!(body["data"][0]["ref_kind"], "subscription_change");
    // The two closes' movements reference those closes' period invoices, by number, in the
    // ledger and in their outbox events.
    let (_, invoices) = app.get(&key, "/v1/invoices?account=uses").await;
    let periods: Vec<i64> = invoices["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "period")
        .map(|i| i["number"].as_i64().unwrap())
        .collect();
    assert_eq!(periods.len(), 2, "{invoices}");
    for (movement, (cause, number)) in body["data"].as_array().unwrap()[1..]
        .iter()
        .zip([("usage_growth", periods[0]), ("usage_decline", periods[1])])
    {
        assert_eq!(
            (movement["cause"].as_str(), movement["ref_id"].as_i64()),
            (Some(cause), Some(number)),
            "{movement}"
        );
        let sql = format!(
            "(SELECT COUNT(*) FROM outbox WHERE account = 'uses' AND kind = 'revenue.movement'
               AND payload->>'cause' = '{cause}' AND payload->'ref'->>'kind' = 'invoice'
               AND (payload->'ref'->>'id')::int8 = {number})::int8"
        );
        assert_eq!(app.db.count(&sql).await, 1, "{cause}'s outbox event");
    }
    // Every account's movements point at that account's own cause at the movement's time:
    // a change of the account made then, or the account's period invoice closing then. The
    // closes of 2026-12-25 ran in one batch whose MRR inputs mix both kinds (grows and leaves,
    // whose usage inputs move nothing, reference their changes before uses references its
    // invoice draft), so a draft index or invoice number resolved for the wrong input would
    // point at another account's invoice or change.
    let misplaced = app
        .db
        .count(
            "(SELECT COUNT(*) FROM revenue_movements m
               WHERE NOT (
                 (m.ref_kind = 'invoice' AND EXISTS (
                    SELECT 1 FROM invoices i WHERE i.account = m.account AND i.number = m.ref_id
                       AND i.kind = 'period' AND i.period_end = m.at))
                 OR (m.ref_kind = 'subscription_change' AND EXISTS (
                    SELECT 1 FROM subscription_changes c WHERE c.account = m.account
                       AND c.id = m.ref_id AND c.at = m.at))))::int8",
        )
        .await;
    assert_eq!(
        misplaced, 0,
        "movements referencing another account's cause"
    );
    let close_refs = app
        .db
        .count(
            "(SELECT COUNT(*) FROM (SELECT DISTINCT account, ref_kind FROM revenue_movements
               WHERE at = '2026-12-25T12:00:00Z'
                 AND (account, ref_kind) IN (('grows', 'subscription_change'),
                      ('leaves', 'subscription_change'), ('uses', 'invoice'))) d)::int8",
        )
        .await;
    assert_eq!(
        close_refs, 3,
        "the first close mixes change and invoice references"
    );
    let movements = app
        .db
        .count("(SELECT COUNT(*) FROM revenue_movements)::int8")
        .await;
    let events = app
        .db
        .count("(SELECT COUNT(*) FROM outbox WHERE kind = 'revenue.movement')::int8")
        .await;
    assert_eq!((movements, events), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nrr_and_grr_over_a_scripted_cohort_equal_the_hand_computation() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    // The cohort on 2026-12-01: 59 + 83 + 199 + 59 = 400.
    app.subscribe(&key, "a", json!({"plan": "team", "seats": 3}))
        .await;
    app.subscribe(&key, "b", json!({"plan": "team", "seats": 5}))
        .await;
    app.subscribe(&key, "c", json!({"plan": "business", "seats": 5}))
        .await;
    app.subscribe(&key, "d", json!({"plan": "team", "seats": 3}))
        .await;
    // December: a upgrades (+140), b drops two seats at renewal (−24), d cancels (−59),
    // e arrives (outside the cohort).
    app.clock.set(t("2026-12-10T00:00:00.000Z"));
    quote_and_accept(&app, &key, "a", json!({"plan": "business", "seats": 5})).await;
    quote_and_accept(
        &app,
        &key,
        "b",
        json!({"seats": 3, "effective": "period_end"}),
    )
    .await;
    quote_and_accept(&app, &key, "d", json!({"cancel": true})).await;
    app.subscribe(&key, "e", json!({"plan": "team", "seats": 3}))
        .await;
    app.clock.set(t("2026-12-25T12:01:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();

    // b's fewer seats took effect at the renewal, as a seats_removed contraction.
    assert_eq!(
        movements_of(&app, &key, "b").await.last().unwrap(),
        &mv("contraction", "seats_removed", "83.00", "59.00")
    );
    let (status, body) = app
        .get(
            &key,
            "/v1/reports/nrr?from=2026-12-01T00:00:00Z&to=2027-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let w = &body["windows"][0];
    assert_eq!(
        (
            w["starting_mrr"].as_str(),
            w["expansion"].as_str(),
            w["contraction"].as_str(),
            w["churn"].as_str(),
            w["ending_mrr"].as_str(),
            w["accounts"].as_i64()
        ),
        (
            Some("400.00"),
            Some("140.00"),
            Some("24.00"),
            Some("59.00"),
            Some("457.00"),
            Some(4)
        )
    );
    // (400 + 140 − 24 − 59) / 400 and (400 − 24 − 59) / 400.
    assert_eq!(w["nrr"], "1.1425");
    assert_eq!(w["grr"], "0.7925");

    // By month: January's cohort is a 199, b 59, c 199, e 59 with no movement.
    let (_, series) = app
        .get(
            &key,
            "/v1/reports/nrr?from=2026-12-01T00:00:00Z&to=2027-02-01T00:00:00Z&by=month",
        )
        .await;
    let ws = series["windows"].as_array().unwrap();
    assert_eq!(ws.len(), 2, "{series}");
    assert_eq!(ws[0]["nrr"], "1.1425");
    assert_eq!(
        (
            ws[1]["starting_mrr"].as_str(),
            ws[1]["nrr"].as_str(),
            ws[1]["accounts"].as_i64()
        ),
        (Some("516.00"), Some("1"), Some(4))
    );

    // `accrue report nrr` prints the same figures.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "report",
            "nrr",
            "--from",
            "2026-12-01",
            "--to",
            "2027-01-01",
            "--json",
        ])
        .env("DATABASE_URL", &app.db.url)
        .env(
            "ACCRUE_PLANS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/pricing-plans"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, body["windows"]);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "report",
            "nrr",
            "--from",
            "2026-12-01",
            "--to",
            "2027-01-01",
        ])
        .env("DATABASE_URL", &app.db.url)
        .env(
            "ACCRUE_PLANS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/pricing-plans"),
        )
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("114.2 %") && table.contains("79.2 %"),
        "{table}"
    );

    // Bad windows are refused by name.
    let (status, e) = app
        .get(
            &key,
            "/v1/reports/nrr?from=2027-01-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("invalid_window"))
    );
    let (status, e) = app.get(&key, "/v1/reports/nrr?from=2027-01-01").await;
    assert_eq!(status, 422);
    assert_eq!(e["error"]["field"], "from");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not an RFC 3339 timestamp"));
}

// ---------------------------------------------------------------------------------------------
// Outbound events

/// An app whose webhook policy allows loopback receivers (development setting).
pub(crate) async fn spawn_dev_app() -> TestApp {
    let db = TestDb::new().await;
    let (_, mut ctx, clock) = start_instance_unserved(&db.url, std::time::Duration::from_secs(1));
    ctx.webhooks = outbox::WebhookPolicy {
        allow_private: true,
    };
    TestApp {
        base: serve(ctx.clone()),
        db,
        ctx,
        clock,
        http: reqwest::Client::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_flaky_receiver_despite_a_killed_dispatcher_signed_verifiably() {
    let app = spawn_dev_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance,admin", None).await;
    let secret = Arc::new(Mutex::new(String::new()));
    let (url, received) = start_receiver(secret.clone(), 30).await;

    // Loopback targets are refused unless the instance allows them (this one does).
    let strict = spawn_app().await;
    let strict_key = strict.key("admin", None).await;
    let (status, e) = strict
        .post(
            &strict_key,
            "/v1/webhook-endpoints",
            &json!({"url": url}),
            None,
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("invalid_url")),
        "{e}"
    );

    let (status, ep) = app
        .post(
            &key,
            "/v1/webhook-endpoints",
            &json!({"url": url, "kinds": ["revenue.movement"]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    *secret.lock().unwrap() = ep["secret"].as_str().unwrap().to_owned();
    let endpoint = ep["id"].as_i64().unwrap();

    for i in 0..24 {
        app.subscribe(
            &key,
            &format!("acct{i:02}"),
            json!({"plan": "team", "seats": 3}),
        )
        .await;
    }
    let expected: BTreeSet<String> = {
        let (_, feed) = app.get(&key, "/v1/feed?after=0&limit=1000").await;
        feed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(expected.len(), 24);

    // A dispatcher dies while its deliveries are in flight.
    let http = outbox::client(app.ctx.webhooks);
    let doomed = {
        let (ctx, http) = (app.ctx.clone(), http.clone());
        tokio::spawn(async move { outbox::dispatch(&ctx, &http).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    doomed.abort();
    let _ = doomed.await;

    // Later rounds (the clock passing leases and backoffs) deliver everything.
    for _ in 0..12 {
        app.clock.advance(chrono::Duration::seconds(90));
        outbox::dispatch(&app.ctx, &http).await.unwrap();
    }
    {
        let r = received.lock().unwrap();
        let got: BTreeSet<String> = r.accepted.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(got, expected, "every event delivered, each at least once");
        assert!(
            r.accepted.iter().all(|(_, ok)| *ok),
            "every signature verifies"
        );
        assert!(
            r.requests > r.accepted.len(),
            "the receiver did fail some requests"
        );
    }
    let (_, dead) = app
        .get(
            &key,
            &format!("/v1/webhook-endpoints/{endpoint}/deliveries?state=dead"),
        )
        .await;
    assert_eq!(dead["data"], json!([]));
    let (_, delivered) = app
        .get(
            &key,
            &format!("/v1/webhook-endpoints/{endpoint}/deliveries?state=delivered&limit=1000"),
        )
        .await;
    assert_eq!(delivered["data"].as_array().unwrap().len(), 24);
    // A delivered row has nothing left to attempt: no retry time after its delivery.
    for d in delivered["data"].as_array().unwrap() {
        assert!(
            d["next_attempt_at"].as_str() <= d["delivered_at"].as_str(),
            "{d}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_ends_in_the_dead_letter_state_after_three_days() {
    let app = spawn_dev_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance,admin", None).await;
    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}/hook", free_port());
    let (status, ep) = app
        .post(&key, "/v1/webhook-endpoints", &json!({"url": url}), None)
        .await;
    assert_eq!(status, 201, "{ep}");
    let endpoint = ep["id"].as_i64().unwrap();
    app.subscribe(&key, "lonely", json!({"plan": "team", "seats": 3}))
        .await;
    let http = reqwest::Client::new();
    let mut rounds = 0;
    loop {
        outbox::dispatch(&app.ctx, &http).await.unwrap();
        let (_, dead) = app
            .get(
                &key,
                &format!("/v1/webhook-endpoints/{endpoint}/deliveries?state=dead"),
            )
            .await;
        if !dead["data"].as_array().unwrap().is_empty() {
            let d = &dead["data"][0];
            assert!(d["last_error"].as_str().unwrap().contains("request failed"));
            let age = app.clock.now() - t(NOW);
            assert!(
                age >= chrono::Duration::hours(66) && age <= chrono::Duration::hours(78),
                "{age}"
            );
            break;
        }
        rounds += 1;
        assert!(rounds < 100, "never dead-lettered");
        app.clock.advance(chrono::Duration::hours(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_pages_through_events_in_order_with_a_cursor() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance,admin", None).await;
    for i in 0..7 {
        app.subscribe(&key, &format!("f{i}"), json!({"plan": "team", "seats": 3}))
            .await;
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let (status, page) = app
            .get(&key, &format!("/v1/feed?after={after}&limit=3"))
            .await;
        assert_eq!(status, 200, "{page}");
        let events = page["data"].as_array().unwrap().clone();
        if events.is_empty() {
            assert_eq!(page["next_cursor"].as_i64(), Some(after));
            break;
        }
        for e in &events {
            assert_eq!(e["type"], "revenue.movement");
            seen.push((
                e["seq"].as_i64().unwrap(),
                e["account"].as_str().unwrap().to_owned(),
            ));
        }
        after = page["next_cursor"].as_i64().unwrap();
    }
    let seqs: Vec<i64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let accounts: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(accounts, vec!["f0", "f1", "f2", "f3", "f4", "f5", "f6"]);
    // An account-bound key reads its own account's events only.
    let own = app.key("finance", Some("f3")).await;
    let (_, mine) = app.get(&own, "/v1/feed?after=0").await;
    let mine: BTreeMap<String, i64> = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["account"].as_str().unwrap().to_owned(),
                e["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(mine, BTreeMap::from([("f3".to_owned(), 4)]));
}

async fn api_calls(app: &TestApp, key: &str, account: &str, from: usize, n: usize) {
    let evs: Vec<Value> = (from..from + n)
        .map(|i| json!({"id": format!("c{i}"), "account": account, "type": "api.request", "timestamp": NOW}))
        .collect();
    for chunk in evs.chunks(1000) {
        let (status, body) = app.send(key, &json!({ "events": chunk })).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The (type, meter, threshold) of an account's alert events in the feed, once they settle.
async fn alerts_of(
    app: &TestApp,
    key: &str,
    account: &str,
    expected: usize,
) -> Vec<(String, String, i64)> {
    for _ in 0..100 {
        let (_, feed) = app.get(key, "/v1/feed?after=0&limit=1000").await;
        let got: Vec<(String, String, i64)> = feed["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["account"] == account && e["type"] != "revenue.movement")
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["data"]["meter"].as_str().unwrap().to_owned(),
                    e["data"]["threshold_percent"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        if got.len() >= expected {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {expected} alerts for {account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_crossing_50_80_and_100_percent_and_a_refused_request_each_emit_one_event() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing,finance,admin", None).await;
    // Free: 10,000 API calls a month, hard.
    app.subscribe(&key, "watched", json!({"plan": "free", "seats": 1}))
        .await;
    let ask = json!({"meter": "api_calls"});
    let (status, _) = app
        .post(&key, "/v1/accounts/watched/check", &ask, None)
        .await;
    assert_eq!(status, 200);

    api_calls(&app, &key, "watched", 0, 4_999).await;
    api_calls(&app, &key, "watched", 4_999, 1).await; // 5,000: 50 %
    api_calls(&app, &key, "watched", 5_000, 3_000).await; // 8,000: 80 %
    api_calls(&app, &key, "watched", 8_000, 2_000).await; // 10,000: 100 %
    let (_, denied) = app
        .post(&key, "/v1/accounts/watched/check", &ask, None)
        .await;
    assert_eq!(denied["reason"], "limit_exceeded", "{denied}");
    // Asking again changes nothing: every alert is announced once.
    app.post(&key, "/v1/accounts/watched/check", &ask, None)
        .await;
    let alerts = alerts_of(&app, &key, "watched", 4).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let again = alerts_of(&app, &key, "watched", 4).await;
    assert_eq!(alerts, again);
    let mut sorted = alerts.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            ("limit.hit".to_owned(), "api_calls".to_owned(), 0),
            ("usage.threshold".to_owned(), "api_calls".to_owned(), 50),
            ("usage.threshold".to_owned(), "api_calls".to_owned(), 80),
            ("usage.threshold".to_owned(), "api_calls".to_owned(), 100),
        ]
    );

    // An account nobody checked yet is evaluated at its first check.
    app.subscribe(&key, "quiet", json!({"plan": "free", "seats": 1}))
        .await;
    api_calls(&app, &key, "quiet", 0, 6_000).await;
    app.post(&key, "/v1/accounts/quiet/check", &ask, None).await;
    assert_eq!(
        alerts_of(&app, &key, "quiet", 1).await,
        vec![("usage.threshold".to_owned(), "api_calls".to_owned(), 50)]
    );
}

/// Webhook endpoints are managed as Stripe's are: read one, change its url, kinds or state
/// (a disabled endpoint is sent nothing, and once enabled again gets what happens from then
/// on), rotate its secret (the next deliveries are signed with the new one), delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_endpoint_is_read_disabled_enabled_rotated_and_deleted() {
    let app = spawn_dev_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance,admin", None).await;
    let secret = Arc::new(Mutex::new(String::new()));
    let (url, received) = start_receiver(secret.clone(), 0).await;
    let (status, ep) = app
        .post(
            &key,
            "/v1/webhook-endpoints",
            &json!({"url": url, "kinds": ["revenue.movement"]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    *secret.lock().unwrap() = ep["secret"].as_str().unwrap().to_owned();
    let id = ep["id"].as_i64().unwrap();
    let path = format!("/v1/webhook-endpoints/{id}");
    let (status, got) = app.get(&key, &path).await;
    assert_eq!(status, 200);
    assert_eq!(got["url"], url.as_str());
    assert!(
        got.get("secret").is_none(),
        "the secret is shown once: {got}"
    );

    let http = outbox::client(app.ctx.webhooks);
    // Subscribes `account` and delivers what is due (several rounds: the receiver fails one
    // request in five); the accounts whose movement was received, verified, so far.
    let step = |account: &'static str| {
        let (app, key, http, received) = (&app, &key, &http, &received);
        async move {
            app.subscribe(key, account, json!({"plan": "team", "seats": 3}))
                .await;
            for _ in 0..4 {
                app.clock.advance(chrono::Duration::seconds(90));
                outbox::dispatch(&app.ctx, http).await.unwrap();
            }
            let (_, feed) = app.get(key, "/v1/feed?after=0&limit=1000").await;
            let r = received.lock().unwrap();
            let mut got: Vec<String> = feed["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    r.accepted
                        .iter()
                        .any(|(id, ok)| *ok && e["id"] == id.as_str())
                })
                .map(|e| e["account"].as_str().unwrap().to_owned())
                .collect();
            got.sort();
            got.dedup();
            got
        }
    };
    assert_eq!(step("w1").await, vec!["w1"]);
    let patch = |body: Value| {
        let (app, key, path) = (&app, &key, &path);
        async move {
            let res = app
                .http
                .patch(app.url(path))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, off) = patch(json!({"enabled": false})).await;
    assert_eq!(status, 200, "{off}");
    assert!(off["disabled_at"].is_string(), "{off}");
    assert_eq!(step("w2").await, vec!["w1"], "nothing sent while disabled");
    let (status, on) = patch(json!({"enabled": true})).await;
    assert_eq!(status, 200, "{on}");
    assert_eq!(on["disabled_at"], Value::Null);
    assert_eq!(
        step("w3").await,
        vec!["w1", "w3"],
        "what happened while disabled is not sent"
    );

    // A new secret: the old one no longer verifies what comes next, the new one does.
    let (status, rotated) = app
        .post(&key, &format!("{path}/rotate-secret"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, *secret.lock().unwrap());
    assert_eq!(
        step("w4").await,
        vec!["w1", "w3"],
        "signed with the new secret"
    );
    *secret.lock().unwrap() = new_secret;
    assert_eq!(step("w5").await, vec!["w1", "w3", "w5"]);

    let (status, e) = patch(json!({"kinds": ["nope"]})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("unknown_event_kind"))
    );
    let (status, e) = patch(json!({"url": "ftp://example.com/hook"})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("invalid_url"))
    );
    let (status, e) = patch(json!({"secret": "mine"})).await;
    assert_eq!(status, 422, "unknown fields are refused");
    assert_eq!(e["error"]["field"], "secret");

    let res = app
        .http
        .delete(app.url(&path))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let (status, _) = app.get(&key, &path).await;
    assert_eq!(status, 404);
    let res = app
        .http
        .delete(app.url(&path))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

/// Puts the outbox in the state a sequencing round leaves on Citus between its commit on the
/// coordinator and its commit on a worker: the counter has moved past `seq`, and the event
/// numbered `seq` is written but not visible (its transaction on `hold` is still open).
async fn round_not_yet_visible(app: &TestApp, hold: &mut diesel_async::AsyncPgConnection) -> i64 {
    use diesel_async::SimpleAsyncConnection;
    let seq = app
        .db
        .count("(SELECT next_seq FROM outbox_sequencer)")
        .await;
    hold.batch_execute(&format!(
        "BEGIN;
         INSERT INTO outbox (account, event_id, kind, payload, created_at, seq)
         VALUES ('gap-a', 'late', 'revenue.movement', '{{}}', now(), {seq})"
    ))
    .await
    .unwrap();
    app.db
        .update_all("outbox_sequencer", "SET next_seq = next_seq + 1")
        .await;
    seq
}

/// The event ids of a feed page (`id`) or an export page (`event_id`).
fn event_ids(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.get("event_id").unwrap_or(&e["id"]).as_str().unwrap())
        .collect()
}

/// An account's own feed reads one shard, which may show a sequencing round there before the
/// previous round is visible there: the sequencer numbers nothing until the previous round is
/// visible everywhere, so the account's cursor never passes the late event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_feed_never_passes_a_round_not_yet_visible_everywhere() {
    use accrue::store::outbox as ob;
    let app = spawn_app().await;
    let mut conn = app.db.conn().await;
    accrue::store::accounts::ensure(&mut conn, "gap-a", t(NOW))
        .await
        .unwrap();
    let key = app.key("finance", Some("gap-a")).await;
    let after = ob::last_seq(&mut conn).await.unwrap();
    let mut hold = app.db.conn().await;
    let late = round_not_yet_visible(&app, &mut hold).await;
    ob::insert_events(
        &mut conn,
        &[ob::NewEvent {
            account: "gap-a".into(),
            event_id: "next".into(),
            kind: "revenue.movement".into(),
            payload: json!({}),
            created_at: t(NOW),
        }],
    )
    .await
    .unwrap();
    let (status, page) = app
        .get(&key, &format!("/v1/feed?after={after}&limit=100"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(event_ids(&page), Vec::<&str>::new(), "{page}");
    let cursor = page["next_cursor"].as_i64().unwrap();
    assert_eq!(cursor, after, "the cursor must not pass seq {late}");
    {
        use diesel_async::SimpleAsyncConnection;
        hold.batch_execute("COMMIT").await.unwrap();
    }
    let (_, page) = app
        .get(&key, &format!("/v1/feed?after={cursor}&limit=100"))
        .await;
    assert_eq!(event_ids(&page), vec!["late", "next"], "{page}");
    assert_eq!(page["data"][0]["seq"], json!(late), "{page}");
}

/// The movements export reads one kind of a feed in which a round may be visible on one shard
/// and not yet on another: it reads only as far as the numbers are visible without a gap, and
/// its cursor never passes the late movement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_movements_export_never_passes_an_event_not_yet_visible() {
    use diesel_async::SimpleAsyncConnection;
    let app = spawn_app().await;
    let mut conn = app.db.conn().await;
    accrue::store::accounts::ensure(&mut conn, "gap-a", t(NOW))
        .await
        .unwrap();
    let key = app.key("finance", None).await;
    let after = accrue::store::outbox::last_seq(&mut conn).await.unwrap();
    let mut hold = app.db.conn().await;
    let late = round_not_yet_visible(&app, &mut hold).await;
    // The next round, visible already on its own shard, with one movement after an event of
    // another kind.
    conn.batch_execute(&format!(
        "INSERT INTO outbox (account, event_id, kind, payload, created_at, seq)
         VALUES ('gap-a', 'other', 'invoice.issued', '{{}}', now(), {}),
                ('gap-a', 'next', 'revenue.movement', '{{}}', now(), {})",
        late + 1,
        late + 2
    ))
    .await
    .unwrap();
    conn.batch_execute("UPDATE outbox_sequencer SET next_seq = next_seq + 2")
        .await
        .unwrap();
    let (status, page) = app
        .get(&key, &format!("/v1/exports/movements?after={after}"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(event_ids(&page), Vec::<&str>::new(), "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        cursor,
        after.to_string(),
        "the cursor must not pass seq {late}"
    );
    hold.batch_execute("COMMIT").await.unwrap();
    let (_, page) = app
        .get(&key, &format!("/v1/exports/movements?after={cursor}"))
        .await;
    assert_eq!(event_ids(&page), vec!["late", "next"], "{page}");
    // The cursor stands at the end of what was looked through.
    assert_eq!(page["next_cursor"], json!((late + 2).to_string()), "{page}");
    // Read on from there: nothing new, and the cursor stays.
    let (_, page) = app
        .get(&key, &format!("/v1/exports/movements?after={}", late + 2))
        .await;
    assert_eq!(event_ids(&page), Vec::<&str>::new(), "{page}");
    assert_eq!(page["next_cursor"], json!((late + 2).to_string()), "{page}");
}
