//! The pages' HTTP contract, in process: portal links (`POST /v1/portal-sessions`) open once
//! into an HttpOnly session and expire; forms need their session's token; a portal change is
//! the API's quote and invoice; the console opens to finance keys only. The browser flows are
//! in `tests/browser` (headless Chromium with axe-core).

use crate::helpers::*;
use accrue::jobs::{tick, JobKind, Scheduler};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::str::FromStr;

/// A client that does not follow redirects (the tests read them) and keeps no cookies.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of the response's cookie `name`, with its attributes.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn pair(cookie: &str) -> String {
    cookie.split(';').next().unwrap().to_owned()
}

/// The value of the first hidden input `name` on a page.
fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

async fn account(app: &TestApp, key: &str, id: &str, name: &str) {
    let (status, body) = app
        .put(
            key,
            &format!("/v1/accounts/{id}"),
            &json!({"name": name, "email": null, "employees": null, "industry": null, "country": null, "crm_owner": null}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn link(app: &TestApp, key: &str, account: &str) -> String {
    let (status, body) = app
        .post(
            key,
            "/v1/portal-sessions",
            &json!({"account": account}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["url"].as_str().unwrap().to_owned()
}

/// Acme Inc on Team with 5 seats (the clock moved to `now` if given) and its portal open:
/// the app, a billing key, the session cookie and the session's form token.
async fn acme_in_the_portal(now: Option<&str>) -> (TestApp, String, String, String) {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    account(&app, &key, "acme", "Acme Inc").await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    if let Some(now) = now {
        app.clock.set(t(now));
    }
    let session = open(&link(&app, &key, "acme").await).await;
    let (_, html) = page(&app.base, "/portal", &session).await;
    let csrf = hidden(&html, "csrf");
    (app, key, session, csrf)
}

/// Opens a portal link; returns the session cookie (`name=value`).
async fn open(url: &str) -> String {
    let res = browser().get(url).send().await.unwrap();
    assert_eq!(res.status(), 303, "opening {url}");
    assert_eq!(res.headers()["location"], "/portal");
    pair(&set_cookie(&res, "accrue_portal").expect("a session cookie"))
}

async fn page(base: &str, path: &str, cookie: &str) -> (u16, String) {
    let res = browser()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn post_form(
    base: &str,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    browser()
        .post(format!("{base}{path}"))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_link_opens_once_into_an_httponly_session_that_expires() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    account(&app, &key, "acme", "Acme Inc").await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;

    let (status, body) = app
        .post(
            &key,
            "/v1/portal-sessions",
            &json!({"account": "acme", "return_url": "https://app.example.com/billing"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["expires_at"], "2026-11-25T12:40:00.000Z",
        "ten minutes"
    );
    let url = body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/portal/open/pls_", app.base)),
        "{url}"
    );

    let res = browser().get(url).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    let cookie = set_cookie(&res, "accrue_portal").unwrap();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/portal", "Max-Age=3600"] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    let session = pair(&cookie);
    let (status, html) = page(&app.base, "/portal", &session).await;
    assert_eq!(status, 200);
    assert!(html.contains("Acme Inc") && html.contains("https://app.example.com/billing"));

    // Opened once: the same link again shows nothing.
    let again = browser().get(url).send().await.unwrap();
    assert_eq!(again.status(), 404);
    assert!(set_cookie(&again, "accrue_portal").is_none());
    let text = again.text().await.unwrap();
    assert!(!text.contains("Acme") && !text.contains("acme"), "{text}");

    // A tampered token and an unopened link past its ten minutes show nothing either.
    let fresh = link(&app, &key, "acme").await;
    let tampered = format!("{}f", &fresh[..fresh.len() - 1]);
    let tampered = if tampered == fresh {
        format!("{}e", &fresh[..fresh.len() - 1])
    } else {
        tampered
    };
    let res = browser().get(&tampered).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(!res.text().await.unwrap().contains("Acme"));
    app.clock.advance(chrono::Duration::minutes(11));
    assert_eq!(browser().get(&fresh).send().await.unwrap().status(), 404);

    // The session lasts an hour from its opening.
    app.clock.advance(chrono::Duration::minutes(48));
    assert_eq!(page(&app.base, "/portal", &session).await.0, 200);
    app.clock.advance(chrono::Duration::minutes(2));
    let (status, html) = page(&app.base, "/portal", &session).await;
    assert_eq!(status, 401);
    assert!(!html.contains("Acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_scoped_key_opens_the_portal_of_its_own_account_only() {
    let app = spawn_app().await;
    let admin = app.key("admin", None).await;
    account(&app, &admin, "acme", "Acme Inc").await;
    account(&app, &admin, "globex", "Globex").await;
    let acme = app.key("billing", Some("acme")).await;
    let body = |a: &str| json!({ "account": a });
    assert_eq!(
        app.post(&acme, "/v1/portal-sessions", &body("globex"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        app.post(&acme, "/v1/portal-sessions", &body("acme"), None)
            .await
            .0,
        201
    );
    let ingest = app.key("ingest", None).await;
    assert_eq!(
        app.post(&ingest, "/v1/portal-sessions", &body("acme"), None)
            .await
            .0,
        403
    );
    let (status, err) = app
        .post(&admin, "/v1/portal-sessions", &body("nobody"), None)
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    for bad in ["javascript:alert(1)", "/relative", "ftp://x.test/"] {
        let (status, err) = app
            .post(
                &admin,
                "/v1/portal-sessions",
                &json!({"account": "acme", "return_url": bad}),
                None,
            )
            .await;
        assert_eq!(
            (
                status,
                err["error"]["code"].as_str(),
                err["error"]["field"].as_str()
            ),
            (422, Some("invalid_return_url"), Some("return_url")),
            "{bad}"
        );
    }

    // A session of acme cannot open globex's invoice.
    app.publish_plans().await;
    app.subscribe(&admin, "globex", json!({"plan": "team", "seats": 5}))
        .await;
    let (_, list) = app.get(&admin, "/v1/invoices?account=globex").await;
    let theirs = list["data"][0]["number"].as_i64().unwrap();
    let session = open(&link(&app, &acme, "acme").await).await;
    let (status, html) = page(&app.base, &format!("/portal/invoices/{theirs}"), &session).await;
    assert_eq!(status, 404);
    assert!(
        !html.contains("Globex") && !html.contains("globex"),
        "{html}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_confirmed_in_the_portal_is_the_quote_it_showed_and_needs_the_form_token() {
    // Halfway through the period [11-25 12:00, 12-25 12:00).
    let (app, key, session, csrf) = acme_in_the_portal(Some("2026-12-10T12:00:00.000Z")).await;
    let (_, html) = page(&app.base, "/portal", &session).await;
    assert!(html.contains("Choose Business"), "no plan button");

    // Without the session's token nothing is quoted.
    for token in ["", "csrf_forged"] {
        let res = post_form(
            &app.base,
            "/portal/quotes",
            &session,
            &[("csrf", token), ("plan", "business@1")],
        )
        .await;
        assert_eq!(res.status(), 403, "token {token:?}");
    }
    assert_eq!(app.db.count("(SELECT COUNT(*) FROM quotes)::int8").await, 0);

    let res = post_form(
        &app.base,
        "/portal/quotes",
        &session,
        &[("csrf", &csrf), ("plan", "business@1")],
    )
    .await;
    assert_eq!(res.status(), 303);
    let quote_page = res.headers()["location"].to_str().unwrap().to_owned();
    let quote_id = quote_page.rsplit('/').next().unwrap().to_owned();
    let (status, html) = page(&app.base, &quote_page, &session).await;
    assert_eq!(status, 200);
    let shown = html
        .split("id=\"amount-due\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .replace(['$', ','], "");
    // Independent model: half of Business (199 base + 0 extra seats of 10 included) less half
    // of Team (59 + 2 × 12).
    let expected = (Decimal::from(199) - Decimal::from(59 + 24)) / Decimal::from(2);
    assert_eq!(
        Decimal::from_str(&shown).unwrap(),
        expected.round_dp(2),
        "{html}"
    );
    let (_, q) = app
        .get(
            &key,
            &format!("/v1/accounts/acme/subscription/quotes/{quote_id}"),
        )
        .await;
    assert_eq!(dec(&q["amount_due_now"]), expected.round_dp(2));

    let confirm = format!("{quote_page}/confirm");
    assert_eq!(
        post_form(&app.base, &confirm, &session, &[("csrf", "x")])
            .await
            .status(),
        403
    );
    let res = post_form(&app.base, &confirm, &session, &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), 303);
    let to = res.headers()["location"].to_str().unwrap().to_owned();
    let number = to
        .split("invoice=")
        .nth(1)
        .expect("the change invoice's number");
    let (_, inv) = app.get(&key, &format!("/v1/invoices/{number}")).await;
    assert_eq!(
        (inv["kind"].as_str(), dec(&inv["total"])),
        (Some("change"), expected.round_dp(2))
    );
    let (_, sub) = app.get(&key, "/v1/accounts/acme/subscription").await;
    assert_eq!(sub["plan"], "business");
    // A second click on Confirm is the same acceptance, not a second change.
    let res = post_form(&app.base, &confirm, &session, &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM invoices WHERE kind = 'change')::int8")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upcoming_invoice_is_the_invoice_the_period_closes_with() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    let scheduler = Scheduler::with(t(NOW), &[(JobKind::ClosePeriods, "0 * * * * *")]).unwrap();
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.subscribe(&key, "freebie", json!({"plan": "free"}))
        .await;
    let mut evs: Vec<Value> = (0..2000)
        .map(|i| json!({"id": format!("a{i}"), "account": "acme", "type": "api.request", "timestamp": "2026-11-25T12:10:00.000Z"}))
        .collect();
    for (i, gb) in ["12", "80", "40"].iter().enumerate() {
        evs.push(json!({"id": format!("s{i}"), "account": "acme", "type": "storage.snapshot", "timestamp": format!("2026-11-25T12:2{i}:00Z"), "properties": {"gb": gb}}));
    }
    for i in 0..26 {
        evs.push(json!({"id": format!("j{i}"), "account": "acme", "type": "job.completed", "timestamp": "2026-11-25T12:15:00.000Z", "properties": {"minutes": 100}}));
    }
    for chunk in evs.chunks(1000) {
        let (status, body) = app.send(&key, &json!({ "events": chunk })).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, up) = app.get(&key, "/v1/accounts/acme/upcoming-invoice").await;
    assert_eq!(status, 200, "{up}");
    // Independent model: storage (80 − 50) × 0.25, compute ceil(2,100 / 1,000) × 8, the next
    // period's base fee 59 and 2 extra seats × 12.
    let expected = Decimal::from_str("7.50").unwrap() + Decimal::from(24 + 59 + 24);
    assert_eq!(dec(&up["total"]), expected, "{up}");
    assert_eq!(up["issued_at"], "2026-12-25T12:00:00.000Z");
    assert_eq!(up["kind"], "period");
    let res = app
        .http
        .get(app.url("/v1/accounts/freebie/upcoming-invoice"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204, "a free plan invoices nothing");
    let (status, _) = app.get(&key, "/v1/accounts/nobody/upcoming-invoice").await;
    assert_eq!(status, 404);

    // The close issues exactly that invoice, line for line.
    app.clock.set(t("2026-12-25T12:05:00.000Z"));
    assert_eq!(tick(&app.ctx, &scheduler).await.unwrap(), 1);
    let (_, list) = app.get(&key, "/v1/invoices?account=acme").await;
    let closed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "period")
        .unwrap()["number"]
        .as_i64()
        .unwrap();
    let (_, inv) = app.get(&key, &format!("/v1/invoices/{closed}")).await;
    assert_eq!(dec(&inv["total"]), dec(&up["total"]));
    let amounts = |v: &Value| -> Vec<(String, Decimal)> {
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["description"].as_str().unwrap().to_owned(),
                    dec(&l["amount"]),
                )
            })
            .collect()
    };
    assert_eq!(amounts(&inv), amounts(&up));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_opens_to_finance_keys_only_and_closes_with_the_key() {
    let app = spawn_app().await;
    let finance = app.key("finance", None).await;
    let billing = app.key("billing", None).await;
    let bound = app.key("finance", Some("acme")).await;

    let res = browser().get(app.url("/console")).send().await.unwrap();
    assert_eq!(
        (
            res.status().as_u16(),
            res.headers()["location"].to_str().unwrap()
        ),
        (303, "/console/sign-in")
    );
    let sign_in = |key: String| console_sign_in(&app.base, key);
    assert_eq!(sign_in(billing).await.status(), 403);
    assert_eq!(sign_in(bound).await.status(), 403);
    assert_eq!(
        sign_in(format!("acr_{}", "0".repeat(48))).await.status(),
        401
    );
    // Without the sign-in form's own cookie the post is refused.
    let res = post_form(
        &app.base,
        "/console/sign-in",
        "",
        &[("nonce", "x"), ("key", &finance)],
    )
    .await;
    assert_eq!(res.status(), 403);

    let res = sign_in(finance.clone()).await;
    assert_eq!(res.status(), 303);
    let cookie = set_cookie(&res, "accrue_console").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/console"),
        "{cookie}"
    );
    let session = pair(&cookie);
    let (status, html) = page(&app.base, "/console/invoices", &session).await;
    assert_eq!(status, 200);
    assert!(html.contains("Download CSV"));
    let res = browser()
        .get(app.url("/console/invoices?format=csv"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(res
        .text()
        .await
        .unwrap()
        .starts_with("Number,Account,Kind,"));

    // Another instance (its own key cache, as after a restart or behind a load balancer)
    // honours the session, and refuses it once the key is revoked.
    let (other, _, _) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    assert_eq!(page(&other, "/console", &session).await.0, 200);
    let admin = app.key("admin", None).await;
    let (_, keys) = app.get(&admin, "/v1/keys").await;
    let id = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scopes"] == json!(["finance"]) && k["account"].is_null())
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    accrue::services::auth::revoke_key(&app.ctx.pool, id)
        .await
        .unwrap();
    let (third, _, _) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    let res = browser()
        .get(format!("{third}/console"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            res.status().as_u16(),
            res.headers()["location"].to_str().unwrap()
        ),
        (303, "/console/sign-in")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upcoming_invoice_takes_the_credit_balance_as_the_close_does() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    let scheduler = Scheduler::with(t(NOW), &[(JobKind::ClosePeriods, "0 * * * * *")]).unwrap();
    app.subscribe(
        &key,
        "acme",
        json!({"plan": "business_annual", "seats": 10}),
    )
    .await;
    // A month into the year, to monthly Business: most of the year's fee comes back as credit.
    app.clock.set(t("2026-12-25T12:00:00.000Z"));
    app.quote_and_accept(&key, "acme", json!({"plan": "business"}))
        .await;
    let (_, acct) = app.get(&key, "/v1/accounts/acme").await;
    let credit = dec(&acct["credit_balance"]);
    assert!(credit > Decimal::from(199), "credit {credit}");

    let (status, up) = app.get(&key, "/v1/accounts/acme/upcoming-invoice").await;
    assert_eq!(status, 200, "{up}");
    let lines = up["lines"].as_array().unwrap();
    let applied = lines
        .iter()
        .find(|l| l["kind"] == "credit_applied")
        .expect("a credit line");
    // Independent model: Business monthly, 10 seats included: 199 due, all of it from credit.
    assert_eq!(dec(&applied["amount"]), Decimal::from(-199));
    assert_eq!(dec(&up["total"]), Decimal::ZERO);

    app.clock.set(t("2027-01-25T12:05:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    let (_, list) = app.get(&key, "/v1/invoices?account=acme").await;
    let closed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|i| i["kind"] == "period")
        .unwrap();
    let (_, inv) = app
        .get(&key, &format!("/v1/invoices/{}", closed["number"]))
        .await;
    assert_eq!(inv["lines"].as_array().unwrap().len(), lines.len());
    assert_eq!(dec(&inv["total"]), dec(&up["total"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_answer_bad_input_and_other_accounts_quotes_with_pages_that_show_nothing() {
    let (app, key, session, csrf) = acme_in_the_portal(None).await;
    account(&app, &key, "globex", "Globex").await;
    app.subscribe(&key, "globex", json!({"plan": "team", "seats": 5}))
        .await;
    let (status, theirs) = app
        .post(
            &key,
            "/v1/accounts/globex/subscription/quotes",
            &json!({"seats": 9}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{theirs}");
    let theirs = theirs["id"].as_str().unwrap();

    let (status, html) = page(&app.base, &format!("/portal/quotes/{theirs}"), &session).await;
    assert_eq!(status, 404);
    assert!(!html.contains("globex") && !html.contains("Globex"));
    let res = post_form(
        &app.base,
        &format!("/portal/quotes/{theirs}/confirm"),
        &session,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(res.status(), 404);
    let (_, sub) = app.get(&key, "/v1/accounts/globex/subscription").await;
    assert_eq!(sub["seats"], 5, "globex's quote was not accepted");

    // Bad input gets a page that names it, with the pages' headers, never a plain-text error.
    for res in [
        post_form(&app.base, "/portal/quotes", &session, &[("seats", "9")]).await,
        browser()
            .get(app.url("/portal?invoice=x"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap(),
        browser()
            .get(app.url("/portal/nowhere"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap(),
        post_form(
            &app.base,
            "/portal/quotes",
            &session,
            &[("csrf", &csrf), ("plan", "team\0")],
        )
        .await,
        post_form(
            &app.base,
            "/portal/quotes",
            &session,
            &[("csrf", &csrf), ("seats", "99999999999")],
        )
        .await,
    ] {
        let status = res.status().as_u16();
        assert!([400, 404, 422].contains(&status), "{status}");
        assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
        assert!(res.headers().contains_key("content-security-policy"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_interval_in_the_portal_says_the_period_restarts_and_links_the_change_invoice()
{
    let (app, key, session, csrf) = acme_in_the_portal(Some("2026-12-10T12:00:00.000Z")).await;
    let res = post_form(
        &app.base,
        "/portal/quotes",
        &session,
        &[("csrf", &csrf), ("plan", "business_annual@1")],
    )
    .await;
    assert_eq!(res.status(), 303);
    let quote_page = res.headers()["location"].to_str().unwrap().to_owned();
    let (_, html) = page(&app.base, &quote_page, &session).await;
    assert!(
        html.contains("This change starts a new billing period on Dec 10, 2026."),
        "{html}"
    );
    // Independent model: a year of Business (annual) less the unused half of Team's month
    // (59 + 2 extra seats × 12) / 2.
    let expected = Decimal::from(1990) - Decimal::from_str("41.50").unwrap();
    assert!(html.contains("$1,948.50"), "{html}");
    let res = post_form(
        &app.base,
        &format!("{quote_page}/confirm"),
        &session,
        &[("csrf", &csrf)],
    )
    .await;
    let to = res.headers()["location"].to_str().unwrap().to_owned();
    let number = to.split("invoice=").nth(1).expect("an invoice");
    let (_, inv) = app.get(&key, &format!("/v1/invoices/{number}")).await;
    assert_eq!(
        (inv["kind"].as_str(), dec(&inv["total"])),
        (Some("change"), expected)
    );
}

/// The console's sign-in form, filled in with `key` and sent.
async fn console_sign_in(base: &str, key: String) -> reqwest::Response {
    let res = browser()
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .unwrap();
    let nonce_cookie = pair(&set_cookie(&res, "accrue_sign_in").unwrap());
    let html = res.text().await.unwrap();
    assert!(html.contains("API key") && html.contains("Sign in"));
    let nonce = hidden(&html, "nonce");
    post_form(
        base,
        "/console/sign-in",
        &nonce_cookie,
        &[("nonce", &nonce), ("key", &key)],
    )
    .await
}

/// A console session for a new finance key, signed in through the form.
async fn console_session(app: &TestApp) -> String {
    let res = console_sign_in(&app.base, app.key("finance", None).await).await;
    assert_eq!(res.status(), 303);
    pair(&set_cookie(&res, "accrue_console").unwrap())
}

/// The plan page's migration dry run re-rates every subscriber of a version: it runs when the
/// operator asks for it, not on each view of the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_pages_dry_run_runs_when_asked_and_lists_that_versions_subscribers() {
    // Three subscribers on team@1 (m1, m2, m3), one on team@2.
    let (app, _) = crate::migration::cohort().await;
    let session = console_session(&app).await;
    const DRY: &str = "subscribers; their MRR goes from";

    let (status, html) = page(&app.base, "/console/plans/team", &session).await;
    assert_eq!(status, 200);
    assert!(html.contains("Show the dry run"), "{html}");
    assert!(html.contains("Choose two versions"), "{html}");
    assert!(!html.contains(DRY), "the dry run ran on a plain view");
    assert!(
        !html.contains("banner warn"),
        "the dry run ran (and failed) on a plain view"
    );

    let (status, html) = page(&app.base, "/console/plans/team?from=1&to=2", &session).await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!("3 {DRY}")), "{html}");
    for account in ["m1", "m2", "m3"] {
        assert!(
            html.contains(&format!(">{account}</a>")),
            "{account}: {html}"
        );
    }
    assert!(
        !html.contains(">stays</a>"),
        "team@2's subscriber is not moved"
    );

    // The dry run's CSV, from a link saved without the versions (the page's defaults, 1 to
    // 2), is the dry run, not an empty table.
    let (status, csv) = page(
        &app.base,
        "/console/plans/team?format=csv&table=plan-team-1-to-2-dry-run",
        &session,
    )
    .await;
    assert_eq!(status, 200);
    let accounts: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(accounts, ["m1", "m2", "m3"], "{csv}");
}
