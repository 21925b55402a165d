//! Bearer keys and scopes on every /v1 route.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_routes_refuse_missing_malformed_and_unknown_keys_with_401() {
    let app = spawn_app().await;
    for path in ["/v1/accounts/acme/usage", "/v1/governance/event-types"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
        let res = app
            .http
            .get(app.url(path))
            .header("authorization", "Basic abc")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 401, "{path}");
        let (status, body) = app.get("acr_not_a_real_key", path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthenticated"))
        );
    }
    let res = app
        .http
        .post(app.url("/v1/events"))
        .json(&json!({"id": "1", "account": "a", "type": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(app.db.count("(SELECT COUNT(*) FROM events)::int8").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_needs_its_scope_and_answers_403_without_it() {
    let app = spawn_app().await;
    let check = app.key("check", None).await;
    let ingest = app.key("ingest", None).await;
    let admin = app.key("admin", None).await;
    let event = json!({"id": "1", "account": "acme", "type": "api.request"});

    let (status, body) = app.send(&check, &event).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ingest"));
    let (status, _) = app.send(&ingest, &event).await;
    assert_eq!(status, 200);

    let (status, body) = app.get(&ingest, "/v1/accounts/acme/usage").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = app.get(&check, "/v1/accounts/acme/usage").await;
    assert_eq!(status, 200);

    let (status, _) = app.get(&check, "/v1/governance/event-types").await;
    assert_eq!(status, 403);
    let (status, _) = app.get(&admin, "/v1/governance/event-types").await;
    assert_eq!(status, 200);
    // admin includes every scope.
    let (status, _) = app
        .send(
            &admin,
            &json!({"id": "2", "account": "acme", "type": "api.request"}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_scoped_key_reaches_only_its_own_account() {
    let app = spawn_app().await;
    let acme = app.key("ingest,check,admin", Some("acme")).await;
    let (status, _) = app.get(&acme, "/v1/accounts/acme/usage").await;
    assert_eq!(status, 200);
    let (status, body) = app.get(&acme, "/v1/accounts/globex/usage").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = app.get(&acme, "/v1/governance/event-types").await;
    assert_eq!(status, 404);
    let (status, body) = app
        .send(
            &acme,
            &json!({"events": [
            {"id": "1", "account": "acme", "type": "api.request"},
            {"id": "2", "account": "globex", "type": "api.request"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["error"]["code"], "account_not_allowed");
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM events WHERE account = 'globex')::int8")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let key = app.key("check", None).await;
    let stored = app
        .db
        .count(&format!(
            "(SELECT COUNT(*) FROM api_keys WHERE key_hash = '{}' AND key_hash <> '{key}')::int8",
            accrue::services::auth::hash_key(&key)
        ))
        .await;
    assert_eq!(stored, 1);
    let plaintext = app
        .db
        .count(&format!(
            "(SELECT COUNT(*) FROM api_keys WHERE key_hash = '{key}' OR prefix = '{key}')::int8"
        ))
        .await;
    assert_eq!(plaintext, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_without_a_key_and_unknown_routes_get_json_404() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = app
        .http
        .get(app.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
