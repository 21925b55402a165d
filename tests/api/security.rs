//! The security review's findings (`reviews/security.md`), one test each, against the real
//! server, PostgreSQL and the fake Stripe server.

use crate::fake_stripe::*;
use crate::helpers::*;
use accrue::domain::dunning::DunningPolicy;
use serde_json::{json, Value};

async fn account(app: &TestApp, key: &str, account: &str) -> Value {
    let (status, body) = app.get(key, &format!("/v1/accounts/{account}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// An account with a Stripe customer (created by accrue when the card is set) and a card.
async fn with_card(app: &TestApp, key: &str, account: &str) -> String {
    let (status, body) = app
        .put(
            key,
            &format!("/v1/accounts/{account}"),
            &json!({"name": "Victim Ltd", "email": format!("{account}@example.com")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let pm = fake_stripe().card("4242424242424242").await;
    let (status, set) = app
        .put(
            key,
            &format!("/v1/accounts/{account}/payment-method"),
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    set["customer"].as_str().unwrap().to_owned()
}

/// C1. An account-scoped key cannot point its account at another account's Stripe customer
/// (and so cannot charge that customer's card): the field is refused, nothing is linked, and
/// the subscription that follows is charged to a customer of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_key_cannot_link_its_account_to_another_stripe_customer() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.publish_plans().await;
    let admin = app.key("billing,finance", None).await;
    let victim = with_card(&app, &admin, "c1-victim").await;
    let acme = app.key("ingest,billing", Some("c1-acme")).await;

    let (status, body) = app
        .put(
            &acme,
            "/v1/accounts/c1-acme",
            &json!({"name": "Acme", "stripe_customer_id": victim}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "managed_field");
    // Nothing was written, not even the name.
    let (status, _) = app.get(&admin, "/v1/accounts/c1-acme").await;
    assert_eq!(status, 404);

    // Subscribing anyway: the start invoice goes to a customer accrue creates for acme.
    let (status, body) = app
        .put(&acme, "/v1/accounts/c1-acme", &json!({"name": "Acme"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let pm = fake_stripe().card("4242424242424242").await;
    let (status, set) = app
        .put(
            &acme,
            "/v1/accounts/c1-acme/payment-method",
            &json!({ "payment_method": pm }),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_ne!(set["customer"], victim.as_str());
    app.subscribe(&acme, "c1-acme", json!({"plan": "business", "seats": 12}))
        .await;
    let own = set["customer"].as_str().unwrap().to_owned();
    eventually("acme's start invoice charged", || async {
        (fake_stripe().charges_of(&own).await.len() == 1).then_some(())
    })
    .await;
    assert!(
        fake_stripe().charges_of(&victim).await.is_empty(),
        "the victim's card is never charged"
    );
    let c = fake_stripe().get(&format!("/v1/customers/{victim}")).await;
    assert_eq!(c["metadata"]["accrue_account"], "c1-victim");
}

/// C1 (operator side). An unbound key may link an existing customer only when Stripe says it
/// is this account's: its metadata names the account. Another account's customer and unknown
/// ids are refused, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_links_only_a_customer_whose_metadata_names_the_account() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    let admin = app.key("billing,finance", None).await;
    let victim = with_card(&app, &admin, "c1o-victim").await;

    let (status, body) = app
        .put(
            &admin,
            "/v1/accounts/c1o-acme",
            &json!({"stripe_customer_id": victim}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "customer_mismatch");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stripe_customer_id"));

    let (status, body) = app
        .put(
            &admin,
            "/v1/accounts/c1o-acme",
            &json!({"stripe_customer_id": "cus_doesnotexist"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_customer");

    // A customer made in the Stripe dashboard for this account, with its metadata.
    let (status, c) = fake_stripe()
        .post(
            "/v1/customers",
            &[
                ("email", "ops@acme.example"),
                ("metadata[accrue_account]", "c1o-acme"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{c}");
    let id = c["id"].as_str().unwrap();
    let (status, body) = app
        .put(
            &admin,
            "/v1/accounts/c1o-acme",
            &json!({"stripe_customer_id": id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        account(&app, &admin, "c1o-acme").await["stripe_customer_id"],
        id
    );
}

/// H6. A PUT that leaves fields out (a firmographics sync sending only the name) keeps the
/// others, the Stripe customer link among them; `null` clears a field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_without_some_fields_keeps_them_and_the_stripe_link() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    let admin = app.key("billing,finance", None).await;
    let customer = with_card(&app, &admin, "h6-acme").await;
    let (status, body) = app
        .put(&admin, "/v1/accounts/h6-acme", &json!({"name": "Acme Inc"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let a = account(&app, &admin, "h6-acme").await;
    assert_eq!(a["name"], "Acme Inc");
    assert_eq!(a["email"], "h6-acme@example.com");
    assert_eq!(a["stripe_customer_id"], customer.as_str());
    assert!(a["payment_method"].is_string(), "{a}");

    let (status, body) = app
        .put(&admin, "/v1/accounts/h6-acme", &json!({"email": null}))
        .await;
    assert_eq!(status, 200, "{body}");
    let a = account(&app, &admin, "h6-acme").await;
    assert!(a["email"].is_null(), "{a}");
    assert_eq!(a["name"], "Acme Inc");
    assert_eq!(a["stripe_customer_id"], customer.as_str());
}
