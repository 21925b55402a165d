//! The billing cycle: periods closed by the clock-driven scheduler, invoices and their lines,
//! late usage, numbering, lineage, export, and several instances closing at once.

use crate::helpers::*;
use accrue::jobs::{tick, JobKind, Scheduler};
use serde_json::{json, Value};

fn line<'a>(inv: &'a Value, kind: &str, meter: Option<&str>) -> &'a Value {
    inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == kind && meter.is_none_or(|m| l["meter"] == m))
        .unwrap_or_else(|| panic!("no {kind} {meter:?} line in {inv}"))
}

fn amount_sum(inv: &Value) -> rust_decimal::Decimal {
    inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["amount"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum()
}

async fn events(app: &TestApp, key: &str, evs: Vec<Value>) {
    for chunk in evs.chunks(1000) {
        let (status, body) = app.send(key, &json!({ "events": chunk })).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_months_moved_by_the_clock_issue_exact_invoices_with_late_usage() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing,finance", None).await;
    let scheduler = Scheduler::with(t(NOW), &[(JobKind::ClosePeriods, "0 * * * * *")]).unwrap();
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;

    // Period 1 [11-25 12:00, 12-25 12:00): 2,000 API calls, storage peaking at 80 GB,
    // 2,600 compute minutes.
    let mut evs: Vec<Value> = (0..2000)
        .map(|i| json!({"id": format!("a{i}"), "account": "acme", "type": "api.request", "timestamp": "2026-11-25T12:10:00.000Z"}))
        .collect();
    for (i, gb) in ["12", "80", "40"].iter().enumerate() {
        evs.push(json!({"id": format!("s{i}"), "account": "acme", "type": "storage.snapshot", "timestamp": format!("2026-11-25T12:2{i}:00Z"), "properties": {"gb": gb}}));
    }
    for i in 0..26 {
        evs.push(json!({"id": format!("j{i}"), "account": "acme", "type": "job.completed", "timestamp": "2026-11-25T12:15:00.000Z", "properties": {"minutes": 100}}));
    }
    events(&app, &key, evs).await;

    // Nothing is due before the period ends.
    app.clock.set(t("2026-12-25T11:59:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM invoices WHERE kind = 'period')::int8")
            .await,
        0
    );

    app.clock.set(t("2026-12-25T12:05:00.000Z"));
    assert_eq!(
        tick(&app.ctx, &scheduler).await.unwrap(),
        1,
        "one close job ran"
    );
    let (status, inv2) = app.get(&key, "/v1/invoices/2").await;
    assert_eq!(status, 200, "{inv2}");
    assert_eq!(inv2["kind"], "period");
    assert_eq!(inv2["period_start"], "2026-11-25T12:00:00.000Z");
    let api = line(&inv2, "usage", Some("api_calls"));
    assert_eq!(
        (
            api["quantity"].as_str(),
            api["amount"].as_str(),
            api["event_count"].as_i64()
        ),
        (Some("2000"), Some("0.00"), Some(2000))
    );
    assert_eq!(api["first_event_at"], "2026-11-25T12:10:00.000Z");
    // (80 − 50) × 0.25
    assert_eq!(line(&inv2, "usage", Some("storage_gb"))["amount"], "7.50");
    // ceil((2,600 − 500) / 1,000) × 8
    assert_eq!(
        line(&inv2, "usage", Some("compute_minutes"))["amount"],
        "24.00"
    );
    assert_eq!(line(&inv2, "base_fee", None)["amount"], "59.00");
    assert_eq!(line(&inv2, "seats", None)["amount"], "24.00");
    assert_eq!(inv2["total"], "114.50");
    assert_eq!(amount_sum(&inv2).to_string(), "114.50");

    // Period 2: a little usage, and a late event for period 1 (1,000 more compute minutes).
    app.clock.set(t("2027-01-10T00:00:00.000Z"));
    events(&app, &key, vec![
        json!({"id": "j-p2", "account": "acme", "type": "job.completed", "timestamp": "2027-01-09T00:00:00.000Z", "properties": {"minutes": 100}}),
        json!({"id": "j-late", "account": "acme", "type": "job.completed", "timestamp": "2026-12-20T00:00:00.000Z", "properties": {"minutes": 1000}}),
    ]).await;
    app.clock.set(t("2027-01-25T12:01:00.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    let (_, inv3) = app.get(&key, "/v1/invoices/3").await;
    assert_eq!(inv3["period_start"], "2026-12-25T12:00:00.000Z");
    let late = line(&inv3, "late_usage", Some("compute_minutes"));
    // Period 1 now has 3,600 minutes: ceil(3,100 / 1,000) × 8 = 32.00, 24.00 billed → 8.00.
    assert_eq!(
        (late["quantity"].as_str(), late["amount"].as_str()),
        (Some("1000"), Some("8.00"))
    );
    assert_eq!(late["usage_from"], "2026-11-25T12:00:00.000Z");
    assert_eq!(
        line(&inv3, "usage", Some("compute_minutes"))["amount"],
        "0.00"
    );
    assert_eq!(inv3["total"], "91.00");
    // The invoice it corrects did not change.
    let (_, again) = app.get(&key, "/v1/invoices/2").await;
    assert_eq!(again, inv2);

    app.clock.set(t("2027-02-25T12:00:30.000Z"));
    tick(&app.ctx, &scheduler).await.unwrap();
    tick(&app.ctx, &scheduler).await.unwrap();
    let (_, inv4) = app.get(&key, "/v1/invoices/4").await;
    assert_eq!(inv4["period_start"], "2027-01-25T12:00:00.000Z");
    assert_eq!(inv4["total"], "83.00", "no late usage is billed twice");

    // Gap-free numbers, one period invoice per period, totals = sum of lines, for all invoices.
    assert_eq!(
        app.db.count("(SELECT COUNT(*) FROM invoices)::int8").await,
        4
    );
    assert_eq!(
        app.db
            .count("(SELECT MAX(number) FROM invoices)::int8")
            .await,
        4
    );
    assert_eq!(
        app.db.count("(SELECT COUNT(*) FROM invoices i WHERE total <> (SELECT SUM(amount) FROM invoice_lines l WHERE l.account = i.account AND l.number = i.number))::int8").await,
        0
    );

    // Listing with a cursor.
    let (_, page1) = app.get(&key, "/v1/invoices?account=acme&limit=3").await;
    let numbers: Vec<i64> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(page1["next_cursor"], 3);
    let (_, page2) = app
        .get(&key, "/v1/invoices?account=acme&limit=3&after=3")
        .await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    let (_, start) = app.get(&key, "/v1/invoices?kind=start").await;
    assert_eq!(start["error"]["code"], "unknown_field");

    // Lineage: the compute line of invoice 2 priced the 26 events known when it was issued
    // (2,600 minutes); the rollups now also hold the late 1,000 that invoice 3 billed.
    let (status, lin) = app.get(&key, "/v1/invoices/2/lineage?limit=1000").await;
    assert_eq!(status, 200, "{lin}");
    let compute = lin["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["meter"] == "compute_minutes")
        .unwrap();
    let evs = compute["events"].as_array().unwrap();
    assert_eq!(evs.len(), 26);
    let minutes: i64 = evs
        .iter()
        .map(|e| e["properties"]["minutes"].as_i64().unwrap())
        .sum();
    assert_eq!(minutes, 2600);
    let rolled: rust_decimal::Decimal = compute["rollups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["value_sum"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(rolled.normalize().to_string(), "3600");

    // CSV export of the invoices whose period starts in November: invoices 1 and 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accrue"))
        .args(["export", "invoices", "--month", "2026-11"])
        .env("DATABASE_URL", &app.db.url)
        .env("ACCRUE_PLANS_DIR", manifest_dir().join("pricing-plans"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("invoice,account,kind,period_start,period_end,plan,version,"));
    // Instants as everywhere: RFC 3339 UTC with milliseconds.
    assert!(rows[1].contains(",2026-11-25T12:00:00.000Z,"), "{csv}");
    assert_eq!(rows.len(), 1 + 2 + 5, "{csv}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("2,acme,period,")
                && r.contains(",compute_minutes,2600,24.00,26,")),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_closing_at_once_issue_exactly_one_invoice_per_account_and_period() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("billing", None).await;
    for i in 0..40 {
        app.subscribe(
            &key,
            &format!("c{i:02}"),
            json!({"plan": "team", "seats": 3}),
        )
        .await;
    }
    let (_, b_ctx, b_clock) = start_instance(&app.db.url, std::time::Duration::from_secs(3600));
    let later = t("2027-01-26T00:00:00.000Z"); // two periods have ended
    app.clock.set(later);
    b_clock.set(later);
    let sa = Scheduler::with(t(NOW), &[(JobKind::ClosePeriods, "0 * * * * *")]).unwrap();
    let sb = Scheduler::with(t(NOW), &[(JobKind::ClosePeriods, "0 * * * * *")]).unwrap();
    let (a, b, c, d) = tokio::join!(
        accrue::services::lifecycle::close_due_periods(&app.ctx),
        accrue::services::lifecycle::close_due_periods(&b_ctx),
        tick(&app.ctx, &sa),
        tick(&b_ctx, &sb),
    );
    // Four sweeps raced over the same 40 accounts (two direct, two through the job queue).
    for r in [a, b] {
        r.unwrap();
    }
    c.unwrap();
    d.unwrap();
    // 40 start invoices, then exactly two period invoices per account.
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM invoices WHERE kind = 'period')::int8")
            .await,
        80
    );
    assert_eq!(
        app.db.count("(SELECT COUNT(*) FROM (SELECT account, period_start FROM invoices WHERE kind = 'period' GROUP BY 1, 2 HAVING COUNT(*) > 1) d)::int8").await,
        0
    );
    assert_eq!(
        app.db.count("(SELECT COUNT(*) FROM invoices)::int8").await,
        120
    );
    assert_eq!(
        app.db
            .count("(SELECT MIN(number) FROM invoices)::int8")
            .await,
        1
    );
    assert_eq!(
        app.db
            .count("(SELECT MAX(number) FROM invoices)::int8")
            .await,
        120,
        "numbers have no gaps"
    );
    // The job itself was enqueued once although both schedulers fired.
    assert_eq!(app.db.count("(SELECT COUNT(*) FROM jobs)::int8").await, 1);
}

/// One sweep closes more accounts than two batches hold, two batches at once: every account
/// gets exactly one period invoice carrying its own usage (account `sNNN` sent NNN + 1 compute
/// minutes), every total is the sum of its lines, and the numbers have no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sweep_over_several_concurrent_batches_bills_each_account_its_own_usage() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,billing", None).await;
    // More than two batches hold, so at least three (two at once).
    let n = 2 * accrue::services::lifecycle::CLOSE_BATCH + 100;
    let mut evs = Vec::new();
    for i in 0..n {
        let account = format!("s{i:03}");
        app.subscribe(&key, &account, json!({"plan": "team", "seats": 2}))
            .await;
        evs.push(json!({"id": format!("j{i}"), "account": account, "type": "job.completed", "timestamp": "2026-11-25T12:20:00.000Z", "properties": {"minutes": i + 1}}));
    }
    events(&app, &key, evs).await;
    app.clock.set(t("2026-12-25T12:05:00.000Z"));
    let report = accrue::services::lifecycle::close_due_periods(&app.ctx)
        .await
        .unwrap();
    assert_eq!((report.accounts, report.invoices), (n, n));
    assert_eq!(
        app.db
            .count("(SELECT COUNT(DISTINCT account) FROM invoices WHERE kind = 'period')::int8")
            .await,
        n as i64
    );
    assert_eq!(
        app.db
            .count("(SELECT COUNT(*) FROM invoices WHERE kind = 'period')::int8")
            .await,
        n as i64
    );
    // Each account's compute line holds the minutes that account sent, no other's.
    assert_eq!(
        app.db
            .count(
                "(SELECT COUNT(*) FROM invoices i JOIN invoice_lines l \
                   ON l.account = i.account AND l.number = i.number \
                  WHERE i.kind = 'period' AND l.kind = 'usage' AND l.meter = 'compute_minutes' \
                    AND l.quantity = substr(i.account, 2)::int + 1)::int8"
            )
            .await,
        n as i64
    );
    assert_eq!(
        app.db
            .count(
                "(SELECT COUNT(*) FROM invoices i WHERE i.total <> \
                  (SELECT COALESCE(SUM(l.amount), 0) FROM invoice_lines l \
                    WHERE l.account = i.account AND l.number = i.number))::int8"
            )
            .await,
        0
    );
    // n start invoices, then n period invoices: numbers 1..=2n.
    assert_eq!(
        app.db
            .count(&format!(
                "(SELECT COUNT(DISTINCT number) FROM invoices WHERE number BETWEEN 1 AND {})::int8",
                2 * n
            ))
            .await,
        2 * n as i64
    );
    assert_eq!(
        app.db
            .count("(SELECT MAX(number) FROM invoices)::int8")
            .await,
        2 * n as i64
    );
}

/// A sweep of many pages (4 due accounts each) in batches of 2, two at a time: the next page
/// is read while the page before still has a batch running, and one page is all accounts on
/// a test clock (filtered to nothing: the sweep reads on past it). Every other account is
/// closed exactly once, its period moves on, the numbers have no gaps, the accounts on the
/// clock are left to it, and a second sweep finds nothing due. A guard of the sweep's paging
/// (what it checks held before the reads overlapped the batches too; the overlap itself is a
/// matter of speed, not seen here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_over_many_pages_closes_each_due_account_once() {
    use accrue::services::lifecycle::{close_due_periods, close_due_periods_sized, SweepSizes};
    use diesel_async::SimpleAsyncConnection;
    let app = spawn_app().await;
    app.ctx.enable_test_clocks();
    app.publish_plans().await;
    let n = 31;
    // q05..q08 are the second page, whole; q20 sits alone in the fifth.
    let clocked = |i: usize| (5..=8).contains(&i) || i == 20;
    let version = app
        .db
        .count("(SELECT MAX(version) FROM plan_versions WHERE plan = 'team')::int8")
        .await;
    let mut c = app.db.conn().await;
    c.batch_execute(&format!(
        "INSERT INTO test_clocks (id, name, frozen_time, status, created_at)
           VALUES ('clk', 'paging', '2026-11-20T00:00:00Z', 'ready', now());
         INSERT INTO accounts (account, currency, test_clock, created_at, updated_at)
           SELECT 'q' || lpad(g::text, 2, '0'), 'USD',
                  CASE WHEN g BETWEEN 5 AND 8 OR g = 20 THEN 'clk' END, now(), now()
             FROM generate_series(1, {n}) g;
         INSERT INTO subscriptions (account, plan, plan_version, seats, status, anchor,
                period_start, period_end, revision, created_at, updated_at)
           SELECT 'q' || lpad(g::text, 2, '0'), 'team', {version}, 2, 'active',
                  '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', '2026-12-01T00:00:00Z', 1,
                  now(), now()
             FROM generate_series(1, {n}) g;"
    ))
    .await
    .unwrap();
    app.clock.set(t("2026-12-01T00:05:00.000Z"));
    let sizes = SweepSizes {
        page: 4,
        batch: 2,
        workers: 2,
    };
    let report = close_due_periods_sized(&app.ctx, sizes).await.unwrap();
    let closed = (1..=n).filter(|i| !clocked(*i)).count();
    assert_eq!((report.accounts, report.invoices), (closed, closed));
    for i in 1..=n {
        let account = format!("q{i:02}");
        let invoiced = app
            .db
            .count(&format!(
                "(SELECT COUNT(*) FROM invoices WHERE account = '{account}' \
                  AND kind = 'period' AND period_start = '2026-11-01T00:00:00Z')::int8"
            ))
            .await;
        let moved = app
            .db
            .count(&format!(
                "(SELECT COUNT(*) FROM subscriptions WHERE account = '{account}' \
                  AND period_start = '2026-12-01T00:00:00Z' \
                  AND period_end = '2027-01-01T00:00:00Z')::int8"
            ))
            .await;
        let expected = if clocked(i) { 0 } else { 1 };
        assert_eq!((invoiced, moved), (expected, expected), "account {account}");
    }
    assert_eq!(
        app.db.count("(SELECT COUNT(*) FROM invoices)::int8").await,
        closed as i64
    );
    assert_eq!(
        app.db
            .count("(SELECT COUNT(DISTINCT number) FROM invoices)::int8")
            .await,
        closed as i64
    );
    assert_eq!(
        app.db
            .count("(SELECT MAX(number) FROM invoices)::int8")
            .await,
        closed as i64,
        "numbers have no gaps"
    );
    let again = close_due_periods(&app.ctx).await.unwrap();
    assert_eq!((again.accounts, again.invoices), (0, 0));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 5, ..proptest::prelude::ProptestConfig::default() })]

    /// Whatever the usage, late events, and the times (and repetitions) at which the close job
    /// runs: every invoice's total is the sum of its lines, no period of an account is
    /// invoiced twice, and numbers have no gaps.
    #[test]
    fn invoices_total_their_lines_and_no_period_is_invoiced_twice(
        usage in proptest::collection::vec((0u8..3, 0u32..(95 * 24), 1u32..400), 1..40),
        ticks in proptest::collection::vec(0u32..(100 * 24), 1..8),
        twice in proptest::prelude::any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let app = spawn_app().await;
            app.publish_plans().await;
            let key = app.key("ingest,billing,finance", None).await;
            for a in ["p0", "p1", "p2"] {
                app.subscribe(&key, a, json!({"plan": "team", "seats": 4})).await;
            }
            let scheduler = Scheduler::with(t(NOW), &[(JobKind::ClosePeriods, "0 * * * * *")]).unwrap();
            let start = t(NOW);
            let mut ticks = ticks;
            ticks.sort_unstable();
            // Events are sent at the first tick after their time, or late (after it).
            let mut pending: Vec<(u32, Value)> = usage.iter().enumerate().map(|(i, (a, h, minutes))| {
                let ts = (start + chrono::Duration::hours(*h as i64)).to_rfc3339();
                (*h, json!({"id": format!("e{i}"), "account": format!("p{a}"), "type": "job.completed", "timestamp": ts, "properties": {"minutes": minutes}}))
            }).collect();
            for hour in ticks.iter().copied().chain([100 * 24]) {
                let now = start + chrono::Duration::hours(hour as i64);
                app.clock.set(now);
                let due: Vec<Value> = pending.iter().filter(|(h, _)| *h <= hour).map(|(_, e)| e.clone()).collect();
                pending.retain(|(h, _)| *h > hour);
                if !due.is_empty() {
                    events(&app, &key, due).await;
                }
                tick(&app.ctx, &scheduler).await.unwrap();
                if twice {
                    accrue::services::lifecycle::close_due_periods(&app.ctx).await.unwrap();
                }
            }
            let mismatched = app.db.count(
                "(SELECT COUNT(*) FROM invoices i WHERE i.total <> \
                  (SELECT COALESCE(SUM(l.amount), 0) FROM invoice_lines l \
                    WHERE l.account = i.account AND l.number = i.number))::int8").await;
            assert_eq!(mismatched, 0, "an invoice total differs from its lines");
            let doubled = app.db.count(
                "(SELECT COUNT(*) FROM (SELECT account, period_start FROM invoices \
                  WHERE kind = 'period' GROUP BY 1, 2 HAVING COUNT(*) > 1) d)::int8").await;
            assert_eq!(doubled, 0, "a period was invoiced twice");
            let n = app.db.count("(SELECT COUNT(*) FROM invoices)::int8").await;
            assert_eq!(app.db.count("(SELECT COALESCE(MAX(number), 0) FROM invoices)::int8").await, n);
            // Three months and a bit have passed: three closed periods per account.
            assert_eq!(app.db.count("(SELECT COUNT(*) FROM invoices WHERE kind = 'period')::int8").await, 9);
        });
    }
}
