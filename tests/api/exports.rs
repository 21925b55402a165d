//! Exports for warehouses and reverse-ETL: an incremental sync resumed from its cursors, with
//! rows arriving between its pages, reads exactly what one full export reads at the end.

use crate::helpers::*;
use serde_json::{json, Value};
use std::process::Command;

/// Every row of `entity` after `cursor`, `limit` at a time, and the cursor to resume from.
async fn read(
    app: &TestApp,
    key: &str,
    entity: &str,
    cursor: &str,
    limit: usize,
) -> (Vec<Value>, String) {
    let mut rows = Vec::new();
    let mut cursor = cursor.to_owned();
    loop {
        let (status, page) = app
            .get(
                key,
                &format!(
                    "/v1/exports/{entity}?after={}&limit={limit}",
                    urlencode(&cursor)
                ),
            )
            .await;
        assert_eq!(status, 200, "{entity}: {page}");
        let data = page["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit);
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
        if data.is_empty() {
            return (rows, cursor);
        }
        rows.extend(data);
    }
}

/// As if the ingest transactions of the events just stored were ten minutes past: exports show
/// events only then (no ingest transaction still running can commit behind a cursor). Each
/// batch is moved once, so batches keep their order.
async fn settle(app: &TestApp) {
    app.db
        .update_all(
            "events",
            "SET stored_at = stored_at - interval '20 minutes'
              WHERE stored_at > now() - interval '10 minutes'",
        )
        .await;
}

fn events(prefix: &str, n: usize) -> Value {
    let accounts = ["acme", "globex", "initech"];
    json!({"events": (0..n).map(|i| json!({
        "id": format!("{prefix}-{i}"),
        "account": accounts[i % 3],
        "type": "api.request",
        "timestamp": "2026-11-25T12:00:00.000Z",
    })).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_export_resumed_from_its_cursors_equals_a_full_export() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("admin", None).await;
    app.send(&key, &events("a", 7)).await;
    // Stored just now: not exported yet.
    let (_, early) = app.get(&key, "/v1/exports/events").await;
    assert_eq!(early["data"], json!([]), "{early}");
    settle(&app).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 5}))
        .await;
    app.subscribe(&key, "globex", json!({"plan": "team", "seats": 3}))
        .await;
    let entities = ["events", "invoices", "lines", "movements", "pql"];
    // A sync reads two rows at a time and stops; more happens; it resumes where it stopped.
    let mut synced: Vec<Vec<Value>> = Vec::new();
    let mut cursors = Vec::new();
    for e in entities {
        let (first, _) = read(&app, &key, e, "", 2).await;
        // Stop part-way: resume from the cursor after its second page.
        let (status, p1) = app.get(&key, &format!("/v1/exports/{e}?limit=2")).await;
        assert_eq!(status, 200, "{p1}");
        let c1 = p1["next_cursor"].as_str().unwrap().to_owned();
        let mut rows = p1["data"].as_array().unwrap().clone();
        assert_eq!(rows[..], first[..rows.len()], "{e}: the same first page");
        cursors.push(c1);
        synced.push(std::mem::take(&mut rows));
    }
    app.send(&key, &events("b", 5)).await;
    settle(&app).await;
    app.subscribe(&key, "initech", json!({"plan": "team", "seats": 4}))
        .await;
    app.quote_and_accept(&key, "acme", json!({"seats": 8}))
        .await;
    for (i, e) in entities.iter().enumerate() {
        let (rest, end) = read(&app, &key, e, &cursors[i], 2).await;
        synced[i].extend(rest);
        let (full, full_end) = read(&app, &key, e, "", 1000).await;
        assert_eq!(
            synced[i], full,
            "{e}: the resumed sync reads what a full export reads"
        );
        assert_eq!(end, full_end, "{e}: both end at the same cursor");
        // Nothing more: resuming from the end reads nothing and keeps the cursor.
        let (none, again) = read(&app, &key, e, &end, 2).await;
        assert!(none.is_empty(), "{e}: {none:?}");
        assert_eq!(again, end);
    }
    // What was there: 12 events, 4 invoices (three starts and one change) and their lines,
    // four movements.
    let count = |i: usize| synced[i].len();
    assert_eq!(count(0), 12);
    assert_eq!(count(1), 4);
    assert_eq!(
        count(2),
        7,
        "two, one and two start lines, two of the change: {:?}",
        synced[2]
    );
    assert_eq!(count(3), 4);
    let numbers: Vec<i64> = synced[1]
        .iter()
        .map(|r| r["number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2, 3, 4]);
    // A cursor that is not one is refused, naming the parameter; an unknown export is a 404.
    let (status, e) = app.get(&key, "/v1/exports/invoices?after=abc").await;
    assert_eq!(
        (
            status,
            e["error"]["code"].as_str(),
            e["error"]["field"].as_str()
        ),
        (422, Some("invalid_cursor"), Some("after")),
        "{e}"
    );
    let (status, _) = app.get(&key, "/v1/exports/customers").await;
    assert_eq!(status, 404);
    // Finance may export; a key bound to an account may not.
    let bound = app.key("finance", Some("acme")).await;
    let (status, e) = app.get(&bound, "/v1/exports/events").await;
    assert_eq!(status, 403, "{e}");
}

/// `accrue export <entity> --since <cursor>`: the CLI resumes as the API does, and says where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_export_resumes_from_the_cursor_it_printed() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    app.send(&key, &events("c", 4)).await;
    settle(&app).await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_accrue"))
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One line, the summary: a command that only reads the database runs no background
        // task whose log could follow it (a plan refresher once logged the pool closing).
        let stderr = String::from_utf8(out.stderr).unwrap();
        let [summary] = stderr.lines().collect::<Vec<_>>()[..] else {
            panic!("one line on stderr, got: {stderr:?}");
        };
        let cursor = summary.rsplit_once("next cursor: ").unwrap().1.to_owned();
        (String::from_utf8(out.stdout).unwrap(), cursor)
    };
    let (first, cursor) = run(&["export", "events", "--format", "jsonl"]);
    assert_eq!(first.lines().count(), 4);
    app.send(&key, &events("d", 2)).await;
    settle(&app).await;
    let (more, end) = run(&["export", "events", "--format", "jsonl", "--since", &cursor]);
    let ids: Vec<String> = more
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 2, "{more}");
    assert!(ids.iter().all(|i| i.starts_with("d-")), "{ids:?}");
    let (csv, csv_end) = run(&["export", "events"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("account,id,type,timestamp,properties,received_at")
    );
    assert_eq!(lines.count(), 6);
    assert_eq!(csv_end, end);
    let (nothing, same) = run(&["export", "events", "--since", &end]);
    assert_eq!(nothing.lines().count(), 1, "the header alone: {nothing}");
    assert_eq!(same, end);
}
