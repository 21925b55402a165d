//! The CLI against the real database (newcomer review S2-6, S2-7): commands that only read the
//! database need no plans folder, and no command but `serve`, `migrate` and `demo` creates a
//! database (a mistyped `DATABASE_URL` is an error naming it).

use crate::helpers::*;
use std::process::{Command, Output};

fn accrue_in(dir: &std::path::Path, db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", db_url)
        .env_remove("ACCRUE_PLANS_DIR")
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_database_url_is_an_error_naming_it_and_creates_nothing() {
    let app = spawn_app().await;
    let wrong = format!("{}_nope", app.db.url);
    let name = format!("{}_nope", app.db.name);
    let elsewhere = std::env::temp_dir();
    for args in [
        vec!["keys", "create", "--name", "x", "--scopes", "check"],
        vec!["keys", "list"],
        vec!["export", "invoices", "--month", "2026-11"],
        vec![
            "report",
            "nrr",
            "--from",
            "2026-10-01",
            "--to",
            "2026-12-01",
        ],
    ] {
        let out = accrue_in(&elsewhere, &wrong, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        assert!(
            err.contains(&format!("database `{name}` does not exist")),
            "{args:?}: {err}"
        );
    }
    let created = app
        .db
        .count(&format!(
            "(SELECT COUNT(*) FROM pg_database WHERE datname = '{name}')::int8"
        ))
        .await;
    assert_eq!(created, 0, "a command created the mistyped database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_only_read_the_database_run_from_any_folder() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    app.subscribe(
        &key,
        "acme",
        serde_json::json!({"plan": "team", "seats": 5}),
    )
    .await;
    // A folder without pricing-plans/ or config/.
    let elsewhere = std::env::temp_dir();
    assert!(!elsewhere.join("pricing-plans").exists());
    let out = accrue_in(
        &elsewhere,
        &app.db.url,
        &["export", "invoices", "--month", "2026-11"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    // The start invoice: 59.00 base and two extra seats at 12.00.
    assert!(csv.lines().any(|l| l.starts_with("1,acme,start,")), "{csv}");
    let out = accrue_in(
        &elsewhere,
        &app.db.url,
        &[
            "report",
            "nrr",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.as_array().is_some_and(|w| !w.is_empty()), "{report}");
    let out = accrue_in(&elsewhere, &app.db.url, &["keys", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("billing"));
}

/// A bind address without a port is refused saying what it takes (newcomer S4: it said only
/// "invalid socket address"), and only after the whole configuration was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_names_the_form_of_a_wrong_bind_address() {
    let db = TestDb::new().await;
    let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .arg("serve")
        .current_dir(manifest_dir())
        .env("DATABASE_URL", &db.url)
        .env("ACCRUE_BIND", "localhost")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot listen on localhost (ACCRUE_BIND is host:port"),
        "{err}"
    );
}

/// A refused request shows in the server's log with its method, path and status (newcomer S4:
/// 4xx and 5xx answers were invisible there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_logged_with_what_was_asked() {
    let db = TestDb::new().await;
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("accrue-log-{port}.txt"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .arg("serve")
        .current_dir(manifest_dir())
        .env("DATABASE_URL", &db.url)
        .env("ACCRUE_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..400 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            ready = r.status().is_success();
            if ready {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(ready, "the server did not start");
    let nowhere = http.get(format!("{base}/v1/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    let anonymous = http
        .get(format!("{base}/v1/invoices"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("/v1/nowhere") && l.contains("404") && l.contains("GET")),
        "{text}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("/v1/invoices") && l.contains("401")),
        "{text}"
    );
    assert!(
        !text.contains("/readyz"),
        "successes are not logged: {text}"
    );
}

/// `accrue price` applies the API's rules (newcomer S3-4): seats below the plan's minimum are
/// refused, not silently priced at the minimum; a meter given twice or a negative quantity for
/// a meter that takes none is refused; one seat reads "1 seat".
#[test]
fn price_refuses_what_the_api_refuses() {
    let db = "postgres://127.0.0.1:1/unused";
    let dir = manifest_dir();
    let refused = |args: &[&str]| {
        let mut all = vec!["price"];
        all.extend_from_slice(args);
        let out = accrue_in(&dir, db, &all);
        assert!(!out.status.success(), "{args:?} was priced");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&["--plan", "enterprise@1", "--seats", "10"]);
    assert!(err.contains("needs at least"), "{err}");
    let err = refused(&[
        "--plan",
        "team@2",
        "--usage",
        "api_calls=10",
        "--usage",
        "api_calls=20",
    ]);
    assert!(err.contains("given twice"), "{err}");
    let err = refused(&["--plan", "team@2", "--usage", "storage_gb=-5"]);
    assert!(err.contains("no negative values"), "{err}");
    let err = refused(&["--plan", "team@2", "--seats", "51"]);
    assert!(err.contains("seat limit 50 on plan team"), "{err}");
    let out = accrue_in(&dir, db, &["price", "--plan", "team@2", "--seats", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let priced = String::from_utf8_lossy(&out.stdout);
    assert!(priced.contains("\"1 seat (3 included)"), "{priced}");
}

/// `accrue completions <shell>` prints a completion script naming the subcommands, without a
/// database or any configuration (a broken DATABASE_URL does not matter).
#[test]
fn completions_are_printed_for_each_shell_without_configuration() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef accrue"),
        ("fish", "complete -c accrue"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
            .args(["completions", shell])
            .env("DATABASE_URL", "not a url")
            .env("ACCRUE_DB_POOL", "zero")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        for sub in ["serve", "keys", "plans", "export", "completions"] {
            assert!(script.contains(sub), "{shell} lacks {sub}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}
