//! The plan catalogue: validate and publish from the CLI, immutability, audit, and the API.

use crate::helpers::*;
use accrue::catalog::plans::content_hash;
use std::path::Path;
use std::process::Command;

fn accrue(db_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A writable copy of the shipped catalogue.
fn copy_catalogue(to: &Path) {
    let from = manifest_dir().join("pricing-plans");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_plans_are_listed_and_readable_over_the_api() {
    let app = spawn_app().await;
    let (ok, out, err) = accrue(&app.db.url, &["plans", "publish"]);
    assert!(ok, "{err}");
    assert!(out.contains("team@2") && out.contains("published"), "{out}");
    let key = app.key("check", None).await;
    let (status, body) = app.get(&key, "/v1/plans").await;
    assert_eq!(status, 200);
    let plans = body["data"].as_array().unwrap();
    let codes: Vec<&str> = plans.iter().map(|p| p["plan"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        ["business", "business_annual", "enterprise", "free", "team"]
    );
    let team = plans.iter().find(|p| p["plan"] == "team").unwrap();
    assert_eq!(team["latest_version"], 2);
    assert_eq!(team["versions"].as_array().unwrap().len(), 2);
    assert_eq!(
        plans.iter().find(|p| p["plan"] == "enterprise").unwrap()["self_serve"],
        false
    );

    let (status, v) = app.get(&key, "/v1/plans/team/versions/2").await;
    assert_eq!(status, 200);
    assert_eq!(v["definition"]["base_fee"], "59.00");
    assert_eq!(v["definition"]["charges"][0]["model"], "graduated");
    let expected = content_hash(app.ctx.plans().get(&"team@2".parse().unwrap()).unwrap());
    assert_eq!(v["content_hash"], expected);

    let (status, body) = app.get(&key, "/v1/plans/team/versions/7").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app.get(&key, "/v1/plans/team/versions/two").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // The newest version by name, and one plan on its own.
    let (status, latest) = app.get(&key, "/v1/plans/team/versions/latest").await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(
        (latest["plan"].as_str(), latest["version"].as_i64()),
        (Some("team"), Some(2))
    );
    let (status, team) = app.get(&key, "/v1/plans/team").await;
    assert_eq!(status, 200, "{team}");
    assert_eq!(team["latest_version"], 2);
    assert_eq!(team["versions"].as_array().unwrap().len(), 2);
    let (status, _) = app.get(&key, "/v1/plans/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_unchanged_files_changes_nothing_and_is_not_audited_again() {
    let app = spawn_app().await;
    assert!(accrue(&app.db.url, &["plans", "publish"]).0);
    let audited = app
        .db
        .count("(SELECT COUNT(*) FROM catalogue_audit)::int8")
        .await;
    assert_eq!(audited, 7);
    let (ok, out, _) = accrue(&app.db.url, &["plans", "publish"]);
    assert!(ok);
    assert_eq!(out.matches("unchanged").count(), 7, "{out}");
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM catalogue_audit)::int8")
            .await,
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_published_version_is_refused_all_or_nothing_and_audited() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("accrue-cat-{}", app.db.name));
    copy_catalogue(&dir);
    let dir_s = dir.to_str().unwrap();
    assert!(accrue(&app.db.url, &["plans", "publish", dir_s]).0);
    // Edit a published version and add a brand-new plan in the same attempt.
    let team2 = dir.join("team/v2.toml");
    let text = std::fs::read_to_string(&team2).unwrap();
    std::fs::write(
        &team2,
        text.replace("base_fee = \"59.00\"", "base_fee = \"64.00\""),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("starter")).unwrap();
    std::fs::write(
        dir.join("starter/v1.toml"),
        "name = \"Starter\"\ncurrency = \"USD\"\ninterval = \"month\"\nbase_fee = \"9\"\n",
    )
    .unwrap();
    let (ok, _, err) = accrue(&app.db.url, &["plans", "publish", dir_s]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "publishing a changed version must fail");
    assert!(err.contains("team@2 is already published"), "{err}");
    // It says what differs and which file to write instead (in the folder published).
    assert!(err.contains(r#"base_fee: "59.00" → "64.00""#), "{err}");
    assert!(err.contains("team/v3.toml"), "{err}");
    assert!(!err.contains("pricing-plans/"), "{err}");
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM plan_versions WHERE plan = 'starter')::int8")
            .await,
        0,
        "nothing of a refused publish is stored"
    );
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM catalogue_audit WHERE action = 'refused' AND plan = 'team' AND version = 2)::int8")
            .await,
        1
    );
    let key = app.key("check", None).await;
    let (_, v) = app.get(&key, "/v1/plans/team/versions/2").await;
    assert_eq!(v["definition"]["base_fee"], "59.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_table_is_append_only() {
    let app = spawn_app().await;
    assert!(accrue(&app.db.url, &["plans", "publish"]).0);
    let mut conn = app.db.conn().await;
    use diesel_async::SimpleAsyncConnection;
    let upd = conn
        .batch_execute("UPDATE catalogue_audit SET actor = 'someone else'")
        .await;
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = conn.batch_execute("DELETE FROM catalogue_audit").await;
    assert!(del.is_err());
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM catalogue_audit)::int8")
            .await,
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_exits_non_zero_naming_file_field_and_rule() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("accrue-bad-{}", db.name));
    copy_catalogue(&dir);
    let f = dir.join("business/v1.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replace("currency = \"USD\"", "currency = \"USX\"")).unwrap();
    let (ok, _, err) = accrue(&db.url, &["plans", "validate", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(
        err.contains("business/v1.toml: currency: `USX` is not a known ISO 4217 currency code"),
        "{err}"
    );
    let (ok, out, _) = accrue(&db.url, &["plans", "validate"]);
    assert!(ok);
    assert!(out.contains("7 plan versions"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_prints_the_rated_lines_as_json() {
    let db = TestDb::new().await;
    let (ok, out, err) = accrue(
        &db.url,
        &[
            "price",
            "--plan",
            "team@2",
            "--usage",
            "api_calls=123456",
            "--usage",
            "storage_gb=62.5",
            "--seats",
            "8",
        ],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["currency"], "USD");
    let amount = |i: usize| v["lines"][i]["amount"].as_str().unwrap().to_owned();
    assert_eq!(amount(0), "59.00"); // base fee
    assert_eq!(amount(1), "60.00"); // (8 − 3) × 12
    assert_eq!(amount(2), "11.73"); // 23,456 × 0.0005 = 11.728
    assert_eq!(amount(3), "3.13"); // (62.5 − 50) × 0.25 = 3.125
    assert_eq!(amount(4), "0.00");
    assert_eq!(v["total"], "133.86");
    let (ok, _, err) = accrue(&db.url, &["price", "--plan", "team@2", "--seats", "51"]);
    assert!(!ok);
    assert!(err.contains("seat limit 50 on plan team"), "{err}");
    let file = manifest_dir().join("pricing-plans/team/v1.toml");
    let (ok, out, _) = accrue(
        &db.url,
        &[
            "price",
            "--plan-file",
            file.to_str().unwrap(),
            "--usage",
            "api_calls=2000000",
        ],
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 900,000 × 0.0005 + 1,000,000 × 0.0003 = 450 + 300
    assert_eq!(v["lines"][2]["amount"], "750.00");
}

/// C1. A steady storage peak costs the same a year on Business (annual) v2 as twelve months of
/// Business: storage_gb is a peak, charged once per period, so the yearly plan's per-GB prices
/// are twelve months' worth. (v1 charged monthly prices once a year: 400.00 for the year.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annual_storage_costs_twelve_months_of_monthly_storage() {
    let db = TestDb::new().await;
    let storage = |plan: &str, gb: &str| {
        let (ok, out, err) = accrue(
            &db.url,
            &[
                "price",
                "--plan",
                plan,
                "--usage",
                &format!("storage_gb={gb}"),
            ],
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["meter"] == "storage_gb")
            .unwrap()["amount"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap()
    };
    for gb in ["400", "2000", "7000"] {
        assert_eq!(
            storage("business_annual@2", gb),
            storage("business@1", gb) * rust_decimal::Decimal::from(12),
            "{gb} GB"
        );
    }
    // 2,000 GB: volume tier 2 prices every GB, 2,000 × 2.40 = 4,800.00 a year.
    assert_eq!(storage("business_annual@2", "2000").to_string(), "4800.00");
}

/// B13. With Stripe configured, a plan in a three-decimal currency is refused at publish
/// (Stripe takes KWD only in multiples of 0.010; accrue bills to 0.001); without Stripe it
/// publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_decimal_plans_are_refused_at_publish_when_stripe_collects() {
    let db = TestDb::new().await;
    let dir = catalogue_with(&[(
        "kuwait/v1.toml",
        "name = \"Kuwait\"\ncurrency = \"KWD\"\ninterval = \"month\"\nself_serve = true\nbase_fee = \"12.500\"\n",
    )]);
    let publish = |stripe: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accrue"));
        cmd.args(["plans", "publish", dir.to_str().unwrap()])
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "error");
        if stripe {
            cmd.env("ACCRUE_STRIPE_KEY", "sk_test_x")
                .env("ACCRUE_STRIPE_WEBHOOK_SECRET", "whsec_x");
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = publish(true);
    assert!(!ok);
    assert!(
        err.contains("kuwait@1") && err.contains("multiples of 0.010"),
        "{err}"
    );
    let (ok, out, err) = publish(false);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("kuwait@1"), "{out}");
}

/// Newcomer S1-3: a version published while servers run is live on every instance within
/// seconds, through the API or the CLI, with no restart and no files copied; `/v1/plans`,
/// subscribe and the catalogue the check suggests upgrades from agree. A value written
/// differently but equal is not a change; a real change is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_published_while_servers_run_is_live_on_every_instance_within_seconds() {
    let app = spawn_app().await;
    app.publish_plans().await;
    // A second instance on the same database, running since before the publish.
    let (base_b, ctx_b, _) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    let admin = app.key("admin", None).await;
    let team2 = std::fs::read_to_string(manifest_dir().join("pricing-plans/team/v2.toml")).unwrap();
    assert!(team2.contains(r#"base_fee = "59.00""#));
    let team3 = team2.replace(r#"base_fee = "59.00""#, r#"base_fee = "69.00""#);

    let (status, body) = app
        .post(
            &admin,
            "/v1/plans/publish",
            &serde_json::json!({"files": {"team/v3.toml": team3}}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["plan"]["version"], 3, "{body}");
    assert_eq!(body["data"][0]["status"], "published");

    // Instance B subscribes to the new version at once (it reads the published definition),
    // and its catalogue holds it within the refresh interval.
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base_b}/v1/accounts/newco/subscription"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"plan": "team", "seats": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let sub: serde_json::Value = res.json().await.unwrap();
    assert_eq!(sub["subscription"]["version"], 3, "{sub}");
    // 3 seats are included: the base fee alone, at the new price.
    assert_eq!(sub["amount_due_now"], "69.00", "{sub}");
    // B loaded it before answering, so the new subscription's MRR is the new price (it was
    // recorded as 0 when B priced it from a catalogue without team@3).
    assert_eq!(ctx_b.plans().latest("team").map(|v| v.version), Some(3));
    let res = client
        .get(format!(
            "{base_b}/v1/movements?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z&account=newco"
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let moves: serde_json::Value = res.json().await.unwrap();
    let mrr: Vec<rust_decimal::Decimal> = moves["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mrr_after"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(mrr, vec![rust_decimal::Decimal::new(69_00, 2)], "{moves}");
    assert_eq!(
        ctx_b.plans().latest("team").unwrap().base_fee,
        rust_decimal::Decimal::new(69_00, 2)
    );

    // The same value written differently is no change; a different value is refused naming
    // the field.
    let same = team3.replace(r#"base_fee = "69.00""#, r#"base_fee = "69.0""#);
    let (status, body) = app
        .post(
            &admin,
            "/v1/plans/publish",
            &serde_json::json!({"files": {"team/v3.toml": same}}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["status"], "unchanged");
    let changed = team3.replace(r#"base_fee = "69.00""#, r#"base_fee = "79.00""#);
    let (status, body) = app
        .post(
            &admin,
            "/v1/plans/publish",
            &serde_json::json!({"files": {"team/v3.toml": changed}}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "version_changed");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("base_fee") && msg.contains("team/v4.toml"),
        "{msg}"
    );

    // The CLI publishes from any folder; both instances pick it up without a restart.
    let dir = std::env::temp_dir().join(format!("accrue-live-{}", app.db.name));
    copy_catalogue(&dir);
    let team4 = team2.replace(r#"base_fee = "59.00""#, r#"base_fee = "74.00""#);
    std::fs::write(dir.join("team/v4.toml"), &team4).unwrap();
    std::fs::write(dir.join("team/v3.toml"), &team3).unwrap();
    let (ok, _, err) = accrue(&app.db.url, &["plans", "publish", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "{err}");
    let started = std::time::Instant::now();
    while [&app.ctx, &ctx_b]
        .iter()
        .any(|c| c.plans().latest("team").map(|v| v.version) != Some(4))
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "an instance never loaded team@4"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, plans) = app.get(&admin, "/v1/plans").await;
    assert_eq!(status, 200);
    let team = plans["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plan"] == "team")
        .unwrap()
        .clone();
    assert_eq!(team["latest_version"], 4);

    // Refusals name the problem: a bad file name, an invalid file, a non-admin key.
    let (status, body) = app
        .post(
            &admin,
            "/v1/plans/publish",
            &serde_json::json!({"files": {"../team/v9.toml": team2}}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = app
        .post(
            &admin,
            "/v1/plans/publish",
            &serde_json::json!({"files": {"team/v9.toml": "name = 3"}}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plan");
    let billing = app.key("billing", None).await;
    let (status, _) = app
        .post(
            &billing,
            "/v1/plans/publish",
            &serde_json::json!({"files": {"team/v9.toml": team2}}),
            None,
        )
        .await;
    assert_eq!(status, 403);
}

/// Newcomer S3-1: `plan@version` is accepted wherever a plan is named (it answered "plan
/// team@1 is not published"); with a `version` that disagrees it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_named_as_plan_at_version_is_that_version() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    let s = app
        .subscribe(
            &key,
            "pinned",
            serde_json::json!({"plan": "team@1", "seats": 3}),
        )
        .await;
    assert_eq!(s["subscription"]["plan"], "team");
    assert_eq!(s["subscription"]["version"], 1);
    for (body, code) in [
        (
            serde_json::json!({"plan": "team@1", "version": 2}),
            "invalid_plan",
        ),
        (serde_json::json!({"plan": "team@x"}), "invalid_plan"),
        (serde_json::json!({"plan": "team@9"}), "unknown_plan"),
    ] {
        let (status, res) = app
            .post(&key, "/v1/accounts/other/subscription", &body, None)
            .await;
        assert_eq!(status, 422, "{body}: {res}");
        assert_eq!(res["error"]["code"], code, "{body}: {res}");
    }
    // A quote names its target the same way.
    let (status, q) = app
        .post(
            &key,
            "/v1/accounts/pinned/subscription/quotes",
            &serde_json::json!({"plan": "team@2"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{q}");
    assert_eq!(q["to"]["version"], 2, "{q}");
}
