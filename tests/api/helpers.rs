//! Test support: a database per test (cloned from a migrated template), an in-process server
//! on a free port, a server process for restart and crash tests, and API keys.

use accrue::catalog::meters::MeterCatalog;
use accrue::catalog::plans::PlanCatalog;
use accrue::domain::clock::{Clock, ManualClock};
use accrue::domain::scope::Scope;
use accrue::services::{auth, Ctx};
use accrue::store;
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The server for test databases; override with `ACCRUE_TEST_PG`.
pub fn pg_base() -> String {
    std::env::var("ACCRUE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Name of the template database: a hash of the migrations, so a new migration builds a new one.
fn template_name() -> String {
    // The migrations, and how they place tables on Citus.
    let mut files: Vec<PathBuf> = walk(&manifest_dir().join("migrations"));
    files.push(manifest_dir().join("src/store/citus.rs"));
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).unwrap());
    }
    format!("accrue_tpl_{}", &hex::encode(h.finalize())[..16])
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// With `ACCRUE_TEST_CITUS_WORKERS=host:port,...` set, `ACCRUE_TEST_PG` is a Citus coordinator
/// and these are its workers: every test database is made on all of them, with the `citus`
/// extension, and the migrations place the tables ([`accrue::store::citus`]).
pub fn citus_workers() -> Vec<String> {
    std::env::var("ACCRUE_TEST_CITUS_WORKERS")
        .unwrap_or_default()
        .split(',')
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether the tests run on a Citus cluster.
pub fn on_citus() -> bool {
    !citus_workers().is_empty()
}

/// The servers a test database lives on: the one of `ACCRUE_TEST_PG`, then the Citus workers.
fn nodes() -> Vec<String> {
    let base = pg_base();
    let login = base.rsplit_once('@').map(|(l, _)| l.to_owned());
    let mut out = vec![base.clone()];
    for w in citus_workers() {
        match &login {
            Some(l) => out.push(format!("{l}@{w}")),
            None => out.push(format!("postgres://{w}")),
        }
    }
    out
}

async fn admin_of(node: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(&format!("{node}/postgres"))
        .await
        .expect("connect to the test PostgreSQL (is it running? see README)")
}

async fn admin() -> AsyncPgConnection {
    admin_of(&pg_base()).await
}

async fn exists(conn: &mut AsyncPgConnection, condition: &str) -> bool {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT 1 FROM pg_database WHERE {condition})"
    )))
    .get_result(conn)
    .await
    .unwrap()
}

async fn ensure_template(tpl: &str) {
    let mut conn = admin().await;
    // Test processes run in parallel: one builds the template, the others wait.
    conn.batch_execute("SELECT pg_advisory_lock(7462002)")
        .await
        .unwrap();
    if on_citus() {
        ensure_citus_template(&mut conn, tpl).await;
    } else if !exists(&mut conn, &format!("datname = '{tpl}'")).await {
        let building = format!("{tpl}_build");
        conn.batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .unwrap();
        conn.batch_execute(&format!("CREATE DATABASE {building}"))
            .await
            .unwrap();
        store::run_migrations(&format!("{}/{building}", pg_base()))
            .await
            .unwrap();
        conn.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {tpl}"))
            .await
            .unwrap();
    }
    conn.batch_execute("SELECT pg_advisory_unlock(7462002)")
        .await
        .unwrap();
}

