//! Governed plan migrations: the dry run (from the CLI and the service) and the real run now
//! and at renewal, with their movements and audit record.

use crate::helpers::*;
use accrue::domain::plan::PlanRef;
use accrue::jobs::{tick, Scheduler};
use accrue::services::migration::{migrate, When};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::process::Command;

fn r(s: &str) -> PlanRef {
    s.parse().unwrap()
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

/// Three subscribers on team@1 with a closed period behind them (one used compute), one on
/// team@2; the clock in their second period.
pub(crate) async fn cohort() -> (TestApp, String) {
    cohort_on(spawn_app().await).await
}

async fn cohort_on(app: TestApp) -> (TestApp, String) {
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    for (account, seats) in [("m1", 3), ("m2", 5), ("m3", 8)] {
        app.subscribe(
            &key,
            account,
            json!({"plan": "team", "version": 1, "seats": seats}),
        )
        .await;
    }
    app.subscribe(
        &key,
        "stays",
        json!({"plan": "team", "version": 2, "seats": 3}),
    )
    .await;
    let evs: Vec<Value> = (0..25)
        .map(|i| json!({"id": format!("j{i}"), "account": "m2", "type": "job.completed", "timestamp": NOW, "properties": {"minutes": 100}}))
        .collect();
    let (status, body) = app.send(&key, &json!({ "events": evs })).await;
    assert_eq!(status, 200, "{body}");
    app.clock.set(t("2026-12-25T12:01:00.000Z"));
    tick(&app.ctx, &Scheduler::new(t(NOW)).unwrap())
        .await
        .unwrap();
    app.clock.set(t("2027-01-05T00:00:00.000Z"));
    (app, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_replays_the_last_period_and_its_figures_are_what_the_migration_produces() {
    let (app, key) = cohort().await;

    // The CLI's dry run, against the same database.
    let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args([
            "plans",
            "migrate",
            "team@1",
            "team@2",
            "--dry-run",
            "--json",
        ])
        .env("DATABASE_URL", &app.db.url)
        .env(
            "ACCRUE_PLANS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/pricing-plans"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dry = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@2"),
        true,
        When::Now,
        "test",
    )
    .await
    .unwrap();
    let dry = serde_json::to_value(&dry).unwrap();
    assert_eq!(
        cli["accounts"], dry["accounts"],
        "the CLI prints the service's figures"
    );
    let accounts: Vec<&str> = dry["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, vec!["m1", "m2", "m3"]);
    // Nothing moved.
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM subscriptions WHERE plan_version = 1)::int8")
            .await,
        3
    );

    // The replay of the closed period under team@1 is what was billed for it: the advance
    // fees of the start invoice plus the arrears usage of the period invoice.
    for a in dry["accounts"].as_array().unwrap() {
        let account = a["account"].as_str().unwrap();
        let (_, invoices) = app
            .get(&key, &format!("/v1/invoices?account={account}"))
            .await;
        let list = invoices["data"].as_array().unwrap();
        let start = list.iter().find(|i| i["kind"] == "start").unwrap();
        let period = list.iter().find(|i| i["kind"] == "period").unwrap();
        let (_, period) = app
            .get(&key, &format!("/v1/invoices/{}", period["number"]))
            .await;
        let usage: Decimal = period["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == "usage")
            .map(|l| dec(&l["amount"]))
            .sum();
        assert_eq!(
            dec(&a["current_version_amount"]),
            dec(&start["total"]) + usage,
            "{account}"
        );
        // team@2 costs 10 more a month (base 59 instead of 49), usage prices are the same.
        assert_eq!(dec(&a["period_delta"]), Decimal::from(10), "{account}");
    }
    assert_eq!(
        dec(&dry["accounts"][1]["current_version_amount"]),
        Decimal::from(49 + 24 + 16)
    );

    // The real migration, now: each account's movement ends at the dry run's MRR.
    let done = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@2"),
        false,
        When::Now,
        "test",
    )
    .await
    .unwrap();
    assert_eq!(done.migrated, 3);
    for a in dry["accounts"].as_array().unwrap() {
        let account = a["account"].as_str().unwrap();
        let (_, moves) = app
            .get(
                &key,
                &format!("/v1/movements?from=2027-01-01T00:00:00Z&to=2027-02-01T00:00:00Z&account={account}"),
            )
            .await;
        let m = &moves["data"][0];
        assert_eq!(
            (m["kind"].as_str(), m["cause"].as_str()),
            (Some("expansion"), Some("plan_upgrade"))
        );
        assert_eq!(dec(&m["mrr_before"]), dec(&a["mrr_before"]), "{account}");
        assert_eq!(dec(&m["mrr_after"]), dec(&a["mrr_after"]), "{account}");
        // Prorated like any upgrade: a change invoice for the rest of the period.
        let (_, inv) = app
            .get(&key, &format!("/v1/invoices?account={account}&limit=10"))
            .await;
        assert!(inv["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "change"));
    }
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM subscriptions WHERE plan = 'team' AND plan_version = 2)::int8")
            .await,
        4
    );
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM catalogue_audit WHERE action = 'migrated')::int8")
            .await,
        1
    );
    // Nobody is left on team@1: running it again moves no one.
    let again = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@2"),
        false,
        When::Now,
        "test",
    )
    .await
    .unwrap();
    assert_eq!((again.accounts.len(), again.migrated), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_at_renewal_waits_for_each_period_end() {
    let (app, key) = cohort().await;
    let report = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@2"),
        false,
        When::AtRenewal,
        "test",
    )
    .await
    .unwrap();
    assert_eq!(report.migrated, 3);
    // Still on team@1 until the renewal, with the change scheduled.
    let (_, sub) = app.get(&key, "/v1/accounts/m1/subscription").await;
    assert_eq!(sub["version"], 1, "{sub}");
    assert_eq!(sub["scheduled_change"]["version"], 2, "{sub}");
    app.clock.set(t("2027-01-25T12:01:00.000Z"));
    tick(&app.ctx, &Scheduler::new(t(NOW)).unwrap())
        .await
        .unwrap();
    let (_, sub) = app.get(&key, "/v1/accounts/m1/subscription").await;
    assert_eq!(sub["version"], 2, "{sub}");
    let (_, moves) = app
        .get(
            &key,
            "/v1/movements?from=2027-01-25T00:00:00Z&to=2027-02-01T00:00:00Z&account=m1",
        )
        .await;
    let m = &moves["data"][0];
    assert_eq!(
        (
            m["cause"].as_str(),
            m["mrr_before"].as_str(),
            m["mrr_after"].as_str()
        ),
        (Some("plan_upgrade"), Some("49.00"), Some("59.00"))
    );
    // Versions that do not exist or are the same are refused by name.
    let e = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@9"),
        true,
        When::Now,
        "test",
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("team@9"), "{e}");
    let e = migrate(
        &app.ctx,
        &r("team@2"),
        &r("team@2"),
        true,
        When::Now,
        "test",
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("same"), "{e}");
}

