//! Product-qualified leads from real ingested events: every rubric signal, tiers and zones
//! (with the CRM-owner override), a tier change reaching a webhook endpoint, and the funnel
//! against a hand count.

use crate::helpers::*;
use crate::receiver::start_receiver;
use crate::revenue::spawn_dev_app;
use accrue::services::{outbox, pql};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

fn at_days_ago(days: i64) -> String {
    (t(NOW) - chrono::Duration::days(days)).to_rfc3339()
}

async fn send(app: &TestApp, key: &str, evs: Vec<Value>) {
    for chunk in evs.chunks(1000) {
        let (status, body) = app.send(key, &json!({ "events": chunk })).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["rejected"].as_array().is_none_or(|r| r.is_empty()),
            "{body}"
        );
    }
}

/// Events meeting every usage signal of the standard rubric for `account`.
fn engaged(account: &str, api_calls: usize) -> Vec<Value> {
    let mut evs = vec![
        json!({"id": format!("{account}-p"), "account": account, "type": "project.created", "timestamp": at_days_ago(1)}),
        json!({"id": format!("{account}-t1"), "account": account, "type": "teammate.invited", "timestamp": at_days_ago(2), "properties": {"invitee_email": "a@x.io"}}),
        json!({"id": format!("{account}-t2"), "account": account, "type": "teammate.invited", "timestamp": at_days_ago(2), "properties": {"invitee_email": "b@x.io"}}),
        json!({"id": format!("{account}-u1"), "account": account, "type": "user.active", "timestamp": at_days_ago(3), "properties": {"user_id": "u1"}}),
        json!({"id": format!("{account}-u2"), "account": account, "type": "user.active", "timestamp": at_days_ago(3), "properties": {"user_id": "u2"}}),
        json!({"id": format!("{account}-v"), "account": account, "type": "pricing_page.viewed", "timestamp": at_days_ago(4)}),
        json!({"id": format!("{account}-s"), "account": account, "type": "support.contacted", "timestamp": at_days_ago(5)}),
    ];
    evs.extend((0..api_calls).map(|i| {
        json!({"id": format!("{account}-a{i}"), "account": account, "type": "api.request", "timestamp": NOW})
    }));
    evs
}

