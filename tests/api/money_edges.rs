//! The money review's edge cases (`reviews/money.md`, B1–B22), one test each, through HTTP and
//! PostgreSQL. Time moves as a user of the API moves it: the accounts live on a test clock
//! (`POST /v1/test-clocks`), advanced over HTTP, which runs whatever falls due on the way. The
//! few tests about the server's own sweeps (B3's migration, B6's instance clocks, B12's close
//! isolation) move the instance clock and run the sweep instead. Every expected amount is worked
//! out in the comments from the shipped plan files, by hand, not by calling the domain code.

use crate::helpers::*;
use accrue::domain::plan::PlanRef;
use accrue::jobs::{tick, JobKind, Scheduler};
use accrue::services::migration::{migrate, When};
use rust_decimal::Decimal;
use serde_json::{json, Value};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn r(s: &str) -> PlanRef {
    let (plan, v) = s.split_once('@').unwrap();
    PlanRef {
        plan: plan.into(),
        version: v.parse().unwrap(),
    }
}

async fn quote(app: &TestApp, key: &str, account: &str, body: Value) -> (u16, Value) {
    app.post(
        key,
        &format!("/v1/accounts/{account}/subscription/quotes"),
        &body,
        None,
    )
    .await
}

/// Quotes and accepts, asserting both succeed; returns (quote, acceptance).
async fn change(app: &TestApp, key: &str, account: &str, body: Value) -> (Value, Value) {
    app.quote_and_accept(key, account, body).await
}

/// Every invoice of `account` with its lines, oldest first.
async fn invoices(app: &TestApp, key: &str, account: &str) -> Vec<Value> {
    let (status, list) = app
        .get(key, &format!("/v1/invoices?account={account}&limit=500"))
        .await;
    assert_eq!(status, 200, "{list}");
    let mut out = Vec::new();
    for i in list["data"].as_array().unwrap() {
        let (status, inv) = app.get(key, &format!("/v1/invoices/{}", i["number"])).await;
        assert_eq!(status, 200, "{inv}");
        out.push(inv);
    }
    out
}

fn lines_of<'a>(invs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    invs.iter()
        .flat_map(|i| i["lines"].as_array().unwrap())
        .filter(|l| l["kind"] == kind)
        .collect()
}

