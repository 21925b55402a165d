//! The local fake Stripe server (localstripe 1.15.10, patched at start by
//! `tests/localstripe/launch.py`), one per test binary, and apps wired to it.
//!
//! The Python interpreter is `ACCRUE_LOCALSTRIPE_PYTHON`, else `target/localstripe-venv`
//! (the README's test command, `.ci/test`, creates it). The server's state is shared by every
//! test of the binary, so each test works with its own customers and accounts; webhooks reach
//! every registered receiver, and each accrue ignores invoices of other installations.

use super::helpers::*;
use accrue::domain::clock::{Clock, ManualClock};
use accrue::domain::dunning::DunningPolicy;
use accrue::payments::StripeConfig;
use accrue::services::payments::Payments;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const STRIPE_KEY: &str = "sk_test_accrue";
pub const WEBHOOK_SECRET: &str = "whsec_accrue_tests";

pub struct FakeStripe {
    pub url: String,
    _child: Mutex<Child>,
}

static FAKE: OnceLock<FakeStripe> = OnceLock::new();

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ACCRUE_LOCALSTRIPE_PYTHON") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/localstripe-venv/bin/python")
}

/// The fake Stripe server, started on first use.
pub fn fake_stripe() -> &'static FakeStripe {
    FAKE.get_or_init(|| {
        let python = python();
        assert!(
            python.exists(),
            "no localstripe interpreter at {}: run .ci/test (it installs localstripe 1.15.10) \
             or set ACCRUE_LOCALSTRIPE_PYTHON",
            python.display()
        );
        let port = free_port();
        let child = Command::new(&python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/localstripe/launch.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start localstripe");
        let url = format!("http://127.0.0.1:{port}");
        // Wait for it with a blocking client: this may run inside or outside a runtime.
        let ready = std::thread::spawn({
            let url = url.clone();
            move || {
                for _ in 0..300 {
                    if std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                false
            }
        })
        .join()
        .unwrap();
        assert!(ready, "localstripe did not start on port {port}");
        FakeStripe {
            url,
            _child: Mutex::new(child),
        }
    })
}

impl FakeStripe {
    /// A form POST to the fake, as Stripe.js or the dashboard would make it.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .basic_auth(STRIPE_KEY, Some(""))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .basic_auth(STRIPE_KEY, Some(""))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Ages the idempotency keys of one accrue installation (its keys start with
    /// `accrue-{installation}-`) by `seconds`, as a test clock moves its time: after 24 hours
    /// the fake forgets them, as Stripe does.
    pub async fn age_keys(&self, installation: &str, seconds: i64) {
        let (status, body) = self
            .post(
                "/_accrue/advance",
                &[
                    ("prefix", &format!("accrue-{installation}-")),
                    ("seconds", &seconds.to_string()),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// A card payment method, created client-side (Stripe.js) before accrue sees its id.
    pub async fn card(&self, number: &str) -> String {
        let (status, pm) = self
            .post(
                "/v1/payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2031"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{pm}");
        pm["id"].as_str().unwrap().to_owned()
    }

    /// Every charge Stripe made for `customer` (paging through every charge: the fake lists
    /// them all, 100 at a time, whoever the customer).
    pub async fn charges_of(&self, customer: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = match &after {
                Some(id) => {
                    self.get(&format!("/v1/charges?limit=100&starting_after={id}"))
                        .await
                }
                None => self.get("/v1/charges?limit=100").await,
            };
            let data = page["data"].as_array().cloned().unwrap_or_default();
            out.extend(data.iter().filter(|c| c["customer"] == customer).cloned());
            match (page["has_more"].as_bool(), data.last()) {
                (Some(true), Some(last)) => after = last["id"].as_str().map(str::to_owned),
                _ => return out,
            }
        }
    }

    /// The amounts (minor units) of `customer`'s succeeded charges, smallest first.
    pub async fn succeeded_amounts(&self, customer: &str) -> Vec<i64> {
        let mut amounts: Vec<i64> = self
            .charges_of(customer)
            .await
            .iter()
            .filter(|c| c["status"] == "succeeded")
            .map(|c| c["amount"].as_i64().unwrap())
            .collect();
        amounts.sort_unstable();
        amounts
    }

    /// Registers an accrue server as a webhook receiver.
    pub async fn register_webhook(&self, name: &str, base: &str) {
        let (status, body) = self
            .post(
                &format!("/_config/webhooks/{name}"),
                &[
                    ("url", &format!("{base}/v1/stripe/webhook")),
                    ("secret", WEBHOOK_SECRET),
                ],
            )
            .await;
        assert!(status < 300, "{status} {body}");
    }
}

pub const GOOD_CARD: &str = "4242424242424242";
/// Attaches, then every charge is declined.
pub const DECLINING_CARD: &str = "4000000000000341";

/// An in-process app collecting through the fake Stripe, receiving its webhooks.
pub async fn spawn_stripe_app(policy: DunningPolicy) -> TestApp {
    let fake = fake_stripe();
    let db = TestDb::new().await;
    let (base, ctx, clock) = start_stripe_instance(&db.url, policy).await;
    fake.register_webhook(&db.name, &base).await;
    TestApp::new(base, db, ctx, clock)
}

/// A server instance on `db_url` wired to the fake Stripe.
pub async fn start_stripe_instance(
    db_url: &str,
    policy: DunningPolicy,
) -> (String, accrue::services::Ctx, Arc<ManualClock>) {
    start_stripe_instance_with(db_url, policy, &manifest_dir().join("pricing-plans")).await
}

/// An in-process app collecting through the fake Stripe, with the catalogue of `plans_dir`.
pub async fn spawn_stripe_app_with(policy: DunningPolicy, plans_dir: &std::path::Path) -> TestApp {
    let fake = fake_stripe();
    let db = TestDb::new().await;
    let (base, ctx, clock) = start_stripe_instance_with(&db.url, policy, plans_dir).await;
    fake.register_webhook(&db.name, &base).await;
    TestApp::new(base, db, ctx, clock)
}

/// A server instance on `db_url` wired to the fake Stripe, with the catalogue of `plans_dir`.
pub async fn start_stripe_instance_with(
    db_url: &str,
    policy: DunningPolicy,
    plans_dir: &std::path::Path,
) -> (String, accrue::services::Ctx, Arc<ManualClock>) {
    start_stripe_instance_on(db_url, policy, plans_dir, &stripe_config()).await
}

/// A server instance on `db_url` collecting through the Stripe of `config`.
pub async fn start_stripe_instance_on(
    db_url: &str,
    policy: DunningPolicy,
    plans_dir: &std::path::Path,
    config: &StripeConfig,
) -> (String, accrue::services::Ctx, Arc<ManualClock>) {
    let (_, plain, clock) = start_instance_unserved_with(db_url, Duration::from_secs(1), plans_dir);
    let payments = Payments::connect(&plain.pool, config, policy, clock.now())
        .await
        .unwrap();
    let ctx = plain.with_payments(payments);
    let base = serve(ctx.clone());
    (base, ctx, clock)
}

pub fn stripe_config() -> StripeConfig {
    StripeConfig {
        secret_key: STRIPE_KEY.into(),
        api_base: Some(format!("{}/", fake_stripe().url)),
        webhook_secret: WEBHOOK_SECRET.into(),
    }
}

/// A `Stripe-Signature` header for `payload` signed at unix time `t` with `secret`.
pub fn sign(payload: &str, t: i64, secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Polls `f` until it returns Some, for up to 10 s (webhooks arrive after about a second).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A JSON body helper for the account's firmographics.
pub fn account_body(email: &str) -> Value {
    json!({"name": "Test Co", "email": email})
}

/// A pass-through proxy in front of the fake Stripe that can hold its answer to one invoice
/// payment (`POST /v1/invoices/{id}/pay`) after Stripe took the payment, until released: the
/// window in which Stripe's webhook reaches accrue before the attempt that paid records it.
pub struct HoldingProxy {
    /// The proxy's base URL, for [`StripeConfig::api_base`].
    pub url: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
    paid: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl HoldingProxy {
    pub fn start() -> HoldingProxy {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        use std::sync::atomic::{AtomicBool, Ordering};
        let armed = Arc::new(AtomicBool::new(false));
        let paid = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let upstream = fake_stripe().url.clone();
        let client = reqwest::Client::new();
        let data = (
            armed.clone(),
            paid.clone(),
            release.clone(),
            upstream,
            client,
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            let data = data.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (armed, paid, release, upstream, client) = data.clone();
                async move {
                    let method =
                        reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let mut out = client.request(method, format!("{upstream}{path}"));
                    for (name, value) in req.headers() {
                        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                            out = out.header(name.as_str(), value.as_bytes());
                        }
                    }
                    let res = out.body(body.to_vec()).send().await.unwrap();
                    let status = res.status().as_u16();
                    let answer = res.bytes().await.unwrap();
                    let pay = req.method() == actix_web::http::Method::POST
                        && req.path().starts_with("/v1/invoices/")
                        && req.path().ends_with("/pay");
                    if pay && armed.swap(false, Ordering::SeqCst) {
                        paid.notify_one();
                        release.notified().await;
                    }
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .content_type("application/json")
                        .body(answer)
                }
            }))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        HoldingProxy {
            url,
            armed,
            paid,
            release,
        }
    }

    /// The fake Stripe's configuration, through this proxy.
    pub fn config(&self) -> StripeConfig {
        StripeConfig {
            api_base: Some(format!("{}/", self.url)),
            ..stripe_config()
        }
    }

    /// Holds the answer to the next invoice payment.
    pub fn hold_next_payment(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until Stripe took the held payment (its answer is being held).
    pub async fn payment_taken(&self) {
        self.paid.notified().await;
    }

    /// Lets the held answer go.
    pub fn release(&self) {
        self.release.notify_one();
    }
}
