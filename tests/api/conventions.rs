//! The API conventions of the README ("API conventions"), checked over every route of the
//! served route table (`accrue::http::route_table`): a route added without a call here fails
//! the walk.
//!
//! On every answer: timestamps RFC 3339 UTC with `Z` and milliseconds; amounts decimal strings
//! at the currency's scale (USD here: two decimals); quantities decimal strings without
//! trailing zeros; errors `{"error": {"code", "message"}}`. On every list: `{"data",
//! "next_cursor"}`, and walking it one row at a time with `limit=1&after=` gives the same rows.
//! On every route: a method it does not have answers 405 with `Allow` naming the ones it has;
//! a JSON body or query with an unknown field is a 422 naming that field.

use crate::helpers::*;
use accrue::jobs::{tick, Scheduler};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Fields that hold money.
const AMOUNTS: &[&str] = &[
    "amount",
    "amount_due_now",
    "amount_paid",
    "total",
    "subtotal",
    "credit_balance",
    "credit_applied",
    "mrr_before",
    "mrr_after",
    "delta",
    "starting_mrr",
    "expansion",
    "contraction",
    "churn",
    "ending_mrr",
    "retained_mrr",
    "invoiced",
    "paid",
    "voided",
    "written_off",
    "outstanding",
    "credit_restored",
    "current_version_amount",
    "new_version_amount",
];

/// Fields that hold quantities.
const QUANTITIES: &[&str] = &["quantity", "value", "used", "limit", "remaining"];

/// One request of the walk.
struct Call {
    method: &'static str,
    /// The route as in the table (`/v1/invoices/{number}`).
    route: &'static str,
    /// The path asked.
    path: String,
    body: Option<Value>,
    /// Idempotency-Key, for routes that need one.
    idem: Option<String>,
}

fn call(method: &'static str, route: &'static str, path: impl Into<String>) -> Call {
    Call {
        method,
        route,
        path: path.into(),
        body: None,
        idem: None,
    }
}

impl Call {
    fn body(mut self, b: Value) -> Self {
        self.body = Some(b);
        self
    }
    fn idem(mut self, k: &str) -> Self {
        self.idem = Some(k.to_owned());
        self
    }
}

async fn send(app: &TestApp, key: &str, c: &Call) -> (u16, reqwest::header::HeaderMap, Value) {
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
    let mut req = app.http.request(method, app.url(&c.path)).bearer_auth(key);
    if let Some(b) = &c.body {
        req = req.json(b);
    }
    if let Some(k) = &c.idem {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, headers, body)
}

/// `2026-11-30T02:04:45.435Z`.
fn is_ms_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

/// `-12.50`: digits, a point and exactly `scale` decimals.
fn at_scale(s: &str, scale: usize) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    match s.split_once('.') {
        None => scale == 0 && !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()),
        Some((i, f)) => {
            !i.is_empty()
                && i.bytes().all(|c| c.is_ascii_digit())
                && f.len() == scale
                && f.bytes().all(|c| c.is_ascii_digit())
        }
    }
}

/// `12.5`, `3`: no trailing zeros after a point.
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    match s.split_once('.') {
        None => !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()),
        Some((i, f)) => {
            !i.is_empty()
                && i.bytes().all(|c| c.is_ascii_digit())
                && !f.is_empty()
                && f.bytes().all(|c| c.is_ascii_digit())
                && !f.ends_with('0')
        }
    }
}

/// Every violation of the value conventions in `v`, with its JSON path.
fn violations(v: &Value, path: &str, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                violations(x, &format!("{path}.{k}"), Some(k), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                violations(x, &format!("{path}[{i}]"), key, out);
            }
        }
        Value::String(s) => {
            if looks_like_timestamp(s) && !is_ms_timestamp(s) {
                out.push(format!(
                    "{path}: timestamp {s:?} is not RFC 3339 UTC with milliseconds"
                ));
            }
            for fragment in s.split_whitespace() {
                if fragment.contains("+00:00") {
                    out.push(format!("{path}: {s:?} writes an offset instead of Z"));
                }
            }
            match key {
                Some(k) if AMOUNTS.contains(&k) && !at_scale(s, 2) => out.push(format!(
                    "{path}: amount {s:?} is not at the currency's scale"
                )),
                Some(k) if QUANTITIES.contains(&k) && !is_quantity(s) => {
                    out.push(format!("{path}: quantity {s:?} has trailing zeros"))
                }
                _ => {}
            }
        }
        Value::Number(_) => {
            if let Some(k) = key {
                if AMOUNTS.contains(&k) || QUANTITIES.contains(&k) {
                    out.push(format!(
                        "{path}: {k} is a JSON number, not a decimal string"
                    ));
                }
            }
        }
        _ => {}
    }
}