fn amounts(lines: &Value) -> Vec<(String, String)> {
    lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_owned(),
                l["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// (kind, amount) of an invoice's lines whose range starts at `from` (the corrections it
/// carries for the period starting then).
fn covering(inv: &Value, from: &str) -> Vec<(String, String)> {
    let lines: Vec<Value> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["usage_from"] == from)
        .cloned()
        .collect();
    amounts(&Value::Array(lines))
}

fn pair(kind: &str, amount: &str) -> (String, String) {
    (kind.into(), amount.into())
}

async fn events(app: &TestApp, key: &str, evs: Vec<Value>) {
    let (status, body) = app.send(key, &json!({ "events": evs })).await;
    assert_eq!(status, 200, "{body}");
}

/// (kind, MRR after) of an account's revenue movements, in order.
async fn movements(app: &TestApp, key: &str, account: &str) -> Vec<(String, String)> {
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
            (
                m["kind"].as_str().unwrap().to_owned(),
                m["mrr_after"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn subscription(app: &TestApp, key: &str, account: &str) -> Value {
    let (status, s) = app
        .get(key, &format!("/v1/accounts/{account}/subscription"))
        .await;
    assert_eq!(status, 200, "{s}");
    s
}

/// A test clock frozen at the suite's start (2026-11-25 12:00 UTC) with `accounts` created on it.
struct Clock<'a> {
    app: &'a TestApp,
    key: &'a str,
    id: String,
}

impl<'a> Clock<'a> {
    async fn on(app: &'a TestApp, key: &'a str, accounts: &[&str]) -> Clock<'a> {
        app.ctx.enable_test_clocks();
        let (status, c) = app
            .post(key, "/v1/test-clocks", &json!({ "frozen_time": NOW }), None)
            .await;
        assert_eq!(status, 201, "{c}");
        let id = c["id"].as_str().unwrap().to_owned();
        for a in accounts {
            let (status, acc) = app
                .patch(
                    key,
                    &format!("/v1/accounts/{a}"),
                    &json!({ "test_clock": id }),
                )
                .await;
            assert_eq!(status, 201, "{acc}");
        }
        Clock { app, key, id }
    }

    /// Advances the clock to `at` over HTTP (closes, trial ends, collection on the way).
    async fn to(&self, at: &str) {
        let (status, c) = self
            .app
            .post(
                self.key,
                &format!("/v1/test-clocks/{}/advance", self.id),
                &json!({ "frozen_time": at }),
                None,
            )
            .await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(c["frozen_time"], at);
    }
}

fn close_job() -> Scheduler {
    Scheduler::with(t(NOW), &[(JobKind::ClosePeriods, "0 * * * * *")]).unwrap()
}

/// B1. Team (monthly) → Business (annual) at the middle of the month: the unused half of the
/// month is credited, the whole first year of Business is charged, the new year starts at the
/// change, and the usage of the ended half-month is invoiced in arrears at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_to_year_change_charges_the_new_year_and_invoices_the_ended_usage() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme", "beta"]).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.subscribe(&key, "beta", json!({"plan": "free"})).await;
    // 2,500 compute minutes in the first half: package of 1,000 after 500 free units,
    // ceil(2,000 / 1,000) = 2 packages × 8.00 = 16.00.
    clock.to("2026-11-30T01:00:00.000Z").await;
    events(&app, &key, vec![json!({"id": "j1", "account": "acme", "type": "job.completed", "timestamp": "2026-11-30T00:00:00.000Z", "properties": {"minutes": 2500}})]).await;

    // Period [11-25 12:00, 12-25 12:00) is 30 days; 12-10 12:00 leaves exactly half.
    clock.to("2026-12-10T12:00:00.000Z").await;
    let (q, a) = change(
        &app,
        &key,
        "acme",
        json!({"plan": "business_annual", "seats": 12}),
    )
    .await;
    // Credit: Team 59 + (5 − 3 included) × 12 = 83.00 a month, half unused → −41.50.
    // Charge: a whole year of Business (annual), 1,990 + (12 − 10 included) × 200 = 2,390.00.
    assert_eq!(
        amounts(&q["lines"]),
        vec![
            pair("proration_credit", "-41.50"),
            pair("proration_charge", "2390.00")
        ]
    );
    assert_eq!(q["amount_due_now"], "2348.50");
    assert_eq!(q["new_period"]["start"], "2026-12-10T12:00:00.000Z");
    assert_eq!(q["new_period"]["end"], "2027-12-10T12:00:00.000Z");
    assert_eq!(a["amount_due_now"], "2348.50");
    let s = subscription(&app, &key, "acme").await;
    assert_eq!(s["current_period"]["start"], "2026-12-10T12:00:00.000Z");
    assert_eq!(s["current_period"]["end"], "2027-12-10T12:00:00.000Z");

    let invs = invoices(&app, &key, "acme").await;
    let totals: Vec<(&str, &str)> = invs
        .iter()
        .map(|i| (i["kind"].as_str().unwrap(), i["total"].as_str().unwrap()))
        .collect();
    // start (83.00), the ended half-month's usage (16.00), the change (2,348.50).
    assert_eq!(
        totals,
        vec![
            ("start", "83.00"),
            ("period", "16.00"),
            ("change", "2348.50")
        ]
    );
    assert_eq!(invs[1]["period_start"], "2026-11-25T12:00:00.000Z");
    assert_eq!(invs[1]["period_end"], "2026-12-10T12:00:00.000Z");

    // Free → Business (annual) with 5 seats (all included): nothing to credit, 1,990.00 due.
    let (q, _) = change(
        &app,
        &key,
        "beta",
        json!({"plan": "business_annual", "seats": 5}),
    )
    .await;
    assert_eq!(
        amounts(&q["lines"]),
        vec![pair("proration_charge", "1990.00")]
    );
    assert_eq!(q["amount_due_now"], "1990.00");
}

/// B2. A cancellation accepted during a trial ends the subscription at trial end with nothing
/// charged; a downgrade accepted during a trial converts onto the lower plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_accepted_during_a_trial_takes_effect_at_trial_end() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme", "beta"]).await;
    app.subscribe(
        &key,
        "acme",
        json!({"plan": "team", "seats": 5, "trial": true}),
    )
    .await;
    let (q, _) = change(&app, &key, "acme", json!({"cancel": true})).await;
    assert_eq!(
        q["effective_at"], "2026-12-09T12:00:00.000Z",
        "the trial's end"
    );

    app.subscribe(
        &key,
        "beta",
        json!({"plan": "business", "seats": 12, "trial": true}),
    )
    .await;
    let (q, _) = change(&app, &key, "beta", json!({"plan": "team", "seats": 5})).await;
    assert_eq!(q["kind"], "downgrade");
    assert_eq!(q["effective_at"], "2026-12-09T12:00:00.000Z");

    clock.to("2026-12-09T13:00:00.000Z").await;
    let s = subscription(&app, &key, "acme").await;
    assert_eq!(s["status"], "canceled");
    assert!(
        invoices(&app, &key, "acme").await.is_empty(),
        "nothing charged"
    );

    let s = subscription(&app, &key, "beta").await;
    assert_eq!(
        (s["status"].as_str(), s["plan"].as_str()),
        (Some("active"), Some("team"))
    );
    let invs = invoices(&app, &key, "beta").await;
    // Team's first month: 59 + (5 − 3) × 12 = 83.00, not Business's 199 + 2 × 20 = 239.00.
    assert_eq!(invs.len(), 1);
    assert_eq!(invs[0]["total"], "83.00");
    assert_eq!(invs[0]["plan"], "team");
}

