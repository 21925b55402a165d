//! Accounts, subscriptions, quotes and acceptance: the self-serve story to the cent,
//! idempotency, concurrency, seat limits and sales-only plans.

use crate::helpers::*;
use serde_json::{json, Value};

async fn quote(app: &TestApp, key: &str, account: &str, body: Value) -> (u16, Value) {
    app.post(
        key,
        &format!("/v1/accounts/{account}/subscription/quotes"),
        &body,
        None,
    )
    .await
}

async fn accept(
    app: &TestApp,
    key: &str,
    account: &str,
    quote_id: &str,
    idem: &str,
) -> (u16, Value) {
    app.post(
        key,
        &format!("/v1/accounts/{account}/subscription/quotes/{quote_id}/accept"),
        &json!({}),
        Some(idem),
    )
    .await
}

fn amounts(lines: &Value) -> Vec<String> {
    lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_serve_story_free_trial_paid_seats_upgrade_downgrade_to_the_cent() {
    let app = spawn_app().await;
    app.publish_plans().await;
    // The customer's own key, as the product's UI would hold it.
    let key = app.key("billing,check", Some("acme")).await;
    let (status, acc) = app
        .patch(
            &key,
            "/v1/accounts/acme",
            &json!({"name": "Acme", "email": "ops@acme.io", "employees": 12}),
        )
        .await;
    assert_eq!(status, 201, "{acc}");

    // Free: no payment, no charge. Periods anchor on the start hour.
    let (status, s) = app
        .post(
            &key,
            "/v1/accounts/acme/subscription",
            &json!({"plan": "free"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["amount_due_now"], "0.00");
    assert_eq!(
        s["subscription"]["current_period"]["start"],
        "2026-11-25T12:00:00.000Z"
    );
    assert_eq!(
        s["subscription"]["current_period"]["end"],
        "2026-12-25T12:00:00.000Z"
    );

    // Free → trial of Team with 5 seats: nothing charged during the 14-day trial.
    let (status, q) = quote(
        &app,
        &key,
        "acme",
        json!({"plan": "team", "seats": 5, "trial": true}),
    )
    .await;
    assert_eq!(status, 201, "{q}");
    assert_eq!(
        (q["kind"].as_str(), q["amount_due_now"].as_str()),
        (Some("trial_started"), Some("0.00"))
    );
    let (status, a) = accept(&app, &key, "acme", q["id"].as_str().unwrap(), "k-trial").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["subscription"]["status"], "trialing");
    assert_eq!(a["subscription"]["trial_end"], "2026-12-09T12:00:00.000Z");

    // Trial → paid: at trial end it converts, anchored there; advance fees 59 + (5 − 3) × 12.
    app.clock.set(t("2026-12-09T13:00:00.000Z"));
    let (_, s) = app.get(&key, "/v1/accounts/acme/subscription").await;
    assert_eq!(s["status"], "active");
    assert_eq!(s["current_period"]["start"], "2026-12-09T12:00:00.000Z");
    assert_eq!(s["current_period"]["end"], "2027-01-09T12:00:00.000Z");
    let (_, ch) = app
        .get(&key, "/v1/accounts/acme/subscription/changes")
        .await;
    let conv = ch["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "trial_converted")
        .unwrap()
        .clone();
    assert_eq!(conv["amount"], "83.00");

    // Add seats mid-period: 5 → 8 on 2026-12-20T00:00, 20.5 of 31 days left
    // (factor 1,771,200 / 2,678,400). Credit 83 × f = 54.887… → −54.89; charge 119 × f =
    // 78.693… → 78.69; due 23.80.
    app.clock.set(t("2026-12-20T00:00:00.000Z"));
    let (status, q) = quote(&app, &key, "acme", json!({"seats": 8})).await;
    assert_eq!(status, 201, "{q}");
    assert_eq!(q["kind"], "seats_added");
    assert_eq!(q["effective"], "now");
    assert_eq!(amounts(&q["lines"]), ["-54.89", "78.69"]);
    assert_eq!(q["amount_due_now"], "23.80");
    let (status, a) = accept(&app, &key, "acme", q["id"].as_str().unwrap(), "k-seats").await;
    assert_eq!(status, 200, "{a}");
    // Acceptance charges exactly the quote.
    assert_eq!(a["lines"], q["lines"]);
    assert_eq!(a["amount_due_now"], q["amount_due_now"]);
    assert_eq!(a["subscription"]["seats"], 8);
    // It names the invoice it issued, which bills exactly that.
    let issued = a["invoices"].as_array().unwrap();
    assert_eq!(issued.len(), 1, "{a}");
    let (_, inv) = app.get(&key, &format!("/v1/invoices/{}", issued[0])).await;
    assert_eq!(
        (inv["kind"].as_str(), inv["total"].as_str()),
        (Some("change"), Some("23.80"))
    );

    // Upgrade mid-period to Business on 2026-12-25T00:00: 15.5 of 31 days left, factor 0.5.
    // Credit −119 × 0.5 = −59.50; Business with 8 seats (10 included) = 199 × 0.5 = 99.50.
    app.clock.set(t("2026-12-25T00:00:00.000Z"));
    let (_, q) = quote(&app, &key, "acme", json!({"plan": "business"})).await;
    assert_eq!(q["kind"], "upgrade");
    assert_eq!(amounts(&q["lines"]), ["-59.50", "99.50"]);
    assert_eq!(q["amount_due_now"], "40.00");
    let (status, a) = accept(&app, &key, "acme", q["id"].as_str().unwrap(), "k-up").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["amount_due_now"], "40.00");

    // Downgrade back to Team: at period end, nothing charged now; asking for now is refused.
    app.clock.set(t("2026-12-28T00:00:00.000Z"));
    let (status, e) = quote(
        &app,
        &key,
        "acme",
        json!({"plan": "team", "effective": "now"}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("downgrade_at_period_end"))
    );
    let (_, q) = quote(&app, &key, "acme", json!({"plan": "team"})).await;
    assert_eq!(q["kind"], "downgrade");
    assert_eq!(q["effective"], "period_end");
    assert_eq!(q["effective_at"], "2027-01-09T12:00:00.000Z");
    assert_eq!(q["amount_due_now"], "0.00");
    let (status, a) = accept(&app, &key, "acme", q["id"].as_str().unwrap(), "k-down").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["subscription"]["plan"], "business");
    assert_eq!(a["subscription"]["scheduled_change"]["plan"], "team");

    // At the period end the downgrade applies; the new period's advance fees are Team's 119.00.
    app.clock.set(t("2027-01-10T00:00:00.000Z"));
    let (_, s) = app.get(&key, "/v1/accounts/acme/subscription").await;
    assert_eq!(s["plan"], "team");
    assert_eq!(s["seats"], 8);
    assert_eq!(s["current_period"]["start"], "2027-01-09T12:00:00.000Z");
    assert_eq!(s["current_period"]["end"], "2027-02-09T12:00:00.000Z");
    assert!(s["scheduled_change"].is_null());
    let (_, ch) = app
        .get(&key, "/v1/accounts/acme/subscription/changes")
        .await;
    let applied = ch["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "scheduled_change_applied")
        .unwrap()
        .clone();
    assert_eq!(applied["amount"], "119.00");
    assert_eq!(applied["at"], "2027-01-09T12:00:00.000Z");
    // Sides as a quote shows them.
    assert_eq!(
        applied["to"],
        json!({"plan": "team", "version": 2, "seats": 8})
    );
    assert_eq!(applied["from"]["plan"], "business");

    // Every charge above was invoiced, for exactly the quoted amounts.
    let (status, list) = app.get(&key, "/v1/invoices").await;
    assert_eq!(status, 200, "{list}");
    let invoices = list["data"].as_array().unwrap();
    let summary: Vec<(&str, &str)> = invoices
        .iter()
        .map(|i| (i["kind"].as_str().unwrap(), i["total"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("start", "83.00"),
            ("change", "23.80"),
            ("change", "40.00"),
            ("period", "119.00")
        ]
    );
    let (_, seats_invoice) = app
        .get(&key, &format!("/v1/invoices/{}", invoices[1]["number"]))
        .await;
    assert_eq!(amounts(&seats_invoice["lines"]), ["-54.89", "78.69"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_is_idempotent_per_key_and_refuses_stale_quotes() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    let s = app
        .subscribe(&key, "acme", json!({"plan": "team", "seats": 4}))
        .await;
    // Subscribing names the invoice of its advance fees: 59 + (4 − 3) × 12.
    let (_, inv) = app
        .get(&key, &format!("/v1/invoices/{}", s["invoices"][0]))
        .await;
    assert_eq!(
        (inv["kind"].as_str(), inv["total"].as_str()),
        (Some("start"), Some("71.00")),
        "{s}"
    );
    let (_, q1) = quote(&app, &key, "acme", json!({"seats": 6})).await;
    let (_, q2) = quote(&app, &key, "acme", json!({"seats": 7})).await;
    let id1 = q1["id"].as_str().unwrap();
    let (s1, a1) = accept(&app, &key, "acme", id1, "same-key").await;
    let (s2, a2) = accept(&app, &key, "acme", id1, "same-key").await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a1, a2, "the same key gives the same answer");
    let changes = app
        .db
        .count("(SELECT COUNT(*) FROM subscription_changes WHERE quote_id IS NOT NULL)::int8")
        .await;
    assert_eq!(changes, 1, "no second effect");
    // The same key for another quote is refused.
    let (status, e) = accept(&app, &key, "acme", q2["id"].as_str().unwrap(), "same-key").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // q2 was made before q1 was accepted: the subscription moved since.
    let (status, e) = accept(&app, &key, "acme", q2["id"].as_str().unwrap(), "other-key").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("subscription_changed"))
    );
    // No key at all.
    let res = app
        .http
        .post(app.url(&format!(
            "/v1/accounts/acme/subscription/quotes/{id1}/accept"
        )))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    // An expired quote.
    let (_, q3) = quote(&app, &key, "acme", json!({"seats": 9})).await;
    app.clock.advance(chrono::Duration::minutes(31));
    let (status, e) = accept(&app, &key, "acme", q3["id"].as_str().unwrap(), "late-key").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("quote_expired"))
    );
    let (_, s) = app.get(&key, "/v1/accounts/acme/subscription").await;
    assert_eq!(s["seats"], 6);
    // A quote can be read back, with where it stands.
    let status_of = |q: &Value| {
        let path = format!(
            "/v1/accounts/acme/subscription/quotes/{}",
            q["id"].as_str().unwrap()
        );
        let app = &app;
        let key = key.clone();
        async move {
            let (status, got) = app.get(&key, &path).await;
            assert_eq!(status, 200, "{got}");
            got
        }
    };
    let got = status_of(&q1).await;
    assert_eq!(
        (got["status"].as_str(), got["amount_due_now"].clone()),
        (Some("accepted"), q1["amount_due_now"].clone())
    );
    assert!(got["accepted_at"].is_string());
    assert_eq!(status_of(&q3).await["status"], "expired");
    let (_, q4) = quote(&app, &key, "acme", json!({"seats": 8})).await;
    let got = status_of(&q4).await;
    assert_eq!(got["status"], "open");
    assert!(got["accepted_at"].is_null());
    assert_eq!(got["lines"], q4["lines"]);
    let (status, _) = app
        .get(&key, "/v1/accounts/acme/subscription/quotes/q_nope")
        .await;
    assert_eq!(status, 404);
    let other = app.key("billing", Some("beta")).await;
    let (status, _) = app
        .get(
            &other,
            &format!(
                "/v1/accounts/acme/subscription/quotes/{}",
                q4["id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(status, 404, "another account's key does not see it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_seat_changes_sum_exactly_and_never_pass_the_plan_maximum() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 40}))
        .await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (http, base, key) = (app.http.clone(), app.base.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            // Each client adds one seat, re-quoting when another change got in first.
            for attempt in 0..8 {
                let s: Value = http
                    .get(format!("{base}/v1/accounts/acme/subscription"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let seats = s["seats"].as_u64().unwrap();
                let res = http
                    .post(format!("{base}/v1/accounts/acme/subscription/quotes"))
                    .bearer_auth(&key)
                    .json(&json!({"seats": seats + 1}))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let q: Value = res.json().await.unwrap();
                // Another client's change landed between our read and our quote.
                if status == 422 && q["error"]["code"] == "no_change" {
                    continue;
                }
                if status == 422 {
                    assert_eq!(q["error"]["code"], "seat_limit", "{q}");
                    return "limit";
                }
                assert_eq!(status, 201, "{q}");
                let res = http
                    .post(format!(
                        "{base}/v1/accounts/acme/subscription/quotes/{}/accept",
                        q["id"].as_str().unwrap()
                    ))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("c{i}-{attempt}"))
                    .send()
                    .await
                    .unwrap();
                match res.status().as_u16() {
                    200 => return "accepted",
                    409 => continue,
                    other => panic!("unexpected {other}: {}", res.text().await.unwrap()),
                }
            }
            "gave_up"
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() == "accepted" {
            accepted += 1;
        }
    }
    let (_, s) = app.get(&key, "/v1/accounts/acme/subscription").await;
    let seats = s["seats"].as_i64().unwrap();
    assert_eq!(
        seats,
        40 + accepted,
        "final seats are the initial plus every accepted change"
    );
    assert!(seats <= 50, "never above the plan maximum");
    assert!(accepted >= 1);
    let recorded = app
        .db
        .count("(SELECT COUNT(*) FROM subscription_changes WHERE kind = 'seats_added')::int8")
        .await;
    assert_eq!(recorded, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_limits_and_sales_only_plans_are_refused_with_the_way_out() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let customer = app.key("billing", Some("acme")).await;
    let sales = app.key("billing", None).await;
    app.subscribe(&customer, "acme", json!({"plan": "team", "seats": 3}))
        .await;
    let (status, e) = quote(&app, &customer, "acme", json!({"seats": 51})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("seat_limit"))
    );
    assert_eq!(
        e["error"]["message"],
        "seat limit 50 on plan team: ask for 50 or fewer, or choose business for 51"
    );
    let (status, e) = quote(
        &app,
        &customer,
        "acme",
        json!({"plan": "enterprise", "seats": 60}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("plan_not_self_serve"))
    );
    let (status, e) = app
        .post(
            &customer,
            "/v1/accounts/acme/subscription",
            &json!({"plan": "team"}),
            None,
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("subscription_exists"))
    );
    // Sales (an operator key, not bound to the account) may move it to enterprise.
    let (status, q) = quote(
        &app,
        &sales,
        "acme",
        json!({"plan": "enterprise", "seats": 60}),
    )
    .await;
    assert_eq!(status, 201, "{q}");
    assert_eq!(q["kind"], "upgrade");
    let (status, e) = quote(&app, &sales, "acme", json!({"plan": "nope"})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("unknown_plan"))
    );
    let (status, e) = quote(&app, &sales, "acme", json!({"seats": 3})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("no_change"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_scoped_key_gets_404_on_every_route_of_another_account() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let ops = app.key("admin", None).await;
    app.subscribe(&ops, "globex", json!({"plan": "team"})).await;
    let (_, q) = quote(&app, &ops, "globex", json!({"seats": 9})).await;
    let qid = q["id"].as_str().unwrap().to_owned();
    let acme = app
        .key("ingest,check,billing,finance,admin", Some("acme"))
        .await;
    let g = "/v1/accounts/globex";
    let gets = [
        g.to_string(),
        format!("{g}/usage"),
        format!("{g}/subscription"),
        format!("{g}/subscription/changes"),
    ];
    for path in &gets {
        let (status, body) = app.get(&acme, path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "GET {path}"
        );
    }
    let posts: [(String, Value); 4] = [
        (format!("{g}/subscription"), json!({"plan": "free"})),
        (format!("{g}/subscription/quotes"), json!({"seats": 12})),
        (format!("{g}/subscription/quotes/{qid}/accept"), json!({})),
        (format!("{g}/check"), json!({"feature": "sso"})),
    ];
    for (path, body) in &posts {
        let (status, res) = app.post(&acme, path, body, Some("k")).await;
        assert_eq!(
            (status, res["error"]["code"].as_str()),
            (404, Some("not_found")),
            "POST {path}"
        );
    }
    let (status, _) = app.patch(&acme, g, &json!({"name": "Hijacked"})).await;
    assert_eq!(status, 404);
    // A partial PUT is refused for its missing fields only once the account is in reach.
    let (status, _) = app.put(&acme, g, &json!({"name": "Hijacked"})).await;
    assert_eq!(status, 404);
    // globex's first invoice (its Team advance fees) is out of reach too.
    for path in [
        "/v1/invoices/1",
        "/v1/invoices/1/lineage",
        "/v1/invoices?account=globex",
    ] {
        let (status, body) = app.get(&acme, path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "GET {path}"
        );
    }
    let (_, own) = app.get(&acme, "/v1/invoices").await;
    assert_eq!(own["data"].as_array().unwrap().len(), 0);
    let (_, s) = app.get(&ops, "/v1/accounts/globex/subscription").await;
    assert_eq!(s["seats"], 1, "nothing changed on globex");
    let (_, a) = app.get(&ops, "/v1/accounts/globex").await;
    assert!(a["name"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_quote_command_prints_the_same_lines_as_the_api() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.clock.set(t("2026-12-10T08:15:30.000Z"));
    let (status, q) = quote(&app, &key, "acme", json!({"plan": "business", "seats": 12})).await;
    assert_eq!(status, 201, "{q}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "quote",
            "--plan",
            "team@2",
            "--seats",
            "5",
            "--to-plan",
            "business@1",
            "--to-seats",
            "12",
            "--period-start",
            "2026-11-25T12:00:00.000Z",
            "--period-end",
            "2026-12-25T12:00:00.000Z",
            "--at",
            "2026-12-10T08:15:30.000Z",
        ])
        .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["lines"], q["lines"]);
    assert_eq!(cli["amount_due_now"], q["amount_due_now"]);
    // 1,309,470 of 2,592,000 s left: credit 83 × f = 41.931… → −41.93; business with 12 seats
    // (10 included): 239 × f = 120.741… → 120.74.
    assert_eq!(amounts(&cli["lines"]), ["-41.93", "120.74"]);

    // Across intervals (B18): the same new year from the change in both.
    let (status, q) = quote(
        &app,
        &key,
        "acme",
        json!({"plan": "business_annual", "seats": 12}),
    )
    .await;
    assert_eq!(status, 201, "{q}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "quote",
            "--plan",
            "team@2",
            "--seats",
            "5",
            "--to-plan",
            "business_annual@2",
            "--to-seats",
            "12",
            "--period-start",
            "2026-11-25T12:00:00.000Z",
            "--period-end",
            "2026-12-25T12:00:00.000Z",
            "--at",
            "2026-12-10T08:15:30.000Z",
        ])
        .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["lines"], q["lines"]);
    assert_eq!(cli["new_period"], q["new_period"]);
    // The new year starts at 08:00 and the old month is credited from there: 364 of 720
    // hours left, 83 × 364 / 720 = 41.961… → −41.96; the whole year: 1,990 + (12 − 10) × 200
    // = 2,390.00.
    assert_eq!(amounts(&cli["lines"]), ["-41.96", "2390.00"]);
    assert_eq!(cli["amount_due_now"], "2348.04");

    // Newcomer S1-4: the offline quote decides as the API does.
    let offline = |extra: &[&str]| {
        let mut args = vec![
            "quote",
            "--plan",
            "team@2",
            "--period-start",
            "2026-11-25T12:00:00.000Z",
            "--period-end",
            "2026-12-25T12:00:00.000Z",
            "--at",
            "2026-12-10T08:15:30.000Z",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
            .args(&args)
            .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
            .output()
            .unwrap()
    };
    // A seat decrease on team (downgrade at period end): nothing now, as the API's quote.
    let (status, q) = quote(&app, &key, "acme", json!({"seats": 4})).await;
    assert_eq!(status, 201, "{q}");
    let out = offline(&["--seats", "5", "--to-seats", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "kind",
        "effective",
        "effective_at",
        "lines",
        "amount_due_now",
    ] {
        assert_eq!(cli[field], q[field], "{field}: {cli} vs {q}");
    }
    assert_eq!(cli["effective"], "period_end");
    // Asking for it now is refused by both.
    let (status, q) = quote(&app, &key, "acme", json!({"seats": 4, "effective": "now"})).await;
    assert_eq!(status, 422, "{q}");
    let out = offline(&["--seats", "5", "--to-seats", "4", "--effective", "now"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("period end"));
    // Past the plan's seat limit: refused by both, naming the plan that allows it.
    let (status, q) = quote(&app, &key, "acme", json!({"seats": 80})).await;
    assert_eq!(
        (status, q["error"]["code"].as_str()),
        (422, Some("seat_limit")),
        "{q}"
    );
    let out = offline(&["--seats", "5", "--to-seats", "80"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(q["error"]["message"].as_str().unwrap()),
        "{err}"
    );
    // Seats default to the plan's minimum, and the new plan keeps them at least its own:
    // team (min 1) → business (min 5) is priced with 5 seats, not 0.
    let out = offline(&["--to-plan", "business@1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["to"]["seats"], 5, "{cli}");
    assert_eq!(cli["from"]["seats"], 1, "{cli}");
    // --to-seats alone changes seats on the current plan.
    let out = offline(&["--seats", "5", "--to-seats", "8"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["kind"], "seats_added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_takes_effect_at_period_end_with_a_last_invoice_and_no_renewal() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,check,finance", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 4}))
        .await;
    let (status, q) = quote(&app, &key, "acme", json!({"cancel": true})).await;
    assert_eq!(status, 201, "{q}");
    assert_eq!(
        (q["kind"].as_str(), q["effective"].as_str()),
        (Some("cancel"), Some("period_end"))
    );
    assert_eq!(q["effective_at"], "2026-12-25T12:00:00.000Z");
    assert_eq!(q["amount_due_now"], "0.00");
    let (status, _) = accept(&app, &key, "acme", q["id"].as_str().unwrap(), "cancel-1").await;
    assert_eq!(status, 200);
    // Still active, with access, until the period ends.
    let v = app
        .post(
            &key,
            "/v1/accounts/acme/check",
            &json!({"feature": "api_access"}),
            None,
        )
        .await
        .1;
    assert_eq!(v["allowed"], true);
    app.clock.set(t("2026-12-26T00:00:00.000Z"));
    let (_, s) = app.get(&key, "/v1/accounts/acme/subscription").await;
    assert_eq!(s["status"], "canceled");
    let v = app
        .post(
            &key,
            "/v1/accounts/acme/check",
            &json!({"feature": "api_access"}),
            None,
        )
        .await
        .1;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("no_subscription"))
    );
    // The last period is invoiced (usage in arrears) without advance fees for a next one.
    let (_, list) = app.get(&key, "/v1/invoices?account=acme").await;
    let last = list["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["total"].as_str()),
        (Some("period"), Some("0.00"))
    );
    let (_, inv) = app
        .get(&key, &format!("/v1/invoices/{}", last["number"]))
        .await;
    assert!(inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["kind"] == "usage"));
    // A canceled subscription cannot be changed.
    let (status, e) = quote(&app, &key, "acme", json!({"seats": 5})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("subscription_canceled"))
    );
}

/// A scheduled cancellation can be undone before it takes effect: the subscription then
/// renews as it was (the next month's 59 + 2 × 12 = 83.00 in advance), and undoing nothing is
/// a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_cancellation_can_be_undone_and_the_subscription_renews() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    app.subscribe(&key, "undo", json!({"plan": "team", "seats": 5}))
        .await;
    app.quote_and_accept(&key, "undo", json!({"cancel": true}))
        .await;
    let (_, s) = app.get(&key, "/v1/accounts/undo/subscription").await;
    assert_eq!(s["scheduled_change"]["cancel"], true, "{s}");

    let url = app.url("/v1/accounts/undo/subscription/scheduled-change");
    let res = app
        .http
        .delete(&url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let s: Value = res.json().await.unwrap();
    assert_eq!(s["scheduled_change"], Value::Null, "{s}");
    let res = app
        .http
        .delete(&url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "nothing_scheduled");
    let (_, changes) = app
        .get(&key, "/v1/accounts/undo/subscription/changes")
        .await;
    assert!(
        changes.to_string().contains("cancellation_revoked"),
        "{changes}"
    );

    // Past the period end the subscription renews.
    app.clock.set(t("2026-12-25T12:05:00.000Z"));
    accrue::jobs::tick(&app.ctx, &accrue::jobs::Scheduler::new(t(NOW)).unwrap())
        .await
        .unwrap();
    let (_, s) = app.get(&key, "/v1/accounts/undo/subscription").await;
    assert_eq!(s["status"], "active", "{s}");
    assert_eq!(s["current_period"]["start"], "2026-12-25T12:00:00.000Z");
    let (_, list) = app.get(&key, "/v1/invoices?account=undo").await;
    let period = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "period")
        .expect("a period invoice");
    assert_eq!(period["total"], "83.00");
}

/// L6. Subscribing with an Idempotency-Key: a retry after a lost answer gets the first answer
/// again (201, the same subscription and amount) and nothing is created or charged twice;
/// without the key a second subscribe is still `409 subscription_exists`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_retried_with_its_idempotency_key_gets_the_first_answer() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    let body = json!({"plan": "team", "seats": 5});
    let (status, first) = app
        .post(
            &key,
            "/v1/accounts/again/subscription",
            &body,
            Some("sub-1"),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["amount_due_now"], "83.00");
    let (status, replay) = app
        .post(
            &key,
            "/v1/accounts/again/subscription",
            &body,
            Some("sub-1"),
        )
        .await;
    assert_eq!(status, 201, "{replay}");
    assert_eq!(replay, first);
    let (status, e) = app
        .post(&key, "/v1/accounts/again/subscription", &body, None)
        .await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["error"]["code"], "subscription_exists");
    let (_, list) = app.get(&key, "/v1/invoices?account=again").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "one start invoice"
    );
}

