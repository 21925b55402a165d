//! Accounts as a resource (newcomer review S2-2, S3-3, S3-5): the list with filters and a
//! cursor, and accounts that events create before anyone registers them.

use crate::helpers::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Every page of `GET /v1/accounts?{query}` followed through `next_cursor`: the ids in the
/// order served.
async fn walk(app: &TestApp, key: &str, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..50 {
        let mut path = format!("/v1/accounts?{query}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, page) = app.get(key, &path).await;
        assert_eq!(status, 200, "{page}");
        for a in page["data"].as_array().unwrap() {
            ids.push(a["account"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => return ids,
        }
    }
    panic!("the account list never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_list_pages_by_cursor_filters_exactly_and_keeps_a_scoped_key_to_itself() {
    let app = spawn_app().await;
    let key = app.key("billing,finance", None).await;
    // Seven accounts, three owned by dana, two in DE.
    let rows = [
        ("acc-a", Some("dana@vendor.test"), "DE"),
        ("acc-b", None, "FR"),
        ("acc-c", Some("dana@vendor.test"), "FR"),
        ("acc-d", Some("eve@vendor.test"), "DE"),
        ("acc-e", None, "US"),
        ("acc-f", Some("dana@vendor.test"), "US"),
        ("acc-g", None, "GB"),
    ];
    for (id, owner, country) in rows {
        let (status, body) = app
            .patch(
                &key,
                &format!("/v1/accounts/{id}"),
                &json!({"name": id, "crm_owner": owner, "country": country}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let all: Vec<String> = rows.iter().map(|r| r.0.to_owned()).collect();
    // Pages of 2, 3 and 100 give every account once, in id order.
    for limit in [2, 3, 100] {
        assert_eq!(walk(&app, &key, &format!("limit={limit}")).await, all);
    }
    let dana: Vec<String> = rows
        .iter()
        .filter(|r| r.1 == Some("dana@vendor.test"))
        .map(|r| r.0.to_owned())
        .collect();
    assert_eq!(
        walk(&app, &key, "limit=2&crm_owner=dana@vendor.test").await,
        dana
    );
    let de: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.2 == "DE")
        .map(|r| r.0.to_owned())
        .collect();
    let got: BTreeSet<String> = walk(&app, &key, "country=DE").await.into_iter().collect();
    assert_eq!(got, de);
    // The records are the accounts themselves.
    let (_, page) = app.get(&key, "/v1/accounts?limit=1&after=acc-c").await;
    assert_eq!(page["data"][0]["account"], "acc-d");
    assert_eq!(page["data"][0]["crm_owner"], "eve@vendor.test");
    assert_eq!(page["next_cursor"], "acc-d");

    // An account-scoped key lists its own account only.
    let own = app.key("billing", Some("acc-c")).await;
    assert_eq!(walk(&app, &own, "limit=5").await, vec!["acc-c".to_owned()]);

    // Wrong queries name what is wrong.
    let (status, body) = app.get(&key, "/v1/accounts?limit=0").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
    let (status, body) = app.get(&key, "/v1/accounts?owner=dana").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "owner");
    assert!(body["error"]["message"].as_str().unwrap().contains("owner"));
    // Text with control characters is refused naming the field (a NUL reached the database
    // and came back as a 503).
    let (status, body) = app
        .patch(&key, "/v1/accounts/acc-a", &json!({"name": "a\u{0}b"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("name"));
    // A check-only key does not read accounts.
    let widget = app.key("check", None).await;
    let (status, _) = app.get(&widget, "/v1/accounts").await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_an_unknown_account_create_it_so_its_profile_and_pql_work() {
    let app = spawn_app().await;
    let key = app.key("ingest,billing,finance", None).await;
    let (status, body) = app.get(&key, "/v1/accounts/walk-in").await;
    assert_eq!(status, 404, "{body}");
    let evs: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("w{i}"), "account": "walk-in", "type": "project.created", "timestamp": NOW}))
        .collect();
    let (status, body) = app.send(&key, &json!({ "events": evs })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");

    // The account exists, bare, created when its events were stored.
    let (status, acc) = app.get(&key, "/v1/accounts/walk-in").await;
    assert_eq!(status, 200, "{acc}");
    assert_eq!(acc["account"], "walk-in");
    assert!(acc["name"].is_null(), "{acc}");
    assert!(walk(&app, &key, "limit=10")
        .await
        .contains(&"walk-in".to_owned()));
    // Its PQL profile is scored from the events (project.created is a signal of the rubric).
    let (status, pql) = app.get(&key, "/v1/accounts/walk-in/pql").await;
    assert_eq!(status, 200, "{pql}");
    let met: Vec<&str> = pql["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["met"] == true)
        .map(|b| b["signal"].as_str().unwrap())
        .collect();
    assert!(met.contains(&"core_workflow"), "{pql}");
    // Registering it later is an update (200), and keeps what events created.
    let (status, body) = app
        .patch(
            &key,
            "/v1/accounts/walk-in",
            &json!({"name": "Walk-in Ltd"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created_at"], acc["created_at"]);
    // A second batch for the account (now known) still stores its events.
    let (status, body) = app
        .send(
            &key,
            &json!({"events": [{"id": "w9", "account": "walk-in", "type": "project.created", "timestamp": NOW}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
}
