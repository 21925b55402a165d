//! Scenario 4: the release binary SIGKILLed (aborted at a failpoint, as a kill -9 would stop
//! it) at each step of a collection: before the push to Stripe, after the push, and after
//! Stripe charged the card but before accrue recorded it. Restarted, it resumes the collection
//! and the card is charged exactly once, on exactly one Stripe invoice.

use crate::fake_stripe::{fake_stripe, GOOD_CARD, STRIPE_KEY, WEBHOOK_SECRET};
use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_each_step_of_collection_resumes_without_a_second_charge() {
    let _one = crate::SERIAL.lock().await;
    let fake = fake_stripe();
    let cluster = Cluster::start();
    let api_base = format!("{}/", fake.url);
    let env = [
        ("STRIPE_SECRET_KEY", STRIPE_KEY),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("STRIPE_API_BASE", api_base.as_str()),
    ];
    let mut figures = Vec::new();
    for failpoint in [
        "before_stripe_push",
        "after_stripe_push",
        "after_stripe_pay",
    ] {
        let db = cluster.database(&format!("chaos_{failpoint}"));
        let key = prepare(&db, "billing,finance");
        publish_plans(&db, &env);
        let mut crashing = env.to_vec();
        crashing.push(("ACCRUE_FAILPOINT", failpoint));
        let mut server = Server::start(&db, &crashing).await;
        let http = http_client();
        let account = format!("kill-{failpoint}");
        let res = http
            .patch(format!("{}/v1/accounts/{account}", server.base))
            .bearer_auth(&key)
            .json(&json!({"name": "Killed Co", "email": format!("{account}@example.com")}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        let pm = fake.card(GOOD_CARD).await;
        let set: Value = http
            .put(format!(
                "{}/v1/accounts/{account}/payment-method",
                server.base
            ))
            .bearer_auth(&key)
            .json(&json!({ "payment_method": pm }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let customer = set["customer"].as_str().expect("a customer").to_owned();
        // Subscribing issues the start invoice (59 + 2 × 12 = 83.00) and collects it at once;
        // the process dies at the failpoint.
        let _ = http
            .post(format!(
                "{}/v1/accounts/{account}/subscription",
                server.base
            ))
            .bearer_auth(&key)
            .json(&json!({"plan": "team", "seats": 5}))
            .send()
            .await;
        assert!(
            server.wait_exit(Duration::from_secs(30)).await,
            "{failpoint}: the process died at the failpoint"
        );
        let charged_before = fake.charges_of(&customer).await.len();

        // Restarted without the failpoint: the collection resumes on start.
        let server = Server::start(&db, &env).await;
        let mut paid = Value::Null;
        for _ in 0..200 {
            let inv: Value = http
                .get(format!("{}/v1/invoices/1", server.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if inv["status"] == "paid" {
                paid = inv;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(paid["status"], "paid", "{failpoint}: resumed and paid");
        assert_eq!(paid["payment"]["amount_paid"], "83.00");
        let charges: Vec<Value> = fake
            .charges_of(&customer)
            .await
            .into_iter()
            .filter(|c| c["status"] == "succeeded")
            .collect();
        assert_eq!(charges.len(), 1, "{failpoint}: one charge: {charges:?}");
        let invoices = fake
            .get(&format!("/v1/invoices?customer={customer}&limit=100"))
            .await;
        let open_or_paid: Vec<&Value> = invoices["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] != "draft")
            .collect();
        assert_eq!(
            open_or_paid.len(),
            1,
            "{failpoint}: one finalized Stripe invoice: {invoices}"
        );
        figures.push(format!(
            "{failpoint}: {charged_before} charge(s) when killed, 1 after the restart, 1 Stripe invoice"
        ));
        drop(server);
    }
    println!("chaos/sigkill-during-collection: {}", figures.join("; "));
}
