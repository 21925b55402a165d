//! Scenario 3: two `accrue serve` processes on one database, a test clock advanced through
//! three months by both at once (each advance sent to both; one runs, the other is refused
//! with 409 `clock_advancing` or finds nothing left), while accounts' cards decline and
//! recover through either process. Exactly one invoice per (account, period), and exactly one
//! Stripe charge per paid invoice.

use crate::fake_stripe::{fake_stripe, DECLINING_CARD, GOOD_CARD, STRIPE_KEY, WEBHOOK_SECRET};
use crate::harness::*;
use chrono::{DateTime, Duration as Days, Utc};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 8;

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let res = http
        .request(method, url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_test_clock_bill_each_period_once_and_charge_each_invoice_once() {
    let _one = crate::SERIAL.lock().await;
    let fake = fake_stripe();
    let cluster = Cluster::start();
    let db = cluster.database("chaos_two_processes");
    let key = prepare(&db, "admin,billing,finance");
    let api_base = format!("{}/", fake.url);
    let env = [
        ("STRIPE_SECRET_KEY", STRIPE_KEY),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("STRIPE_API_BASE", api_base.as_str()),
        ("ACCRUE_TEST_CLOCKS", "true"),
    ];
    publish_plans(&db, &env);
    let servers = [
        Server::start(&db, &env).await,
        Server::start(&db, &env).await,
    ];
    let base = |i: usize| servers[i % 2].base.clone();
    let http = http_client();
    let started = Instant::now();

    let start: DateTime<Utc> = "2027-01-01T00:00:00.000Z".parse().unwrap();
    let (status, clock) = send(
        &http,
        reqwest::Method::POST,
        format!("{}/v1/test-clocks", base(0)),
        &key,
        json!({"frozen_time": start, "name": "chaos"}),
    )
    .await;
    assert_eq!(status, 201, "{clock}");
    let clock = clock["id"].as_str().unwrap().to_owned();
    let card = |n: usize, good: bool| {
        let (http, key, url) = (
            http.clone(),
            key.clone(),
            format!("{}/v1/accounts/c{n}/payment-method", base(n + 1)),
        );
        async move {
            let pm = fake_stripe()
                .card(if good { GOOD_CARD } else { DECLINING_CARD })
                .await;
            let (status, body) = send(
                &http,
                reqwest::Method::PUT,
                url,
                &key,
                json!({ "payment_method": pm }),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["customer"].as_str().unwrap().to_owned()
        }
    };
    let mut customers = Vec::new();
    for n in 0..ACCOUNTS {
        let (status, body) = send(
            &http,
            reqwest::Method::PATCH,
            format!("{}/v1/accounts/c{n}", base(n)),
            &key,
            json!({"name": format!("Chaos {n}"), "email": format!("c{n}@example.com"), "test_clock": clock}),
        )
        .await;
        assert!(status < 300, "{body}");
        // Every other account starts with a card that declines.
        customers.push(card(n, n % 2 == 0).await);
        let (status, body) = send(
            &http,
            reqwest::Method::POST,
            format!("{}/v1/accounts/c{n}/subscription", base(n)),
            &key,
            json!({"plan": "team", "seats": 5}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    // Three months and a day in steps of two days; each advance sent to both processes at
    // once. The declining cards are replaced on day 10 (after two retries) for half of them,
    // the others run out their retries and are suspended; on day 40 one good card declines.
    let (mut advanced, mut refused) = (0, 0);
    let mut day = 0;
    while day < 92 {
        day += 2;
        let to = start + Days::days(day);
        let advance = |i: usize| {
            let (http, key, url) = (
                http.clone(),
                key.clone(),
                format!("{}/v1/test-clocks/{clock}/advance", base(i)),
            );
            async move {
                send(
                    &http,
                    reqwest::Method::POST,
                    url,
                    &key,
                    json!({ "frozen_time": to }),
                )
                .await
            }
        };
        let (a, b) = tokio::join!(advance(0), advance(1));
        for (status, body) in [a, b] {
            match status {
                200 => advanced += 1,
                409 if body["error"]["code"] == "clock_advancing" => refused += 1,
                _ => panic!("advance to {to}: {status} {body}"),
            }
        }
        // Whichever answered first, the clock is at `to` once both have answered.
        for _ in 0..600 {
            let c: Value = http
                .get(format!("{}/v1/test-clocks/{clock}", base(day as usize)))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let at = c["frozen_time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if c["status"] == "ready" && at.is_some_and(|t| t == to) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if day == 10 {
            for n in [1, 5] {
                card(n, true).await;
            }
        }
        if day == 40 {
            card(2, false).await;
        }
    }

    // One invoice per (account, period): no period invoiced twice, and every account that was
    // not suspended closed each of its three months.
    let doubled = count(
        &db,
        "(SELECT count(*) FROM (SELECT account, period_start FROM invoices WHERE kind = 'period'
           GROUP BY 1, 2 HAVING count(*) > 1) d)::int8",
    )
    .await;
    assert_eq!(doubled, 0, "a period invoiced twice");
    let invoices = count(&db, "(SELECT count(*) FROM invoices)::int8").await;
    let periods = count(
        &db,
        "(SELECT count(*) FROM invoices WHERE kind = 'period')::int8",
    )
    .await;
    for n in [0, 4, 6] {
        let closed = count(
            &db,
            &format!(
                "(SELECT count(*) FROM invoices WHERE account = 'c{n}' AND kind = 'period')::int8"
            ),
        )
        .await;
        assert_eq!(closed, 3, "c{n}: one close per month");
    }
    // One Stripe charge per paid invoice, and Stripe holds what accrue says was paid.
    let (mut charges, mut paid_invoices) = (0, 0);
    for (n, customer) in customers.iter().enumerate() {
        let succeeded: Vec<Value> = fake
            .charges_of(customer)
            .await
            .into_iter()
            .filter(|c| c["status"] == "succeeded")
            .collect();
        let paid = count(
            &db,
            &format!(
                "(SELECT count(*) FROM invoice_payments WHERE account = 'c{n}' AND state = 'paid'
                   AND amount_paid > 0)::int8"
            ),
        )
        .await;
        let cents = count(
            &db,
            &format!(
                "(SELECT coalesce(sum(amount_paid * 100), 0) FROM invoice_payments
                   WHERE account = 'c{n}')::int8"
            ),
        )
        .await;
        let charged: i64 = succeeded
            .iter()
            .map(|c| c["amount"].as_i64().unwrap())
            .sum();
        assert_eq!(
            succeeded.len() as i64,
            paid,
            "c{n}: one charge per paid invoice"
        );
        assert_eq!(charged, cents, "c{n}: Stripe charged what accrue recorded");
        let mut per_invoice: Vec<&str> = succeeded
            .iter()
            .filter_map(|c| c["invoice"].as_str())
            .collect();
        let all = per_invoice.len();
        per_invoice.sort();
        per_invoice.dedup();
        assert_eq!(
            per_invoice.len(),
            all,
            "c{n}: a Stripe invoice charged twice"
        );
        charges += succeeded.len();
        paid_invoices += paid;
    }
    let suspended = count(
        &db,
        "(SELECT count(*) FROM subscriptions WHERE status = 'suspended')::int8",
    )
    .await;
    let failures = count(
        &db,
        "(SELECT count(*) FROM dunning_steps WHERE step IN ('payment_failed', 'retry_failed'))::int8",
    )
    .await;
    assert!(suspended >= 1 && failures >= 1, "the cards did decline");
    println!(
        "chaos/two-processes-one-clock: {ACCOUNTS} accounts, 46 advances sent to both \
         processes ({advanced} ran, {refused} refused with clock_advancing); {invoices} \
         invoices ({periods} period closes, none twice); {failures} declined attempts, \
         {suspended} suspended; {paid_invoices} paid invoices, {charges} Stripe charges, one \
         each; {:?}",
        started.elapsed()
    );
}