/// B3. A plan migration does not erase the customer's scheduled cancellation (at renewal or
/// now) and carries a scheduled seat decrease over to the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_keeps_scheduled_cancellations_and_seat_decreases() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    for (a, seats) in [("acme", 5), ("beta", 5), ("gamma", 8)] {
        app.subscribe(
            &key,
            a,
            json!({"plan": "team", "version": 1, "seats": seats}),
        )
        .await;
    }
    change(&app, &key, "acme", json!({"cancel": true})).await;
    change(&app, &key, "beta", json!({"cancel": true})).await;
    change(&app, &key, "gamma", json!({"seats": 4})).await;

    let report = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@2"),
        false,
        When::AtRenewal,
        "test",
    )
    .await
    .unwrap();
    let skipped: Vec<(&str, bool)> = report
        .accounts
        .iter()
        .map(|l| (l.account.as_str(), l.skipped.is_some()))
        .collect();
    assert_eq!(
        skipped,
        vec![("acme", true), ("beta", true), ("gamma", false)]
    );
    assert_eq!(report.migrated, 1);
    let s = subscription(&app, &key, "gamma").await;
    assert_eq!(
        (
            s["scheduled_change"]["version"].as_u64(),
            s["scheduled_change"]["seats"].as_u64()
        ),
        (Some(2), Some(4)),
        "the decrease is carried to team@2"
    );
    // Now: beta moves to team@2 at once and stays canceled at the period end.
    migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@2"),
        false,
        When::Now,
        "test",
    )
    .await
    .unwrap();
    let s = subscription(&app, &key, "beta").await;
    assert_eq!(s["version"], 2);
    assert_eq!(s["scheduled_change"]["cancel"], true);

    app.clock.set(t("2026-12-25T12:05:00.000Z"));
    tick(&app.ctx, &close_job()).await.unwrap();
    for a in ["acme", "beta"] {
        let s = subscription(&app, &key, a).await;
        assert_eq!(s["status"], "canceled", "{a}");
        let renewals = invoices(&app, &key, a)
            .await
            .into_iter()
            .filter(|i| !lines_of(std::slice::from_ref(i), "base_fee").is_empty())
            .count();
        assert_eq!(renewals, 1, "{a}: only the first month's fees");
    }
    let s = subscription(&app, &key, "gamma").await;
    assert_eq!(
        (s["version"].as_i64(), s["seats"].as_i64()),
        (Some(2), Some(4))
    );
}

/// B3 (customer side). An immediate change keeps a scheduled cancellation; it revokes a
/// scheduled decrease, and its quote says so in a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_change_keeps_a_cancellation_and_names_a_revoked_decrease() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.subscribe(&key, "beta", json!({"plan": "team", "seats": 8}))
        .await;
    change(&app, &key, "acme", json!({"cancel": true})).await;
    change(&app, &key, "beta", json!({"seats": 4})).await;

    let (q, _) = change(&app, &key, "acme", json!({"seats": 6})).await;
    assert!(
        !amounts(&q["lines"])
            .iter()
            .any(|l| l.0 == "scheduled_change_revoked"),
        "{q}"
    );
    assert_eq!(
        subscription(&app, &key, "acme").await["scheduled_change"]["cancel"],
        true
    );
    // A later change at the period end cannot follow a cancellation.
    let (status, body) = quote(&app, &key, "acme", json!({"seats": 4})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "cancellation_scheduled");

    let (q, _) = change(&app, &key, "beta", json!({"seats": 10})).await;
    let revoked: Vec<&Value> = q["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "scheduled_change_revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{q}");
    assert_eq!(revoked[0]["seats"], 4);
    assert_eq!(revoked[0]["amount"], "0.00");
    assert!(subscription(&app, &key, "beta").await["scheduled_change"].is_null());
    // The revocation line is not an invoice line.
    let invs = invoices(&app, &key, "beta").await;
    assert!(lines_of(&invs, "scheduled_change_revoked").is_empty());
}