/// The paths of the table with `{...}` segments, matched against a concrete path.
fn matches(route: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap();
    let r: Vec<&str> = route.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    r.len() == p.len() && r.iter().zip(&p).all(|(r, p)| r.starts_with('{') || r == p)
}

fn with_query(path: &str, q: &str) -> String {
    if path.contains('?') {
        format!("{path}&{q}")
    } else {
        format!("{path}?{q}")
    }
}

const WALK_PLAN: &str = r#"
name = "Walk"
currency = "USD"
interval = "month"
self_serve = true
base_fee = "29.00"

[seats]
unit_amount = "9.00"
included = 1
min = 1
max = 10
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_in_the_one_convention() {
    let app = spawn_app().await;
    app.ctx.enable_test_clocks();
    app.publish_plans().await;
    let key = app.key("admin,ingest,check,billing,finance", None).await;
    let scheduler = Scheduler::new(t(NOW)).unwrap();

    // A world in which every route has something to answer.
    let (status, ep) = app
        .post(
            &key,
            "/v1/webhook-endpoints",
            &json!({"url": "https://hooks.example.com/accrue"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let endpoint = ep["id"].as_i64().unwrap();
    let (status, ep2) = app
        .post(
            &key,
            "/v1/webhook-endpoints",
            &json!({"url": "https://hooks.example.com/second", "kinds": ["revenue.movement"]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{ep2}");
    for (account, name) in [
        ("acme", "Acme Inc"),
        ("beta", "Beta GmbH"),
        ("gamma", "Gamma"),
    ] {
        let (status, a) = app
            .put(
                &key,
                &format!("/v1/accounts/{account}"),
                &json!({"name": name, "email": format!("billing@{account}.test"), "employees": 40,
                        "industry": "software", "country": "DE", "crm_owner": "dana@vendor.test"}),
            )
            .await;
        assert_eq!(status, 201, "{a}");
    }
    let events: Vec<Value> = (0..6)
        .map(|i| {
            json!({"id": format!("ev-{i}"), "account": if i % 2 == 0 { "acme" } else { "beta" },
                   "type": if i < 4 { "api.request" } else { "storage.snapshot" },
                   "timestamp": "2026-11-25T12:05:00.123456Z",
                   "properties": {"gb": "12.50"}})
        })
        .collect();
    let (status, ack) = app.send(&key, &json!({ "events": events })).await;
    assert_eq!(status, 200, "{ack}");
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.subscribe(&key, "beta", json!({"plan": "team", "seats": 3}))
        .await;
    app.subscribe(&key, "gamma", json!({"plan": "team@2", "seats": 4}))
        .await;
    app.quote_and_accept(&key, "acme", json!({"seats": 8}))
        .await;
    app.quote_and_accept(&key, "beta", json!({"cancel": true}))
        .await;
    app.clock.set(t("2026-12-26T12:01:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    // A seat decrease waits for the period end (Team's downgrade rule): something to revoke.
    app.quote_and_accept(&key, "acme", json!({"seats": 6}))
        .await;
    app.clock.set(t("2026-12-26T12:02:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    // One dispatch round: the deliveries (to a host that does not resolve here) are recorded.
    accrue::services::outbox::dispatch(
        &app.ctx,
        &accrue::services::outbox::client(app.ctx.webhooks),
    )
    .await
    .unwrap();
    let (_, invoices) = app.get(&key, "/v1/invoices?account=acme").await;
    let invoice = invoices["data"][0]["number"].as_i64().unwrap();
    let (_, gamma_invoices) = app.get(&key, "/v1/invoices?account=gamma").await;
    let to_pay = gamma_invoices["data"][0]["number"].as_i64().unwrap();
    let to_void = gamma_invoices["data"][1]["number"]
        .as_i64()
        .unwrap_or(to_pay);
    let (status, quote) = app
        .post(
            &key,
            "/v1/accounts/gamma/subscription/quotes",
            &json!({"seats": 6}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{quote}");
    let quote = quote["id"].as_str().unwrap().to_owned();
    let (status, clock) = app
        .post(
            &key,
            "/v1/test-clocks",
            &json!({"frozen_time": "2026-12-26T12:00:00Z", "name": "walk"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{clock}");
    let clock = clock["id"].as_str().unwrap().to_owned();
    let throwaway = app.key("check", Some("gamma")).await;
    let (_, keys) = app.get(&key, "/v1/keys").await;
    let throwaway_id = keys["data"].as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap();
    drop(throwaway);

    // Every route, reads first; the calls that change or remove things last.
    let calls = vec![
        call("GET", "/healthz", "/healthz"),
        call("GET", "/readyz", "/readyz"),
        call("POST", "/v1/events", "/v1/events").body(json!({"events": [
            {"id": "ev-walk", "account": "acme", "type": "api.request", "timestamp": "2026-12-26T11:00:00Z"}
        ]})),
        call("GET", "/v1/events", "/v1/events?account=acme"),
        call("POST", "/v1/integrations/segment", "/v1/integrations/segment").body(json!({
            "type": "track", "messageId": "walk-1", "event": "api.request",
            "timestamp": "2026-12-26T11:00:00Z", "context": {"groupId": "acme"}
        })),
        call("GET", "/v1/accounts", "/v1/accounts"),
        call("GET", "/v1/accounts/{account}", "/v1/accounts/acme"),
        call("PATCH", "/v1/accounts/{account}", "/v1/accounts/acme")
            .body(json!({"employees": 41})),
        call("PUT", "/v1/accounts/{account}", "/v1/accounts/acme").body(
            json!({"name": "Acme Inc", "email": "billing@acme.test", "employees": 42,
                   "industry": "software", "country": "DE", "crm_owner": null}),
        ),
        call(
            "GET",
            "/v1/accounts/{account}/usage",
            "/v1/accounts/acme/usage?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        ),
        call(
            "GET",
            "/v1/accounts/{account}/subscription",
            "/v1/accounts/acme/subscription",
        ),
        call(
            "GET",
            "/v1/accounts/{account}/subscription/changes",
            "/v1/accounts/acme/subscription/changes",
        ),
        call(
            "POST",
            "/v1/accounts/{account}/subscription/quotes",
            "/v1/accounts/acme/subscription/quotes",
        )
        .body(json!({"plan": "business", "seats": 8})),
        call("POST", "/v1/accounts/{account}/check", "/v1/accounts/acme/check")
            .body(json!({"meter": "api_calls", "quantity": 1})),
        call("GET", "/v1/accounts/{account}/dunning", "/v1/accounts/acme/dunning"),
        call(
            "GET",
            "/v1/accounts/{account}/upcoming-invoice",
            "/v1/accounts/acme/upcoming-invoice",
        ),
        call("POST", "/v1/portal-sessions", "/v1/portal-sessions")
            .body(json!({"account": "acme", "return_url": "https://app.example.com/billing"})),
        // No Stripe here: refused (409 stripe_not_configured), in the error envelope.
        call(
            "PUT",
            "/v1/accounts/{account}/payment-method",
            "/v1/accounts/acme/payment-method",
        )
        .body(json!({"payment_method": "pm_card_visa"})),
        call("GET", "/v1/accounts/{account}/pql", "/v1/accounts/acme/pql"),
        call("GET", "/v1/invoices", "/v1/invoices"),
        call("GET", "/v1/invoices/{number}", format!("/v1/invoices/{invoice}")),
        call(
            "GET",
            "/v1/invoices/{number}/lineage",
            format!("/v1/invoices/{invoice}/lineage"),
        ),
        call(
            "GET",
            "/v1/reports/reconciliation",
            "/v1/reports/reconciliation?period=2026-12",
        ),
        call("GET", "/v1/reports/billing-errors", "/v1/reports/billing-errors"),
        call(
            "GET",
            "/v1/movements",
            "/v1/movements?from=2026-11-01T00:00:00Z&to=2027-01-01T00:00:00Z",
        ),
        call(
            "GET",
            "/v1/reports/nrr",
            "/v1/reports/nrr?from=2026-12-01T00:00:00Z&to=2027-01-01T00:00:00Z",
        ),
        call(
            "GET",
            "/v1/reports/funnel",
            "/v1/reports/funnel?from=2026-11-01T00:00:00Z&to=2027-01-01T00:00:00Z",
        ),
        call("GET", "/v1/governance/event-types", "/v1/governance/event-types"),
        call("GET", "/v1/feed", "/v1/feed?after=0"),
        call("GET", "/v1/exports/{entity}", "/v1/exports/invoices"),
        call("GET", "/v1/pql", "/v1/pql?tier=none"),
        call("GET", "/v1/plans", "/v1/plans"),
        call("GET", "/v1/plans/{plan}", "/v1/plans/team"),
        call(
            "GET",
            "/v1/plans/{plan}/versions/{version}",
            "/v1/plans/team/versions/2",
        ),
        call(
            "GET",
            "/v1/accounts/{account}/subscription/quotes/{quote}",
            format!("/v1/accounts/gamma/subscription/quotes/{quote}"),
        ),
        call("POST", "/v1/plans/publish", "/v1/plans/publish")
            .body(json!({"files": {"walk/v1.toml": WALK_PLAN}})),
        call("GET", "/v1/keys", "/v1/keys"),
        call("GET", "/v1/webhook-endpoints", "/v1/webhook-endpoints"),
        call(
            "GET",
            "/v1/webhook-endpoints/{id}",
            format!("/v1/webhook-endpoints/{endpoint}"),
        ),
        call(
            "GET",
            "/v1/webhook-endpoints/{id}/deliveries",
            format!("/v1/webhook-endpoints/{endpoint}/deliveries"),
        ),
        call(
            "PATCH",
            "/v1/webhook-endpoints/{id}",
            format!("/v1/webhook-endpoints/{endpoint}"),
        )
        .body(json!({"enabled": false})),
        call(
            "POST",
            "/v1/webhook-endpoints/{id}/rotate-secret",
            format!("/v1/webhook-endpoints/{endpoint}/rotate-secret"),
        ),
        call("POST", "/v1/webhook-endpoints", "/v1/webhook-endpoints")
            .body(json!({"url": "https://hooks.example.com/third"})),
        call("GET", "/v1/test-clocks/{id}", format!("/v1/test-clocks/{clock}")),
        call("POST", "/v1/test-clocks", "/v1/test-clocks")
            .body(json!({"frozen_time": "2026-12-26T12:00:00Z", "name": "second"})),
        call(
            "POST",
            "/v1/test-clocks/{id}/advance",
            format!("/v1/test-clocks/{clock}/advance"),
        )
        .body(json!({"frozen_time": "2026-12-27T12:00:00Z"})),
        call(
            "POST",
            "/v1/accounts/{account}/subscription",
            "/v1/accounts/delta/subscription",
        )
        .body(json!({"plan": "team", "seats": 2})),
        call(
            "POST",
            "/v1/accounts/{account}/subscription/quotes/{quote}/accept",
            format!("/v1/accounts/gamma/subscription/quotes/{quote}/accept"),
        )
        .body(json!({}))
        .idem("walk-accept"),
        call(
            "DELETE",
            "/v1/accounts/{account}/subscription/scheduled-change",
            "/v1/accounts/acme/subscription/scheduled-change",
        ),
        call(
            "POST",
            "/v1/invoices/{number}/pay",
            format!("/v1/invoices/{to_pay}/pay"),
        )
        .body(json!({"amount": gamma_invoices["data"][0]["total"], "reference": "wire 1"})),
        call(
            "POST",
            "/v1/invoices/{number}/void",
            format!("/v1/invoices/{to_void}/void"),
        )
        .body(json!({"reason": "walk"})),
        call(
            "POST",
            "/v1/invoices/{number}/write-off",
            format!("/v1/invoices/{invoice}/write-off"),
        )
        .body(json!({"reason": "walk"})),
        call("DELETE", "/v1/keys/{id}", format!("/v1/keys/{throwaway_id}")),
        call(
            "DELETE",
            "/v1/webhook-endpoints/{id}",
            format!("/v1/webhook-endpoints/{}", ep2["id"]),
        ),
    ];

    let table = accrue::http::route_table();
    let mut problems: Vec<String> = Vec::new();
    let mut walked: BTreeSet<(&str, &str)> = BTreeSet::new();
    let dump = std::env::var("ACCRUE_DUMP_WALK").is_ok();
    for c in &calls {
        let methods = &table
            .iter()
            .find(|(r, _)| *r == c.route)
            .unwrap_or_else(|| panic!("{} is not in the route table", c.route))
            .1;
        assert!(
            matches(c.route, &c.path),
            "{} does not match {}",
            c.path,
            c.route
        );
        walked.insert((c.route, c.method));
        // An unknown body field is named, and refused before anything happens (Segment's
        // calls are Segment's shape, with fields of its own accrue has no use for).
        if let (Some(Value::Object(b)), false) = (&c.body, c.route == "/v1/integrations/segment") {
            let mut b = b.clone();
            b.insert("zz_unknown".into(), json!(1));
            let probe = Call {
                method: c.method,
                route: c.route,
                path: c.path.clone(),
                body: Some(Value::Object(b)),
                idem: c.idem.as_ref().map(|k| format!("{k}-probe")),
            };
            let (s, _, e) = send(&app, &key, &probe).await;
            if s != 422 || e["error"]["field"] != "zz_unknown" {
                problems.push(format!(
                    "{} {} with an unknown field: {s} {e}",
                    c.method, c.path
                ));
            }
        }
        let (status, headers, body) = send(&app, &key, c).await;
        if dump {
            eprintln!("{} {} -> {status}\n{body:#}", c.method, c.path);
        }
        let ok = (200..300).contains(&status);
        if c.route == "/v1/accounts/{account}/payment-method" {
            if status != 409 || body["error"]["code"] != "stripe_not_configured" {
                problems.push(format!("{} {}: {status} {body}", c.method, c.path));
            }
        } else if !ok {
            problems.push(format!("{} {}: {status} {body}", c.method, c.path));
        }
        if status != 204 {
            assert_eq!(
                headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/json"),
                "{} {}",
                c.method,
                c.path
            );
        }
        let mut bad = Vec::new();
        violations(&body, "", None, &mut bad);
        problems.extend(
            bad.into_iter()
                .map(|b| format!("{} {}: {b}", c.method, c.path)),
        );

        // Lists: {data, next_cursor}, and one row at a time gives the same rows.
        if ok && c.method == "GET" && body.get("data").is_some() {
            let keys: BTreeSet<&str> = body
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            if keys != BTreeSet::from(["data", "next_cursor"]) {
                problems.push(format!("{}: a list answers {keys:?}", c.path));
            }
            // The feed and the exports always give the cursor to resume from (tests/api/exports.rs).
            if !matches!(c.route, "/v1/feed" | "/v1/exports/{entity}") {
                let all = body["data"].as_array().unwrap().clone();
                let mut paged = Vec::new();
                let mut after: Option<Value> = None;
                let mut ended = false;
                for _ in 0..all.len() + 2 {
                    let mut p = with_query(&c.path, "limit=1");
                    if let Some(a) = &after {
                        let a = a.as_str().map_or_else(|| a.to_string(), str::to_owned);
                        p = format!("{p}&after={}", urlencode(&a));
                    }
                    let (s, page) = app.get(&key, &p).await;
                    assert_eq!(s, 200, "{p}: {page}");
                    paged.extend(page["data"].as_array().unwrap().iter().cloned());
                    if page["next_cursor"].is_null() {
                        ended = true;
                        break;
                    }
                    after = Some(page["next_cursor"].clone());
                }
                if !ended {
                    problems.push(format!("{}: next_cursor never became null", c.path));
                }
                if paged != all {
                    problems.push(format!(
                        "{}: one row at a time gave {} rows, the whole list {}",
                        c.path,
                        paged.len(),
                        all.len()
                    ));
                }
                if all.len() < 2 && !matches!(c.route, "/v1/reports/billing-errors") {
                    problems.push(format!("{}: the walk needs two rows to page", c.path));
                }
                let (s, e) = app.get(&key, &with_query(&c.path, "limit=0")).await;
                if s != 422 || e["error"]["code"] != "invalid_query" {
                    problems.push(format!("{}?limit=0: {s} {e}", c.path));
                }
            }
        }

        // An unknown query parameter is named, on every route that reads.
        if c.method == "GET" && !matches!(c.route, "/healthz" | "/readyz") {
            let (s, e) = app.get(&key, &with_query(&c.path, "zz_unknown=1")).await;
            if s != 422 || e["error"]["field"] != "zz_unknown" {
                problems.push(format!("{}&zz_unknown=1: {s} {e}", c.path));
            }
        }
        // A method the route does not have: 405 naming the ones it has.
        let other = ["GET", "POST", "PUT", "PATCH", "DELETE"]
            .into_iter()
            .find(|m| !methods.contains(m))
            .unwrap();
        let probe = call(other, c.route, c.path.clone());
        let (s, h, _) = send(&app, &key, &probe).await;
        let allow: BTreeSet<String> = h
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        let want: BTreeSet<String> = methods.iter().map(|m| (*m).to_owned()).collect();
        if s != 405 || allow != want {
            problems.push(format!("{other} {}: {s}, Allow {allow:?}", c.path));
        }
    }

    // Every route of the table was walked (the Stripe webhook has its own test: it answers
    // Stripe, not API clients; /metrics answers Prometheus in its text format: tests/api/metrics.rs;
    // the OpenAPI document and its rendered page: tests/api/openapi.rs).
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (route, methods) in &table {
        for m in methods {
            if !walked.contains(&(*route, *m))
                && !matches!(
                    *route,
                    "/v1/stripe/webhook"
                        | "/metrics"
                        | "/openapi.json"
                        | "/docs"
                        | "/docs/redoc.standalone.js"
                )
            {
                missing.entry(route).or_default().push(m);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes the walk does not call: {missing:?}"
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Refusals name what is wrong (`error.field` where it is one field), with the status of its
/// kind, and never pass a parser's own words through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_names_what_is_wrong() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin,ingest,check,billing,finance", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    let get = |path: &'static str| {
        let app = &app;
        let key = key.clone();
        async move { app.get(&key, path).await }
    };
    let post = |path: &'static str, body: Value| {
        let app = &app;
        let key = key.clone();
        async move { app.post(&key, path, &body, None).await }
    };
    let raw = |path: &'static str, body: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            let res = app
                .http
                .post(app.url(path))
                .bearer_auth(&key)
                .body(body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    // (what, the answer, the status, code and field it must have)
    type Case<'a> = (&'a str, (u16, Value), u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "an id that cannot be one",
            get("/v1/invoices/abc").await,
            404,
            "not_found",
            None,
        ),
        (
            "a version that cannot be one",
            get("/v1/plans/team/versions/two").await,
            404,
            "not_found",
            None,
        ),
        (
            "a required parameter left out",
            get("/v1/reports/nrr?to=2027-01-01T00:00:00Z").await,
            422,
            "missing_field",
            Some("from"),
        ),
        (
            "a month left out",
            get("/v1/reports/reconciliation").await,
            422,
            "missing_field",
            Some("period"),
        ),
        (
            "a status that does not exist",
            get("/v1/invoices?status=bogus").await,
            422,
            "invalid_query",
            Some("status"),
        ),
        (
            "a limit out of range",
            get("/v1/invoices?limit=0").await,
            422,
            "invalid_query",
            Some("limit"),
        ),
        (
            "a limit that is not a number",
            get("/v1/invoices?limit=ten").await,
            422,
            "invalid_query",
            Some("limit"),
        ),
        (
            "a date that is not RFC 3339",
            get("/v1/movements?from=2026-11-01&to=2026-12-01T00:00:00Z").await,
            422,
            "invalid_query",
            Some("from"),
        ),
        (
            "a parameter a read does not take",
            get("/v1/invoices/1?expand=lines").await,
            422,
            "unknown_field",
            Some("expand"),
        ),
        (
            "a body that is not JSON",
            raw("/v1/accounts/acme/check", "{\"meter\": ").await,
            400,
            "invalid_json",
            None,
        ),
        (
            "an events body that is not JSON",
            raw("/v1/events", "{not json").await,
            400,
            "invalid_json",
            None,
        ),
        (
            "an events body of the wrong shape",
            raw("/v1/events", "[1, 2]").await,
            422,
            "invalid_body",
            None,
        ),
        (
            "a field of the wrong type",
            post(
                "/v1/accounts/acme/subscription/quotes",
                json!({"seats": "ten"}),
            )
            .await,
            422,
            "invalid_field",
            Some("seats"),
        ),
        (
            "a version without its plan",
            post(
                "/v1/accounts/acme/subscription/quotes",
                json!({"version": 2}),
            )
            .await,
            422,
            "invalid_field",
            None,
        ),
        (
            "a cancellation asked for now",
            post(
                "/v1/accounts/acme/subscription/quotes",
                json!({"cancel": true, "effective": "now"}),
            )
            .await,
            422,
            "cancel_at_period_end",
            Some("effective"),
        ),
        (
            "a feature no plan has",
            post("/v1/accounts/acme/check", json!({"feature": "ssso"})).await,
            422,
            "unknown_feature",
            Some("feature"),
        ),
        (
            "a meter no catalogue has",
            post("/v1/accounts/acme/check", json!({"meter": "api_cals"})).await,
            422,
            "unknown_meter",
            Some("meter"),
        ),
        (
            "a plan that does not exist",
            post(
                "/v1/accounts/acme/subscription/quotes",
                json!({"plan": "teem"}),
            )
            .await,
            422,
            "unknown_plan",
            Some("plan"),
        ),
        (
            "more seats than the plan takes",
            post(
                "/v1/accounts/acme/subscription/quotes",
                json!({"seats": 100000}),
            )
            .await,
            422,
            "seat_limit",
            Some("seats"),
        ),
        (
            "a PQL tier that does not exist",
            get("/v1/pql?tier=scorching").await,
            422,
            "invalid_tier",
            Some("tier"),
        ),
        (
            "a window that ends before it starts",
            get("/v1/reports/funnel?from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z").await,
            422,
            "invalid_window",
            Some("from"),
        ),
        (
            "a webhook URL that is not one",
            post("/v1/webhook-endpoints", json!({"url": "ftp://x"})).await,
            422,
            "invalid_url",
            Some("url"),
        ),
        (
            "an account email without @",
            app.patch(&key, "/v1/accounts/acme", &json!({"email": "nobody"}))
                .await,
            422,
            "invalid_email",
            Some("email"),
        ),
        (
            "a quantity for a feature",
            post(
                "/v1/accounts/acme/check",
                json!({"feature": "sso", "quantity": 2}),
            )
            .await,
            422,
            "invalid_check",
            None,
        ),
    ];
    let mut problems = Vec::new();
    for (what, (status, body), want_status, want_code, want_field) in &cases {
        let message = body["error"]["message"].as_str().unwrap_or("");
        let lowered = message.to_lowercase();
        if status != want_status
            || body["error"]["code"] != *want_code
            || want_field.is_some_and(|f| body["error"]["field"] != f)
            || message.is_empty()
            || lowered.contains("deserialize error")
            || lowered.contains("can not parse")
        {
            problems.push(format!("{what}: {status} {body}"));
        }
    }
    // The known feature still answers as before.
    let (status, ok) = post("/v1/accounts/acme/check", json!({"feature": "sso"})).await;
    assert_eq!(
        (status, ok["reason"].as_str()),
        (200, Some("feature_not_in_plan")),
        "{ok}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_of_the_walk_tell_good_from_bad() {
    assert!(is_ms_timestamp("2026-11-30T02:04:45.435Z"));
    assert!(!is_ms_timestamp("2026-11-30T02:04:45Z"));
    assert!(!is_ms_timestamp("2026-11-30T02:04:45.435917Z"));
    assert!(!is_ms_timestamp("2026-11-30T02:04:45.435+00:00"));
    assert!(at_scale("83.00", 2) && at_scale("-0.50", 2) && at_scale("1000", 0));
    assert!(!at_scale("83", 2) && !at_scale("83.000000000", 2) && !at_scale("1.5", 2));
    assert!(is_quantity("12.5") && is_quantity("3") && is_quantity("-7"));
    assert!(!is_quantity("12.50") && !is_quantity("3.0") && !is_quantity("x"));
    let mut out = Vec::new();
    violations(
        &json!({"total": "83", "used": "2.50", "at": "2026-11-30T02:04:45Z", "amount": 3}),
        "",
        None,
        &mut out,
    );
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(matches("/v1/invoices/{number}", "/v1/invoices/7?x=1"));
    assert!(!matches("/v1/invoices/{number}", "/v1/invoices"));
}
