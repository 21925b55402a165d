//! POST /v1/events: acceptance, dedup, rejection classes, body limits.

use crate::helpers::*;
use serde_json::{json, Value};

fn ev(id: &str, account: &str, ty: &str, props: Value) -> Value {
    json!({"id": id, "account": account, "type": ty, "timestamp": "2026-11-25T12:00:00.000Z", "properties": props})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_event_is_accepted_once_and_reported_duplicate_ever_after() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let e = ev("evt-1", "acme", "api.request", json!({}));
    let (status, body) = app.send(&key, &e).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"accepted": 1, "duplicates": 0, "rejected": []})
    );
    for _ in 0..3 {
        let (status, body) = app.send(&key, &e).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"accepted": 0, "duplicates": 1, "rejected": []})
        );
    }
    assert_eq!(app.db.count("(SELECT COUNT(*) FROM events)::int8").await, 1);
}

/// Security review L6: an event sent again under a stored id but saying something else (another
/// type or other properties) was counted as a duplicate, silently: the client's reused id hid
/// a lost event. It is refused as `id_reused`, in a later batch or the same one; a true resend
/// (properties in another order, a number spelled otherwise) is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_another_event_is_refused_not_counted_as_a_duplicate() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let first = ev(
        "r-1",
        "acme",
        "storage.snapshot",
        json!({"gb": 10, "region": "eu"}),
    );
    let (_, body) = app.send(&key, &first).await;
    assert_eq!(body["accepted"], 1, "{body}");
    let resend = ev(
        "r-1",
        "acme",
        "storage.snapshot",
        json!({"region": "eu", "gb": 10.0}),
    );
    let (_, body) = app.send(&key, &resend).await;
    assert_eq!(
        body,
        json!({"accepted": 0, "duplicates": 1, "rejected": []})
    );
    let batch = json!({"events": [
        ev("r-2", "acme", "api.request", json!({})),
        ev("r-1", "acme", "storage.snapshot", json!({"gb": 12, "region": "eu"})),
        ev("r-1", "acme", "api.request", json!({"gb": 10, "region": "eu"})),
        ev("r-1", "globex", "api.request", json!({})),
        ev("r-2", "acme", "api.request", json!({"path": "/other"})),
        ev("r-2", "acme", "api.request", json!({})),
    ]});
    let (status, body) = app.send(&key, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 2, "r-2 and globex's r-1: {body}");
    assert_eq!(
        body["duplicates"], 1,
        "the second r-2 like the first: {body}"
    );
    let refused: Vec<(u64, &str, &str)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["id"].as_str().unwrap(),
                r["error"]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            (1, "r-1", "id_reused"),
            (2, "r-1", "id_reused"),
            (4, "r-2", "id_reused")
        ],
        "{body}"
    );
    assert!(body["rejected"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("a new event needs a new id"));
    // The stored events are the first copies.
    assert_eq!(
        app.db
            .count("(SELECT (properties->>'gb')::int8 FROM events WHERE id = 'r-1' AND account = 'acme')")
            .await,
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_in_two_accounts_is_two_events() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let batch = json!({"events": [
        ev("same", "acme", "api.request", json!({})),
        ev("same", "globex", "api.request", json!({})),
        ev("same", "acme", "api.request", json!({})),
    ]});
    let (_, body) = app.send(&key, &batch).await;
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["duplicates"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_class_is_reported_with_its_index_and_code_and_valid_events_are_kept() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let cases: Vec<(Value, &str)> = vec![
        (ev("", "acme", "api.request", json!({})), "invalid_id"),
        (
            json!({"account": "acme", "type": "api.request"}),
            "missing_id",
        ),
        (ev("a2", "", "api.request", json!({})), "invalid_account"),
        (
            json!({"id": "a3", "type": "api.request"}),
            "missing_account",
        ),
        (json!({"id": "a4", "account": "acme"}), "missing_type"),
        (
            json!({"id": "a5", "account": "acme", "type": "api.request", "timestamp": "2026-11-25T12:35:01.000Z"}),
            "timestamp_in_future",
        ),
        (
            json!({"id": "a6", "account": "acme", "type": "api.request", "timestamp": "noon"}),
            "invalid_timestamp",
        ),
        (
            ev("a7", "acme", "storage.snapshot", json!({})),
            "missing_property",
        ),
        (
            ev("a8", "acme", "storage.snapshot", json!({"gb": "lots"})),
            "invalid_property",
        ),
        (
            ev("a9", "acme", "job.completed", json!({"minutes": [1]})),
            "invalid_property",
        ),
        (
            ev("a10", "acme", "user.active", json!({"user_id": {"x": 1}})),
            "invalid_property",
        ),
        (
            ev("a11", "acme", "api.request", json!(5)),
            "invalid_properties",
        ),
        (json!("not an object"), "invalid_event"),
    ];
    let mut events: Vec<Value> = cases.iter().map(|(e, _)| e.clone()).collect();
    events.push(ev("good", "acme", "storage.snapshot", json!({"gb": 3})));
    let (status, body) = app.send(&key, &json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), cases.len());
    for (i, (_, code)) in cases.iter().enumerate() {
        assert_eq!(rejected[i]["index"], i, "{}", rejected[i]);
        assert_eq!(
            rejected[i]["error"]["code"], *code,
            "case {i}: {}",
            rejected[i]
        );
        assert!(!rejected[i]["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(rejected[7]["id"], "a7");
    assert!(rejected[7]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`gb`"));
    assert_eq!(app.db.count("(SELECT COUNT(*) FROM events)::int8").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_only_event_is_rejected_gets_422() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let (status, body) = app
        .send(
            &key,
            &ev("x", "acme", "storage.snapshot", json!({"gb": "many"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["rejected"][0]["error"]["code"], "invalid_property");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_gets_400_naming_the_position() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let res = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(&key)
        .body("{\"events\": [\n  {\"id\": \"1\",, }]}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    assert_eq!(body["error"]["line"], 2);
    assert_eq!(body["error"]["column"], 14);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("line 2, column 14"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_size_body_gets_413_and_stores_nothing() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let padding = "x".repeat(1024 * 1024);
    let body = json!({"id": "big", "account": "acme", "type": "api.request", "properties": {"pad": padding}});
    let (status, body) = app.send(&key, &body).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(app.db.count("(SELECT COUNT(*) FROM events)::int8").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_thousand_events_in_one_batch_are_refused() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let events: Vec<Value> = (0..1001)
        .map(|i| json!({"id": i.to_string(), "account": "a", "type": "t"}))
        .collect();
    let (status, body) = app.send(&key, &json!({ "events": events })).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "batch_too_large");
    let (status, _) = app.send(&key, &json!({ "events": events[..1000] })).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_malformed_body_produces_a_server_error() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<String> = vec![
        "".into(),
        "null".into(),
        "42".into(),
        "\"events\"".into(),
        "[]".into(),
        "{}".into(),
        "{\"events\": {}}".into(),
        "{\"events\": []}".into(),
        "{\"events\": [null, 1, \"x\", []]}".into(),
        deep,
        "{\"id\": \"1\", \"account\": \"a\", \"type\": \"job.completed\", \"properties\": {\"minutes\": 1e400}}".into(),
        "{\"id\": \"2\", \"account\": \"a\", \"type\": \"job.completed\", \"properties\": {\"minutes\": 123456789012345678901234567890}}".into(),
        "{\"id\": \"3\", \"account\": \"a\", \"type\": \"t\", \"timestamp\": \"+275760-09-13T00:00:00Z\"}".into(),
        "{\"id\": \"4\", \"account\": \"a\", \"type\": \"t\", \"timestamp\": \"-0001-01-01T00:00:00Z\"}".into(),
        "{\"id\": \"\\u0000\", \"account\": \"a\\u0000\", \"type\": \"t\"}".into(),
        "{\"id\": \"5\", \"account\": \"a\", \"type\": \"t\", \"properties\": {\"k\": \"\\u0000\"}}".into(),
        "\u{feff}{}".into(),
    ];
    for b in bodies {
        let res = app
            .http
            .post(app.url("/v1/events"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(b.clone())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(
            (200..500).contains(&status),
            "body {:?} got {status}: {body}",
            &b[..b.len().min(80)]
        );
        let has_code = body["error"]["code"].is_string() || body["rejected"].is_array();
        assert!(
            has_code,
            "no error code for {:?}: {body}",
            &b[..b.len().min(80)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_batch_store_each_event_exactly_once() {
    let app = spawn_app().await;
    let key = app.key("ingest,check", None).await;
    let events: Vec<Value> = (0..300)
        .map(|i| {
            json!({"id": format!("c{i}"), "account": format!("acct{}", i % 3), "type": "job.completed",
                   "timestamp": "2026-11-25T10:15:00.000Z", "properties": {"minutes": "1.5"}})
        })
        .collect();
    let batch = json!({ "events": events });
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(app.send_in_background(&key, batch.clone()));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let b = t.await.unwrap();
        accepted += b["accepted"].as_u64().unwrap();
        duplicates += b["duplicates"].as_u64().unwrap();
    }
    assert_eq!(accepted, 300);
    assert_eq!(duplicates, 300 * 11);
    assert_eq!(
        app.db.count("(SELECT COUNT(*) FROM events)::int8").await,
        300
    );
    // The rollups saw each event once too: 100 events × 1.5 minutes per account.
    let v = app
        .meter_value(
            &key,
            "acct1",
            "compute_minutes",
            "2026-11-25T00:00:00.000Z",
            "2026-11-26T00:00:00.000Z",
        )
        .await;
    assert_eq!(v, "150");
}

/// One account's large batch, half of it stored before, arrives four times at once, twice
/// through each of two instances: a group holding a stored id fails its plain insert and runs
/// again skipping stored ids, and the other instance's transactions race it on the same keys.
/// Each event is stored once, every copy is told which were new, and the meter, its rollups
/// and the type count add each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_half_stored_before_sent_four_times_at_once_is_stored_once() {
    let app = spawn_app().await;
    let (second, _ctx, _clock) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    let key = app.key("ingest,check", None).await;
    let event = |i: usize| {
        json!({"id": format!("busy-{i}"), "account": "busy", "type": "job.completed",
               "timestamp": "2026-11-25T10:15:00.000Z",
               "properties": {"minutes": format!("{}.25", i % 7)}})
    };
    let first: Vec<Value> = (0..500).map(event).collect();
    let (status, b) = app.send(&key, &json!({ "events": first })).await;
    assert_eq!((status, b["accepted"].as_u64()), (200, Some(500)), "{b}");
    let all: Vec<Value> = (0..1000).map(event).collect();
    let batch = json!({ "events": all });
    let mut tasks = Vec::new();
    for base in [&app.base, &second, &app.base, &second] {
        tasks.push(send_in_background(&app.http, base, &key, batch.clone()));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let b = t.await.unwrap();
        accepted += b["accepted"].as_u64().unwrap();
        duplicates += b["duplicates"].as_u64().unwrap();
        assert_eq!(b["rejected"], json!([]), "{b}");
    }
    assert_eq!(accepted, 500, "the second half, once");
    assert_eq!(duplicates, 4 * 1000 - 500);
    assert_eq!(app.db.count("(SELECT count(*) FROM events)").await, 1000);
    assert_eq!(app.db.count(EVENT_TYPE_TOTAL).await, 1000, "the type count");
    let pairs = "(SELECT count(*) FROM event_type_counts WHERE account = 'busy')::int8";
    assert_eq!(app.db.count(pairs).await, 1, "one (account, type) row");
    assert_eq!(rollup_events(&app, "busy", "compute_minutes").await, 1000);
    // Minutes by hand: event i carries (i mod 7) + 0.25.
    let mut quarters = 0u64;
    for i in 0..1000u64 {
        quarters += (i % 7) * 4 + 1;
    }
    let expected = format!("{}.{:02}", quarters / 4, (quarters % 4) * 25);
    let expected = expected
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_owned();
    let v = app
        .meter_value(
            &key,
            "busy",
            "compute_minutes",
            "2026-11-25T00:00:00.000Z",
            "2026-11-26T00:00:00.000Z",
        )
        .await;
    assert_eq!(v, expected);
    // The fallback ran: each copy's group met the stored half (on Citus every group skips
    // stored ids at once, and nothing falls back).
    let mut retried = 0.0;
    for base in [&app.base, &second] {
        let page = app
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        retried += page
            .lines()
            .filter_map(|l| l.strip_prefix("accrue_ingest_insert_retries_total "))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .sum::<f64>();
    }
    if on_citus() {
        assert_eq!(retried, 0.0);
    } else {
        assert!(retried >= 1.0, "no group fell back: {retried}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_future_limit_follows_the_server_clock() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let event = json!({"id": "f", "account": "acme", "type": "api.request", "timestamp": "2026-11-25T13:00:00.000Z"});
    let (status, body) = app.send(&key, &event).await;
    assert_eq!(status, 422);
    assert_eq!(body["rejected"][0]["error"]["code"], "timestamp_in_future");
    app.clock.advance(chrono::Duration::minutes(26));
    let (status, body) = app.send(&key, &event).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)));
}

/// A negative value is rejected per event (`negative_value`) on a meter that does not allow
/// it (security L12: a product key could zero its own usage bill); the batch's other events
/// are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_value_is_rejected_per_event_on_a_meter_that_does_not_allow_it() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let (status, out) = app
        .send(
            &key,
            &json!({"events": [
                {"id": "neg", "account": "l12", "type": "storage.snapshot", "timestamp": NOW,
                 "properties": {"gb": -500}},
                {"id": "pos", "account": "l12", "type": "storage.snapshot", "timestamp": NOW,
                 "properties": {"gb": 500}},
                // compute_minutes takes corrections (allow_negative = true).
                {"id": "fix", "account": "l12", "type": "job.completed", "timestamp": NOW,
                 "properties": {"minutes": -5}}]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["accepted"], 2, "{out}");
    assert_eq!(out["rejected"][0]["id"], "neg");
    assert_eq!(out["rejected"][0]["error"]["code"], "negative_value");
    let stored = app
        .db
        .count("(SELECT count(*) FROM events WHERE account = 'l12')")
        .await;
    assert_eq!(stored, 2);
}

/// `GET /v1/events`: what was stored for an account, as stored (a rejected event is not
/// there), in id order, filtered by type, and only for keys that reach the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_can_be_read_back_per_account() {
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    let (status, ack) = app
        .send(
            &key,
            &json!({"events": [
                {"id": "b-2", "account": "acme", "type": "api.request", "timestamp": "2026-11-25T12:01:02.345678+01:00"},
                {"id": "a-1", "account": "acme", "type": "storage.snapshot", "properties": {"gb": "12.50"}},
                {"id": "c-3", "account": "acme", "type": "storage.snapshot", "properties": {}},
                {"id": "z-9", "account": "beta", "type": "api.request"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["accepted"], 3, "c-3 lacks its gb: {ack}");
    let (status, page) = app.get(&key, "/v1/events?account=acme").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-1", "b-2"], "{page}");
    assert_eq!(page["data"][0]["properties"]["gb"], "12.50");
    assert_eq!(page["data"][0]["type"], "storage.snapshot");
    // Stored in UTC, shown with milliseconds.
    assert_eq!(page["data"][1]["timestamp"], "2026-11-25T11:01:02.345Z");
    let (_, only) = app
        .get(&key, "/v1/events?account=acme&type=api.request")
        .await;
    assert_eq!(only["data"].as_array().unwrap().len(), 1, "{only}");
    let (_, next) = app.get(&key, "/v1/events?account=acme&limit=1").await;
    assert_eq!(next["next_cursor"], "a-1");
    // An unbound key names the account; a bound one sees only its own.
    let (status, e) = app.get(&key, "/v1/events").await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (422, Some("account"))
    );
    let bound = app.key("ingest", Some("beta")).await;
    let (status, own) = app.get(&bound, "/v1/events").await;
    assert_eq!((status, own["data"][0]["id"].as_str()), (200, Some("z-9")));
    let (status, _) = app.get(&bound, "/v1/events?account=acme").await;
    assert_eq!(status, 404);
    let checker = app.key("check", None).await;
    let (status, _) = app.get(&checker, "/v1/events?account=acme").await;
    assert_eq!(status, 403);
}

/// Hand-written statements with a fixed text are parsed once per connection and kept
/// (`store::prepared`): three rounds of ingest writes and a usage read on one connection leave
/// each statement prepared once in that session, rather than prepared and closed each time.
/// On Citus the writes are multi-row `VALUES` lists whose text varies with their length: those
/// are not kept (the per-connection cache stays bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_statement_is_prepared_once_per_connection_and_reused() {
    use accrue::store::{accounts, events, usage};
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Kept {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let app = spawn_app().await;
    let mut conn = app.ctx.pool.get().await.unwrap();
    let now = chrono::Utc::now();
    for round in 0..3 {
        let ids = [format!("acct-{round}"), format!("acct-{round}-b")];
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        accounts::ensure_many(&mut conn, &ids, now).await.unwrap();
        let counts = [(
            (ids[0], "api.request"),
            events::TypeCount {
                count: round + 1,
                first_at: now,
                last_at: now,
            },
        )];
        let counters = events::Counters {
            rollups: &[],
            types: &counts,
            unseen: &[true],
            shard: "test/0",
        };
        events::add_counters(&mut conn, &counters).await.unwrap();
        let read = usage::find_by_account_and_range(
            &mut conn,
            ids[0],
            now - chrono::Duration::days(1),
            now,
        )
        .await
        .unwrap();
        assert!(read.is_empty(), "no usage sent: {read:?}");
    }
    let on_citus = accrue::store::citus::active();
    let varying = if on_citus { 0 } else { 1 };
    for (statement, pattern, want) in [
        (
            "the accounts insert",
            "INSERT INTO accounts (account, created_at, updated_at)%",
            varying,
        ),
        (
            "the counters' upserts",
            "%INSERT INTO event_type_counts AS c%",
            varying,
        ),
        ("the usage read", "SELECT meter,%SUM(event_count)%", 1),
    ] {
        let kept: Kept = diesel::sql_query(
            "SELECT count(*)::int8 AS n FROM pg_prepared_statements WHERE statement LIKE $1",
        )
        .bind::<Text, _>(pattern)
        .get_result(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            kept.n, want,
            "{statement}: prepared statements kept in the session (Citus: {on_citus})"
        );
    }
    // And the writes did what they say: three accounts' counts of 1, 2 and 3.
    assert_eq!(app.db.count(EVENT_TYPE_TOTAL).await, 6);
}

/// An ingestion group's statements reuse generic plans (`store::events::begin_group`: planning
/// each group's statement afresh cost the database as much as running it), for the group's
/// transaction only. After groups that commit, and groups that fail on a stored id and run
/// again, the group statements were planned generically, never per group, and every pooled
/// connection still plans each execution of everything else afresh (the pool's
/// `force_custom_plan`). On Citus the group statements are not prepared, and the mode is left
/// as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestion_groups_generic_plans_end_with_its_transaction() {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Plans {
        #[diesel(sql_type = BigInt)]
        generic: i64,
        #[diesel(sql_type = BigInt)]
        custom: i64,
    }
    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        plan_cache_mode: String,
    }
    let app = spawn_app().await;
    let key = app.key("ingest", None).await;
    for round in 0..4 {
        // From the second round on, `g-0` again: stored already, so the group's insert fails
        // and the group runs again without it.
        let batch = json!({"events": [
            ev(&format!("g-{round}"), "acme", "api.request", json!({})),
            ev("g-0", "acme", "api.request", json!({})),
        ]});
        let (status, body) = app.send(&key, &batch).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 1, "{body}");
    }
    assert_eq!(app.db.count("(SELECT COUNT(*) FROM events)::int8").await, 4);
    let size = app.ctx.pool.status().size;
    assert!(size > 0, "the groups ran on pooled connections");
    let mut conns = Vec::new();
    for _ in 0..size {
        conns.push(app.ctx.pool.get().await.unwrap());
    }
    let (mut generic, mut custom) = (0, 0);
    for conn in &mut conns {
        let mode: Mode = diesel::sql_query("SHOW plan_cache_mode")
            .get_result(&mut **conn)
            .await
            .unwrap();
        assert_eq!(mode.plan_cache_mode, "force_custom_plan");
        let plans: Plans = diesel::sql_query(
            "SELECT COALESCE(SUM(generic_plans), 0)::int8 AS generic,
                    COALESCE(SUM(custom_plans), 0)::int8 AS custom
               FROM pg_prepared_statements
              WHERE statement LIKE '%INSERT INTO events (%'
                AND statement NOT LIKE '%pg_prepared_statements%'",
        )
        .get_result(&mut **conn)
        .await
        .unwrap();
        generic += plans.generic;
        custom += plans.custom;
    }
    if accrue::store::citus::active() {
        assert_eq!((generic, custom), (0, 0), "nothing prepared on Citus");
    } else {
        assert!(generic >= 4, "generic plans: {generic}");
        assert_eq!(custom, 0, "a group's statement was planned for its values");
    }
}

fn split_batch(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            ev(
                &format!("{prefix}-{i}"),
                &format!("split-{i}"),
                "api.request",
                json!({}),
            )
        })
        .collect()
}

/// `IngestPipeline::drain` (what `serve` runs at shutdown): a request over many accounts is
/// split across the ingest lanes; dropped while one lane waits on a row lock, it leaves that
/// lane's part queued. A drain that runs out of time first reports the events left; one that
/// has the time returns only once the held part is committed, and the batch is stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_waits_until_the_lanes_commit_the_parts_of_a_dropped_request() {
    use std::time::{Duration, Instant};
    const N: usize = 16;
    let app = spawn_app().await;
    let seeded = accrue::services::ingest::ingest(&app.ctx, split_batch("seed", N), None)
        .await
        .unwrap();
    assert_eq!(seeded.accepted, N);
    // One account's rollup row held: the lane that owns it waits on the lock.
    let holder = app.db.hold_rollups("split-0").await;
    let ctx = app.ctx.clone();
    let request = tokio::spawn(async move {
        accrue::services::ingest::ingest(&ctx, split_batch("s", N), None).await
    });
    let stored = || {
        app.db
            .count("(SELECT count(*) FROM events WHERE id LIKE 's-%')::int8")
    };
    let waited = Instant::now();
    while stored().await == 0 && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = stored().await;
    assert!(
        before > 0 && before < N as i64,
        "the other lanes committed their parts, the held one not: {before} of {N}"
    );
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());

    let left = app.ctx.ingest.drain(Duration::from_millis(300)).await;
    assert_eq!(
        left as i64,
        N as i64 - before,
        "the held part is reported left"
    );

    let started = Instant::now();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        holder.release().await;
    });
    assert_eq!(app.ctx.ingest.drain(Duration::from_secs(20)).await, 0);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the drain returned before the held part could commit: {:?}",
        started.elapsed()
    );
    release.await.unwrap();
    assert_eq!(
        stored().await,
        N as i64,
        "the dropped batch is stored whole"
    );
}

/// A lane commits one account's next group while its previous group still waits: the second
/// batch is taken off the queue and inserted while the first waits on the account's rollup
/// row (both wait on it at once), and once the row is free both are stored, each event once,
/// in exact totals. Before the lanes committed two groups at once, the second batch stayed
/// queued until the first was answered.
#[tokio::test]
async fn a_busy_accounts_next_group_commits_beside_the_one_before() {
    let (app, key, first, second) = two_groups_of_one_account(201..401).await;
    for b in [first, second] {
        assert_eq!(
            (b["accepted"].as_u64(), b["duplicates"].as_u64()),
            (Some(200), Some(0)),
            "{b}"
        );
    }
    assert_deep_totals(&app, &key, 401).await;
}

/// A client retries a batch while its first copy's group is still committing: the two groups
/// (the lane's two at once) meet each other's uncommitted events, the later waits for the
/// earlier, and the events are stored once.
#[tokio::test]
async fn a_retry_beside_its_first_copys_uncommitted_group_is_stored_once() {
    let (app, key, first, retry) = two_groups_of_one_account(1..201).await;
    // Whichever group inserted the events first stores them (the lane took the first copy
    // first, but on Citus the retry's insert can reach the shard before it): one copy is
    // answered 200 stored, the other 200 duplicates, neither refused.
    one_stored_one_duplicates(&first, &retry, 200);
    assert_deep_totals(&app, &key, 201).await;
}

/// A group of few events per account (shallow) is followed only once it has written its
/// rows: while it waits on a held rollup row, a retry of its batch stays queued. Released, the
/// retry's group starts while the first commits, meets its uncommitted events, and runs again
/// skipping them (the lane's "plain" flag cleared at once): the events are stored once, one
/// copy answered as stored, the other as duplicates, and the next new batch is stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shallow_groups_retry_waits_for_its_write_and_is_stored_once() {
    let app = spawn_app().await;
    let key = app.key("ingest,check", None).await;
    let ev = |i: usize| {
        json!({"id": format!("sh-{i}"), "account": "shallow", "type": "job.completed",
               "timestamp": "2026-11-25T10:15:00.000Z",
               "properties": {"minutes": format!("{i}.25")}})
    };
    let (status, b) = app.send(&key, &json!({"events": [ev(0)]})).await;
    assert_eq!((status, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    let blocker = app.db.hold_rollups("shallow").await;
    let ingest = &app.ctx.ingest;
    let queued = || ingest.queue_depths().iter().sum::<usize>();
    let batch = json!({"events": (1..6).map(ev).collect::<Vec<_>>()});
    let first = app.send_in_background(&key, batch.clone());
    wait_until(
        || ingest.in_flight_events() == 5 && queued() == 0,
        || "the lane never took the first copy".into(),
    )
    .await;
    let retry = app.send_in_background(&key, batch);
    wait_until(|| queued() == 1, || "the retry never queued".into()).await;
    // Five events for one account: shallow. Its group has not written (it waits on the held
    // row), so the lane has not started the retry's.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        (queued(), ingest.in_flight_events()),
        (1, 10),
        "the retry's group started before the first group had written"
    );
    blocker.release().await;
    let (first, retry) = (first.await.unwrap(), retry.await.unwrap());
    one_stored_one_duplicates(&first, &retry, 5);
    let (status, next) = app
        .send(&key, &json!({"events": (6..9).map(ev).collect::<Vec<_>>()}))
        .await;
    assert_eq!(
        (
            status,
            next["accepted"].as_u64(),
            next["duplicates"].as_u64()
        ),
        (200, Some(3), Some(0)),
        "{next}"
    );
    // Events 0 to 8 once each: 9 events, (0 + 1 + ... + 8) + 9 * 0.25 = 38.25 minutes.
    assert_eq!(rollup_events(&app, "shallow", "compute_minutes").await, 9);
    assert_eq!(
        app.db
            .count("(SELECT count(*) FROM events WHERE account = 'shallow')")
            .await,
        9
    );
    let minutes = app
        .meter_value(
            &key,
            "shallow",
            "compute_minutes",
            "2026-11-25T00:00:00.000Z",
            "2026-11-26T00:00:00.000Z",
        )
        .await;
    assert_eq!(minutes, "38.25");
}

/// Two requests committed in one group carry one new id with different content: the first
/// request's copy is stored and counted; the second request is told the id is reused
/// (`id_reused` at its index) while its other event is stored. The lane is held on the
/// account's rollup rows while both queue, so they commit together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_two_requests_of_one_group_send_with_other_content_is_refused_to_the_second() {
    let app = spawn_app().await;
    let key = app.key("ingest,check", None).await;
    let ev = |id: &str, minutes: &str| {
        json!({"id": id, "account": "grp", "type": "job.completed",
               "timestamp": "2026-11-25T10:15:00.000Z", "properties": {"minutes": minutes}})
    };
    let (status, b) = app.send(&key, &json!({"events": [ev("seed", "1")]})).await;
    assert_eq!((status, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    let blocker = app.db.hold_rollups("grp").await;
    let ingest = &app.ctx.ingest;
    let queued = || ingest.queue_depths().iter().sum::<usize>();
    let held = app.send_in_background(&key, json!({"events": [ev("held", "1")]}));
    wait_until(
        || ingest.in_flight_events() == 1 && queued() == 0,
        || "the lane never took the held request".into(),
    )
    .await;
    let first = app.send_in_background(&key, json!({"events": [ev("x", "2")]}));
    wait_until(|| queued() == 1, || "the first copy never queued".into()).await;
    let second = app.send_in_background(&key, json!({"events": [ev("pad", "1"), ev("x", "3")]}));
    wait_until(|| queued() == 2, || "the second copy never queued".into()).await;
    blocker.release().await;
    assert_eq!(held.await.unwrap()["accepted"], 1);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(1), Some(0)),
        "{first}"
    );
    assert_eq!(first["rejected"], json!([]), "{first}");
    assert_eq!(
        (second["accepted"].as_u64(), second["duplicates"].as_u64()),
        (Some(1), Some(0)),
        "{second}"
    );
    let rejected = second["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{second}");
    assert_eq!(
        (
            &rejected[0]["index"],
            &rejected[0]["id"],
            &rejected[0]["error"]["code"]
        ),
        (&json!(1), &json!("x"), &json!("id_reused")),
        "{second}"
    );
    // Stored once, as the first request sent it; the rollups hold seed, held, x and pad once:
    // 1 + 1 + 2 + 1 minutes.
    assert_eq!(
        app.db
            .count("(SELECT count(*) FROM events WHERE id = 'x' AND properties->>'minutes' = '2')")
            .await,
        1
    );
    assert_eq!(rollup_events(&app, "grp", "compute_minutes").await, 4);
    let minutes = app
        .meter_value(
            &key,
            "grp",
            "compute_minutes",
            "2026-11-25T00:00:00.000Z",
            "2026-11-26T00:00:00.000Z",
        )
        .await;
    assert_eq!(minutes, "5");
}

/// Two copies of one batch of `n` events, whichever committed first: one answered as `n`
/// stored, the other as `n` duplicates, neither refusing any.
fn one_stored_one_duplicates(first: &Value, retry: &Value, n: u64) {
    let mut answers: Vec<(Option<u64>, Option<u64>)> = [first, retry]
        .iter()
        .map(|b| (b["accepted"].as_u64(), b["duplicates"].as_u64()))
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        vec![(Some(0), Some(n)), (Some(n), Some(0))],
        "{first} {retry}"
    );
    assert_eq!(first["rejected"], json!([]), "{first}");
    assert_eq!(retry["rejected"], json!([]), "{retry}");
}

/// How many events `account`'s rollups of `meter` hold (summed over its hours).
async fn rollup_events(app: &TestApp, account: &str, meter: &str) -> i64 {
    app.db
        .count(&format!(
            "(SELECT coalesce(sum(event_count), 0)::int8 FROM usage_rollups
               WHERE account = '{account}' AND meter = '{meter}')"
        ))
        .await
}

/// Account `deep`'s event `i`: a job of (i mod 5) + 0.5 minutes.
fn deep_event(i: usize) -> Value {
    json!({"id": format!("deep-{i}"), "account": "deep", "type": "job.completed",
           "timestamp": "2026-11-25T10:15:00.000Z",
           "properties": {"minutes": format!("{}.5", i % 5)}})
}

/// Stores `deep`'s event 0, holds its rollup row, sends events 1..201 and, once the lane took
/// them, `second`; checks that the lane took `second` too and that both groups wait at once;
/// frees the row and returns both answers.
async fn two_groups_of_one_account(
    second: std::ops::Range<usize>,
) -> (TestApp, String, Value, Value) {
    let app = spawn_app().await;
    let key = app.key("ingest,check", None).await;
    let (status, b) = app.send(&key, &json!({"events": [deep_event(0)]})).await;
    assert_eq!((status, b["accepted"].as_u64()), (200, Some(1)), "{b}");
    let blocker = app.db.hold_rollups("deep").await;
    let send = |ids: std::ops::Range<usize>| {
        app.send_in_background(
            &key,
            json!({"events": ids.map(deep_event).collect::<Vec<_>>()}),
        )
    };
    let ingest = &app.ctx.ingest;
    let taken = |events: usize| {
        ingest.in_flight_events() == events && ingest.queue_depths().iter().sum::<usize>() == 0
    };
    let first = send(1..201);
    wait_until(
        || taken(200),
        || "the lane never took the first batch".into(),
    )
    .await;
    let n = second.len();
    let second = send(second);
    wait_until(
        || taken(200 + n),
        || {
            format!(
                "the second batch stayed queued behind the first (in flight {}, queued {:?})",
                ingest.in_flight_events(),
                ingest.queue_depths()
            )
        },
    )
    .await;
    // Both groups are in their transactions at once, each waiting: the first on the held
    // rollup row, the second on that row or on the first's uncommitted events. (On Citus the
    // waits are on the worker holding the shard, which the coordinator's pg_stat_activity
    // does not show; the answers and totals hold there too.)
    if !on_citus() {
        let waiting = "(SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock')";
        let started = std::time::Instant::now();
        while app.db.count(waiting).await != 2 {
            assert!(
                started.elapsed().as_secs() < 10,
                "the lane's two groups never waited together"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    blocker.release().await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    (app, key, first, second)
}

/// `deep` holds events 0..n once: in `events`, in its rollups and in its minutes (summed here).
async fn assert_deep_totals(app: &TestApp, key: &str, n: usize) {
    assert_eq!(
        app.db.count("(SELECT count(*) FROM events)").await,
        n as i64
    );
    assert_eq!(
        rollup_events(app, "deep", "compute_minutes").await,
        n as i64
    );
    let halves: usize = (0..n).map(|i| (i % 5) * 2 + 1).sum();
    let expected = if halves % 2 == 0 {
        format!("{}", halves / 2)
    } else {
        format!("{}.5", halves / 2)
    };
    let v = app
        .meter_value(
            key,
            "deep",
            "compute_minutes",
            "2026-11-25T00:00:00.000Z",
            "2026-11-26T00:00:00.000Z",
        )
        .await;
    assert_eq!(v, expected);
}

/// All events counted by type, in both counters (per account on Citus, per type on
/// single-node PostgreSQL: `store::events::Counters`).
const EVENT_TYPE_TOTAL: &str = "((SELECT coalesce(sum(event_count), 0) FROM event_type_counts)
     + (SELECT coalesce(sum(event_count), 0) FROM event_type_totals))::int8";
