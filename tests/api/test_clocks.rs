//! Test clocks through the HTTP API: accounts created on a clock live by its frozen time
//! (event timestamps, trials, closes, collection, dunning), moved only by an advance that runs
//! what falls due in time order; off by default (404).

use crate::fake_stripe::*;
use crate::helpers::*;
use accrue::domain::dunning::DunningPolicy;
use accrue::jobs::{tick, Scheduler};
use serde_json::{json, Value};

async fn new_clock(app: &TestApp, key: &str, at: &str) -> String {
    let (status, c) = app
        .post(
            key,
            "/v1/test-clocks",
            &json!({"frozen_time": at, "name": "story"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["status"], "ready");
    assert_eq!(c["frozen_time"], at);
    c["id"].as_str().unwrap().to_owned()
}

async fn advance(app: &TestApp, key: &str, clock: &str, to: &str) -> Value {
    let (status, c) = app
        .post(
            key,
            &format!("/v1/test-clocks/{clock}/advance"),
            &json!({ "frozen_time": to }),
            None,
        )
        .await;
    assert_eq!(status, 200, "{c}");
    c
}

async fn invoices(app: &TestApp, key: &str, account: &str) -> Vec<Value> {
    let (status, list) = app
        .get(key, &format!("/v1/invoices?account={account}"))
        .await;
    assert_eq!(status, 200, "{list}");
    let mut out = Vec::new();
    for i in list["data"].as_array().unwrap() {
        let (_, inv) = app.get(key, &format!("/v1/invoices/{}", i["number"])).await;
        out.push(inv);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_on_a_test_clock_lives_by_it_through_trial_renewal_and_usage() {
    let app = spawn_app().await;
    app.ctx.enable_test_clocks();
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    // The server's own clock says 2026-11-25; the clock lives in March 2027.
    let clock = new_clock(&app, &key, "2027-03-01T10:15:00.000Z").await;
    let (status, acc) = app
        .patch(
            &key,
            "/v1/accounts/acme",
            &json!({"name": "Acme", "test_clock": clock}),
        )
        .await;
    assert_eq!(status, 201, "{acc}");
    assert_eq!(acc["test_clock"], clock.as_str());
    // The clock is set at creation only.
    let (status, body) = app
        .patch(&key, "/v1/accounts/other", &json!({"name": "Other"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .patch(&key, "/v1/accounts/other", &json!({"test_clock": clock}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "test_clock_fixed");

    let s = app
        .subscribe(
            &key,
            "acme",
            json!({"plan": "team", "seats": 5, "trial": true}),
        )
        .await;
    // Anchored on the clock's hour: the 14-day trial ends 2027-03-15 10:00.
    assert_eq!(s["subscription"]["trial_end"], "2027-03-15T10:00:00.000Z");

    // An event without a timestamp happens at the clock's time; one a day after the clock is
    // in the future for this account (though not for the server's clock... which is earlier
    // still: it is the account's time that counts).
    let (status, body) = app
        .send(
            &key,
            &json!({"events": [{"id": "e1", "account": "acme", "type": "api.request"}]}),
        )
        .await;
    assert_eq!(
        (status, body["accepted"].as_i64()),
        (200, Some(1)),
        "{body}"
    );
    let (_, lineage_free) = app
        .get(
            &key,
            "/v1/accounts/acme/usage?from=2027-03-01T10:00:00Z&to=2027-03-01T11:00:00Z",
        )
        .await;
    let api = lineage_free["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == "api_calls")
        .unwrap()
        .clone();
    assert_eq!(api["value"], "1", "{lineage_free}");
    let (status, body) = app
        .send(
            &key,
            &json!({"events": [{"id": "e2", "account": "acme", "type": "api.request", "timestamp": "2027-03-02T10:15:00.000Z"}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["rejected"][0]["error"]["code"], "timestamp_in_future");

    // The server's own sweep, however late it runs, leaves the clock's account alone.
    app.clock.set(t("2028-01-01T00:00:00.000Z"));
    tick(&app.ctx, &Scheduler::new(t(NOW)).unwrap())
        .await
        .unwrap();
    assert!(invoices(&app, &key, "acme").await.is_empty());

    // Past the trial: converted at 03-15 10:00, its first month 59 + (5 − 3) × 12 = 83.00.
    let c = advance(&app, &key, &clock, "2027-03-20T00:00:00.000Z").await;
    assert_eq!(
        (c["frozen_time"].as_str(), c["status"].as_str()),
        (Some("2027-03-20T00:00:00.000Z"), Some("ready"))
    );
    let invs = invoices(&app, &key, "acme").await;
    assert_eq!(invs.len(), 1);
    assert_eq!(
        (invs[0]["kind"].as_str(), invs[0]["total"].as_str()),
        (Some("start"), Some("83.00"))
    );
    assert_eq!(invs[0]["issued_at"], "2027-03-15T10:00:00.000Z");

    // 2,500 compute minutes now (the clock's time): 2 packages × 8.00 = 16.00 at the close.
    let (status, body) = app
        .send(
            &key,
            &json!({"events": [{"id": "j1", "account": "acme", "type": "job.completed", "properties": {"minutes": 2500}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    advance(&app, &key, &clock, "2027-04-20T00:00:00.000Z").await;
    let invs = invoices(&app, &key, "acme").await;
    assert_eq!(invs.len(), 2);
    let close = &invs[1];
    assert_eq!(close["period_start"], "2027-03-15T10:00:00.000Z");
    assert_eq!(close["issued_at"], "2027-04-15T10:00:00.000Z");
    // 16.00 in arrears + 83.00 in advance.
    assert_eq!(close["total"], "99.00");
    let (_, got) = app.get(&key, &format!("/v1/test-clocks/{clock}")).await;
    assert_eq!(got["frozen_time"], "2027-04-20T00:00:00.000Z");

    // A clock only moves forward.
    let (status, body) = app
        .post(
            &key,
            &format!("/v1/test-clocks/{clock}/advance"),
            &json!({"frozen_time": "2027-04-01T00:00:00.000Z"}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "frozen_time_before_current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_clock_routes_are_not_found_unless_enabled_and_need_an_admin_key() {
    let app = spawn_app().await;
    let admin = app.key("admin", None).await;
    let (status, _) = app
        .post(
            &admin,
            "/v1/test-clocks",
            &json!({"frozen_time": "2027-01-01T00:00:00.000Z"}),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = app
        .patch(&admin, "/v1/accounts/acme", &json!({"test_clock": "clk_x"}))
        .await;
    // admin alone cannot write accounts; a billing key gets the clear refusal.
    assert!(status == 403 || status == 422, "{status} {body}");
    let billing = app.key("billing", None).await;
    let (status, body) = app
        .patch(
            &billing,
            "/v1/accounts/acme",
            &json!({"test_clock": "clk_x"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "test_clocks_disabled");

    app.ctx.enable_test_clocks();
    let (status, _) = app
        .post(
            &billing,
            "/v1/test-clocks",
            &json!({"frozen_time": "2027-01-01T00:00:00.000Z"}),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = app.get(&admin, "/v1/test-clocks/clk_nope").await;
    assert_eq!(status, 404, "{body}");
}

/// Collection and dunning on the clock's time with the fake Stripe: a declined card is retried
/// 3, 5 and 7 days after the first failure as the clock passes those days, then suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dunning_retries_run_as_a_test_clock_passes_their_days() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.ctx.enable_test_clocks();
    app.publish_plans().await;
    let key = app.key("admin,billing,finance", None).await;
    let clock = new_clock(&app, &key, "2027-03-01T10:15:00.000Z").await;
    let mut body = account_body("d@example.com");
    body["test_clock"] = json!(clock);
    let (status, acc) = app.patch(&key, "/v1/accounts/declines", &body).await;
    assert_eq!(status, 201, "{acc}");
    let pm = fake_stripe().card(DECLINING_CARD).await;
    let (status, set) = app
        .put(
            &key,
            "/v1/accounts/declines/payment-method",
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    app.subscribe(&key, "declines", json!({"plan": "team", "seats": 5}))
        .await;
    let inv = eventually("the first attempt", || async {
        let (_, inv) = app.get(&key, "/v1/invoices/1").await;
        (inv["payment"]["state"] == "failed").then_some(inv)
    })
    .await;
    assert_eq!(
        inv["payment"]["next_attempt_at"],
        "2027-03-04T10:15:00.000Z"
    );

    advance(&app, &key, &clock, "2027-03-10T00:00:00.000Z").await;
    let (_, d) = app.get(&key, "/v1/accounts/declines/dunning").await;
    assert_eq!(d["status"], "suspended", "{d}");
    let steps: Vec<(String, String)> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let failed_at: Vec<&str> = steps
        .iter()
        .filter(|s| s.0 == "payment_failed" || s.0 == "retry_failed")
        .map(|s| s.1.as_str())
        .collect();
    // First failure at subscription, then 3, 5 and 7 days later, on the clock.
    assert_eq!(
        failed_at,
        vec![
            "2027-03-01T10:15:00.000Z",
            "2027-03-04T10:15:00.000Z",
            "2027-03-06T10:15:00.000Z",
            "2027-03-08T10:15:00.000Z"
        ]
    );
}

/// A clock being advanced (here: by another instance, whose session lock the test holds)
/// refuses a second advance with 409 `clock_advancing`, so two advances never interleave their
/// steps; once the first is done the clock advances again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_being_advanced_refuses_a_second_advance() {
    use diesel_async::SimpleAsyncConnection;
    let app = spawn_app().await;
    app.ctx.enable_test_clocks();
    let key = app.key("admin", None).await;
    let clock = new_clock(&app, &key, "2026-11-25T12:00:00.000Z").await;
    let mut other = app.db.conn().await;
    other
        .batch_execute(&format!(
            "SELECT pg_advisory_lock(hashtextextended('test_clock/{clock}', 7462002))"
        ))
        .await
        .unwrap();
    let (status, body) = app
        .post(
            &key,
            &format!("/v1/test-clocks/{clock}/advance"),
            &json!({"frozen_time": "2026-12-01T00:00:00.000Z"}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "clock_advancing");
    let (_, c) = app.get(&key, &format!("/v1/test-clocks/{clock}")).await;
    assert_eq!(c["frozen_time"], "2026-11-25T12:00:00.000Z");
    // Let go explicitly (a dropped connection's locks end only once the server notices).
    other
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock(hashtextextended('test_clock/{clock}', 7462002))"
        ))
        .await
        .unwrap();
    let c = advance(&app, &key, &clock, "2026-12-01T00:00:00.000Z").await;
    assert_eq!(c["status"], "ready");
}
