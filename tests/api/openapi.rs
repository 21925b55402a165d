//! The OpenAPI document (`GET /openapi.json`) is the contract: it documents exactly the routes
//! the server serves, every keyed operation names its scopes and the refusals it can give,
//! and every reference in it resolves. (That answers conform to it is schemathesis's job,
//! against a live server: tests/contract/run.sh.) `/docs` renders it from the binary alone.

use crate::helpers::*;
use serde_json::Value;
use std::collections::BTreeSet;

async fn document(app: &TestApp) -> Value {
    let res = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200, "the document needs no key");
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("application/json"), "{kind}");
    res.json().await.unwrap()
}

/// Every `$ref` in `v`, with where it was found.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push((at.to_owned(), x.as_str().unwrap_or("").to_owned()));
                } else {
                    refs(x, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_covers_exactly_the_served_routes() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");

    let served: BTreeSet<(String, String)> = accrue::http::route_table()
        .into_iter()
        .flat_map(|(path, methods)| {
            methods
                .into_iter()
                .map(move |m| (path.to_owned(), m.to_ascii_lowercase()))
        })
        .collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| matches!(k.as_str(), "get" | "post" | "put" | "patch" | "delete"))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    // Every operation has its own id (clients generated from the document name methods by it).
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served, not documented: {undocumented:?}"
    );
    assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keyed_operation_names_its_scopes_refusals_and_answer() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["basic"]["scheme"], "basic");
    let scopes = ["ingest", "check", "billing", "finance", "admin"];
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().unwrap();
            let answers: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
            if answers.is_empty() {
                problems.push(format!("{what}: no 2xx answer"));
            }
            for s in answers {
                if s != "204"
                    && responses[s]["content"]
                        .as_object()
                        .is_none_or(|c| c.is_empty())
                {
                    problems.push(format!("{what}: answer {s} has no content"));
                }
            }
            let keyed = path.starts_with("/v1/") && path != "/v1/stripe/webhook";
            if !keyed {
                if op.get("security").is_some() {
                    problems.push(format!("{what}: needs no key but lists security"));
                }
                continue;
            }
            let security = op["security"].as_array().cloned().unwrap_or_default();
            if security.is_empty() {
                problems.push(format!("{what}: no security"));
            }
            for requirement in &security {
                for (scheme, needed) in requirement.as_object().unwrap() {
                    let needed = needed.as_array().unwrap();
                    if !schemes.get(scheme).is_some_and(|s| s.is_object())
                        || needed.is_empty()
                        || !needed.iter().all(|n| scopes.contains(&n.as_str().unwrap()))
                    {
                        problems.push(format!("{what}: security {scheme} {needed:?}"));
                    }
                }
            }
            for status in ["400", "401", "403", "404", "422", "429", "503"] {
                if !responses.contains_key(status) {
                    problems.push(format!("{what}: {status} not documented"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_in_the_document_resolves() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    assert!(found.len() > 100, "the document refers to its components");
    let broken: Vec<_> = found
        .iter()
        .filter(|(_, r)| {
            let Some(pointer) = r.strip_prefix('#') else {
                return true;
            };
            // `pointer` unescapes `~1` and `~0` itself.
            doc.pointer(pointer).is_none()
        })
        .collect();
    assert!(broken.is_empty(), "unresolved: {broken:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_page_is_served_from_the_binary() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    // The page may load only what accrue serves.
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.starts_with("default-src 'self'; script-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("http"), "no other origin is allowed: {csp}");
    let page = res.text().await.unwrap();
    assert!(page.contains(r#"spec-url="/openapi.json""#), "{page}");
    assert!(
        page.contains(r#"<script src="/docs/redoc.standalone.js">"#),
        "{page}"
    );
    assert!(!page.contains("https://"), "nothing from a CDN: {page}");

    let res = app
        .http
        .get(app.url("/docs/redoc.standalone.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let served = res.bytes().await.unwrap();
    let shipped = std::fs::read(manifest_dir().join("assets/redoc/redoc.standalone.js")).unwrap();
    assert!(served == shipped, "the embedded bundle is the shipped one");
    // ... and the shipped one is npm's redoc@2.5.4 bundle, unchanged (assets/redoc/README.md).
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&served)),
        "dcaf76612bc4a3fbcc923a8966dee2f6146a5f32e5ce1b6f02dd60cbbf89500b"
    );
}