async fn pql_of(app: &TestApp, key: &str, account: &str) -> Value {
    let (status, body) = app.get(key, &format!("/v1/accounts/{account}/pql")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn points(p: &Value) -> Vec<(String, bool, i64)> {
    p["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["signal"].as_str().unwrap().to_owned(),
                b["met"].as_bool().unwrap(),
                b["points"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rubric_signal_is_scored_from_ingested_events_and_firmographics() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,admin", None).await;
    let (s, _) = app
        .patch(
            &key,
            "/v1/accounts/lead",
            &json!({"email": "ops@acme.io", "employees": 120, "industry": "software"}),
        )
        .await;
    assert_eq!(s, 201);
    app.subscribe(&key, "lead", json!({"plan": "free", "seats": 1}))
        .await;
    // 5,001 of Free's 10,000 API calls: above half the quota; events on six distinct days.
    send(&app, &key, engaged("lead", 5_001)).await;
    let (s, _) = app
        .patch(
            &key,
            "/v1/accounts/quiet",
            &json!({"email": "someone@gmail.com", "employees": 3}),
        )
        .await;
    assert_eq!(s, 201);
    app.subscribe(&key, "quiet", json!({"plan": "free", "seats": 1}))
        .await;
    pql::score_dirty(&app.ctx).await.unwrap();

    let lead = pql_of(&app, &key, "lead").await;
    assert_eq!(
        points(&lead),
        vec![
            ("core_workflow".to_owned(), true, 30),
            ("active_days".to_owned(), true, 20),
            ("free_quota_above_half".to_owned(), true, 15),
            ("teammates_invited".to_owned(), true, 25),
            ("multiple_active_users".to_owned(), true, 20),
            ("icp_match".to_owned(), true, 15),
            ("business_email".to_owned(), true, 5),
            ("viewed_pricing".to_owned(), true, 10),
            ("contacted_support".to_owned(), true, 10),
        ]
    );
    let values: Vec<&str> = lead["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        vec!["1", "6", "0.5001", "2", "2", "yes", "yes", "1", "1"]
    );
    assert_eq!(
        (lead["score"].as_i64(), lead["tier"].as_str()),
        (Some(150), Some("hot"))
    );
    assert_eq!(lead["zone"], "sales_available");
    assert!(lead["activated_at"].is_string());

    let quiet = pql_of(&app, &key, "quiet").await;
    assert!(
        points(&quiet).iter().all(|(_, met, p)| !met && *p == 0),
        "{quiet}"
    );
    assert_eq!(
        (quiet["tier"].as_str(), quiet["zone"].as_str()),
        (Some("none"), Some("self_serve"))
    );
    assert!(quiet["activated_at"].is_null());

    // The sales queue lists the hot account.
    let (_, q) = app.get(&key, "/v1/pql?tier=hot").await;
    let hot: Vec<&str> = q["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert_eq!(hot, vec!["lead"]);

    // A CRM owner takes the account; the reason says so.
    app.patch(
        &key,
        "/v1/accounts/quiet",
        &json!({"crm_owner": "dana@vendor.test"}),
    )
    .await;
    pql::score_dirty(&app.ctx).await.unwrap();
    let quiet = pql_of(&app, &key, "quiet").await;
    assert_eq!(quiet["owner"], "dana@vendor.test");
    assert!(quiet["zone_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().contains("CRM owner")));

    // Signals that raise the zone: 15 active users on the free plan.
    let users: Vec<Value> = (0..15)
        .map(|i| json!({"id": format!("quiet-u{i}"), "account": "quiet", "type": "user.active", "timestamp": NOW, "properties": {"user_id": format!("u{i}")}}))
        .collect();
    send(&app, &key, users).await;
    pql::score_dirty(&app.ctx).await.unwrap();
    let quiet = pql_of(&app, &key, "quiet").await;
    assert_eq!(quiet["zone"], "sales_available", "{quiet}");
    let (s, e) = app.get(&key, "/v1/pql?tier=lukewarm").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("invalid_tier"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_change_reaches_a_registered_webhook_endpoint_with_its_breakdown() {
    let app = spawn_dev_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,admin", None).await;
    let secret = Arc::new(Mutex::new(String::new()));
    let (url, received) = start_receiver(secret.clone(), 0).await;
    let (status, ep) = app
        .post(
            &key,
            "/v1/webhook-endpoints",
            &json!({"url": url, "kinds": ["pql.tier_changed"]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    *secret.lock().unwrap() = ep["secret"].as_str().unwrap().to_owned();
    app.patch(&key, "/v1/accounts/rising", &json!({"employees": 10}))
        .await;
    send(&app, &key, engaged("rising", 0)).await;
    pql::score_dirty(&app.ctx).await.unwrap();
    let http = outbox::client(app.ctx.webhooks);
    for _ in 0..4 {
        outbox::dispatch(&app.ctx, &http).await.unwrap();
        app.clock.advance(chrono::Duration::seconds(60));
    }
    let (_, feed) = app.get(&key, "/v1/feed?after=0&limit=100").await;
    let change = feed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "pql.tier_changed")
        .cloned()
        .unwrap();
    // project 30 + teammates 25 + users 20 + pricing 10 + support 10 + active days 20 = 115.
    assert_eq!(
        (
            change["data"]["from"].as_str(),
            change["data"]["to"].as_str(),
            change["data"]["score"].as_i64()
        ),
        (Some("none"), Some("hot"), Some(115))
    );
    assert_eq!(change["data"]["breakdown"].as_array().unwrap().len(), 9);
    let r = received.lock().unwrap();
    assert!(
        r.accepted
            .iter()
            .any(|(id, ok)| id == change["id"].as_str().unwrap() && *ok),
        "delivered and signed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_funnel_counts_a_scripted_cohort_as_counted_by_hand() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,admin", None).await;
    for a in ["a1", "a2", "a3", "a4", "a5", "a6"] {
        let employees = if a == "a1" { 10 } else { 5 };
        app.patch(
            &key,
            &format!("/v1/accounts/{a}"),
            &json!({"employees": employees}),
        )
        .await;
    }
    app.patch(
        &key,
        "/v1/accounts/a5",
        &json!({"crm_owner": "dana@vendor.test"}),
    )
    .await;
    let ev = |id: &str, a: &str, ty: &str, props: Value| json!({"id": id, "account": a, "type": ty, "timestamp": NOW, "properties": props});
    send(
        &app,
        &key,
        vec![
            // a1: hot (project 30, teammates 25, users 20, pricing 10 = 85).
            ev("1p", "a1", "project.created", json!({})),
            ev(
                "1t1",
                "a1",
                "teammate.invited",
                json!({"invitee_email": "x@y.io"}),
            ),
            ev(
                "1t2",
                "a1",
                "teammate.invited",
                json!({"invitee_email": "z@y.io"}),
            ),
            ev("1u1", "a1", "user.active", json!({"user_id": "u1"})),
            ev("1u2", "a1", "user.active", json!({"user_id": "u2"})),
            ev("1v", "a1", "pricing_page.viewed", json!({})),
            // a2: warm (project 30, teammates 25 = 55).
            ev("2p", "a2", "project.created", json!({})),
            ev(
                "2t1",
                "a2",
                "teammate.invited",
                json!({"invitee_email": "x@y.io"}),
            ),
            ev(
                "2t2",
                "a2",
                "teammate.invited",
                json!({"invitee_email": "z@y.io"}),
            ),
            // a3, a4: activated, watching (30).
            ev("3p", "a3", "project.created", json!({})),
            ev("4p", "a4", "project.created", json!({})),
        ],
    )
    .await;
    pql::score_dirty(&app.ctx).await.unwrap();
    // Conversions: a1 after it was routed as a PQL, a4 on its own, a5 through its owner on a
    // sales-only plan. a1 then expands.
    app.subscribe(&key, "a1", json!({"plan": "team", "seats": 3}))
        .await;
    app.subscribe(&key, "a4", json!({"plan": "team", "seats": 3}))
        .await;
    app.subscribe(&key, "a5", json!({"plan": "enterprise", "seats": 50}))
        .await;
    let (s, q) = app
        .post(
            &key,
            "/v1/accounts/a1/subscription/quotes",
            &json!({"seats": 5}),
            None,
        )
        .await;
    assert_eq!(s, 201, "{q}");
    let (s, _) = app
        .post(
            &key,
            &format!(
                "/v1/accounts/a1/subscription/quotes/{}/accept",
                q["id"].as_str().unwrap()
            ),
            &json!({}),
            Some("grow"),
        )
        .await;
    assert_eq!(s, 200);
    pql::score_dirty(&app.ctx).await.unwrap();

    let (status, f) = app
        .get(
            &key,
            "/v1/reports/funnel?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        )
        .await;
    assert_eq!(status, 200, "{f}");
    let stages: Vec<(&str, i64, Option<&str>)> = f["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap(),
                s["accounts"].as_i64().unwrap(),
                s["rate"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        vec![
            ("signed_up", 6, None),
            ("activated", 4, Some("0.6667")),
            ("pql", 2, Some("0.5")),
            ("paid", 3, Some("1.5")),
            ("expanded", 1, Some("0.3333")),
        ]
    );
    assert_eq!(
        f["pql_to_paid_by_tier"],
        json!([
            {"tier": "hot", "pqls": 1, "paid_accounts": 1, "rate": "1"},
            {"tier": "warm", "pqls": 1, "paid_accounts": 0, "rate": "0"},
        ])
    );
    assert_eq!(
        f["attribution"],
        json!({"plg_assisted": 1, "sales_led": 1, "self_serve": 1})
    );
    for (a, how) in [
        ("a1", "plg_assisted"),
        ("a4", "self_serve"),
        ("a5", "sales_led"),
    ] {
        assert_eq!(pql_of(&app, &key, a).await["attribution"], how, "{a}");
    }
}

/// Attribution reads the accounts' CRM owners in one statement (`with_crm_owner`): an owner
/// makes a self-serve conversion sales-led, a blank one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_serve_conversion_is_sales_led_only_when_its_crm_owner_is_not_blank() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,admin", None).await;
    for (a, owner) in [
        ("o1", json!("dana@vendor.test")),
        ("o2", json!("   ")),
        ("o3", Value::Null),
    ] {
        let (status, body) = app
            .patch(
                &key,
                &format!("/v1/accounts/{a}"),
                &json!({"crm_owner": owner}),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
        app.subscribe(&key, a, json!({"plan": "team", "seats": 5}))
            .await;
    }
    for (a, how) in [
        ("o1", "sales_led"),
        ("o2", "self_serve"),
        ("o3", "self_serve"),
    ] {
        assert_eq!(pql_of(&app, &key, a).await["attribution"], how, "{a}");
    }
}

/// A signup waits for its account's scorer lock (its conversion needs it) before it takes the
/// gap-free invoice counter, not while holding it: another account's signup goes on meanwhile.
/// Before, the signup took the counter first and waited on the scorer with it; a period close
/// could then not take its accounts' scorer locks before the counter without a cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_waiting_on_the_scorer_does_not_hold_the_invoice_counter() {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,admin", None).await;
    // The scorer holds w1's lock, as while it scores w1.
    let mut scorer = app.db.conn().await;
    scorer
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('pql/w1', 0))")
        .await
        .unwrap();
    let holder: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "pg_backend_pid()::int8",
    ))
    .get_result(&mut scorer)
    .await
    .unwrap();
    let team = json!({"plan": "team", "seats": 5});
    let (_, other) = tokio::join!(app.subscribe(&key, "w1", team.clone()), async {
        crate::fake_stripe::eventually("w1's signup to wait on the scorer's lock", || async {
            let waiting = app
                .db
                .count(&format!(
                    "(SELECT COUNT(*) FROM pg_stat_activity
                       WHERE pg_blocking_pids(pid) @> ARRAY[{holder}::int4])"
                ))
                .await;
            (waiting == 1).then_some(())
        })
        .await;
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(8),
            app.subscribe(&key, "w2", team.clone()),
        )
        .await;
        scorer.batch_execute("COMMIT").await.unwrap();
        other
    });
    other.expect("w2's signup is not held up by w1's wait on the scorer");
    let number = |a: &str| format!("(SELECT number FROM invoices WHERE account = '{a}')");
    assert_eq!(
        app.db.count(&number("w1")).await,
        app.db.count(&number("w2")).await + 1,
        "w2 was numbered while w1 waited, w1 next: no gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_a_small_company_through_the_billing_cycle_and_reports_it() {
    let db = TestDb::new().await;
    let out = tokio::task::spawn_blocking({
        let url = db.url.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
                .args([
                    "demo",
                    "--accounts",
                    "80",
                    "--months",
                    "2",
                    "--database-url",
                    &url,
                ])
                .env(
                    "ACCRUE_PLANS_DIR",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/pricing-plans"),
                )
                .env(
                    "ACCRUE_REVOPS_FILE",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/config/revops.toml"),
                )
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It ends with what to run next, and a key of the demo database to run it with.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("DATABASE_URL={} accrue serve", db.url)),
        "{stderr}"
    );
    let key = stderr
        .split("export KEY=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no key printed: {stderr}"));
    assert!(key.starts_with("acr_"), "{stderr}");
    assert_eq!(
        db.count(
            "(SELECT COUNT(*) FROM api_keys WHERE name = 'demo' AND 'admin' = ANY(scopes))::int8"
        )
        .await,
        1
    );
    let report = String::from_utf8(out.stdout).unwrap();
    for section in [
        "Invoices issued",
        "MRR at month end",
        "Net revenue retention by month",
        "PLG funnel",
        "Hot PQL queue",
    ] {
        assert!(
            report.contains(section),
            "{section} missing from:\n{report}"
        );
    }
    // What it printed is what the database holds.
    let invoices = db.count("(SELECT COUNT(*) FROM invoices)::int8").await;
    assert!(invoices > 0, "{report}");
    let printed: i64 = report
        .lines()
        .skip_while(|l| !l.starts_with("Invoices issued"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(printed, invoices, "{report}");
    assert_eq!(db.count("(SELECT COUNT(*) FROM accounts)::int8").await, 80);
}

/// reviews/security.md M8. Two instances scoring the same accounts at once emit each tier
/// change once (they serialize per account, the second sees the first's row); a conversion
/// recorded while a scorer holds an older copy of the row is never erased by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scorers_emit_each_change_once_and_never_erase_a_conversion() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    let (_, other, _) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    let accounts: Vec<String> = (0..12).map(|i| format!("m8-{i}")).collect();
    for a in &accounts {
        app.patch(
            &key,
            &format!("/v1/accounts/{a}"),
            &json!({"employees": 10}),
        )
        .await;
        send(&app, &key, engaged(a, 0)).await;
    }
    let (first, second) = tokio::join!(
        pql::score_accounts(&app.ctx, &accounts),
        pql::score_accounts(&other, &accounts)
    );
    first.unwrap();
    second.unwrap();
    let changes = app
        .db
        .count(
            "(SELECT count(*) FROM outbox WHERE kind = 'pql.tier_changed' AND account LIKE 'm8-%')",
        )
        .await;
    assert_eq!(
        changes, 12,
        "one tier change per account, not one per instance"
    );

    // A conversion lands; a scorer's stale copy (converted_at still empty) is written after it.
    app.subscribe(&key, "m8-0", json!({"plan": "team", "seats": 5}))
        .await;
    let mut c = app.db.conn().await;
    let mut stale = accrue::store::pql::find_by_account(&mut c, "m8-0")
        .await
        .unwrap()
        .unwrap();
    assert!(stale.converted_at.is_some(), "the conversion was recorded");
    stale.converted_at = None;
    stale.attribution = None;
    accrue::store::pql::upsert_many(&mut c, &[stale])
        .await
        .unwrap();
    let row = accrue::store::pql::find_by_account(&mut c, "m8-0")
        .await
        .unwrap()
        .unwrap();
    assert!(row.converted_at.is_some(), "the conversion survives");
    assert!(row.attribution.is_some());
}