/// B4. Late usage for a period is billed once even when one catch-up closes two periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_is_billed_once_when_one_catch_up_closes_several_periods() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    clock.to("2026-12-25T12:05:00.000Z").await;
    // 2,500 minutes late for the first period: 2 packages × 8.00 = 16.00 more.
    clock.to("2026-12-26T00:00:00.000Z").await;
    events(&app, &key, vec![json!({"id": "late", "account": "acme", "type": "job.completed", "timestamp": "2026-12-01T00:00:00.000Z", "properties": {"minutes": 2500}})]).await;
    // Nothing closes the account until two more periods have ended.
    clock.to("2027-02-25T13:00:00.000Z").await;
    let invs = invoices(&app, &key, "acme").await;
    assert_eq!(invs.len(), 4, "start, and three period closes");
    let late = lines_of(&invs, "late_usage");
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["amount"], "16.00");
    assert_eq!(late[0]["usage_from"], "2026-11-25T12:00:00.000Z");
}

/// B5. Late usage fills the shortfall under the minimum commitment first: the period costs
/// max(minimum, actual), whether usage arrives on time or late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_under_a_minimum_recomputes_the_top_up() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    // Enterprise: base 1,500, 50 seats included, minimum 5,000, storage 0.10 per peak GB.
    app.subscribe(&key, "acme", json!({"plan": "enterprise", "seats": 50}))
        .await;
    let snapshot = |id: &str, gb: &str| json!({"id": id, "account": "acme", "type": "storage.snapshot", "timestamp": "2026-12-01T00:00:00.000Z", "properties": {"gb": gb}});
    clock.to("2026-12-01T01:00:00.000Z").await;
    events(&app, &key, vec![snapshot("s1", "10000")]).await;
    clock.to("2026-12-25T12:05:00.000Z").await;
    // Close of period 1: storage 10,000 × 0.10 = 1,000.00; 1,500 + 1,000 = 2,500 under the
    // minimum → top-up 2,500.00; with period 2's base fee 1,500.00 the invoice is 5,000.00.
    let invs = invoices(&app, &key, "acme").await;
    assert_eq!(invs[1]["total"], "5000.00");

    // A late peak of 20,000 GB: storage is worth 2,000.00, 1,000.00 more; the top-up falls
    // to 5,000 − 1,500 − 2,000 = 1,500.00, 1,000.00 less. Period 1 still costs 5,000.00.
    clock.to("2026-12-26T00:00:00.000Z").await;
    events(&app, &key, vec![snapshot("s2", "20000")]).await;
    clock.to("2027-01-25T12:05:00.000Z").await;
    let invs = invoices(&app, &key, "acme").await;
    let corrections = covering(&invs[2], "2026-11-25T12:00:00.000Z");
    assert_eq!(
        corrections,
        vec![
            pair("late_usage", "1000.00"),
            pair("minimum_top_up", "-1000.00")
        ]
    );

    // A late peak of 60,000 GB: worth 6,000.00, above the minimum: the top-up goes to 0.
    clock.to("2027-01-26T00:00:00.000Z").await;
    events(&app, &key, vec![snapshot("s3", "60000")]).await;
    clock.to("2027-02-25T12:05:00.000Z").await;
    let invs = invoices(&app, &key, "acme").await;
    // Everything billed for period 1's arrears: usage and top-up lines that cover it.
    let p1: Decimal = invs
        .iter()
        .flat_map(|i| i["lines"].as_array().unwrap())
        .filter(|l| l["usage_from"] == "2026-11-25T12:00:00.000Z")
        .filter(|l| l["kind"] != "base_fee" && l["kind"] != "seats")
        .map(|l| d(l["amount"].as_str().unwrap()))
        .sum();
    // Period 1 in all: base 1,500 (advance) + storage 6,000 = 7,500 ≥ 5,000 → arrears 6,000.
    assert_eq!(p1, d("6000.00"));
}

