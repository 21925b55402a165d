//! What the scenarios stand on: a private PostgreSQL cluster that can be stopped and started,
//! the release binary as a process, keys made with its CLI, and the process's resident memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary. The README's test command builds it before the tests; run alone, the
/// suite says how to get it rather than testing a stale or debug build silently.
pub fn release_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    let bin = target.join("release/accrue");
    assert!(
        bin.exists(),
        "the chaos suite drives the release binary: build it first with \
         `cargo build --release --bin accrue` (.ci/test does)"
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL cluster of the suite's own (initdb in a temporary directory, trust logins on
/// 127.0.0.1), run as the `postgres` user when the suite runs as root (PostgreSQL refuses root).
///
/// With `ACCRUE_CHAOS_CITUS=1` (the README's test command sets it for its Citus pass) it is a
/// Citus cluster instead: a coordinator and two workers, each a PostgreSQL of its own with the
/// extension preloaded (Citus as `deploy/citus/cluster.sh` installs it into the system's
/// PostgreSQL). [`Cluster::down`] and [`Cluster::up`] then stop and start all three.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// The nodes' ports, the coordinator (or the only node) first.
    ports: Vec<u16>,
}

/// Whether the scenarios run on Citus (`ACCRUE_CHAOS_CITUS=1`).
pub fn on_citus() -> bool {
    std::env::var("ACCRUE_CHAOS_CITUS").is_ok_and(|v| v == "1")
}

fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|d| d.join("initdb").exists())
        .expect("PostgreSQL's server binaries (initdb, pg_ctl): install the postgresql package")
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

impl Cluster {
    pub fn start() -> Cluster {
        let bin = pg_bindir();
        let nodes = if on_citus() { 3 } else { 1 };
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let dir =
            std::env::temp_dir().join(format!("accrue-chaos-{}-{}", std::process::id(), ports[0]));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if on_citus() {
            let lib = bin.parent().unwrap().join("lib/citus.so");
            assert!(
                lib.exists(),
                "ACCRUE_CHAOS_CITUS=1 needs Citus in the system's PostgreSQL ({}): \
                 deploy/citus/cluster.sh up installs it",
                lib.display()
            );
        }
        let cluster = Cluster { dir, bin, ports };
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .unwrap();
            assert!(ok.success(), "chown the cluster directory to postgres");
        }
        for (node, port) in cluster.ports.iter().enumerate() {
            let data = cluster.data(node);
            cluster.run(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ],
            );
            // Citus runs a maintenance worker per database besides the usual ones.
            let citus = if on_citus() {
                "shared_preload_libraries = 'citus'\nmax_worker_processes = 32\n"
            } else {
                ""
            };
            std::fs::write(
                data.join("postgresql.auto.conf"),
                format!(
                    "port = {port}\nlisten_addresses = '127.0.0.1'\n\
                     unix_socket_directories = '{}'\nmax_connections = 100\n\
                     shared_buffers = '128MB'\nfsync = on\n{citus}",
                    cluster.dir.display()
                ),
            )
            .unwrap();
            if is_root() {
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(data.join("postgresql.auto.conf"))
                    .status()
                    .unwrap();
            }
        }
        cluster.up();
        cluster
    }

    fn data(&self, node: usize) -> PathBuf {
        self.dir.join(format!("data{node}"))
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts every node (the workers before the coordinator) and waits until each accepts
    /// connections.
    pub fn up(&self) {
        for node in (0..self.ports.len()).rev() {
            let data = self.data(node);
            let log = self.dir.join(format!("log{node}"));
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start",
                ],
            );
        }
    }

    /// Stops every node (fast: open connections are cut, as in a crash of the service), the
    /// coordinator first.
    pub fn down(&self) {
        for node in 0..self.ports.len() {
            let data = self.data(node);
            self.run(
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
            );
        }
    }

    /// Makes the database `db` and returns its URL. On Citus it is made on every node with the
    /// extension, and the workers are registered with the coordinator, so that `accrue
    /// migrate` distributes the tables; on one node `accrue migrate` makes it.
    pub fn database(&self, db: &str) -> String {
        let node = |port: u16, db: &str| format!("postgres://postgres@127.0.0.1:{port}/{db}");
        if on_citus() {
            for &port in &self.ports {
                self.psql(&node(port, "postgres"), &format!("CREATE DATABASE {db}"));
                self.psql(&node(port, db), "CREATE EXTENSION citus");
            }
            let coordinator = node(self.ports[0], db);
            self.psql(
                &coordinator,
                &format!(
                    "SELECT citus_set_coordinator_host('127.0.0.1', {})",
                    self.ports[0]
                ),
            );
            for port in &self.ports[1..] {
                self.psql(
                    &coordinator,
                    &format!("SELECT citus_add_node('127.0.0.1', {port})"),
                );
            }
        }
        node(self.ports[0], db)
    }

    fn psql(&self, url: &str, sql: &str) {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {url} -c {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..self.ports.len() {
            let data = self.data(node);
            let program = self.bin.join("pg_ctl");
            let args = ["-D", data.to_str().unwrap(), "-m", "immediate", "stop"];
            let _ = if is_root() {
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(&program)
                    .args(args)
                    .output()
            } else {
                Command::new(&program).args(args).output()
            };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Migrates `db_url` (creating the database) and makes a key, with the release binary's CLI.
pub fn prepare(db_url: &str, scopes: &str) -> String {
    let out = Command::new(release_binary())
        .arg("migrate")
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(release_binary())
        .args(["keys", "create", "--name", "chaos", "--scopes", scopes])
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Publishes the shipped catalogue with the release binary's CLI (`accrue plans publish`),
/// under the server's environment (with Stripe configured, publish checks every currency).
pub fn publish_plans(db_url: &str, env: &[(&str, &str)]) {
    let out = Command::new(release_binary())
        .args(["plans", "publish"])
        .envs(env.iter().copied())
        .env("DATABASE_URL", db_url)
        .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `accrue serve` (release) as a child process.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub async fn start(db_url: &str, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut child = Command::new(release_binary())
            .arg("serve")
            .envs(env.iter().copied())
            .env("DATABASE_URL", db_url)
            .env("ACCRUE_BIND", format!("127.0.0.1:{port}"))
            .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start accrue serve");
        let base = format!("http://127.0.0.1:{port}");
        let client = http_client();
        for _ in 0..400 {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    return Server { child, base };
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("accrue serve did not become ready");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: a graceful stop.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit (up to `limit`).
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests' HTTP client: every request ends within 90 s, answered or not. Without a
/// bound, a client of the SIGTERM scenario once waited forever after the server had exited
/// (no socket left open, no timer: a request parked inside the client's connection pool),
/// and the suite with it. No scenario's request takes longer when it works.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("an HTTP client")
}

/// Resident memory of a process in MiB (Linux).
pub fn rss_mib(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A query's single integer answer, through psql-free diesel.
pub async fn count(db_url: &str, sql: &str) -> i64 {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut c = AsyncPgConnection::establish(db_url).await.unwrap();
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(sql))
        .get_result(&mut c)
        .await
        .unwrap()
}