/// B20. The dry run replays the last closed period with the seats it was billed with, not
/// today's: m3 had 8 seats in its first period and adds 4 in the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_replays_the_last_period_with_that_periods_seats() {
    let (app, key) = cohort().await;
    app.quote_and_accept(&key, "m3", json!({"seats": 12})).await;
    let dry = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@2"),
        true,
        When::Now,
        "test",
    )
    .await
    .unwrap();
    let m3 = dry.accounts.iter().find(|l| l.account == "m3").unwrap();
    // The first period on team@1: its fees were the start invoice (8 seats), it had no usage.
    let (_, start) = app.get(&key, "/v1/invoices/3").await;
    assert_eq!(start["account"], "m3");
    assert_eq!(start["kind"], "start");
    assert_eq!(m3.current_version_amount, dec(&start["total"]));
}

/// B20. The dry run's MRR after prices the last closed period's usage at the new version's
/// prices: a team@3 whose compute packages cost 10.00 instead of 8.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_runs_mrr_after_prices_usage_at_the_new_version() {
    let dir = std::env::temp_dir().join(format!("accrue-b20-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&manifest_dir().join("pricing-plans"), &dir);
    let v2 = std::fs::read_to_string(dir.join("team/v2.toml")).unwrap();
    let v3 = v2.replace("package_amount = \"8.00\"", "package_amount = \"10.00\"");
    assert_ne!(v2, v3);
    std::fs::write(dir.join("team/v3.toml"), v3).unwrap();
    let db = TestDb::new().await;
    let (_, ctx, clock) =
        start_instance_unserved_with(&db.url, std::time::Duration::from_secs(1), &dir);
    let base = serve(ctx.clone());
    let app = TestApp::new(base, db, ctx, clock);
    let (app, _key) = cohort_on(app).await;
    std::fs::remove_dir_all(&dir).unwrap();
    let dry = migrate(
        &app.ctx,
        &r("team@1"),
        &r("team@3"),
        true,
        When::Now,
        "test",
    )
    .await
    .unwrap();
    let m2 = dry.accounts.iter().find(|l| l.account == "m2").unwrap();
    // m2: 5 seats, 2,500 compute minutes in the closed period. Before: team@1 49 + 2 × 12 = 73
    // recurring, usage (2,500 − 500 free) = 2 packages × 8 = 16: 89. After on team@3: 59 + 24
    // = 83 recurring, the same 2 packages at 10 = 20: 103.
    assert_eq!(m2.mrr_before, "89".parse::<Decimal>().unwrap());
    assert_eq!(m2.mrr_after, "103".parse::<Decimal>().unwrap());
    // m1 used nothing: 59 + 0 seats above the 3 included = 59.
    let m1 = dry.accounts.iter().find(|l| l.account == "m1").unwrap();
    assert_eq!(m1.mrr_after, "59".parse::<Decimal>().unwrap());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
