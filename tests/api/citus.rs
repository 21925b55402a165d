//! Citus: how the migrations place the tables ([`accrue::store::citus`]). The first test runs
//! everywhere; the rest need the suite's Citus run (`ACCRUE_TEST_CITUS_WORKERS`, which
//! `.ci/test` sets for its second pass on `../shared/citus/cluster.sh`'s cluster).

use crate::helpers::*;
use accrue::store;
use accrue::store::citus::{COORDINATOR, DISTRIBUTED, REFERENCE};
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    name: String,
}

async fn names(db: &TestDb, sql: &str) -> BTreeSet<String> {
    let mut c = db.conn().await;
    let rows: Vec<Row> = diesel::sql_query(sql).load(&mut c).await.unwrap();
    rows.into_iter().map(|r| r.name).collect()
}

fn set(lists: &[&[&str]]) -> BTreeSet<String> {
    lists
        .iter()
        .flat_map(|l| l.iter().map(|t| t.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_of_the_schema_has_exactly_one_place_on_citus() {
    let db = TestDb::new().await;
    let tables = names(
        &db,
        "SELECT table_name::text AS name FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
            AND table_name <> '__diesel_schema_migrations'",
    )
    .await;
    let listed = set(&[DISTRIBUTED, REFERENCE, COORDINATOR]);
    assert_eq!(
        listed.len(),
        DISTRIBUTED.len() + REFERENCE.len() + COORDINATOR.len(),
        "a table is in two lists"
    );
    assert_eq!(
        listed, tables,
        "the lists of store::citus and the schema differ"
    );
    // Each account-owned table has `account` first in its primary key (SCALE.md rule 1).
    let account_first = names(
        &db,
        "SELECT c.relname::text AS name FROM pg_index i
           JOIN pg_class c ON c.oid = i.indrelid
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
          WHERE i.indisprimary AND a.attname = 'account'",
    )
    .await;
    for t in DISTRIBUTED {
        assert!(
            account_first.contains(*t),
            "{t}: account is not its first key column"
        );
    }
    if !on_citus() {
        return;
    }
    let by_kind = |kind: &'static str| {
        let db = &db;
        async move {
            names(
                db,
                &format!(
                    "SELECT logicalrelid::regclass::text AS name FROM pg_dist_partition WHERE {kind}"
                ),
            )
            .await
        }
    };
    assert_eq!(by_kind("partmethod = 'h'").await, set(&[DISTRIBUTED]));
    assert_eq!(
        by_kind("partmethod = 'n' AND repmodel = 't'").await,
        set(&[REFERENCE])
    );
    assert_eq!(
        by_kind("partmethod = 'n' AND repmodel = 's'").await,
        set(&[COORDINATOR])
    );
    // All distributed by `account`, in one co-location group.
    let groups = db
        .count(
            "(SELECT count(DISTINCT (colocationid, column_to_column_name(logicalrelid, partkey)))
                FROM pg_dist_partition WHERE partmethod = 'h')",
        )
        .await;
    assert_eq!(groups, 1);
    let columns = names(
        &db,
        "SELECT DISTINCT column_to_column_name(logicalrelid, partkey) AS name
           FROM pg_dist_partition WHERE partmethod = 'h'",
    )
    .await;
    assert_eq!(columns, set(&[&["account"]]));
}

/// An app on `db` whose sessions refuse any statement that needs more than one shard.
async fn single_shard_app(db: TestDb) -> TestApp {
    let mut c = db.conn().await;
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut c,
        &format!(
            "ALTER DATABASE {} SET citus.multi_task_query_log_level = 'error'",
            db.name
        ),
    )
    .await
    .unwrap();
    spawn_app_on(db)
}

