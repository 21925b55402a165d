//! GET /v1/governance/event-types.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_seen_is_listed_with_its_count_and_whether_a_meter_reads_it() {
    let app = spawn_app().await;
    let key = app.key("ingest,admin", None).await;
    let (status, _) = app
        .send(&key, &json!({"events": [
            {"id": "1", "account": "acme", "type": "api.request"},
            {"id": "2", "account": "globex", "type": "api.request"},
            {"id": "3", "account": "acme", "type": "onboarding.tour_skipped"},
            {"id": "3", "account": "acme", "type": "onboarding.tour_skipped"},
            {"id": "4", "account": "acme", "type": "job.completed", "properties": {"minutes": 2, "runner": "gpu"}},
        ]}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = app.get(&key, "/v1/governance/event-types").await;
    assert_eq!(status, 200);
    let types = body["data"].as_array().unwrap();
    let find = |t: &str| types.iter().find(|x| x["event_type"] == t).unwrap().clone();
    assert_eq!(types.len(), 3);
    assert_eq!(find("api.request")["event_count"], 2);
    assert_eq!(find("api.request")["accounts"], 2);
    assert_eq!(find("api.request")["metered"], true);
    assert_eq!(find("onboarding.tour_skipped")["event_count"], 1);
    assert_eq!(find("onboarding.tour_skipped")["metered"], false);
    assert_eq!(
        find("job.completed")["meters"],
        json!(["compute_minutes", "gpu_minutes"])
    );
}

/// The report's counts per type (`event_type_totals` on single-node PostgreSQL, one row per
/// type and lane slot) and accounts per type (`event_type_counts`, one row per account and
/// type, written once) against a count kept here. Events arrive in rounds through two
/// instances (each with its own lanes, shards and memory of the rows it stored): the accounts
/// of each round's first part take a new type every other round, so an instance sees pairs
/// the other stored; each round's second part is of accounts new to it; and from the second
/// round on, each batch repeats an event of the round before (a duplicate, not counted, which
/// sends its group down the path that skips stored events). Then the rows of idle shards are
/// folded, twice, and a third instance adds a round. Nothing is counted twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_accounts_per_type_add_up_across_instances_and_folding() {
    use std::collections::{BTreeMap, BTreeSet};
    const TYPES: [&str; 3] = ["api.request", "onboarding.tour_skipped", "seat.reviewed"];
    /// (type, account) pairs seen, and events per type.
    #[derive(Default)]
    struct Model {
        counts: BTreeMap<&'static str, i64>,
        pairs: BTreeSet<(&'static str, String)>,
    }
    impl Model {
        fn round(&mut self, round: usize) -> serde_json::Value {
            let mut batch = Vec::new();
            let mut add = |id: String, account: String, ty: &'static str, model: &mut Model| {
                batch.push(json!({"id": id, "account": account, "type": ty}));
                *model.counts.entry(ty).or_default() += 1;
                model.pairs.insert((ty, account));
            };
            for i in 0..26 {
                let a = (i * 7 + round) % 13;
                let ty = TYPES[(a + round / 2) % 3];
                add(format!("{round}-{i}"), format!("acct-{a}"), ty, self);
            }
            for i in 26..40 {
                let account = format!("fresh-{round}-{}", i % 4);
                add(format!("{round}-{i}"), account, TYPES[i % 3], self);
            }
            if round > 0 {
                let (r, a) = (round - 1, (round - 1) % 13);
                let ty = TYPES[(a + r / 2) % 3];
                batch.push(
                    json!({"id": format!("{r}-0"), "account": format!("acct-{a}"), "type": ty}),
                );
            }
            json!({ "events": batch })
        }

        /// Per type: (events, accounts).
        fn report(&self) -> BTreeMap<String, (i64, i64)> {
            self.counts
                .iter()
                .map(|(t, n)| {
                    let accounts = self.pairs.iter().filter(|(ty, _)| ty == t).count();
                    ((*t).to_owned(), (*n, accounts as i64))
                })
                .collect()
        }
    }
    let report = |body: serde_json::Value| -> BTreeMap<String, (i64, i64)> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let n = |f: &str| t[f].as_i64().unwrap();
                let name = t["event_type"].as_str().unwrap().to_owned();
                (name, (n("event_count"), n("accounts")))
            })
            .collect()
    };
    let app = spawn_app().await;
    let (second, _ctx, _clock) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    let key = app.key("ingest,admin", None).await;
    let pair_rows = "(SELECT count(*) FROM event_type_counts)::int8";
    let mut model = Model::default();
    for round in 0..6 {
        let base = if round % 2 == 0 { &app.base } else { &second };
        let body = model.round(round);
        let answer = send_in_background(&app.http, base, &key, body)
            .await
            .unwrap();
        assert_eq!(answer["accepted"], 40, "round {round}: {answer}");
        assert_eq!(
            answer["duplicates"],
            u64::from(round > 0),
            "round {round}: {answer}"
        );
    }
    assert_eq!(model.counts.values().sum::<i64>(), 240);
    let (status, body) = app.get(&key, "/v1/governance/event-types").await;
    assert_eq!(status, 200);
    assert_eq!(report(body), model.report(), "through two instances");
    assert_eq!(app.db.count(pair_rows).await, model.pairs.len() as i64);
    if on_citus() {
        // Citus counts per account (nothing writes the per-type table, nothing folds it).
        let rows = app
            .db
            .count("(SELECT count(*) FROM event_type_totals)::int8")
            .await;
        assert_eq!(rows, 0);
        return;
    }
    let rows = app
        .db
        .count("(SELECT count(*) FROM event_type_totals)::int8")
        .await;
    assert!(
        rows > 3,
        "two instances' lanes wrote rows of their own: {rows}"
    );
    let mut conn = app.db.conn().await;
    let fold = accrue::store::events::fold_idle_type_totals;
    // Nothing is idle yet: nothing folds.
    assert_eq!(fold(&mut conn).await.unwrap(), 0);
    let age_all = "UPDATE event_type_totals SET updated_at = now() - interval '2 hours'";
    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, age_all)
        .await
        .unwrap();
    assert_eq!(fold(&mut conn).await.unwrap() as i64, rows);
    let only_folded = "(SELECT count(*) FILTER (WHERE shard = '') * 100 + count(*)
                          FROM event_type_totals)::int8";
    assert_eq!(
        app.db.count(only_folded).await,
        303,
        "one folded row per type, nothing else"
    );
    let (_, body) = app.get(&key, "/v1/governance/event-types").await;
    assert_eq!(report(body), model.report(), "after folding");
    // A third instance (new shards) adds a round; folding again adds into the folded rows.
    let (third, _ctx3, _clock3) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    let body = model.round(6);
    let answer = send_in_background(&app.http, &third, &key, body)
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 40, "{answer}");
    let (_, body) = app.get(&key, "/v1/governance/event-types").await;
    assert_eq!(report(body), model.report(), "a third instance");
    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, age_all)
        .await
        .unwrap();
    assert!(
        fold(&mut conn).await.unwrap() >= 3,
        "the third instance's rows"
    );
    assert_eq!(app.db.count(only_folded).await, 303);
    let (_, body) = app.get(&key, "/v1/governance/event-types").await;
    assert_eq!(report(body), model.report(), "after folding again");
    assert_eq!(app.db.count(pair_rows).await, model.pairs.len() as i64);
}