/// B7, B8, B14. A trial's MRR is recorded at conversion whichever route started it; trials
/// start only from a free plan; a plan without a trial refuses `trial: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_record_mrr_at_conversion_and_are_refused_where_they_do_not_exist() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme", "beta", "gamma"]).await;
    app.subscribe(&key, "acme", json!({"plan": "free"})).await;
    change(
        &app,
        &key,
        "acme",
        json!({"plan": "team", "seats": 5, "trial": true}),
    )
    .await;
    assert!(
        movements(&app, &key, "acme").await.is_empty(),
        "no MRR while trialing"
    );
    clock.to("2026-12-09T13:00:00.000Z").await;
    subscription(&app, &key, "acme").await;
    // Converted: Team 59 + (5 − 3) × 12 = 83 a month.
    assert_eq!(
        movements(&app, &key, "acme").await,
        vec![("new".to_owned(), "83.00".to_owned())]
    );

    // From a paid plan: refused, nothing changed.
    app.subscribe(&key, "beta", json!({"plan": "team", "seats": 5}))
        .await;
    let (status, body) = quote(
        &app,
        &key,
        "beta",
        json!({"plan": "business", "seats": 10, "trial": true}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "trial_not_available");

    // Enterprise has no trial: subscribing with one is refused, no invoice issued.
    let (status, body) = app
        .post(
            &key,
            "/v1/accounts/gamma/subscription",
            &json!({"plan": "enterprise", "seats": 50, "trial": true}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "no_trial");
    assert!(invoices(&app, &key, "gamma").await.is_empty());
}

/// B12. One account that cannot close (its plan version is published but missing from this
/// server's catalogue) is recorded and reported; every other account closes; once mended it
/// closes at the next sweep and its error is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_account_does_not_stop_the_period_close() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    for a in ["a-first", "b-broken", "c-last"] {
        app.subscribe(&key, a, json!({"plan": "team", "seats": 5}))
            .await;
    }
    let mut conn = app.db.conn().await;
    use diesel_async::SimpleAsyncConnection;
    conn.batch_execute(
        "INSERT INTO plan_versions (plan, version, name, self_serve, content_hash, definition, published_at, published_by)
         SELECT plan, 9, name, self_serve, 'x', definition, published_at, published_by
           FROM plan_versions WHERE plan = 'team' AND version = 2;
         UPDATE subscriptions SET plan_version = 9 WHERE account = 'b-broken';",
    )
    .await
    .unwrap();

    app.clock.set(t("2026-12-25T12:05:00.000Z"));
    tick(&app.ctx, &close_job()).await.unwrap();
    // The others: start invoice and the close (next month's 83.00 in advance).
    for a in ["a-first", "c-last"] {
        let invs = invoices(&app, &key, a).await;
        assert_eq!(invs.len(), 2, "{a} closed");
        assert_eq!(invs[1]["total"], "83.00");
    }
    assert_eq!(invoices(&app, &key, "b-broken").await.len(), 1);
    let (status, errs) = app.get(&key, "/v1/reports/billing-errors").await;
    assert_eq!(status, 200, "{errs}");
    let data = errs["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{errs}");
    assert_eq!(data[0]["account"], "b-broken");
    assert_eq!(data[0]["code"], "plan_not_available");
    assert!(data[0]["message"].as_str().unwrap().contains("team@9"));

    // Retried by the next sweep: still failing, counted again.
    app.clock.set(t("2026-12-25T12:06:00.000Z"));
    tick(&app.ctx, &close_job()).await.unwrap();
    let (_, errs) = app.get(&key, "/v1/reports/billing-errors").await;
    assert_eq!(errs["data"][0]["attempts"], 2);

    conn.batch_execute("UPDATE subscriptions SET plan_version = 2 WHERE account = 'b-broken'")
        .await
        .unwrap();
    app.clock.set(t("2026-12-25T12:07:00.000Z"));
    tick(&app.ctx, &close_job()).await.unwrap();
    assert_eq!(invoices(&app, &key, "b-broken").await.len(), 2);
    let (_, errs) = app.get(&key, "/v1/reports/billing-errors").await;
    assert!(errs["data"].as_array().unwrap().is_empty(), "{errs}");
}

