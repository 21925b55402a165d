//! GET /v1/accounts/{account}/usage: exact values per aggregation, ranges, late events, and the
//! order/duplicate independence of the real write path.

use crate::helpers::*;
use accrue::domain::aggregate::AggregateState;
use accrue::domain::event::parse_event;
use proptest::prelude::*;
use serde_json::{json, Value};

const DAY: (&str, &str) = ("2026-11-25T00:00:00.000Z", "2026-11-26T00:00:00.000Z");

fn e(id: &str, ty: &str, ts: &str, props: Value) -> Value {
    json!({"id": id, "account": "acme", "type": ty, "timestamp": ts, "properties": props})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_aggregation_gives_its_exact_value() {
    let app = spawn_app().await;
    let key = app.key("ingest,check", None).await;
    let events = vec![
        e("1", "api.request", "2026-11-25T01:00:00.000Z", json!({})),
        e("2", "api.request", "2026-11-25T09:59:59.000Z", json!({})),
        e("3", "api.request", "2026-11-25T11:00:00.000Z", json!({})),
        e(
            "4",
            "job.completed",
            "2026-11-25T02:00:00.000Z",
            json!({"minutes": "0.1", "runner": "cpu"}),
        ),
        e(
            "5",
            "job.completed",
            "2026-11-25T03:00:00.000Z",
            json!({"minutes": 0.2, "runner": "gpu"}),
        ),
        e(
            "6",
            "job.completed",
            "2026-11-25T03:30:00.000Z",
            json!({"minutes": "-0.05", "runner": "gpu"}),
        ),
        e(
            "7",
            "storage.snapshot",
            "2026-11-25T01:00:00.000Z",
            json!({"gb": "12.5"}),
        ),
        e(
            "8",
            "storage.snapshot",
            "2026-11-25T05:00:00.000Z",
            json!({"gb": 40}),
        ),
        e(
            "9",
            "storage.snapshot",
            "2026-11-25T07:00:00.000Z",
            json!({"gb": "7.25"}),
        ),
        e(
            "10",
            "user.active",
            "2026-11-25T01:00:00.000Z",
            json!({"user_id": "ann"}),
        ),
        e(
            "11",
            "user.active",
            "2026-11-25T04:00:00.000Z",
            json!({"user_id": "bob"}),
        ),
        e(
            "12",
            "user.active",
            "2026-11-25T08:00:00.000Z",
            json!({"user_id": "ann"}),
        ),
        e(
            "13",
            "user.active",
            "2026-11-25T08:10:00.000Z",
            json!({"user_id": 42}),
        ),
        e(
            "14",
            "seats.snapshot",
            "2026-11-25T06:00:00.000Z",
            json!({"count": 9}),
        ),
        e(
            "15",
            "seats.snapshot",
            "2026-11-25T10:00:00.000Z",
            json!({"count": 7}),
        ),
        e(
            "16",
            "seats.snapshot",
            "2026-11-25T03:00:00.000Z",
            json!({"count": 30}),
        ),
    ];
    let (status, body) = app.send(&key, &json!({ "events": events })).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(16)),
        "{body}"
    );
    let (status, usage) = app
        .get(
            &key,
            &format!("/v1/accounts/acme/usage?from={}&to={}", DAY.0, DAY.1),
        )
        .await;
    assert_eq!(status, 200);
    let value = |m: &str| {
        usage["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["meter"] == m)
            .unwrap()
            .clone()
    };
    assert_eq!(value("api_calls")["value"], "3");
    assert_eq!(value("compute_minutes")["value"], "0.25");
    assert_eq!(value("gpu_minutes")["value"], "0.15");
    assert_eq!(value("storage_gb")["value"], "40");
    assert_eq!(value("active_users")["value"], "3");
    assert_eq!(value("seats_in_use")["value"], "7");
    assert_eq!(value("api_calls")["event_count"], 3);
    assert_eq!(
        value("api_calls")["first_event_at"],
        "2026-11-25T01:00:00.000Z"
    );
    assert_eq!(
        value("api_calls")["last_event_at"],
        "2026-11-25T11:00:00.000Z"
    );
    assert_eq!(value("projects_created")["value"], "0");

    // A narrower range sees only its own hours.
    let v = app
        .meter_value(
            &key,
            "acme",
            "api_calls",
            "2026-11-25T01:00:00.000Z",
            "2026-11-25T10:00:00.000Z",
        )
        .await;
    assert_eq!(v, "2");
    let v = app
        .meter_value(
            &key,
            "acme",
            "active_users",
            "2026-11-25T04:00:00.000Z",
            "2026-11-25T09:00:00.000Z",
        )
        .await;
    assert_eq!(v, "3");
    let v = app
        .meter_value(
            &key,
            "acme",
            "seats_in_use",
            "2026-11-25T00:00:00.000Z",
            "2026-11-25T07:00:00.000Z",
        )
        .await;
    assert_eq!(v, "9");
}