/// Security review L7: a read of the subscription (finance) took the row lock and could wait on
/// a change in progress. A read of a subscription with nothing due takes no lock and writes
/// nothing; one whose period ended still shows the closed period's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_subscription_takes_no_lock_unless_its_period_is_due() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 3}))
        .await;
    let (_, before) = app.get(&key, "/v1/accounts/acme/subscription").await;
    // Another transaction holds the subscription's row lock (a change in progress).
    let mut holder = app.db.conn().await;
    diesel_async::RunQueryDsl::execute(diesel::sql_query("BEGIN"), &mut holder)
        .await
        .unwrap();
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("SELECT 1 FROM subscriptions WHERE account = 'acme' FOR UPDATE"),
        &mut holder,
    )
    .await
    .unwrap();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        app.get(&key, "/v1/accounts/acme/subscription"),
    )
    .await
    .expect("the read waited for the row lock");
    assert_eq!(read.0, 200, "{}", read.1);
    assert_eq!(read.1, before, "the read shows the same subscription");
    diesel_async::RunQueryDsl::execute(diesel::sql_query("ROLLBACK"), &mut holder)
        .await
        .unwrap();
    let revision = "(SELECT revision FROM subscriptions WHERE account = 'acme')";
    let invoices = "(SELECT COUNT(*) FROM invoices WHERE account = 'acme')";
    let (r0, i0) = (app.db.count(revision).await, app.db.count(invoices).await);
    app.get(&key, "/v1/accounts/acme/subscription").await;
    assert_eq!(
        (app.db.count(revision).await, app.db.count(invoices).await),
        (r0, i0),
        "a read of a subscription with nothing due writes nothing"
    );
    // A month on, the period is due: the read shows it closed, its invoice issued.
    app.clock.advance(chrono::Duration::days(32));
    let (status, after) = app.get(&key, "/v1/accounts/acme/subscription").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after["current_period"]["start"],
        before["current_period"]["end"]
    );
    assert_eq!(app.db.count(invoices).await, i0 + 1);
}
