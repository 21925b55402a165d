//! Fuzz-style property tests of the public parsers: event bodies in every accepted shape (and
//! garbage), account and subscription bodies, query strings, and plan files. Arbitrary input
//! never panics and never gets a 5xx. CI runs `ACCRUE_FUZZ_CASES` cases (256 by default); the
//! documented long run is 10,000 (BENCHMARKS.md).

use crate::helpers::*;
use accrue::catalog::meters::MeterCatalog;
use accrue::catalog::plans::parse_plan_file;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

fn cases() -> usize {
    std::env::var("ACCRUE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Strings that parsers trip on: empty, huge, unicode, control characters, numbers and dates
/// at their limits, injection-looking text.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9_.@-]{0,40}",
        Just(String::new()),
        Just("\u{0}".into()),
        Just("\u{202e}acme".into()),
        Just("x".repeat(5000)),
        Just("'; DROP TABLE events; --".into()),
        Just("2026-11-25T12:00:00.000Z".into()),
        Just("-100000-01-01T00:00:00Z".into()),
        Just("+262143-12-31T23:59:59Z".into()),
        Just("1e999999".into()),
        Just("NaN".into()),
        Just("team@99999999999".into()),
        Just("acme".into()),
    ]
}

fn nasty_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("1e999999"),
            Just("-1e-20000"),
            Just("123456789012345678901234567890"),
            Just("0.0000000001"),
            Just("999999999999.999999999"),
            Just("3000000000"),
        ]
        .prop_map(|t| serde_json::from_str::<Value>(t).unwrap()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        nasty_number(),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(nasty_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// An event-shaped object: the known fields with arbitrary values, sometimes extra ones.
fn event() -> impl Strategy<Value = Value> {
    (
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![
            Just(json!("acme")),
            nasty_string().prop_map(Value::String),
            json_value()
        ]),
        prop::option::of(prop_oneof![
            Just(json!("api.request")),
            Just(json!("job.completed")),
            Just(json!("user.active")),
            Just(json!("storage.snapshot")),
            json_value()
        ]),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::option::of((nasty_string(), json_value())),
    )
        .prop_map(|(id, account, kind, timestamp, properties, extra)| {
            let mut m = Map::new();
            for (k, v) in [
                ("id", id),
                ("account", account),
                ("type", kind),
                ("timestamp", timestamp),
                ("properties", properties),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

/// A request body: one event, a batch, arbitrary JSON, or bytes that are not JSON.
fn event_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        event().prop_map(|e| e.to_string().into_bytes()),
        prop::collection::vec(event(), 0..8)
            .prop_map(|evs| json!({ "events": evs }).to_string().into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("from".to_owned()),
        Just("to".to_owned()),
        Just("limit".to_owned()),
        Just("after".to_owned()),
        Just("account".to_owned()),
        Just("by".to_owned()),
        Just("period_from".to_owned()),
        Just("status".to_owned()),
        Just("tier".to_owned()),
        Just("state".to_owned()),
        "[a-z_]{1,8}",
    ];
    prop::collection::vec((key, nasty_string()), 0..5).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn sample<S: Strategy>(s: &S, runner: &mut TestRunner) -> S::Value {
    s.new_tree(runner).unwrap().current()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bodies_and_queries_never_get_a_server_error() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin", None).await;
    let mut runner = TestRunner::deterministic();
    let (bodies, queries, accounts) = (event_body(), query(), json_value());
    let gets = [
        "/v1/movements",
        "/v1/invoices",
        "/v1/reports/nrr",
        "/v1/accounts/acme/usage",
        "/v1/feed",
        "/v1/pql",
        "/v1/reports/funnel",
        "/v1/keys",
        "/v1/reports/billing-errors",
        "/v1/governance/event-types",
    ];
    let posts = [
        ("PUT", "/v1/accounts/acme"),
        ("POST", "/v1/accounts/acme/subscription"),
        ("POST", "/v1/accounts/acme/subscription/quotes"),
        ("POST", "/v1/accounts/acme/check"),
        ("POST", "/v1/webhook-endpoints"),
    ];
    for case in 0..cases() {
        let body = sample(&bodies, &mut runner);
        let req = app.http.post(app.url("/v1/events"));
        no_server_error(case, "POST /v1/events", req, &key, body).await;

        let q = sample(&queries, &mut runner);
        let path = format!("{}?{q}", gets[case % gets.len()]);
        let req = app.http.get(app.url(&path));
        no_server_error(case, &format!("GET {path}"), req, &key, Vec::new()).await;

        let (method, path) = posts[case % posts.len()];
        let body = sample(&accounts, &mut runner).to_string().into_bytes();
        let req = match method {
            "PUT" => app.http.put(app.url(path)),
            _ => app.http.post(app.url(path)),
        };
        no_server_error(case, &format!("{method} {path}"), req, &key, body).await;
    }
}

/// Sends one fuzzed request (a JSON body unless empty) and asserts it got no 5xx, printing
/// the case, the answer and the body when it did.
async fn no_server_error(
    case: usize,
    what: &str,
    req: reqwest::RequestBuilder,
    key: &str,
    body: Vec<u8>,
) {
    let mut req = req.bearer_auth(key);
    if !body.is_empty() {
        req = req
            .header("Content-Type", "application/json")
            .body(body.clone());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    assert!(
        status < 500,
        "case {case}: {what} → {status}: {}\nbody: {}",
        res.text().await.unwrap_or_default(),
        String::from_utf8_lossy(&body)
    );
}

/// Plan files mutated line by line (lines dropped, doubled, values replaced by arbitrary
/// text) are accepted or refused with errors, never a panic.
#[test]
fn mutated_plan_files_are_refused_with_errors_never_a_panic() {
    let dir = manifest_dir().join("pricing-plans");
    let meters = MeterCatalog::load(&dir).unwrap();
    let originals: Vec<(std::path::PathBuf, String)> =
        ["team/v2.toml", "enterprise/v1.toml", "business/v1.toml"]
            .iter()
            .map(|f| {
                let p = dir.join(f);
                let text = std::fs::read_to_string(&p).unwrap();
                (p, text)
            })
            .collect();
    let mut runner = TestRunner::deterministic();
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, nasty_string()), 1..6);
    for case in 0..cases() * 4 {
        let (path, text) = &originals[case % originals.len()];
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for (at, op, s) in sample(&edits, &mut runner) {
            if lines.is_empty() {
                lines.push(s.clone());
            }
            let i = at.index(lines.len());
            match op {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                2 => {
                    if let Some((k, _)) = lines[i].split_once('=') {
                        lines[i] = format!("{k}= {s}");
                    }
                }
                _ => lines.insert(i, s),
            }
        }
        let mutated = lines.join("\n");
        let outcome = std::panic::catch_unwind(|| {
            let _ = parse_plan_file(path, &mutated, &meters);
        });
        assert!(outcome.is_ok(), "case {case}: panicked on\n{mutated}");
    }
}