/// The reads that billing, PQL scoring and the check cache make for many accounts at once:
/// every meter's value per account as counted here by hand, and a read narrowed to a few
/// meters returns those only, with the latest reading and distinct keys exact where the
/// meter's aggregation uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_read_gives_each_account_its_exact_values_and_only_the_meters_asked() {
    use accrue::store::usage::{find_by_accounts_and_ranges, MeterSelection};
    let app = spawn_app().await;
    let key = app.key("ingest,check", None).await;
    let ev = |id: &str, account: &str, ty: &str, hour: u32, props: Value| {
        json!({"id": id, "account": account, "type": ty,
               "timestamp": format!("2026-11-25T{hour:02}:30:00.000Z"), "properties": props})
    };
    let events = vec![
        ev("a1", "acme", "seats.snapshot", 1, json!({"count": 5})),
        ev("a2", "acme", "seats.snapshot", 8, json!({"count": 7})),
        ev("a3", "acme", "seats.snapshot", 3, json!({"count": 9})),
        ev("a4", "acme", "user.active", 1, json!({"user_id": "ann"})),
        ev("a5", "acme", "user.active", 2, json!({"user_id": "bob"})),
        ev("a6", "acme", "user.active", 9, json!({"user_id": "ann"})),
        ev("a7", "acme", "api.request", 1, json!({})),
        ev("a8", "acme", "api.request", 4, json!({})),
        ev("a9", "acme", "api.request", 4, json!({})),
        ev("b1", "beta", "seats.snapshot", 4, json!({"count": 11})),
        ev("b2", "beta", "seats.snapshot", 2, json!({"count": 4})),
        ev("b3", "beta", "user.active", 3, json!({"user_id": "cy"})),
        ev("b4", "beta", "api.request", 1, json!({})),
        // Outside beta's range below: never counted.
        ev("b5", "beta", "api.request", 8, json!({})),
        ev("b6", "beta", "seats.snapshot", 10, json!({"count": 99})),
    ];
    let (status, body) = app.send(&key, &json!({ "events": events })).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(15)),
        "{body}"
    );
    let at = |h: u32| t(&format!("2026-11-25T{h:02}:00:00.000Z"));
    let ranges = vec![
        ("acme".to_owned(), at(0), at(12)),
        ("beta".to_owned(), at(0), at(6)),
    ];
    let meters = app.ctx.meters.all();
    let mut conn = app.ctx.pool.get().await.unwrap();
    let value = |found: &std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, accrue::store::usage::RangeAggregate>,
    >,
                 account: &str,
                 meter: &str| {
        let aggregation = app.ctx.meters.get(meter).unwrap().aggregation;
        found
            .get(account)
            .and_then(|m| m.get(meter))
            .map(|a| a.value(aggregation).to_string())
    };

    let every = find_by_accounts_and_ranges(&mut conn, &ranges, &MeterSelection::new(meters, None))
        .await
        .unwrap();
    for (account, meter, want) in [
        ("acme", "seats_in_use", "7"),
        ("acme", "active_users", "2"),
        ("acme", "api_calls", "3"),
        ("beta", "seats_in_use", "11"),
        ("beta", "active_users", "1"),
        ("beta", "api_calls", "1"),
    ] {
        assert_eq!(
            value(&every, account, meter).as_deref(),
            Some(want),
            "{account} {meter}"
        );
    }

    let only: Vec<String> = vec!["seats_in_use".into(), "active_users".into()];
    let narrowed = find_by_accounts_and_ranges(
        &mut conn,
        &ranges,
        &MeterSelection::new(meters, Some(only.clone())),
    )
    .await
    .unwrap();
    for account in ["acme", "beta"] {
        let got: Vec<&String> = narrowed[account].keys().collect();
        assert_eq!(got, vec!["active_users", "seats_in_use"], "{account}");
        for meter in &only {
            assert_eq!(
                value(&narrowed, account, meter),
                value(&every, account, meter)
            );
        }
    }
    // A selection of meters none of which has usage reads nothing.
    let none = find_by_accounts_and_ranges(
        &mut conn,
        &ranges,
        &MeterSelection::new(meters, Some(vec!["gpu_minutes".into()])),
    )
    .await
    .unwrap();
    assert!(none.is_empty(), "{:?}", none.keys().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_count_in_the_period_they_belong_to() {
    let app = spawn_app().await;
    let key = app.key("ingest,check", None).await;
    let (status, _) = app
        .send(
            &key,
            &e("old", "api.request", "2026-09-03T08:00:00.000Z", json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let sept = app
        .meter_value(
            &key,
            "acme",
            "api_calls",
            "2026-09-01T00:00:00.000Z",
            "2026-10-01T00:00:00.000Z",
        )
        .await;
    let nov = app
        .meter_value(
            &key,
            "acme",
            "api_calls",
            "2026-11-01T00:00:00.000Z",
            "2026-12-01T00:00:00.000Z",
        )
        .await;
    assert_eq!((sept.as_str(), nov.as_str()), ("1", "0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_off_the_hour_or_reversed_are_refused() {
    let app = spawn_app().await;
    let key = app.key("check", None).await;
    let (status, body) = app
        .get(
            &key,
            "/v1/accounts/acme/usage?from=2026-11-25T00:30:00Z&to=2026-11-26T00:00:00Z",
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("range_not_aligned"))
    );
    let (status, body) = app
        .get(
            &key,
            "/v1/accounts/acme/usage?from=2026-11-26T00:00:00Z&to=2026-11-25T00:00:00Z",
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_range"))
    );
    let (status, body) = app
        .get(&key, "/v1/accounts/acme/usage?from=yesterday")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_query"))
    );
}

/// Reference aggregate computed by the pure domain code over distinct events.
fn expected(events: &[Value], meter: &str, app: &TestApp) -> String {
    let m = app.ctx.meters.get(meter).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut st = AggregateState::default();
    for raw in events {
        let ev = parse_event(raw.clone(), t(NOW)).unwrap();
        if !seen.insert(ev.id.clone()) {
            continue;
        }
        if let Some(r) = m.reading(&ev).unwrap() {
            st.add(ev.timestamp, &ev.id, &r);
        }
    }
    st.value(m.aggregation).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// The stored aggregate of a set of events is the same whatever the order, batching and
    /// duplicates with which they arrive.
    #[test]
    fn stored_aggregates_ignore_order_batching_and_duplicates(
        raw in prop::collection::vec((0u32..45_000, 0u8..4, 0i64..500, 0u8..6), 1..60),
        dups in prop::collection::vec(0usize..60, 0..30),
        batch in 1usize..25,
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let app = spawn_app().await;
            let key = app.key("ingest,check", None).await;
            let types = ["api.request", "job.completed", "storage.snapshot", "user.active"];
            let events: Vec<Value> = raw.iter().enumerate().map(|(i, (s, ty, v, u))| {
                let ts = (t("2026-11-25T00:00:00.000Z") + chrono::Duration::seconds(*s as i64)).to_rfc3339();
                let v = format!("{}.{:02}", v / 100, v % 100);
                json!({"id": format!("p{i}"), "account": "acme", "type": types[*ty as usize], "timestamp": ts,
                       "properties": {"minutes": v, "gb": v, "user_id": format!("u{u}")}})
            }).collect();
            let mut sent = events.clone();
            for d in dups { sent.push(events[d % events.len()].clone()); }
            let mut s = seed;
            for i in (1..sent.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                sent.swap(i, (s >> 33) as usize % (i + 1));
            }
            for chunk in sent.chunks(batch) {
                let (status, _) = app.send(&key, &json!({"events": chunk})).await;
                assert_eq!(status, 200);
            }
            for meter in ["api_calls", "compute_minutes", "storage_gb", "active_users"] {
                let got = app.meter_value(&key, "acme", meter, DAY.0, DAY.1).await;
                assert_eq!(got, expected(&events, meter, &app), "meter {meter}");
            }
        });
    }
}
