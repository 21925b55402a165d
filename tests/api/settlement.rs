//! Settlement without Stripe (newcomer review S2-4): finance marks a manual invoice paid,
//! voids it with a credit note or writes it off; each shows on the invoice, in the list
//! filters, in the account's credit balance and in the month's reconciliation.

use crate::helpers::*;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;
use serde_json::{json, Value};

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

/// The number of the one invoice `account` has.
async fn only_invoice(app: &TestApp, key: &str, account: &str) -> i64 {
    let (status, page) = app
        .get(key, &format!("/v1/invoices?account={account}"))
        .await;
    assert_eq!(status, 200, "{page}");
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{page}");
    data[0]["number"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_settles_manual_invoices_paid_void_or_written_off_and_reconciliation_adds_up() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let fin = app.key("billing,finance", None).await;
    // Team: 59.00 base with 3 seats included, 12.00 per extra seat; 5 seats = 83.00.
    let team_5_seats = Decimal::new(59_00, 2) + Decimal::from(2) * Decimal::new(12_00, 2);

    // acme pays by wire.
    app.subscribe(&fin, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    let n_acme = only_invoice(&app, &fin, "acme").await;
    let path = format!("/v1/invoices/{n_acme}/pay");
    // Refusals first, naming what is wrong; nothing changes.
    let (status, body) = app
        .post(&fin, &path, &json!({"amount": "80.00"}), None)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "amount_mismatch");
    assert!(body["error"]["message"].as_str().unwrap().contains("83.00"));
    let (status, body) = app
        .post(
            &fin,
            &path,
            &json!({"amount": "83.00", "paid_at": "2026-12-01T00:00:00.000Z"}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "paid_at_in_future");
    let (status, body) = app
        .post(
            &fin,
            &path,
            &json!({"amount": "83.00", "paidat": NOW}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("paidat"));
    let bound = app.key("finance", Some("acme")).await;
    let (status, _) = app
        .post(&bound, &path, &json!({"amount": "83.00"}), None)
        .await;
    assert_eq!(
        status, 403,
        "an account's own key cannot settle its invoice"
    );
    let (_, inv) = app.get(&fin, &format!("/v1/invoices/{n_acme}")).await;
    assert_eq!(inv["status"], "open");
    assert!(inv["settlement"].is_null(), "{inv}");

    // Two payments recorded at once: exactly one wins.
    let body =
        json!({"amount": "83.0", "paid_at": "2026-11-24T09:00:00.000Z", "reference": "wire 4711"});
    let (a, b) = tokio::join!(
        app.post(&fin, &path, &body, None),
        app.post(&fin, &path, &body, None)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", a.1, b.1);
    let (paid, conflict) = if a.0 == 200 { (a.1, b.1) } else { (b.1, a.1) };
    assert_eq!(paid["status"], "paid");
    assert_eq!(dec(&paid["settlement"]["amount"]), team_5_seats);
    assert_eq!(
        paid["settlement"]["amount"], "83.00",
        "at the currency's scale"
    );
    assert_eq!(paid["settlement"]["kind"], "paid");
    assert_eq!(paid["settlement"]["reference"], "wire 4711");
    assert_eq!(paid["settlement"]["settled_at"], "2026-11-24T09:00:00.000Z");
    assert_eq!(conflict["error"]["code"], "invoice_not_open");
    // Once paid it can be neither voided nor written off.
    for action in ["void", "write-off"] {
        let (status, body) = app
            .post(
                &fin,
                &format!("/v1/invoices/{n_acme}/{action}"),
                &json!({}),
                None,
            )
            .await;
        assert_eq!(status, 409, "{action}: {body}");
    }

    // beta never pays: written off.
    app.subscribe(&fin, "beta", json!({"plan": "team", "seats": 5}))
        .await;
    let n_beta = only_invoice(&app, &fin, "beta").await;
    let (status, lost) = app
        .post(
            &fin,
            &format!("/v1/invoices/{n_beta}/write-off"),
            &json!({"reason": "customer insolvent"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{lost}");
    assert_eq!(lost["status"], "uncollectible");
    assert_eq!(lost["settlement"]["kind"], "write_off");
    assert_eq!(lost["settlement"]["reason"], "customer insolvent");
    let (_, page) = app.get(&fin, "/v1/invoices?status=uncollectible").await;
    let listed: Vec<i64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![n_beta]);
    // beta's own key sees the outcome, not finance's note or who wrote it.
    let beta_key = app.key("billing", Some("beta")).await;
    let (status, own) = app.get(&beta_key, &format!("/v1/invoices/{n_beta}")).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["settlement"]["kind"], "write_off");
    assert!(own["settlement"]["reason"].is_null(), "{own}");
    assert!(own["settlement"].get("settled_by").is_none(), "{own}");
    assert!(lost["settlement"]["settled_by"].is_string(), "{lost}");

    // gamma had 20.00 of credit, which its start invoice used; voiding gives it back.
    let credit = Decimal::new(20_00, 2);
    {
        let mut c = app.db.conn().await;
        diesel::sql_query(
            "INSERT INTO accounts (account, credit_balance, created_at, updated_at)
             VALUES ('gamma', 20, now(), now())",
        )
        .execute(&mut c)
        .await
        .unwrap();
    }
    app.subscribe(&fin, "gamma", json!({"plan": "team", "seats": 5}))
        .await;
    let n_gamma = only_invoice(&app, &fin, "gamma").await;
    let (_, inv) = app.get(&fin, &format!("/v1/invoices/{n_gamma}")).await;
    assert_eq!(dec(&inv["total"]), team_5_seats - credit, "{inv}");
    let (_, acc) = app.get(&fin, "/v1/accounts/gamma").await;
    assert_eq!(dec(&acc["credit_balance"]), Decimal::ZERO);
    // An empty body is allowed for a void.
    let res = app
        .http
        .post(app.url(&format!("/v1/invoices/{n_gamma}/void")))
        .bearer_auth(&fin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let voided: Value = res.json().await.unwrap();
    assert_eq!(voided["status"], "void");
    assert_eq!(voided["settlement"]["kind"], "void");
    assert_eq!(dec(&voided["settlement"]["amount"]), team_5_seats - credit);
    assert_eq!(dec(&voided["settlement"]["credit_restored"]), credit);
    let (_, acc) = app.get(&fin, "/v1/accounts/gamma").await;
    assert_eq!(dec(&acc["credit_balance"]), credit, "{acc}");

    // The month's reconciliation: every outcome in its column, in EUR.
    let (status, rec) = app
        .get(&fin, "/v1/reports/reconciliation?period=2026-11")
        .await;
    assert_eq!(status, 200, "{rec}");
    let cur = inv["currency"].as_str().unwrap();
    let totals = &rec["totals"][cur];
    let invoiced = team_5_seats * Decimal::from(3) - credit;
    assert_eq!(dec(&totals["invoiced"]), invoiced, "{rec}");
    assert_eq!(dec(&totals["paid"]), team_5_seats);
    assert_eq!(dec(&totals["written_off"]), team_5_seats);
    assert_eq!(dec(&totals["voided"]), team_5_seats - credit);
    assert_eq!(dec(&totals["outstanding"]), Decimal::ZERO);
    let acme = rec["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["number"] == n_acme)
        .unwrap();
    assert_eq!(acme["amount_paid"], "83.00");
    assert_eq!(acme["settlement"]["reference"], "wire 4711");

    // An open invoice with a negative total (issued before credit balances existed) is
    // refused with a conflict, not a database error.
    app.subscribe(&fin, "delta", json!({"plan": "team", "seats": 5}))
        .await;
    let n_delta = only_invoice(&app, &fin, "delta").await;
    {
        let mut c = app.db.conn().await;
        diesel::sql_query(format!(
            "UPDATE invoices SET total = -5 WHERE number = {n_delta}"
        ))
        .execute(&mut c)
        .await
        .unwrap();
    }
    for (action, body) in [
        ("pay", json!({"amount": "-5.00"})),
        ("void", json!({})),
        ("write-off", json!({})),
    ] {
        let (status, res) = app
            .post(
                &fin,
                &format!("/v1/invoices/{n_delta}/{action}"),
                &body,
                None,
            )
            .await;
        assert_eq!(status, 409, "{action}: {res}");
        assert_eq!(res["error"]["code"], "negative_total", "{action}: {res}");
    }
}