/// B11. A change whose credits exceed its charges issues no negative invoice: the excess
/// becomes the account's credit balance, and the next invoice uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_change_becomes_credit_that_the_next_invoice_uses() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    // Enterprise: 1,500 base, 30 per seat above 50 included, decreases credited at once.
    // 80 seats: 1,500 + 30 × 30 = 2,400 a month.
    app.subscribe(&key, "acme", json!({"plan": "enterprise", "seats": 80}))
        .await;
    // Half the 30-day period left: credit −2,400 × ½ = −1,200.00; 60 seats cost
    // 1,500 + 10 × 30 = 1,800, charged 900.00; −300.00 in all.
    clock.to("2026-12-10T12:00:00.000Z").await;
    let (q, _) = change(&app, &key, "acme", json!({"seats": 60})).await;
    assert_eq!(q["amount_due_now"], "-300.00");
    let invs = invoices(&app, &key, "acme").await;
    let ch = &invs[1];
    assert_eq!(ch["kind"], "change");
    assert_eq!(ch["total"], "0.00", "{ch}");
    assert_eq!(
        amounts(&ch["lines"]),
        vec![
            pair("proration_credit", "-1200.00"),
            pair("proration_charge", "900.00"),
            pair("credit_carried_forward", "300.00")
        ]
    );
    let (_, acc) = app.get(&key, "/v1/accounts/acme").await;
    assert_eq!(acc["credit_balance"], "300.00");

    // The close: the period billed 2,400 − 1,200 + 900 = 2,100 of fees (B19), so the
    // minimum's top-up is 5,000 − 2,100 = 2,900; with the next month's 1,800 in advance:
    // 4,700.00, less the 300.00 credit → 4,400.00.
    clock.to("2026-12-25T12:05:00.000Z").await;
    let invs = invoices(&app, &key, "acme").await;
    let close = &invs[2];
    let applied = lines_of(std::slice::from_ref(close), "credit_applied");
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["amount"], "-300.00");
    assert_eq!(close["total"], "4400.00");
    let (_, acc) = app.get(&key, "/v1/accounts/acme").await;
    assert_eq!(acc["credit_balance"], "0.00");
    assert!(invs
        .iter()
        .all(|i| !i["total"].as_str().unwrap().starts_with('-')));
}

/// B19. The minimum commitment counts the fees a period billed, not the closing plan's full
/// fees: a seat increase in the middle of the month paid only half a month of the new seats.
/// Late usage of that period is recomputed on the same basis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimum_counts_the_fees_a_period_billed_after_a_change() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    // Enterprise, 60 seats: 1,500 + 10 × 30 = 1,800 a month in advance.
    app.subscribe(&key, "acme", json!({"plan": "enterprise", "seats": 60}))
        .await;
    // Half the 30-day period left, 80 seats: credit −1,800 × ½ = −900.00, charge
    // (1,500 + 30 × 30) × ½ = 1,200.00; 300.00 due.
    clock.to("2026-12-10T12:00:00.000Z").await;
    let (q, _) = change(&app, &key, "acme", json!({"seats": 80})).await;
    assert_eq!(q["amount_due_now"], "300.00");
    // 250,000 compute minutes at 0.004 = 1,000.00 of usage.
    events(&app, &key, vec![json!({"id": "jobs", "account": "acme", "type": "job.completed", "timestamp": "2026-12-10T12:00:00.000Z", "properties": {"minutes": 250_000}})]).await;
    clock.to("2026-12-25T12:05:00.000Z").await;
    // The period billed 1,800 − 900 + 1,200 = 2,100 of fees and 1,000 of usage: 3,100,
    // so the top-up is 5,000 − 3,100 = 1,900.00 (counting 80 seats' full 2,400 would give
    // 1,600.00). The invoice: 1,000 + 1,900 + next month's 2,400 = 5,300.00.
    let invs = invoices(&app, &key, "acme").await;
    let close = &invs[2];
    let top_up = lines_of(std::slice::from_ref(close), "minimum_top_up");
    assert_eq!(top_up.len(), 1, "{close}");
    assert_eq!(top_up[0]["amount"], "1900.00");
    assert_eq!(close["total"], "5300.00");

    // 125,000 minutes arrive late for that period: 500.00 more usage, which fills the
    // shortfall: the top-up falls by 500.00 and the period still costs exactly 5,000.
    clock.to("2026-12-26T00:00:00.000Z").await;
    events(&app, &key, vec![json!({"id": "late", "account": "acme", "type": "job.completed", "timestamp": "2026-12-12T00:00:00.000Z", "properties": {"minutes": 125_000}})]).await;
    clock.to("2027-01-25T12:05:00.000Z").await;
    let invs = invoices(&app, &key, "acme").await;
    let period_one: Decimal = invs
        .iter()
        .flat_map(|i| i["lines"].as_array().unwrap())
        .filter(|l| {
            let from = l["usage_from"].as_str().unwrap_or_default();
            ("2026-11-25T12:00:00.000Z".."2026-12-25T12:00:00.000Z").contains(&from)
        })
        .map(|l| d(l["amount"].as_str().unwrap()))
        .sum();
    assert_eq!(period_one, d("5000.00"));
    let late = covering(&invs[3], "2026-11-25T12:00:00.000Z");
    assert_eq!(
        late,
        vec![
            pair("late_usage", "500.00"),
            pair("minimum_top_up", "-500.00")
        ]
    );
}