/// The template on a Citus cluster: a database of that name on every node, the extension in
/// each, the workers registered, migrated (so placed), then closed to connections, which marks
/// it finished. Citus's maintenance daemon holds a connection to each database with the
/// extension, so the template is closed rather than renamed, and its sessions ended.
async fn ensure_citus_template(coordinator: &mut AsyncPgConnection, tpl: &str) {
    if exists(
        coordinator,
        &format!("datname = '{tpl}' AND NOT datallowconn"),
    )
    .await
    {
        return;
    }
    for node in nodes() {
        let mut admin = admin_of(&node).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {tpl} WITH (FORCE)"),
            format!("CREATE DATABASE {tpl}"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        let mut db = AsyncPgConnection::establish(&format!("{node}/{tpl}"))
            .await
            .unwrap();
        db.batch_execute("CREATE EXTENSION citus").await.unwrap();
    }
    let host_port = |node: &str| -> (String, u16) {
        let hp = node.rsplit_once('@').map(|(_, h)| h).unwrap_or(node);
        let hp = hp.trim_start_matches("postgres://");
        let (h, p) = hp.rsplit_once(':').unwrap_or((hp, "5432"));
        (h.to_owned(), p.parse().unwrap())
    };
    let all = nodes();
    let mut db = AsyncPgConnection::establish(&format!("{}/{tpl}", all[0]))
        .await
        .unwrap();
    let (h, p) = host_port(&all[0]);
    // Few shards keep the tests' tables small; placement is the same with 32.
    db.batch_execute(&format!(
        "ALTER DATABASE {tpl} SET citus.shard_count = 4; \
         SELECT citus_set_coordinator_host('{h}', {p})"
    ))
    .await
    .unwrap();
    for w in &all[1..] {
        let (h, p) = host_port(w);
        db.batch_execute(&format!("SELECT citus_add_node('{h}', {p})"))
            .await
            .unwrap();
    }
    drop(db);
    store::run_migrations(&format!("{}/{tpl}", all[0]))
        .await
        .unwrap();
    // Workers first: the coordinator's closed template is the sign that all are finished.
    for node in all.iter().rev() {
        let mut admin = admin_of(node).await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {tpl} WITH ALLOW_CONNECTIONS false"
            ))
            .await
            .unwrap();
        end_sessions(&mut admin, tpl).await;
    }
}

async fn end_sessions(admin: &mut AsyncPgConnection, db: &str) {
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ))
        .await
        .unwrap();
}

use diesel_async::RunQueryDsl;