/// One account's requests (ingestion, checks, subscribing, a seat change with its invoice,
/// reading invoices and usage) each route to the one shard that holds the account: Citus is
/// told to fail any statement that needs several (`citus.multi_task_query_log_level`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_requests_each_route_to_a_single_shard() {
    if !on_citus() {
        return;
    }
    let app = single_shard_app(TestDb::new().await).await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing,finance", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 3}))
        .await;
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({"id": format!("e{i}"), "account": "acme", "type": "api.request",
                        "properties": {"user_id": format!("u{}", i % 4)}})
        })
        .collect();
    let (status, v) = app.send(&key, &json!({"events": events})).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = app
        .post(
            &key,
            "/v1/accounts/acme/check",
            &json!({"meter": "api_calls", "quantity": "1"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["used"], "20", "{v}");
    let (status, q) = app
        .post(
            &key,
            "/v1/accounts/acme/subscription/quotes",
            &json!({"seats": 5}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{q}");
    let (status, a) = app
        .post(
            &key,
            &format!(
                "/v1/accounts/acme/subscription/quotes/{}/accept",
                q["id"].as_str().unwrap()
            ),
            &json!({}),
            Some("seats-5"),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["subscription"]["seats"], 5);
    for path in [
        "/v1/accounts/acme/subscription",
        "/v1/accounts/acme/subscription/changes",
        "/v1/accounts/acme/usage",
        "/v1/accounts/acme/upcoming-invoice",
        "/v1/accounts/acme",
    ] {
        let (status, v) = app.get(&key, path).await;
        assert!(status == 200 || status == 204, "{path}: {status} {v}");
    }
    let invoice = a["invoices"][0].as_i64().unwrap();
    let (status, v) = app.get(&key, &format!("/v1/invoices/{invoice}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], a["amount_due_now"]);
}

/// A single-node database with customers, usage and invoices converts in place when the
/// extension arrives: the next `accrue migrate` places every table, and the rows are all
/// there, on the shards, read through the API as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_database_with_rows_converts_to_citus_on_the_next_migrate() {
    if !on_citus() {
        return;
    }
    let db = plain_database_on_the_cluster().await;
    store::run_migrations(&db.url).await.unwrap();
    let app = spawn_app_on(db);
    app.publish_plans().await;
    let key = app.key("ingest,check,billing,finance", None).await;
    let accounts: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
    for (i, a) in accounts.iter().enumerate() {
        app.subscribe(&key, a, json!({"plan": "team", "seats": 1 + i}))
            .await;
        let events: Vec<Value> = (0..=i)
            .map(|n| json!({"id": format!("{a}-{n}"), "account": a, "type": "api.request"}))
            .collect();
        let (status, v) = app.send(&key, &json!({"events": events})).await;
        assert_eq!(status, 200, "{v}");
    }
    let before = snapshot(&app, &app.base, &key, &accounts).await;
    let rows_before = app.db.count("(SELECT count(*) FROM events)").await;
    assert_eq!(rows_before, (1..=12).sum::<i64>());

    // The extension arrives; the workers are registered; accrue migrates again.
    let mut c = app.db.conn().await;
    diesel_async::SimpleAsyncConnection::batch_execute(&mut c, "CREATE EXTENSION citus")
        .await
        .unwrap();
    register_workers(&mut c).await;
    drop(c);
    assert_eq!(store::run_migrations(&app.db.url).await.unwrap(), 0);
    let placed = app
        .db
        .count("(SELECT count(*) FROM pg_dist_partition)")
        .await;
    assert_eq!(
        placed as usize,
        DISTRIBUTED.len() + REFERENCE.len() + COORDINATOR.len()
    );
    // The rows were copied to the shards, which spread over both workers.
    let shards_with_events = app
        .db
        .count(
            "(SELECT count(DISTINCT nodeport) FROM pg_dist_shard_placement p
               JOIN pg_dist_shard s USING (shardid) WHERE s.logicalrelid = 'events'::regclass)",
        )
        .await;
    assert_eq!(shards_with_events, 2, "events are spread over both workers");
    assert_eq!(
        app.db.count("(SELECT count(*) FROM events)").await,
        rows_before
    );
    // Nothing is left behind on the coordinator: Citus copies a table's rows to its shards
    // and keeps the local ones on disk, unseen, until they are truncated. (`pg_relation_size`
    // is the coordinator's own table, not its shards.)
    for (table, rows) in [
        ("events", "(SELECT count(*) FROM events)"),
        ("subscriptions", "(SELECT count(*) FROM subscriptions)"),
        ("plan_versions", "(SELECT count(*) FROM plan_versions)"),
    ] {
        assert!(app.db.count(rows).await > 0, "{table} has rows");
        let left = app
            .db
            .count(&format!("(SELECT pg_relation_size('{table}'))"))
            .await;
        assert_eq!(
            left, 0,
            "{table}: {left} bytes of rows left on the coordinator"
        );
    }
    // A fresh instance on the converted database answers as before, and keeps working.
    let (fresh, _ctx, _clock) = start_instance(&app.db.url, std::time::Duration::from_secs(1));
    assert_eq!(snapshot(&app, &fresh, &key, &accounts).await, before);
    let (status, v) = app
        .send(
            &key,
            &json!({"events": [{"id": "after", "account": "c00", "type": "api.request"}]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        app.db.count("(SELECT count(*) FROM events)").await,
        rows_before + 1
    );

    // A database converted before accrue emptied the coordinator's copy (made here as Citus
    // leaves it: a table distributed with rows in it) loses that copy at the next migrate.
    let mut c = app.db.conn().await;
    for sql in [
        "SELECT undistribute_table('events')",
        "SELECT create_distributed_table('events', 'account', colocate_with => 'accounts')",
    ] {
        diesel_async::SimpleAsyncConnection::batch_execute(&mut c, sql)
            .await
            .unwrap();
    }
    drop(c);
    let size = "(SELECT pg_relation_size('events'))";
    assert!(app.db.count(size).await > 0, "the copy was left, as before");
    assert_eq!(store::run_migrations(&app.db.url).await.unwrap(), 0);
    assert_eq!(app.db.count(size).await, 0, "the next migrate emptied it");
    assert_eq!(
        app.db.count("(SELECT count(*) FROM events)").await,
        rows_before + 1
    );
}

/// What the server at `base` says of each account: subscription, usage, invoices.
async fn snapshot(app: &TestApp, base: &str, key: &str, accounts: &[String]) -> Vec<Value> {
    let get = |path: String| async move {
        let res = app
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.json::<Value>().await.unwrap()
    };
    let mut out = Vec::new();
    for a in accounts {
        out.push(get(format!("/v1/accounts/{a}/subscription")).await);
        out.push(get(format!("/v1/accounts/{a}/usage")).await);
    }
    out.push(get("/v1/invoices?limit=100".into()).await);
    out
}

/// A database on the cluster's nodes with the extension on the workers only: what a
/// single-node accrue database looks like before its operator installs Citus.
async fn plain_database_on_the_cluster() -> TestDb {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).unwrap();
    let name = format!("t_{}", hex::encode(rnd));
    let base = pg_base();
    let login = base.rsplit_once('@').map(|(l, _)| l.to_owned()).unwrap();
    let mut servers = vec![base.clone()];
    servers.extend(citus_workers().iter().map(|w| format!("{login}@{w}")));
    for (i, server) in servers.iter().enumerate() {
        let mut admin = AsyncPgConnection::establish(&format!("{server}/postgres"))
            .await
            .unwrap();
        diesel_async::SimpleAsyncConnection::batch_execute(
            &mut admin,
            &format!("CREATE DATABASE {name}"),
        )
        .await
        .unwrap();
        if i > 0 {
            let mut w = AsyncPgConnection::establish(&format!("{server}/{name}"))
                .await
                .unwrap();
            diesel_async::SimpleAsyncConnection::batch_execute(&mut w, "CREATE EXTENSION citus")
                .await
                .unwrap();
        }
    }
    TestDb {
        url: format!("{base}/{name}"),
        name,
    }
}

async fn register_workers(c: &mut AsyncPgConnection) {
    let base = pg_base();
    let coordinator = base.rsplit_once('@').unwrap().1;
    let (h, p) = coordinator.rsplit_once(':').unwrap();
    let mut sql = format!("SELECT citus_set_coordinator_host('{h}', {p});");
    for w in citus_workers() {
        let (h, p) = w.rsplit_once(':').unwrap();
        sql.push_str(&format!("SELECT citus_add_node('{h}', {p});"));
    }
    diesel_async::SimpleAsyncConnection::batch_execute(c, &sql)
        .await
        .unwrap();
}

/// The last migration of the release that brought Citus support: a database placed on Citus
/// has at least these.
const PLACED_SINCE: &str = "2026-12-03-000024_web_sessions";

/// A database placed on Citus by an earlier release upgrades in place: with the migrations up
/// to [`PLACED_SINCE`] run and the tables placed, each later migration runs on the placed
/// tables, one at a time, each followed by the placing of what it created (the upgrade of a
/// release that ended with it). Citus refuses some `ALTER TABLE` forms on a distributed table
/// inside a multi-statement migration ([`accrue::store::citus`]); such a migration fails
/// here, not at a customer's upgrade. The upgraded database then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_later_migration_runs_on_a_database_placed_on_citus() {
    if !on_citus() {
        return;
    }
    let db = plain_database_on_the_cluster().await;
    let mut c = db.conn().await;
    diesel_async::SimpleAsyncConnection::batch_execute(&mut c, "CREATE EXTENSION citus")
        .await
        .unwrap();
    register_workers(&mut c).await;
    drop(c);
    let url = db.url.clone();
    let later: Vec<String> = tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        use diesel_migrations::MigrationHarness;
        type Blocking =
            diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>;
        let mut conn = <Blocking as Connection>::establish(&url).unwrap();
        let mut later = Vec::new();
        let mut placed_once = false;
        loop {
            let pending = conn.pending_migrations(store::MIGRATIONS).unwrap();
            let Some(next) = pending.into_iter().next() else {
                break;
            };
            let name = next.name().to_string();
            if placed_once {
                later.push(name.clone());
            }
            conn.run_migration(next.as_ref())
                .unwrap_or_else(|e| panic!("migration {name} on a database placed on Citus: {e}"));
            placed_once |= name == PLACED_SINCE;
            if placed_once {
                store::citus::place_tables(&mut conn)
                    .unwrap_or_else(|e| panic!("placing the tables after {name}: {e}"));
            }
        }
        assert!(placed_once, "no migration named {PLACED_SINCE}");
        later
    })
    .await
    .unwrap();
    assert!(
        !later.is_empty(),
        "no migration after {PLACED_SINCE}: the test ran none on a placed database"
    );
    let placed = db.count("(SELECT count(*) FROM pg_dist_partition)").await;
    assert_eq!(
        placed as usize,
        DISTRIBUTED.len() + REFERENCE.len() + COORDINATOR.len(),
        "every table is placed after {later:?}"
    );

    // The upgraded database serves: a subscription, an event, its usage.
    let app = spawn_app_on(db);
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 2}))
        .await;
    let (status, v) = app
        .send(
            &key,
            &json!({"events": [{"id": "e1", "account": "acme", "type": "api.request"}]}),
        )
        .await;
    assert_eq!((status, v["accepted"].as_i64()), (200, Some(1)), "{v}");
    let (status, usage) = app.get(&key, "/v1/accounts/acme/usage").await;
    assert_eq!(status, 200, "{usage}");
    let calls = usage["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == "api_calls")
        .map(|m| m["value"].clone());
    assert_eq!(calls, Some(json!("1")), "{usage}");
}