/// B17. GRR keeps each account's MRR at most at its start: an account that expands and then
/// churns inside the window loses its starting MRR, not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grr_caps_each_accounts_loss_at_its_starting_mrr() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme", "beta"]).await;
    // Both on Team with 5 seats: 59 + 2 × 12 = 83 a month at the window's start.
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.subscribe(&key, "beta", json!({"plan": "team", "seats": 5}))
        .await;
    // acme: up to Business with 12 seats (199 + 2 × 20 = 239), then canceled at period end.
    clock.to("2026-12-05T00:00:00.000Z").await;
    change(&app, &key, "acme", json!({"plan": "business", "seats": 12})).await;
    change(&app, &key, "acme", json!({"cancel": true})).await;
    clock.to("2026-12-26T00:00:00.000Z").await;
    let (status, body) = app
        .get(
            &key,
            "/v1/reports/nrr?from=2026-12-01T00:00:00Z&to=2027-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let w = &body["windows"][0];
    // Start 166; acme +156 then −239; ending 83 (beta). NRR 83 / 166 = 0.5. GRR: acme keeps
    // min(0, 83) = 0, beta 83: 83 / 166 = 0.5 (the uncapped formula gave (166 − 239) / 166
    // = −0.44).
    assert_eq!(w["starting_mrr"], "166.00");
    assert_eq!(w["ending_mrr"], "83.00");
    assert_eq!(d(w["nrr"].as_str().unwrap()), d("0.5"));
    assert_eq!(d(w["grr"].as_str().unwrap()), d("0.5"));
    assert_eq!(w["retained_mrr"], "83.00");
}