/// A freshly migrated database, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let tpl = template_name();
        ensure_template(&tpl).await;
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).unwrap();
        let name = format!("t_{}", hex::encode(rnd));
        for node in nodes() {
            let mut conn = admin_of(&node).await;
            let mut attempts = 0;
            loop {
                match conn
                    .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {tpl}"))
                    .await
                {
                    Ok(()) => break,
                    // Another test cloning the template at the same instant (or, on Citus, a
                    // maintenance daemon that found the template).
                    Err(e) if attempts < 40 && e.to_string().contains("being accessed") => {
                        attempts += 1;
                        if on_citus() {
                            end_sessions(&mut conn, &tpl).await;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("create test database: {e}"),
                }
            }
        }
        let url = format!("{}/{name}", pg_base());
        Self { name, url }
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url).await.unwrap()
    }

    /// Runs `UPDATE <table> <rest>` (tests moving stored times back). On Citus it runs on each
    /// shard: Citus refuses a multi-shard UPDATE whose SET calls a STABLE function of a column
    /// (`stored_at - interval '20 minutes'`).
    pub async fn update_all(&self, table: &str, rest: &str) {
        let mut c = self.conn().await;
        if on_citus() {
            let failed: i64 =
                diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
                    "(SELECT count(*) FROM run_command_on_shards('{table}', \
                      $cmd$UPDATE %s {rest}$cmd$) WHERE NOT success)"
                )))
                .get_result(&mut c)
                .await
                .unwrap();
            assert_eq!(failed, 0, "UPDATE {table} {rest} failed on a shard");
        } else {
            c.batch_execute(&format!("UPDATE {table} {rest}"))
                .await
                .unwrap();
        }
    }

    /// Opens a transaction that holds `account`'s rollup rows `FOR UPDATE` until released:
    /// the ingest lane that commits the account's next events waits on them. The account
    /// must have rollup rows (a hold on none would hold nothing).
    pub async fn hold_rollups(&self, account: &str) -> RowHold {
        assert!(
            account
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "a plain account name: {account}"
        );
        let rows = self
            .count(&format!(
                "(SELECT count(*) FROM usage_rollups WHERE account = '{account}')"
            ))
            .await;
        assert!(rows > 0, "account `{account}` has no rollup rows to hold");
        let mut c = self.conn().await;
        c.batch_execute(&format!(
            "BEGIN; SELECT * FROM usage_rollups WHERE account = '{account}' FOR UPDATE"
        ))
        .await
        .unwrap();
        RowHold(c)
    }

    /// Runs a scalar `bigint` query.
    pub async fn count(&self, sql: &str) -> i64 {
        let mut c = self.conn().await;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(sql))
            .get_result(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for node in nodes() {
                    let mut conn = admin_of(&node).await;
                    let _ = conn
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Row locks held by an open transaction ([`TestDb::hold_rollups`]).
pub struct RowHold(AsyncPgConnection);

impl RowHold {
    /// Rolls the holding transaction back: the rows are free.
    pub async fn release(mut self) {
        self.0.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// Waits (polling every 10 ms) until `done` holds; fails with `what()` after 10 s.
pub async fn wait_until(mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", what());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// POSTs `body` to `base`'s /v1/events in a task of its own; the task asserts a 200 and
/// returns the answer.
pub fn send_in_background(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    body: serde_json::Value,
) -> tokio::task::JoinHandle<serde_json::Value> {
    let (http, url, key) = (http.clone(), format!("{base}/v1/events"), key.to_owned());
    tokio::spawn(async move {
        let res = http
            .post(url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        res.json().await.unwrap()
    })
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The instant in-process test servers believe it is, unless a test moves the clock.
pub const NOW: &str = "2026-11-25T12:30:00.000Z";

/// An in-process server on its own database with a manual clock.
pub struct TestApp {
    pub base: String,
    pub db: TestDb,
    pub ctx: Ctx,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_on(TestDb::new().await)
}

/// An in-process server on a database the caller prepared.
pub fn spawn_app_on(db: TestDb) -> TestApp {
    let (base, ctx, clock) = start_instance(&db.url, Duration::from_secs(1));
    TestApp::new(base, db, ctx, clock)
}

/// Another server instance on an existing database: its own pool, caches and clock.
pub fn start_instance(db_url: &str, check_staleness: Duration) -> (String, Ctx, Arc<ManualClock>) {
    let (_, ctx, clock) = start_instance_unserved(db_url, check_staleness);
    let base = serve(ctx.clone());
    (base, ctx, clock)
}

/// The context of an instance, not yet serving HTTP (callers may add to it first).
pub fn start_instance_unserved(
    db_url: &str,
    check_staleness: Duration,
) -> ((), Ctx, Arc<ManualClock>) {
    start_instance_unserved_with(
        db_url,
        check_staleness,
        &manifest_dir().join("pricing-plans"),
    )
}

/// As [`start_instance_unserved`], with the plan catalogue of `plans_dir`.
pub fn start_instance_unserved_with(
    db_url: &str,
    check_staleness: Duration,
    plans_dir: &Path,
) -> ((), Ctx, Arc<ManualClock>) {
    let pool = store::pool(db_url, 8).unwrap();
    let meters = MeterCatalog::load(plans_dir).unwrap();
    let plans = PlanCatalog::load(plans_dir, &meters).unwrap();
    let clock = Arc::new(ManualClock::new(t(NOW)));
    let ctx = Ctx::new(
        pool,
        meters,
        plans,
        clock.clone() as Arc<dyn Clock>,
        2,
        check_staleness,
    )
    .refreshing();
    ((), ctx, clock)
}

/// Serves `ctx` over HTTP on a free loopback port; returns the base URL.
pub fn serve(ctx: Ctx) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server =
        accrue::http::server(ctx, listener, Some(1), std::time::Duration::from_secs(30)).unwrap();
    tokio::spawn(server);
    base
}

impl TestApp {
    /// An app of a served instance (`base`) on `db`.
    pub fn new(base: String, db: TestDb, ctx: Ctx, clock: Arc<ManualClock>) -> TestApp {
        TestApp {
            base,
            db,
            ctx,
            clock,
            http: reqwest::Client::new(),
        }
    }

    /// Creates a key with these scopes (comma-separated), optionally bound to one account.
    pub async fn key(&self, scopes: &str, account: Option<&str>) -> String {
        let scopes = Scope::parse_list(scopes).unwrap();
        auth::create_key(&self.ctx.pool, "test", &scopes, account, "test")
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Publishes the shipped plan catalogue (subscriptions need published versions).
    pub async fn publish_plans(&self) {
        accrue::services::plans::publish(&self.ctx.pool, &self.ctx.plans(), "test", t(NOW))
            .await
            .unwrap();
        self.ctx.refresh_plans().await.unwrap();
    }

    /// Subscribes `account` (body as for `POST .../subscription`), asserting it was created.
    pub async fn subscribe(
        &self,
        key: &str,
        account: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let (status, s) = self
            .post(
                key,
                &format!("/v1/accounts/{account}/subscription"),
                &body,
                None,
            )
            .await;
        assert_eq!(status, 201, "{s}");
        s
    }

    /// Quotes a change and accepts it, asserting both succeed; returns (quote, acceptance).
    pub async fn quote_and_accept(
        &self,
        key: &str,
        account: &str,
        body: serde_json::Value,
    ) -> (serde_json::Value, serde_json::Value) {
        let (status, q) = self
            .post(
                key,
                &format!("/v1/accounts/{account}/subscription/quotes"),
                &body,
                None,
            )
            .await;
        assert_eq!(status, 201, "{q}");
        let id = q["id"].as_str().unwrap();
        let (status, a) = self
            .post(
                key,
                &format!("/v1/accounts/{account}/subscription/quotes/{id}/accept"),
                &serde_json::json!({}),
                Some(&format!("k-{id}")),
            )
            .await;
        assert_eq!(status, 200, "{a}");
        (q, a)
    }

    /// POSTs JSON to any path, with an optional Idempotency-Key.
    pub async fn post(
        &self,
        key: &str,
        path: &str,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.post(self.url(path)).bearer_auth(key).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn put(
        &self,
        key: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::PUT, key, path, body).await
    }

    pub async fn patch(
        &self,
        key: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::PATCH, key, path, body)
            .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let res = self
            .http
            .request(method, self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// [`send_in_background`] to this server.
    pub fn send_in_background(
        &self,
        key: &str,
        body: serde_json::Value,
    ) -> tokio::task::JoinHandle<serde_json::Value> {
        send_in_background(&self.http, &self.base, key, body)
    }

    /// POSTs a JSON body to /v1/events; returns status and JSON answer.
    pub async fn send(&self, key: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let res = self
            .http
            .post(self.url("/v1/events"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, serde_json::Value) {
        let res = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    /// The value of one meter for an account over a range.
    pub async fn meter_value(
        &self,
        key: &str,
        account: &str,
        meter: &str,
        from: &str,
        to: &str,
    ) -> String {
        let (status, body) = self
            .get(
                key,
                &format!("/v1/accounts/{account}/usage?from={from}&to={to}"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["meter"] == meter)
            .unwrap_or_else(|| panic!("meter {meter} missing in {body}"))["value"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A copy of the shipped catalogue under a fresh temporary directory, with `extra` plan files
/// (path relative to the catalogue, content) added.
pub fn catalogue_with(extra: &[(&str, &str)]) -> PathBuf {
    let mut rnd = [0u8; 6];
    getrandom::fill(&mut rnd).unwrap();
    let dir = std::env::temp_dir().join(format!("accrue-plans-{}", hex::encode(rnd)));
    let status = Command::new("cp")
        .arg("-r")
        .arg(manifest_dir().join("pricing-plans"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    for (path, text) in extra {
        let f = dir.join(path);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }
    dir
}

/// A server process (the real binary) on a database, for restart and crash tests.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ServerProcess {
    pub async fn start(db_url: &str, port: u16) -> Self {
        Self::start_with_env(db_url, port, &[]).await
    }

    /// Starts the binary with extra environment variables (Stripe, failpoints).
    pub async fn start_with_env(db_url: &str, port: u16, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_accrue"))
            .envs(env.iter().copied())
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("ACCRUE_BIND", format!("127.0.0.1:{port}"))
            .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
            .env("ACCRUE_DB_POOL", "4")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start accrue serve");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    return Self { child, base };
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("accrue serve did not become ready on port {port}");
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the graceful stop.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
