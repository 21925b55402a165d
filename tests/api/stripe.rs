//! Collection through the fake Stripe server: payments, dunning to suspension and recovery,
//! webhooks (replayed, tampered, stale), a crash between charge and record, reconciliation.

use crate::fake_stripe::*;
use crate::helpers::*;
use accrue::domain::dunning::DunningPolicy;
use accrue::jobs::{tick, Scheduler};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// An account with a customer and a card, subscribed to Team with 5 seats.
async fn customer_on_team(app: &TestApp, key: &str, account: &str, card: &str) -> String {
    customer_on_team_with(app, key, account, card, 5).await
}

/// An account with a customer and a card, subscribed to Team with `seats` seats.
async fn customer_on_team_with(
    app: &TestApp,
    key: &str,
    account: &str,
    card: &str,
    seats: u32,
) -> String {
    let (status, body) = app
        .patch(
            key,
            &format!("/v1/accounts/{account}"),
            &account_body(&format!("{account}@example.com")),
        )
        .await;
    assert!(status < 300, "{body}");
    let pm = fake_stripe().card(card).await;
    let (status, set) = app
        .put(
            key,
            &format!("/v1/accounts/{account}/payment-method"),
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    app.subscribe(key, account, json!({"plan": "team", "seats": seats}))
        .await;
    set["customer"].as_str().unwrap().to_owned()
}

/// Moves the clock past the default policy's three retries of a first failure at NOW (3, 5 and
/// 7 days later), running the jobs at each.
async fn run_the_three_retries(app: &TestApp, scheduler: &Scheduler) {
    for at in [
        "2026-11-28T12:31:00.000Z",
        "2026-11-30T12:31:00.000Z",
        "2026-12-02T12:31:00.000Z",
    ] {
        app.clock.set(t(at));
        tick(&app.ctx, scheduler).await.unwrap();
    }
}

async fn invoice(app: &TestApp, key: &str, number: i64) -> Value {
    let (status, inv) = app.get(key, &format!("/v1/invoices/{number}")).await;
    assert_eq!(status, 200, "{inv}");
    inv
}

async fn wait_for_payment_state(app: &TestApp, key: &str, number: i64, state: &str) -> Value {
    eventually(&format!("invoice {number} to be {state}"), || async {
        let inv = invoice(app, key, number).await;
        (inv["payment"]["state"] == state).then_some(inv)
    })
    .await
}

async fn subscription_status(app: &TestApp, key: &str, account: &str) -> String {
    let (status, body) = app
        .get(key, &format!("/v1/accounts/{account}/dunning"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["status"].as_str().unwrap().to_owned()
}

async fn steps(app: &TestApp, key: &str, account: &str) -> Vec<(String, i64)> {
    let (_, body) = app
        .get(key, &format!("/v1/accounts/{account}/dunning"))
        .await;
    body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["attempt"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn check(app: &TestApp, key: &str, account: &str, body: Value) -> Value {
    let (status, answer) = app
        .post(key, &format!("/v1/accounts/{account}/check"), &body, None)
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_months_of_invoices_are_each_charged_once_and_reconcile_with_stripe() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    let customer = customer_on_team(&app, &key, "lifecycle", GOOD_CARD).await;

    // The start invoice (base fee 59 + 2 extra seats × 12) is charged at once.
    let first = wait_for_payment_state(&app, &key, 1, "paid").await;
    assert_eq!(first["status"], "paid");
    assert_eq!(first["total"], "83.00");
    assert_eq!(first["payment"]["amount_paid"], "83.00");

    let mut expected_charges = vec![8300i64];
    let months = [
        ("2026-12-10T00:00:00.000Z", "2026-12-25T12:01:00.000Z", 2),
        ("2027-01-10T00:00:00.000Z", "2027-01-25T12:01:00.000Z", 3),
        ("2027-02-10T00:00:00.000Z", "2027-02-25T12:01:00.000Z", 4),
    ];
    for (i, (usage_at, close_at, number)) in months.into_iter().enumerate() {
        // 1,500 compute minutes: one 8.00 package above the 500 free.
        app.clock.set(t(usage_at));
        let evs: Vec<Value> = (0..15)
            .map(|j| json!({"id": format!("m{i}-{j}"), "account": "lifecycle", "type": "job.completed", "timestamp": usage_at, "properties": {"minutes": 100}}))
            .collect();
        let (status, body) = app.send(&key, &json!({ "events": evs })).await;
        assert_eq!(status, 200, "{body}");
        app.clock.set(t(close_at));
        tick(&app.ctx, &scheduler).await.unwrap();
        let inv = invoice(&app, &key, number).await;
        assert_eq!(inv["kind"], "period");
        assert_eq!(inv["status"], "paid", "{inv}");
        // 59 base + 24 seats in advance + 8 compute in arrears.
        assert_eq!(inv["total"], "91.00");
        let lines: Decimal = inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| dec(&l["amount"]))
            .sum();
        assert_eq!(lines, dec(&inv["total"]), "total = sum of lines");
        expected_charges.push(9100);
        let stripe_id = inv["payment"]["stripe_invoice_id"].as_str().unwrap();
        let remote = fake_stripe()
            .get(&format!("/v1/invoices/{stripe_id}"))
            .await;
        assert_eq!(remote["status"], "paid");
        assert_eq!(remote["amount_paid"], 9100);
        assert_eq!(
            remote["lines"]["data"].as_array().unwrap().len(),
            inv["lines"].as_array().unwrap().len()
        );
    }
    // Exactly one successful charge per invoice, of its amount.
    expected_charges.sort_unstable();
    assert_eq!(
        fake_stripe().succeeded_amounts(&customer).await,
        expected_charges
    );
    // A second sweep finds nothing to collect.
    let again = accrue::services::payments::collect_due(&app.ctx)
        .await
        .unwrap();
    assert_eq!(again, Default::default());

    // Finance: every invoice of December matches its Stripe invoice.
    let (status, rec) = app
        .get(&key, "/v1/reports/reconciliation?period=2026-12")
        .await;
    assert_eq!(status, 200, "{rec}");
    let ours: Vec<&Value> = rec["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["account"] == "lifecycle")
        .collect();
    assert_eq!(ours.len(), 1, "{rec}");
    assert_eq!(ours[0]["stripe"]["status"], "paid");
    assert_eq!(ours[0]["stripe"]["amount"], "91.00");
    assert_eq!(ours[0]["mismatches"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_is_retried_3_5_and_7_days_later_then_suspended_to_the_fallback_plan() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    let customer = customer_on_team(&app, &key, "declines", DECLINING_CARD).await;

    let inv = wait_for_payment_state(&app, &key, 1, "failed").await;
    assert_eq!(inv["status"], "open");
    assert_eq!(inv["payment"]["attempts"], 1);
    assert_eq!(
        inv["payment"]["next_attempt_at"],
        "2026-11-28T12:30:00.000Z"
    );
    assert_eq!(
        subscription_status(&app, &key, "declines").await,
        "past_due"
    );
    // What happens next, as the API, the console's queue and the customer's portal say it:
    // retry 3 days after the first failure, grace and the last retry 7 days after it.
    let (_, view) = app.get(&key, "/v1/accounts/declines/dunning").await;
    assert_eq!(view["grace_ends_at"], "2026-12-02T12:30:00.000Z", "{view}");
    assert_eq!(view["final_action_at"], "2026-12-02T12:30:00.000Z");
    assert_eq!(view["final_action"], "suspend");
    let queue = accrue::services::payments::dunning_queue(&app.ctx, 100)
        .await
        .unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(
        (
            queue[0].account.as_str(),
            queue[0].status.as_str(),
            queue[0].unpaid.clone()
        ),
        ("declines", "past_due", vec![1])
    );
    assert_eq!(
        queue[0].next_attempt_at,
        Some(t("2026-11-28T12:30:00.000Z"))
    );
    assert_eq!(
        (queue[0].grace_ends_at, queue[0].final_action_at),
        (
            Some(t("2026-12-02T12:30:00.000Z")),
            Some(t("2026-12-02T12:30:00.000Z"))
        )
    );
    assert_eq!(
        queue[0].final_action,
        Some(accrue::domain::dunning::FinalAction::Suspend)
    );
    let (status, link) = app
        .post(
            &key,
            "/v1/portal-sessions",
            &json!({"account": "declines"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{link}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let opened = http
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let cookie = opened.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = http
        .get(app.url("/portal"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for said in [
        "A payment failed.",
        "We will try your card again on Nov 28, 2026 12:30 UTC.",
        "Everything keeps working until Dec 2, 2026.",
        "If the last retry on Dec 2, 2026 fails, the subscription is suspended",
    ] {
        assert!(html.contains(said), "the portal does not say {said:?}");
    }
    // Within the grace period access continues on Team's terms.
    let audit = json!({"feature": "audit_log"});
    assert_eq!(
        check(&app, &key, "declines", audit.clone()).await["allowed"],
        true
    );

    // Nothing happens before the first retry is due.
    app.clock.set(t("2026-11-28T12:00:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    assert_eq!(invoice(&app, &key, 1).await["payment"]["attempts"], 1);

    for (at, attempts, next) in [
        (
            "2026-11-28T12:31:00.000Z",
            2,
            Some("2026-11-30T12:30:00.000Z"),
        ),
        (
            "2026-11-30T12:31:00.000Z",
            3,
            Some("2026-12-02T12:30:00.000Z"),
        ),
    ] {
        app.clock.set(t(at));
        tick(&app.ctx, &scheduler).await.unwrap();
        let inv = invoice(&app, &key, 1).await;
        assert_eq!(inv["payment"]["attempts"], attempts, "{inv}");
        assert_eq!(inv["payment"]["next_attempt_at"].as_str(), next);
        assert_eq!(
            subscription_status(&app, &key, "declines").await,
            "past_due"
        );
    }
    assert_eq!(
        check(&app, &key, "declines", audit.clone()).await["allowed"],
        true
    );

    // The last retry (7 days after the first failure) fails: suspended, at once.
    app.clock.set(t("2026-12-02T12:31:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    let inv = invoice(&app, &key, 1).await;
    assert_eq!(inv["payment"]["state"], "exhausted");
    assert_eq!(inv["payment"]["attempts"], 4);
    assert_eq!(
        subscription_status(&app, &key, "declines").await,
        "suspended"
    );
    let queue = accrue::services::payments::dunning_queue(&app.ctx, 100)
        .await
        .unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(
        (
            queue[0].status.as_str(),
            queue[0].next_attempt_at,
            queue[0].final_action
        ),
        ("suspended", None, None)
    );
    let denied = check(&app, &key, "declines", audit).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert_eq!(denied["reason"], "feature_not_in_plan");
    // The fallback (Free) allows 10,000 API calls where Team allowed millions.
    let big = check(
        &app,
        &key,
        "declines",
        json!({"meter": "api_calls", "quantity": 20000}),
    )
    .await;
    assert_eq!(big["allowed"], false, "{big}");
    assert_eq!(big["limit"], "10000");

    assert_eq!(
        steps(&app, &key, "declines").await,
        vec![
            ("payment_failed".to_owned(), 1),
            ("retry_scheduled".to_owned(), 1),
            ("retry_failed".to_owned(), 2),
            ("retry_scheduled".to_owned(), 2),
            ("retry_failed".to_owned(), 3),
            ("retry_scheduled".to_owned(), 3),
            ("retry_failed".to_owned(), 4),
            ("suspended".to_owned(), 4),
        ]
    );
    // The suspension is a revenue movement: Team (83) falls to Free (0).
    let (_, moves) = app
        .get(
            &key,
            "/v1/movements?from=2026-11-01T00:00:00Z&to=2027-01-01T00:00:00Z&account=declines",
        )
        .await;
    let moves: Vec<(&str, &str, &str, &str)> = moves["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap(),
                m["cause"].as_str().unwrap(),
                m["mrr_after"].as_str().unwrap(),
                m["ref_kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            ("new", "plan_upgrade", "83.00", "subscription_change"),
            ("churn", "dunning_suspension", "0.00", "dunning_step"),
        ]
    );
    // Four declined charges, none succeeded; no more attempts are made.
    {
        let charges = fake_stripe().charges_of(&customer).await;
        assert_eq!(charges.len(), 4);
        assert!(charges.iter().all(|c| c["status"] == "failed"));
    }
    app.clock.set(t("2026-12-20T00:00:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    assert_eq!(fake_stripe().charges_of(&customer).await.len(), 4);

    // The customer pays on Stripe's hosted page: the webhook brings the account back, and the
    // revenue ledger records the reactivation.
    let stripe_invoice = inv["payment"]["stripe_invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();
    pay_out_of_band(&customer, &stripe_invoice).await;
    eventually("the webhook's reactivation", || async {
        (subscription_status(&app, &key, "declines").await == "active").then_some(())
    })
    .await;
    assert_eq!(
        check(&app, &key, "declines", json!({"feature": "audit_log"})).await["allowed"],
        true
    );
    let (_, moves) = app
        .get(
            &key,
            "/v1/movements?from=2026-11-01T00:00:00Z&to=2027-01-01T00:00:00Z&account=declines",
        )
        .await;
    let last = moves["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["kind"].as_str(),
            last["cause"].as_str(),
            last["mrr_after"].as_str()
        ),
        (Some("reactivation"), Some("recovered"), Some("83.00"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_card_is_tried_at_once_and_a_declined_one_keeps_the_retry_schedule() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    let customer = customer_on_team(&app, &key, "recovers", DECLINING_CARD).await;
    wait_for_payment_state(&app, &key, 1, "failed").await;

    app.clock.set(t("2026-11-28T12:31:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    assert_eq!(invoice(&app, &key, 1).await["payment"]["attempts"], 2);

    // Another declining card, a day later: tried at once, declined, and the next retry is
    // still the one due 5 days after the first failure.
    app.clock.set(t("2026-11-29T12:00:00.000Z"));
    let put_card = |card: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            let pm = fake_stripe().card(card).await;
            let (status, body) = app
                .put(
                    key,
                    "/v1/accounts/recovers/payment-method",
                    &json!({ "payment_method": pm }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let set = put_card(DECLINING_CARD).await;
    assert_eq!(set["retried"]["failed"], 1, "{set}");
    let inv = invoice(&app, &key, 1).await;
    assert_eq!(inv["payment"]["attempts"], 3);
    assert_eq!(
        inv["payment"]["next_attempt_at"],
        "2026-11-30T12:30:00.000Z"
    );
    assert_eq!(
        subscription_status(&app, &key, "recovers").await,
        "past_due"
    );

    // A good card pays the invoice at once, before the scheduled retry.
    let set = put_card(GOOD_CARD).await;
    assert_eq!(set["retried"]["paid"], 1, "{set}");
    let inv = invoice(&app, &key, 1).await;
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["payment"]["attempts"], 4);
    assert_eq!(subscription_status(&app, &key, "recovers").await, "active");
    let s = steps(&app, &key, "recovers").await;
    assert_eq!(s.last().unwrap(), &("recovered".to_owned(), 4));
    assert_eq!(fake_stripe().succeeded_amounts(&customer).await, vec![8300]);
    // The retry that was scheduled finds nothing left to do.
    app.clock.set(t("2026-11-30T12:31:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    assert_eq!(invoice(&app, &key, 1).await["payment"]["attempts"], 4);
    assert_eq!(
        check(&app, &key, "recovers", json!({"feature": "audit_log"})).await["allowed"],
        true
    );
}

/// A team customer whose card declined its first invoice and the three retries: the invoice
/// exhausted, the subscription suspended, and the clock past the period's end (2027-01-10,
/// 09:20), ticked. Returns the Stripe customer.
async fn suspended_past_its_period(app: &TestApp, key: &str, account: &str) -> String {
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    let customer = customer_on_team(app, key, account, DECLINING_CARD).await;
    wait_for_payment_state(app, key, 1, "failed").await;
    run_the_three_retries(app, &scheduler).await;
    assert_eq!(invoice(app, key, 1).await["payment"]["state"], "exhausted");
    assert_eq!(subscription_status(app, key, account).await, "suspended");
    app.clock.set(t("2027-01-10T09:20:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    customer
}

/// A suspended account whose period has ended restarts when it adds a working card: the
/// exhausted invoice is paid at once, the period the suspension began in is invoiced in
/// arrears, and a new period starts at the recovery with its fees, collected at once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_card_restarts_a_suspended_subscription_at_once() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let customer = suspended_past_its_period(&app, &key, "returns").await;
    let pm = fake_stripe().card(GOOD_CARD).await;
    let (status, set) = app
        .put(
            &key,
            "/v1/accounts/returns/payment-method",
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    // Invoice 1 (83.00), then the arrears of the first period (0.00, nothing to collect) and
    // the new period's 59 + (5 − 3) × 12 = 83.00.
    assert_eq!(set["retried"]["paid"], 2, "{set}");
    assert_eq!(subscription_status(&app, &key, "returns").await, "active");
    let (_, s) = app.get(&key, "/v1/accounts/returns/subscription").await;
    assert_eq!(s["current_period"]["start"], "2027-01-10T09:00:00.000Z");
    assert_eq!(s["current_period"]["end"], "2027-02-10T09:00:00.000Z");
    assert_eq!(
        fake_stripe().succeeded_amounts(&customer).await,
        vec![8300, 8300]
    );
    let (_, list) = app.get(&key, "/v1/invoices?account=returns").await;
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "paid"),
        "{list}"
    );
}

/// A new card's attempt on an invoice waits for a webhook recording on that invoice (the
/// webhook holds the invoice's collection lock for its short transaction): Stripe sends the
/// last retry's `invoice.payment_failed` when it will, and a CI run saw it land just as the
/// card was set, so the card's attempt skipped the invoice and answered `paid: 0`. Here a
/// transaction holds the lock as the webhook's does while the card is set, and ends 300 ms
/// after the card is saved; the card's answer comes after that and reports both invoices
/// paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_card_waits_for_a_webhook_recording_on_its_invoice() {
    use diesel_async::SimpleAsyncConnection;
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let customer = suspended_past_its_period(&app, &key, "held").await;
    let pm = fake_stripe().card(GOOD_CARD).await;
    let mut webhook = app.db.conn().await;
    webhook
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('{}', 7462002))",
            accrue::store::payments::collection_lock_key("held", 1)
        ))
        .await
        .unwrap();
    let body = json!({ "payment_method": pm });
    let saved = format!(
        "(SELECT COUNT(*) FROM accounts WHERE account = 'held' AND payment_method = '{pm}')"
    );
    let ((status, set, answered), committed) = tokio::join!(
        async {
            let (status, set) = app
                .put(&key, "/v1/accounts/held/payment-method", &body)
                .await;
            (status, set, std::time::Instant::now())
        },
        async {
            // The card is saved just before its retries start; the webhook ends a little
            // after that, while the retry is at the invoice.
            eventually("the card to be saved", || async {
                (app.db.count(&saved).await == 1).then_some(())
            })
            .await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            webhook.batch_execute("COMMIT").await.unwrap();
            std::time::Instant::now()
        }
    );
    assert_eq!(status, 200, "{set}");
    assert!(
        answered > committed,
        "the card's answer came before the webhook's transaction ended: {set}"
    );
    // Invoice 1, then the new period's 83.00 (the arrears invoice is 0.00).
    assert_eq!(set["retried"]["paid"], 2, "{set}");
    assert_eq!(subscription_status(&app, &key, "held").await, "active");
    assert_eq!(
        fake_stripe().succeeded_amounts(&customer).await,
        vec![8300, 8300]
    );
}

/// A new card waits for invoices someone else holds once in all, not once per invoice: an
/// account whose three failed invoices are all held (attempts in flight on another instance)
/// is answered within the one wait (2 s, then 0.2 s for each invoice after it is spent),
/// where each invoice waited its own 2 s before (6 s here); once they are released, the card
/// pays all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_card_waits_once_for_all_the_invoices_held_elsewhere() {
    use diesel_async::SimpleAsyncConnection;
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let customer = customer_on_team(&app, &key, "several", DECLINING_CARD).await;
    wait_for_payment_state(&app, &key, 1, "failed").await;
    app.quote_and_accept(&key, "several", json!({"seats": 8}))
        .await;
    let second = wait_for_payment_state(&app, &key, 2, "failed").await;
    app.quote_and_accept(&key, "several", json!({"seats": 10}))
        .await;
    let third = wait_for_payment_state(&app, &key, 3, "failed").await;
    let mut other = app.db.conn().await;
    let hold = |verb: &str| {
        let each: Vec<String> = (1..=3)
            .map(|n| {
                let key = accrue::store::payments::collection_lock_key("several", n);
                format!("{verb}(hashtextextended('{key}', 7462002))")
            })
            .collect();
        format!("SELECT {}", each.join(", "))
    };
    other
        .batch_execute(&hold("pg_advisory_lock"))
        .await
        .unwrap();
    let body = json!({ "payment_method": fake_stripe().card(GOOD_CARD).await });
    let asked = std::time::Instant::now();
    let (status, set) = app
        .put(&key, "/v1/accounts/several/payment-method", &body)
        .await;
    let took = asked.elapsed();
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["retried"]["paid"], 0, "{set}");
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_millis(4500),
        "the card's answer took {took:?} for three held invoices: {set}"
    );
    other
        .batch_execute(&hold("pg_advisory_unlock"))
        .await
        .unwrap();
    let (status, set) = app
        .put(&key, "/v1/accounts/several/payment-method", &body)
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["retried"]["paid"], 3, "{set}");
    // Team at 5 seats, 59 + (5 − 3) × 12 = 83.00, then the changes' invoices (in cents:
    // their totals have two decimals).
    let cents = |inv: &Value| -> i64 {
        let c = inv["total"]
            .as_str()
            .unwrap()
            .replace('.', "")
            .parse()
            .unwrap();
        assert!(c > 0, "{inv}");
        c
    };
    let mut expected = vec![8300, cents(&second), cents(&third)];
    expected.sort_unstable();
    assert_eq!(fake_stripe().succeeded_amounts(&customer).await, expected);
}

/// Stripe's webhook about a payment can arrive before the attempt that made the payment has
/// recorded Stripe's answer. The webhook is refused for now (503, so Stripe sends it again,
/// and no connection waits meanwhile), and the attempt records the payment as its own: the
/// new card's retry reports both invoices paid, invoice 1 counts the attempt, and the recovery
/// step names it; the event sent again finds nothing to do. Before, the webhook recorded the
/// payment first, and the answer said `paid: 1` of 2 (a CI run saw it) with the step naming
/// the attempt before. A proxy holds Stripe's answer to the payment while the test delivers
/// the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_about_a_payment_in_flight_is_refused_until_the_attempt_has_recorded_it() {
    let proxy = HoldingProxy::start();
    let db = TestDb::new().await;
    let (base, ctx, clock) = start_stripe_instance_on(
        &db.url,
        DunningPolicy::default(),
        &manifest_dir().join("pricing-plans"),
        &proxy.config(),
    )
    .await;
    // Its webhooks are the test's to deliver.
    let app = TestApp::new(base, db, ctx, clock);
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let customer = suspended_past_its_period(&app, &key, "raced").await;
    let exhausted = invoice(&app, &key, 1).await;
    let attempts_before = exhausted["payment"]["attempts"].as_i64().unwrap();
    let stripe_invoice = exhausted["payment"]["stripe_invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let pm = fake_stripe().card(GOOD_CARD).await;
    proxy.hold_next_payment();
    let body = json!({ "payment_method": pm });
    let webhook_meanwhile = async {
        tokio::time::timeout(std::time::Duration::from_secs(30), proxy.payment_taken())
            .await
            .expect("the retry never reached Stripe's pay");
        let event = event_about("invoice.payment_succeeded", &stripe_invoice).await;
        let payload = serde_json::to_string(&event).unwrap();
        let signature = sign(&payload, unix_now(), WEBHOOK_SECRET);
        let refused = deliver(&app, &payload, &signature).await;
        proxy.release();
        (payload, refused)
    };
    let ((status, set), (payload, (hook_status, hook))) = tokio::join!(
        app.put(&key, "/v1/accounts/raced/payment-method", &body),
        webhook_meanwhile
    );
    assert_eq!(hook_status, 503, "{hook}");
    assert_eq!(hook["error"]["code"], "unavailable", "{hook}");
    assert!(
        hook["error"]["message"]
            .as_str()
            .unwrap()
            .contains("being collected"),
        "{hook}"
    );
    assert_eq!(status, 200, "{set}");
    // Invoice 1, then the new period's 83.00 (the arrears invoice is 0.00, nothing to collect).
    assert_eq!(set["retried"]["paid"], 2, "{set}");
    // Stripe sends the event again: the payment is recorded by then.
    let (again_status, again) =
        deliver(&app, &payload, &sign(&payload, unix_now(), WEBHOOK_SECRET)).await;
    assert_eq!(again_status, 200, "{again}");
    assert_eq!(
        again,
        json!({"received": true, "duplicate": false, "effect": "none"})
    );
    assert_eq!(
        invoice(&app, &key, 1).await["payment"]["attempts"],
        attempts_before + 1
    );
    assert_eq!(
        steps(&app, &key, "raced").await.last().unwrap(),
        &("recovered".to_owned(), attempts_before + 1)
    );
    assert_eq!(subscription_status(&app, &key, "raced").await, "active");
    assert_eq!(
        fake_stripe().succeeded_amounts(&customer).await,
        vec![8300, 8300]
    );
}

/// Pays our open invoice directly in Stripe (as a customer in the hosted page would), so only
/// a webhook can tell accrue.
async fn pay_out_of_band(customer: &str, stripe_invoice: &str) {
    let fake = fake_stripe();
    let pm = fake.card(GOOD_CARD).await;
    let (s, b) = fake
        .post(
            &format!("/v1/payment_methods/{pm}/attach"),
            &[("customer", customer)],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = fake
        .post(
            &format!("/v1/customers/{customer}"),
            &[("invoice_settings[default_payment_method]", &pm)],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = fake
        .post(&format!("/v1/invoices/{stripe_invoice}/pay"), &[])
        .await;
    assert_eq!(s, 200, "{b}");
}

/// The event Stripe emitted of `kind` about `stripe_invoice`, as delivered (raw JSON).
async fn event_about(kind: &str, stripe_invoice: &str) -> Value {
    eventually(&format!("{kind} for {stripe_invoice}"), || async {
        let events = fake_stripe()
            .get(&format!("/v1/events?type={kind}&limit=100"))
            .await;
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["data"]["object"]["id"] == stripe_invoice)
            .cloned()
    })
    .await
}

async fn deliver(app: &TestApp, payload: &str, signature: &str) -> (u16, Value) {
    let res = app
        .http
        .post(app.url("/v1/stripe/webhook"))
        .header("Stripe-Signature", signature)
        .header("Content-Type", "application/json")
        .body(payload.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An app whose webhooks the test delivers itself (the fake does not know its URL).
async fn app_without_webhook() -> TestApp {
    let db = TestDb::new().await;
    let (base, ctx, clock) = start_stripe_instance(&db.url, DunningPolicy::default()).await;
    TestApp::new(base, db, ctx, clock)
}

/// Only Stripe's "no such invoice" (404) makes a pushed invoice `missing_in_stripe`. When
/// Stripe refuses to show it for another reason (here the instance's key is revoked: 401), the
/// reconciliation answers 409 `stripe_refused` naming the invoice and the cause, where it
/// reported every collected invoice of the month missing in Stripe before. The same month read
/// with a good key matches each invoice with its own Stripe invoice (Stripe is read several at
/// a time), and the one whose Stripe id Stripe does not know is the only one missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_stripe_refuses_to_read_fails_rather_than_report_invoices_missing() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    // Twelve accounts with different seats: each start invoice has its own total.
    let mut stripe_ids = std::collections::HashMap::new();
    for (i, seats) in (3..15).enumerate() {
        let number = i as i64 + 1;
        customer_on_team_with(&app, &key, &format!("rotated{i:02}"), GOOD_CARD, seats).await;
        let paid = wait_for_payment_state(&app, &key, number, "paid").await;
        // Team v2: 59.00 base, 12.00 a seat above the 3 included.
        let total = Decimal::from(59 + 12 * (seats as i64 - 3));
        assert_eq!(dec(&paid["total"]), total);
        let id = paid["payment"]["stripe_invoice_id"].as_str().unwrap();
        stripe_ids.insert(number, (id.to_owned(), total));
    }
    let stripe_invoice = stripe_ids[&1].0.as_str();
    let month = &NOW[..7];
    let path = format!("/v1/reports/reconciliation?period={month}");

    // A second instance on the same database whose Stripe key was revoked.
    let (_, plain, clock) = start_instance_unserved(&app.db.url, std::time::Duration::from_secs(1));
    let revoked = accrue::payments::StripeConfig {
        secret_key: "revoked".into(),
        ..stripe_config()
    };
    let payments = accrue::services::payments::Payments::connect(
        &plain.pool,
        &revoked,
        DunningPolicy::default(),
        accrue::domain::clock::Clock::now(clock.as_ref()),
    )
    .await
    .unwrap();
    let other = serve(plain.with_payments(payments));
    let res = reqwest::Client::new()
        .get(format!("{other}{path}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "stripe_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(stripe_invoice) && message.contains("401"),
        "{message}"
    );

    // Invoice 5's Stripe id is one Stripe does not know (a 404).
    let mut c = app.db.conn().await;
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut c,
        "UPDATE invoice_payments SET stripe_invoice_id = 'in_unknown' WHERE number = 5",
    )
    .await
    .unwrap();
    let (status, rec) = app.get(&key, &path).await;
    assert_eq!(status, 200, "{rec}");
    let invoices = rec["invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), stripe_ids.len(), "{rec}");
    for inv in invoices {
        let number = inv["number"].as_i64().unwrap();
        if number == 5 {
            assert_eq!(inv["stripe"], Value::Null, "{inv}");
            assert_eq!(inv["mismatches"], json!(["missing_in_stripe"]), "{inv}");
            continue;
        }
        let (id, total) = &stripe_ids[&number];
        assert_eq!(inv["stripe"]["id"], id.as_str(), "{inv}");
        assert_eq!(dec(&inv["stripe"]["amount"]), *total, "{inv}");
        assert_eq!(inv["mismatches"], json!([]), "{inv}");
    }
    assert_eq!(rec["matched"], stripe_ids.len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_seen_only_by_webhook_is_applied_once_and_a_replay_changes_nothing() {
    let app = app_without_webhook().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let customer = customer_on_team(&app, &key, "hooked", DECLINING_CARD).await;
    let inv = wait_for_payment_state(&app, &key, 1, "failed").await;
    let stripe_invoice = inv["payment"]["stripe_invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();

    pay_out_of_band(&customer, &stripe_invoice).await;
    // Until the webhook arrives, finance sees the difference.
    let month = &NOW[..7];
    let (_, rec) = app
        .get(&key, &format!("/v1/reports/reconciliation?period={month}"))
        .await;
    let kinds: Vec<&str> = rec["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["number"] == 1)
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["status_mismatch", "paid_amount_mismatch"],
        "{rec}"
    );

    let event = event_about("invoice.payment_succeeded", &stripe_invoice).await;
    let payload = serde_json::to_string(&event).unwrap();
    let signature = sign(&payload, unix_now(), WEBHOOK_SECRET);
    let (status, first) = deliver(&app, &payload, &signature).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        first,
        json!({"received": true, "duplicate": false, "effect": "paid"})
    );
    assert_eq!(invoice(&app, &key, 1).await["status"], "paid");
    assert_eq!(subscription_status(&app, &key, "hooked").await, "active");
    let after_first = steps(&app, &key, "hooked").await;
    assert_eq!(after_first.last().unwrap().0, "recovered");

    // Stripe delivers at least once: the same event again has no effect.
    let (status, second) =
        deliver(&app, &payload, &sign(&payload, unix_now(), WEBHOOK_SECRET)).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second,
        json!({"received": true, "duplicate": true, "effect": "none"})
    );
    assert_eq!(steps(&app, &key, "hooked").await, after_first);
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM stripe_events)::int8")
            .await,
        1
    );
    let (_, rec) = app
        .get(&key, &format!("/v1/reports/reconciliation?period={month}"))
        .await;
    assert_eq!(rec["mismatches"], json!([]), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_stale_or_unsigned_webhooks_are_refused_and_change_nothing() {
    let app = app_without_webhook().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let customer = customer_on_team(&app, &key, "guarded", DECLINING_CARD).await;
    let inv = wait_for_payment_state(&app, &key, 1, "failed").await;
    let stripe_invoice = inv["payment"]["stripe_invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();
    pay_out_of_band(&customer, &stripe_invoice).await;
    let event = event_about("invoice.payment_succeeded", &stripe_invoice).await;
    let payload = serde_json::to_string(&event).unwrap();

    // The body changed after signing.
    let signature = sign(&payload, unix_now(), WEBHOOK_SECRET);
    let tampered = payload.replacen("invoice.payment_succeeded", "invoice.payment_succeedeX", 1);
    let (status, body) = deliver(&app, &tampered, &signature).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_signature")),
        "{body}"
    );
    // Signed with another secret.
    let (status, body) = deliver(&app, &payload, &sign(&payload, unix_now(), "whsec_other")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_signature")),
        "{body}"
    );
    // Correctly signed, but more than 300 s old: a replay from a captured request.
    let (status, body) = deliver(
        &app,
        &payload,
        &sign(&payload, unix_now() - 301, WEBHOOK_SECRET),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("stale_signature")),
        "{body}"
    );
    // No signature at all.
    let res = app
        .http
        .post(app.url("/v1/stripe/webhook"))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);

    assert_eq!(invoice(&app, &key, 1).await["status"], "open");
    assert_eq!(subscription_status(&app, &key, "guarded").await, "past_due");
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM stripe_events)::int8")
            .await,
        0
    );
    // Within the tolerance the same event is accepted.
    let (status, ok) = deliver(
        &app,
        &payload,
        &sign(&payload, unix_now() - 290, WEBHOOK_SECRET),
    )
    .await;
    assert_eq!((status, ok["effect"].as_str()), (200, Some("paid")), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_charge_and_its_record_is_resumed_without_a_second_charge() {
    let fake = fake_stripe();
    let db = TestDb::new().await;
    // Plans and a key written as `accrue plans publish` and `accrue keys create` would.
    let (_, setup, _) = start_instance_unserved(&db.url, std::time::Duration::from_secs(1));
    accrue::services::plans::publish(&setup.pool, &setup.plans(), "test", chrono::Utc::now())
        .await
        .unwrap();
    let scopes = accrue::domain::scope::Scope::parse_list("billing,finance").unwrap();
    let key = accrue::services::auth::create_key(&setup.pool, "test", &scopes, None, "test")
        .await
        .unwrap();
    let api_base = format!("{}/", fake.url);
    let stripe_env = [
        ("ACCRUE_STRIPE_KEY", STRIPE_KEY),
        ("ACCRUE_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("ACCRUE_STRIPE_API_BASE", api_base.as_str()),
    ];
    let mut crashing = stripe_env.to_vec();
    crashing.push(("ACCRUE_FAILPOINT", "after_stripe_pay"));
    let port = free_port();
    let mut server = ServerProcess::start_with_env(&db.url, port, &crashing).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.base);
    let res = http
        .patch(url("/v1/accounts/crashy"))
        .bearer_auth(&key)
        .json(&account_body("crashy@example.com"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let pm = fake.card(GOOD_CARD).await;
    let set: Value = http
        .put(url("/v1/accounts/crashy/payment-method"))
        .bearer_auth(&key)
        .json(&json!({ "payment_method": pm }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let customer = set["customer"].as_str().unwrap().to_owned();
    // Subscribing issues the start invoice and collects it at once; the process dies right
    // after Stripe charged the card and before the payment is recorded (the answer to this
    // request may or may not make it out first).
    let _ = http
        .post(url("/v1/accounts/crashy/subscription"))
        .bearer_auth(&key)
        .json(&json!({"plan": "team", "seats": 5}))
        .send()
        .await;
    let exited = eventually("the server to crash at the failpoint", || {
        let status = server.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(!exited.success(), "aborted, not stopped: {exited:?}");

    // Stripe charged once; accrue's records do not know it yet.
    let charges = fake.charges_of(&customer).await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["status"], "succeeded");
    assert_eq!(
        db.count("(SELECT COUNT(*) FROM invoices WHERE number = 1 AND status = 'open')::int8")
            .await,
        1
    );
    assert_eq!(
        db.count("(SELECT COUNT(*) FROM invoice_payments WHERE state = 'pending' AND attempts = 0)::int8")
            .await,
        1
    );

    // Restarted (without the failpoint), it resumes the collection on start.
    let server = ServerProcess::start_with_env(&db.url, free_port(), &stripe_env).await;
    let inv: Value = eventually("the resumed collection", || {
        let http = http.clone();
        let (u, key) = (format!("{}/v1/invoices/1", server.base), key.clone());
        async move {
            let inv: Value = http
                .get(u)
                .bearer_auth(key)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (inv["status"] == "paid").then_some(inv)
        }
    })
    .await;
    assert_eq!(inv["payment"]["state"], "paid");
    assert_eq!(inv["payment"]["amount_paid"], "83.00");
    let charges = fake.charges_of(&customer).await;
    assert_eq!(charges.len(), 1, "no second charge: {charges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_closing_and_collecting_at_once_charge_each_period_once() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let mut customers = Vec::new();
    for i in 0..6 {
        let account = format!("pair{i}");
        customers.push(customer_on_team(&app, &key, &account, GOOD_CARD).await);
    }
    for n in 1..=6 {
        wait_for_payment_state(&app, &key, n, "paid").await;
    }
    let (_, b_ctx, b_clock) = start_stripe_instance(&app.db.url, DunningPolicy::default()).await;
    let later = t("2027-01-26T00:00:00.000Z"); // two periods have ended
    app.clock.set(later);
    b_clock.set(later);
    let sa = Scheduler::new(t(NOW)).unwrap();
    let sb = Scheduler::new(t(NOW)).unwrap();
    let (a, b) = tokio::join!(tick(&app.ctx, &sa), tick(&b_ctx, &sb));
    a.unwrap();
    b.unwrap();
    let (c, d) = tokio::join!(
        accrue::services::payments::collect_due(&app.ctx),
        accrue::services::payments::collect_due(&b_ctx)
    );
    c.unwrap();
    d.unwrap();
    assert_eq!(
        app.db.count("(SELECT COUNT(*) FROM (SELECT account, period_start FROM invoices WHERE kind = 'period' GROUP BY 1, 2 HAVING COUNT(*) > 1) d)::int8").await,
        0
    );
    assert_eq!(
        app.db
            .count(
                "(SELECT COUNT(*) FROM invoices WHERE kind = 'period' AND status = 'paid')::int8"
            )
            .await,
        12
    );
    for customer in &customers {
        let charges = fake_stripe().charges_of(customer).await;
        let amounts: Vec<i64> = charges
            .iter()
            .map(|c| c["amount"].as_i64().unwrap())
            .collect();
        // The start invoice and two period invoices (59 + 24 in advance each, no usage).
        assert_eq!(amounts.len(), 3, "{amounts:?}");
        assert!(charges.iter().all(|c| c["status"] == "succeeded"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_stripe_is_unreachable_collection_waits_without_dunning_and_finance_sees_it_missing()
{
    let db = TestDb::new().await;
    let (_, plain, clock) = start_instance_unserved(&db.url, std::time::Duration::from_secs(1));
    let mut config = stripe_config();
    config.api_base = Some(format!("http://127.0.0.1:{}/", free_port())); // nothing listens
    let payments = accrue::services::payments::Payments::connect(
        &plain.pool,
        &config,
        DunningPolicy::default(),
        t(NOW),
    )
    .await
    .unwrap();
    let ctx = plain.with_payments(payments);
    let app = TestApp {
        base: serve(ctx.clone()),
        db,
        ctx,
        clock,
        http: reqwest::Client::new(),
    };
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    app.subscribe(&key, "offline", json!({"plan": "team", "seats": 5}))
        .await;
    // The attempt made right after subscribing (or the sweep's) finds Stripe unreachable.
    accrue::services::payments::collect_due(&app.ctx)
        .await
        .unwrap();
    eventually("the deferred attempt", || async {
        let inv = invoice(&app, &key, 1).await;
        inv["payment"]["last_error"].is_string().then_some(())
    })
    .await;
    let inv = invoice(&app, &key, 1).await;
    assert_eq!(inv["payment"]["state"], "pending");
    assert_eq!(inv["payment"]["attempts"], 0, "not a dunning attempt");
    assert_eq!(
        inv["payment"]["next_attempt_at"],
        "2026-11-25T12:40:00.000Z"
    );
    assert!(inv["payment"]["last_error"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
    assert_eq!(subscription_status(&app, &key, "offline").await, "active");
    assert!(steps(&app, &key, "offline").await.is_empty());

    let (status, rec) = app
        .get(&key, "/v1/reports/reconciliation?period=2026-11")
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(
        rec["mismatches"],
        json!([{"number": 1, "account": "offline", "kind": "missing_in_stripe", "ours": "83.00", "stripe": "none"}])
    );
    assert_eq!(rec["matched"], 0);
}

/// B13. Stripe keeps ISK as a two-decimal currency (100 = 1 króna): a 1,500 ISK invoice is
/// charged as 150,000, read back as 1,500 paid, and reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isk_invoices_are_charged_in_stripe_hundredths_and_reconcile() {
    let dir = catalogue_with(&[(
        "reykjavik/v1.toml",
        "name = \"Reykjavik\"\ncurrency = \"ISK\"\ninterval = \"month\"\nself_serve = true\nbase_fee = \"1500\"\n",
    )]);
    let app = spawn_stripe_app_with(DunningPolicy::default(), &dir).await;
    std::fs::remove_dir_all(&dir).unwrap();
    app.publish_plans().await;
    let key = app.key("billing,finance", None).await;
    let (status, _) = app
        .patch(
            &key,
            "/v1/accounts/iceland",
            &account_body("is@example.com"),
        )
        .await;
    assert!(status < 300);
    let pm = fake_stripe().card(GOOD_CARD).await;
    let (status, set) = app
        .put(
            &key,
            "/v1/accounts/iceland/payment-method",
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    let customer = set["customer"].as_str().unwrap().to_owned();
    app.subscribe(&key, "iceland", json!({"plan": "reykjavik"}))
        .await;
    let inv = wait_for_payment_state(&app, &key, 1, "paid").await;
    assert_eq!(inv["total"], "1500");
    assert_eq!(inv["payment"]["amount_paid"], "1500");
    let charged: Vec<i64> = fake_stripe()
        .charges_of(&customer)
        .await
        .iter()
        .map(|c| c["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(
        charged,
        vec![150_000],
        "1,500 krónur in Stripe's hundredths"
    );
    let (status, rec) = app
        .get(&key, "/v1/reports/reconciliation?period=2026-11")
        .await;
    assert_eq!(status, 200, "{rec}");
    let ours: Vec<&Value> = rec["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["account"] == "iceland")
        .collect();
    assert_eq!(ours.len(), 1, "{rec}");
    assert_eq!(ours[0]["stripe"]["amount"], "1500");
    assert_eq!(ours[0]["mismatches"], json!([]), "{rec}");
}

/// B9, B10. While suspended, plan and seat changes are refused; a recovery months later
/// bills the period the suspension began in (its usage in arrears), none of the months spent
/// suspended, and starts a new period at the recovery with its advance fees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_from_suspension_re_anchors_and_never_bills_the_suspended_months() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    let customer = customer_on_team(&app, &key, "sleeper", DECLINING_CARD).await;
    wait_for_payment_state(&app, &key, 1, "failed").await;
    run_the_three_retries(&app, &scheduler).await;
    assert_eq!(
        subscription_status(&app, &key, "sleeper").await,
        "suspended"
    );
    // Two period ends pass while suspended: nothing is invoiced.
    app.clock.set(t("2027-02-10T00:00:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    let (_, list) = app.get(&key, "/v1/invoices?account=sleeper").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (status, body) = app
        .post(
            &key,
            "/v1/accounts/sleeper/subscription/quotes",
            &json!({"seats": 20}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "subscription_suspended");

    let inv = invoice(&app, &key, 1).await;
    let stripe_invoice = inv["payment"]["stripe_invoice_id"].as_str().unwrap();
    pay_out_of_band(&customer, stripe_invoice).await;
    eventually("the webhook's reactivation", || async {
        (subscription_status(&app, &key, "sleeper").await == "active").then_some(())
    })
    .await;
    let (_, s) = app.get(&key, "/v1/accounts/sleeper/subscription").await;
    assert_eq!(s["current_period"]["start"], "2027-02-10T00:00:00.000Z");
    assert_eq!(s["current_period"]["end"], "2027-03-10T00:00:00.000Z");
    tick(&app.ctx, &scheduler).await.unwrap();
    let (_, list) = app.get(&key, "/v1/invoices?account=sleeper").await;
    let kinds: Vec<(String, String, String)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_owned(),
                i["period_start"].as_str().unwrap().to_owned(),
                i["total"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // The first month's fees (paid late), its usage (none: 0.00), and the new month from the
    // recovery: 59 + (5 − 3) × 12 = 83.00. Nothing for 2026-12-25 to 2027-02-10.
    assert_eq!(
        kinds,
        vec![
            (
                "start".into(),
                "2026-11-25T12:00:00.000Z".into(),
                "83.00".into()
            ),
            (
                "period".into(),
                "2026-11-25T12:00:00.000Z".into(),
                "0.00".into()
            ),
            (
                "start".into(),
                "2027-02-10T00:00:00.000Z".into(),
                "83.00".into()
            ),
        ]
    );
}

/// DESIGN's trial rule with Stripe collecting: at trial end an account with a payment method
/// converts and pays; one without falls to the plan's fallback (Free) with no invoice and no
/// dunning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_without_a_payment_method_falls_to_the_fallback_plan_at_its_end() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("billing,finance,check", None).await;
    for a in ["carded", "cardless"] {
        let (status, body) = app
            .patch(
                &key,
                &format!("/v1/accounts/{a}"),
                &account_body(&format!("{a}@example.com")),
            )
            .await;
        assert!(status < 300, "{body}");
    }
    let pm = fake_stripe().card(GOOD_CARD).await;
    let (status, set) = app
        .put(
            &key,
            "/v1/accounts/carded/payment-method",
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    for a in ["carded", "cardless"] {
        app.subscribe(&key, a, json!({"plan": "team", "seats": 5, "trial": true}))
            .await;
    }
    // The trial ends 2026-12-09 12:00.
    app.clock.set(t("2026-12-09T13:00:00.000Z"));
    tick(&app.ctx, &Scheduler::new(t(NOW)).unwrap())
        .await
        .unwrap();

    let (_, s) = app.get(&key, "/v1/accounts/carded/subscription").await;
    assert_eq!(
        (s["plan"].as_str(), s["status"].as_str()),
        (Some("team"), Some("active"))
    );
    // 59 + (5 − 3) × 12.
    let inv = wait_for_payment_state(&app, &key, 1, "paid").await;
    assert_eq!(
        (inv["account"].as_str(), inv["total"].as_str()),
        (Some("carded"), Some("83.00"))
    );

    let (_, s) = app.get(&key, "/v1/accounts/cardless/subscription").await;
    assert_eq!(
        (s["plan"].as_str(), s["status"].as_str()),
        (Some("free"), Some("active"))
    );
    assert_eq!(s["current_period"]["start"], "2026-12-09T12:00:00.000Z");
    let (_, list) = app.get(&key, "/v1/invoices?account=cardless").await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    assert!(steps(&app, &key, "cardless").await.is_empty());
    assert_eq!(subscription_status(&app, &key, "cardless").await, "active");
    // Free's terms: no audit log.
    let denied = check(&app, &key, "cardless", json!({"feature": "audit_log"})).await;
    assert_eq!(denied["allowed"], false, "{denied}");
}

/// B21. Dunning that ends in a cancellation mid-period bills the usage of the part that ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dunning_cancellation_mid_period_bills_the_usage_so_far() {
    let policy = DunningPolicy {
        final_action: accrue::domain::dunning::FinalAction::Cancel,
        ..DunningPolicy::default()
    };
    let app = spawn_stripe_app(policy).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    customer_on_team(&app, &key, "quitter", DECLINING_CARD).await;
    wait_for_payment_state(&app, &key, 1, "failed").await;
    // 2,500 compute minutes: 2 packages of 1,000 above the 500 free, 16.00.
    app.clock.set(t("2026-11-26T00:00:00.000Z"));
    let (status, body) = app
        .send(
            &key,
            &json!({"events": [{"id": "j1", "account": "quitter", "type": "job.completed", "properties": {"minutes": 2500}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    run_the_three_retries(&app, &scheduler).await;
    assert_eq!(subscription_status(&app, &key, "quitter").await, "canceled");
    let inv = invoice(&app, &key, 2).await;
    assert_eq!(inv["kind"], "period");
    assert_eq!(inv["period_start"], "2026-11-25T12:00:00.000Z");
    assert_eq!(inv["period_end"], "2026-12-02T12:00:00.000Z");
    assert_eq!(inv["total"], "16.00");
    // Canceled with invoices unpaid: not subscribed again until they are settled.
    let (status, body) = app
        .post(
            &key,
            "/v1/accounts/quitter/subscription",
            &json!({"plan": "team", "seats": 5}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "unpaid_invoices");
}

/// A cancellation scheduled before a suspension stays: paying after the period end ends the
/// subscription (the period's usage billed) instead of starting and charging a new period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_scheduled_before_a_suspension_ends_the_subscription_on_recovery() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    let customer = customer_on_team(&app, &key, "leaving", DECLINING_CARD).await;
    wait_for_payment_state(&app, &key, 1, "failed").await;
    app.quote_and_accept(&key, "leaving", json!({"cancel": true}))
        .await;
    run_the_three_retries(&app, &scheduler).await;
    assert_eq!(
        subscription_status(&app, &key, "leaving").await,
        "suspended"
    );
    app.clock.set(t("2027-01-10T00:00:00.000Z"));
    let inv = invoice(&app, &key, 1).await;
    pay_out_of_band(
        &customer,
        inv["payment"]["stripe_invoice_id"].as_str().unwrap(),
    )
    .await;
    eventually("the webhook's effect", || async {
        (subscription_status(&app, &key, "leaving").await == "canceled").then_some(())
    })
    .await;
    let (_, list) = app.get(&key, "/v1/invoices?account=leaving").await;
    let kinds: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    // The first month's fees and its (empty) usage; no new period.
    assert_eq!(kinds, vec!["start", "period"]);
}

/// A push Stripe refuses for good (here: the customer was deleted in Stripe's dashboard) stops
/// the invoice's collection with a `collection_refused` dunning step (an outbound event, so
/// operators hear of it) instead of retrying every ten minutes forever; the subscription is
/// not put past due for it, and later sweeps leave the invoice alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_stripe_refuses_stops_collecting_and_says_why() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    let (status, body) = app
        .patch(&key, "/v1/accounts/gone", &account_body("gone@example.com"))
        .await;
    assert!(status < 300, "{body}");
    let pm = fake_stripe().card(GOOD_CARD).await;
    let (status, set) = app
        .put(
            &key,
            "/v1/accounts/gone/payment-method",
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    let customer = set["customer"].as_str().unwrap();
    let res = reqwest::Client::new()
        .delete(format!("{}/v1/customers/{customer}", fake_stripe().url))
        .basic_auth(STRIPE_KEY, Some(""))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    app.subscribe(&key, "gone", json!({"plan": "team", "seats": 5}))
        .await;
    let inv = wait_for_payment_state(&app, &key, 1, "refused").await;
    assert_eq!(inv["status"], "open");
    assert_eq!(inv["payment"]["next_attempt_at"], Value::Null);
    assert!(
        inv["payment"]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("Stripe refused the invoice"),
        "{inv}"
    );
    assert_eq!(
        steps(&app, &key, "gone").await,
        vec![("collection_refused".to_owned(), 0)]
    );
    assert_eq!(subscription_status(&app, &key, "gone").await, "active");
    // An hour of sweeps later: no retry, no other step.
    for minutes in [10, 30, 60] {
        app.clock.set(t(NOW) + chrono::Duration::minutes(minutes));
        tick(&app.ctx, &scheduler).await.unwrap();
    }
    let inv = invoice(&app, &key, 1).await;
    assert_eq!(inv["payment"]["state"], "refused");
    assert_eq!(steps(&app, &key, "gone").await.len(), 1);
    let (_, feed) = app.get(&key, "/v1/feed?after=0&limit=1000").await;
    assert!(
        feed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "dunning.step" && e["data"]["step"] == "collection_refused"),
        "{feed}"
    );
}

/// An invoice whose payment already failed, and that Stripe then no longer has (the operator
/// switched Stripe accounts; the re-read answers 404), stayed `refused` with the subscription
/// past due for ever: access never stopped. A refusal after a failure counts as that retry
/// failing, so the dunning schedule runs to its final action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_a_failed_payment_keeps_the_dunning_schedule_to_suspension() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance,check", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();
    customer_on_team(&app, &key, "vanish", DECLINING_CARD).await;
    let inv = wait_for_payment_state(&app, &key, 1, "failed").await;
    assert_eq!(subscription_status(&app, &key, "vanish").await, "past_due");
    let stripe_id = inv["payment"]["stripe_invoice_id"].as_str().unwrap();
    let res = reqwest::Client::new()
        .post(format!(
            "{}/_accrue/forget/invoice/{stripe_id}",
            fake_stripe().url
        ))
        .basic_auth(STRIPE_KEY, Some(""))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    // The first retry: Stripe answers 404 for the invoice. Still past due, retried on day 5.
    app.clock.set(t("2026-11-28T12:31:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    let inv = invoice(&app, &key, 1).await;
    assert_eq!(inv["payment"]["state"], "failed", "{inv}");
    assert_eq!(inv["payment"]["attempts"], 2);
    assert_eq!(
        inv["payment"]["next_attempt_at"],
        "2026-11-30T12:30:00.000Z"
    );
    assert!(
        inv["payment"]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("Stripe refused the invoice"),
        "{inv}"
    );
    assert_eq!(subscription_status(&app, &key, "vanish").await, "past_due");
    // Past the last retry day: the final action applies.
    for at in ["2026-11-30T12:31:00.000Z", "2026-12-02T12:31:00.000Z"] {
        app.clock.set(t(at));
        tick(&app.ctx, &scheduler).await.unwrap();
    }
    let inv = invoice(&app, &key, 1).await;
    assert_eq!(inv["payment"]["state"], "exhausted", "{inv}");
    assert_eq!(subscription_status(&app, &key, "vanish").await, "suspended");
}