/// B6. Late usage is detected in database time: an instance whose clock runs a minute behind
/// the one that closed the period still gets its late events billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_is_detected_whatever_the_ingesting_instances_clock_says() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.clock.set(t("2026-12-25T12:05:00.000Z"));
    tick(&app.ctx, &close_job()).await.unwrap();
    // Another instance, its clock one minute behind, ingests 2,500 minutes for the closed
    // period: 2 packages × 8.00 = 16.00 late.
    let (base, _ctx, behind) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    behind.set(t("2026-12-25T12:04:00.000Z"));
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(&key)
        .json(&json!({"events": [{"id": "late", "account": "acme", "type": "job.completed", "timestamp": "2026-12-20T00:00:00.000Z", "properties": {"minutes": 2500}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.clock.set(t("2027-01-25T12:05:00.000Z"));
    tick(&app.ctx, &close_job()).await.unwrap();
    let invs = invoices(&app, &key, "acme").await;
    let late = lines_of(&invs, "late_usage");
    assert_eq!(late.len(), 1, "{invs:?}");
    assert_eq!(late[0]["amount"], "16.00");
}

/// B22. A quote is checked against the account's billing currency, not only the current
/// plan's, so a quote that acceptance would refuse is never offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_in_another_currency_than_the_accounts_is_refused_at_the_quote() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    // The account bills in EUR (as if its first paid plan had been in euros).
    let mut conn = app.db.conn().await;
    use diesel_async::SimpleAsyncConnection;
    conn.batch_execute("UPDATE accounts SET currency = 'EUR' WHERE account = 'acme'")
        .await
        .unwrap();
    let (status, body) = quote(&app, &key, "acme", json!({"plan": "business", "seats": 10})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "currency_mismatch");
    assert!(body["error"]["message"].as_str().unwrap().contains("EUR"));
}

/// B21. A canceled account can subscribe again: a new subscription, its advance fees charged,
/// its return recorded as a reactivation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_account_subscribes_again_as_a_reactivation() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    change(&app, &key, "acme", json!({"cancel": true})).await;
    clock.to("2026-12-26T09:10:00.000Z").await;
    assert_eq!(subscription(&app, &key, "acme").await["status"], "canceled");
    // Business with 12 seats: 199 + (12 − 10) × 20 = 239.00 for the month from 12-26 09:00.
    let s = app
        .subscribe(&key, "acme", json!({"plan": "business", "seats": 12}))
        .await;
    assert_eq!(s["amount_due_now"], "239.00");
    assert_eq!(s["subscription"]["status"], "active");
    assert_eq!(
        s["subscription"]["current_period"]["start"],
        "2026-12-26T09:00:00.000Z"
    );
    let invs = invoices(&app, &key, "acme").await;
    assert_eq!(invs.last().unwrap()["total"], "239.00");
    let mv = movements(&app, &key, "acme").await;
    assert_eq!(
        mv,
        vec![
            ("new".to_owned(), "83.00".to_owned()),
            ("churn".to_owned(), "0.00".to_owned()),
            ("reactivation".to_owned(), "239.00".to_owned())
        ]
    );
    // Subscribing while subscribed is still a conflict.
    let (status, body) = app
        .post(
            &key,
            "/v1/accounts/acme/subscription",
            &json!({"plan": "team"}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

/// One trial per account, even across a cancellation and a new subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_trial_is_refused_after_subscribing_again() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,billing", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    app.subscribe(
        &key,
        "acme",
        json!({"plan": "team", "seats": 5, "trial": true}),
    )
    .await;
    change(&app, &key, "acme", json!({"cancel": true})).await;
    clock.to("2026-12-10T00:00:00.000Z").await;
    assert_eq!(subscription(&app, &key, "acme").await["status"], "canceled");
    app.subscribe(&key, "acme", json!({"plan": "free"})).await;
    let (status, body) = quote(
        &app,
        &key,
        "acme",
        json!({"plan": "team", "seats": 5, "trial": true}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "trial_used");
}

/// C1 with B1. A yearly period cut short by a change of interval bills its storage peak at the
/// share of the year it covered: the yearly per-GB price is twelve months' worth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_cut_short_bills_its_storage_peak_for_the_part_that_ran() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    // Business (annual), 10 seats: 1,990.00 for [2026-11-25 12:00, 2027-11-25 12:00), 365 days.
    app.subscribe(
        &key,
        "acme",
        json!({"plan": "business_annual", "seats": 10}),
    )
    .await;
    clock.to("2026-11-26T00:00:00.000Z").await;
    events(&app, &key, vec![json!({"id": "s1", "account": "acme", "type": "storage.snapshot", "properties": {"gb": 2000}})]).await;
    // 30 days in, up to monthly Business (199 a month beats 1,990 / 12): the year ends here.
    clock.to("2026-12-25T12:00:00.000Z").await;
    let (q, _) = change(&app, &key, "acme", json!({"plan": "business", "seats": 10})).await;
    // Credit −1,990 × 335 / 365 = −1,826.438… → −1,826.44; Business's month 199.00.
    assert_eq!(
        amounts(&q["lines"]),
        vec![
            pair("proration_credit", "-1826.44"),
            pair("proration_charge", "199.00")
        ]
    );
    let invs = invoices(&app, &key, "acme").await;
    let ended = invs
        .iter()
        .find(|i| i["kind"] == "period")
        .expect("the ended part's invoice");
    assert_eq!(ended["period_end"], "2026-12-25T12:00:00.000Z");
    // Storage 2,000 GB at 2.40 for a year, for 30 of 365 days: 4,800 × 30 / 365 = 394.520… →
    // 394.52 (a whole year's 4,800.00 before).
    assert_eq!(ended["total"], "394.52");
    let (_, acc) = app.get(&key, "/v1/accounts/acme").await;
    // The change invoice: −1,826.44 + 199.00 = −1,627.44, carried as credit.
    assert_eq!(acc["credit_balance"], "1627.44");
}

/// B21. Late usage for a canceled subscription's last period is billed on an invoice of its
/// own (there is no next period invoice to carry it), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_after_a_cancellation_is_billed_once() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let clock = Clock::on(&app, &key, &["acme"]).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    change(&app, &key, "acme", json!({"cancel": true})).await;
    clock.to("2026-12-25T12:05:00.000Z").await;
    assert_eq!(subscription(&app, &key, "acme").await["status"], "canceled");
    assert_eq!(invoices(&app, &key, "acme").await.len(), 2);
    // 2,500 minutes arrive late for the last period: 2 packages × 8.00 = 16.00.
    clock.to("2026-12-27T09:30:00.000Z").await;
    events(&app, &key, vec![json!({"id": "late", "account": "acme", "type": "job.completed", "timestamp": "2026-12-20T00:00:00.000Z", "properties": {"minutes": 2500}})]).await;
    clock.to("2026-12-27T09:31:00.000Z").await;
    clock.to("2026-12-27T10:05:00.000Z").await;
    let invs = invoices(&app, &key, "acme").await;
    assert_eq!(invs.len(), 3, "{invs:?}");
    assert_eq!(invs[2]["total"], "16.00");
    let late = lines_of(&invs, "late_usage");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["usage_from"], "2026-11-25T12:00:00.000Z");
}
