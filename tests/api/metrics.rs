//! GET /metrics: the Prometheus page moves exactly with what the instance did.

use crate::helpers::*;
use serde_json::json;
use std::collections::BTreeMap;

/// The page's samples: `name{labels}` (labels as printed) → value.
async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    let text = res.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include every one of `labels`.
fn value(page: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    page.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_exactly_with_the_events_ingested_and_the_checks_answered() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    let before = scrape(&app).await;
    let batch = json!({"events": [
        {"id": "m-1", "account": "acme", "type": "api.request"},
        {"id": "m-2", "account": "acme", "type": "api.request"},
        {"id": "m-3", "account": "globex", "type": "job.completed", "properties": {"minutes": 5}},
        {"id": "m-4", "account": "acme", "type": "storage.snapshot", "properties": {}},
    ]});
    let (status, first) = app.send(&key, &batch).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = app.send(&key, &batch).await;
    assert_eq!(status, 200, "{again}");
    // One check loads the account (a miss), the next answers from the cache (a hit).
    for _ in 0..2 {
        let (status, v) = app
            .post(
                &key,
                "/v1/accounts/acme/check",
                &json!({"meter": "api_calls"}),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let after = scrape(&app).await;
    let delta =
        |name: &str, labels: &[&str]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(delta("accrue_events_accepted_total", &[]), 3.0);
    assert_eq!(delta("accrue_events_duplicate_total", &[]), 3.0);
    assert_eq!(
        delta(
            "accrue_events_rejected_total",
            &["code=\"missing_property\""]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "accrue_http_requests_total",
            &["method=\"POST\"", "route=\"/v1/events\"", "status=\"200\""]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "accrue_http_requests_total",
            &["route=\"/v1/accounts/{account}/check\"", "status=\"200\""]
        ),
        2.0,
        "by route pattern, never by path"
    );
    assert_eq!(
        delta(
            "accrue_http_request_duration_seconds_count",
            &["route=\"/v1/events\""]
        ),
        2.0
    );
    assert_eq!(
        delta("accrue_check_lookups_total", &["result=\"miss\""]),
        1.0
    );
    assert_eq!(
        delta("accrue_check_lookups_total", &["result=\"hit\""]),
        1.0
    );
    assert_eq!(
        delta("accrue_ingest_group_events_sum", &[]),
        6.0,
        "both requests' valid events went through a lane"
    );
    // Gauges of state, read as the page renders.
    assert_eq!(
        value(&after, "accrue_subscriptions", &["status=\"active\""]),
        1.0
    );
    assert_eq!(
        value(&after, "accrue_subscriptions", &["status=\"past_due\""]),
        0.0
    );
    assert_eq!(value(&after, "accrue_check_cache_entries", &[]), 1.0);
    assert_eq!(value(&after, "accrue_db_pool_max", &[]), 8.0);
    assert_eq!(value(&after, "accrue_ingest_in_flight_events", &[]), 0.0);
    assert!(
        after
            .keys()
            .all(|k| !k.contains("acme") && !k.contains("m-1")),
        "no account or id in a label"
    );
}

/// The Grafana dashboard shows only metrics accrue has (a renamed metric would leave a panel
/// empty without anyone noticing).
#[test]
fn the_grafana_dashboard_reads_only_metrics_that_exist() {
    let described = std::fs::read_to_string(manifest_dir().join("src/telemetry.rs")).unwrap();
    let known: std::collections::BTreeSet<&str> = described
        .split('"')
        .filter(|s| s.starts_with("accrue_"))
        .collect();
    let dashboard =
        std::fs::read_to_string(manifest_dir().join("deploy/grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for panel in parsed["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("accrue_") {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    used.insert(base.to_owned());
                }
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<&String> = used
        .iter()
        .filter(|u| !known.contains(u.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard reads metrics accrue does not have: {unknown:?}"
    );
}

/// `/metrics` needs no key (like `/healthz`), answers only GET (405 naming it) and takes no
/// parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_key_and_answer_only_get() {
    let app = spawn_app().await;
    let res = app.http.post(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET");
    // A method token of the client's choosing is counted as `other`, never as a label of its
    // own (labels stay a bounded set).
    for m in ["FOO1", "FOO2"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let res = app
            .http
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{m}: {}", res.status());
    }
    let page = scrape(&app).await;
    assert!(page.contains_key("accrue_db_pool_max"), "{page:?}");
    assert!(page.keys().all(|k| !k.contains("FOO")), "{page:?}");
    assert_eq!(
        value(
            &page,
            "accrue_http_requests_total",
            &["method=\"other\"", "route=\"/healthz\""]
        ),
        2.0
    );
}
