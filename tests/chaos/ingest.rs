//! Ingestion under faults: PostgreSQL restarted under load, twice the measured capacity
//! offered, SIGTERM with batches in flight. Clients number their batches (`b{n}-{i}` ids) so
//! the database can be asked, batch by batch, what was stored.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCH: usize = 100;
const ACCOUNTS: usize = 50;

fn batch(n: usize) -> Value {
    let events: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({"id": format!("b{n}-{i}"), "account": format!("acct-{}", (n * BATCH + i) % ACCOUNTS),
                   "type": "api.request"})
        })
        .collect();
    json!({ "events": events })
}

/// One request's fate: its batch, status (0: no answer), whether a 503 said `Retry-After`,
/// and when it was sent and answered.
#[derive(Clone, Debug)]
struct Rec {
    batch: usize,
    status: u16,
    /// Why there was no answer (status 0).
    error: Option<String>,
    retry_after: bool,
    sent: Instant,
    answered: Instant,
}

async fn send(http: &reqwest::Client, base: &str, key: &str, n: usize) -> Rec {
    let sent = Instant::now();
    let res = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(&batch(n))
        .send()
        .await;
    let (status, retry_after, error) = match res {
        Ok(r) => (
            r.status().as_u16(),
            r.headers().contains_key("retry-after"),
            None,
        ),
        Err(e) => (0, false, Some(format!("{e:?}"))),
    };
    Rec {
        batch: n,
        status,
        error,
        retry_after,
        sent,
        answered: Instant::now(),
    }
}

/// Batches stored, by batch number: how many of its events the database holds.
async fn stored_per_batch(db_url: &str) -> BTreeMap<usize, i64> {
    use diesel::QueryableByName;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        b: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = AsyncPgConnection::establish(db_url).await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT split_part(id, '-', 1) AS b, count(*) AS n FROM events GROUP BY 1",
    )
    .load(&mut c)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| (r.b.trim_start_matches('b').parse().unwrap(), r.n))
        .collect()
}

/// No event counted twice: the rollups hold exactly one count per stored event.
async fn assert_counted_once(db_url: &str) -> i64 {
    let events = count(db_url, "(SELECT count(*) FROM events)::int8").await;
    let rolled = count(
        db_url,
        "(SELECT coalesce(sum(event_count), 0) FROM usage_rollups WHERE meter = 'api_calls')::int8",
    )
    .await;
    assert_eq!(rolled, events, "rollups count every stored event once");
    events
}

/// Scenario 1. PostgreSQL is stopped for three seconds and started again while clients ingest
/// continuously, each retrying its batch until it is acknowledged. Nothing acknowledged is
/// lost, nothing counted twice; while the database is down no request gets a 2xx, only 503
/// with `Retry-After`; ingestion resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_ingestion_loses_nothing_and_answers_only_503_while_down() {
    let _one = crate::SERIAL.lock().await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_restart");
    let key = prepare(&db, "ingest");
    let server = Server::start(&db, &[]).await;
    let base = server.base.clone();
    let log: Arc<Mutex<Vec<Rec>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (base, key, log, next, stop) = (
                base.clone(),
                key.clone(),
                log.clone(),
                next.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = send(&http, &base, &key, n).await;
                    let ok = r.status == 200;
                    log.lock().unwrap().push(r);
                    if ok {
                        n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopping = Instant::now();
    tokio::task::block_in_place(|| cluster.down());
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let starting = Instant::now();
    tokio::task::block_in_place(|| cluster.up());
    let up = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let log = log.lock().unwrap().clone();
    let statuses: BTreeMap<u16, usize> = log.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.status).or_default() += 1;
        m
    });
    assert!(
        statuses.keys().all(|s| [200, 503].contains(s)),
        "only 200 or 503: {statuses:?}"
    );
    assert!(log
        .iter()
        .filter(|r| r.status == 503)
        .all(|r| r.retry_after));
    let while_down: Vec<&Rec> = log
        .iter()
        .filter(|r| r.sent >= down && r.answered <= starting)
        .collect();
    assert!(
        !while_down.is_empty(),
        "requests were made while it was down"
    );
    assert!(
        while_down.iter().all(|r| r.status == 503),
        "no 2xx while the database is down"
    );
    let recovered = log
        .iter()
        .filter(|r| r.status == 200 && r.sent >= up)
        .map(|r| r.answered - up)
        .min()
        .expect("ingestion resumed after the restart");

    let acked: Vec<usize> = log
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.batch)
        .collect();
    let stored = stored_per_batch(&db).await;
    let lost: Vec<&usize> = acked
        .iter()
        .filter(|b| stored.get(b).copied() != Some(BATCH as i64))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged batches not stored whole: {lost:?}"
    );
    let events = assert_counted_once(&db).await;
    println!(
        "chaos/postgres-restart: {} requests {:?}; {} answered while down (all 503 with \
         Retry-After); stop took {:?}; first 2xx {:?} after the database was back; {} batches \
         acknowledged, 0 lost; {events} events stored, each counted once",
        log.len(),
        statuses,
        while_down.len(),
        down - stopping,
        recovered,
        acked.len()
    );
}

/// Scenario 7. SIGTERM while clients have batches in flight: the process finishes what it
/// accepted and exits; every acknowledged batch is stored, and every batch that got no answer is
/// stored whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_batches_in_flight_stores_each_whole_or_not_at_all() {
    let _one = crate::SERIAL.lock().await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_sigterm");
    let key = prepare(&db, "ingest");
    let mut server = Server::start(&db, &[]).await;
    let base = server.base.clone();
    let log: Arc<Mutex<Vec<Rec>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (base, key, log, next) = (base.clone(), key.clone(), log.clone(), next.clone());
            tokio::spawn(async move {
                let http = http_client();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let r = send(&http, &base, &key, n).await;
                    let answered = r.status != 0;
                    log.lock().unwrap().push(r);
                    if !answered {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.terminate();
    let exited = server.wait_exit(Duration::from_secs(40)).await;
    assert!(exited, "the process stopped within its 30 s grace");
    for c in clients {
        c.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let stored = stored_per_batch(&db).await;
    let acked: Vec<usize> = log
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.batch)
        .collect();
    let unanswered: Vec<usize> = log
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| r.batch)
        .collect();
    for b in &acked {
        assert_eq!(
            stored.get(b).copied(),
            Some(BATCH as i64),
            "acknowledged batch {b}"
        );
    }
    let mut partial = Vec::new();
    let mut whole = 0;
    for b in &unanswered {
        match stored.get(b).copied().unwrap_or(0) {
            0 => {}
            n if n == BATCH as i64 => whole += 1,
            n => partial.push((*b, n)),
        }
    }
    assert!(partial.is_empty(), "batches stored in part: {partial:?}");
    let events = assert_counted_once(&db).await;
    println!(
        "chaos/sigterm: {} batches acknowledged and stored; {} without an answer ({} of them \
         stored whole, the rest not at all); {events} events, each counted once",
        acked.len(),
        unanswered.len(),
        whole
    );
}

/// Scenario 2. Twice the measured capacity offered for 20 s (open loop: a new batch at a fixed
/// rate whatever the answers): only 2xx, 429 or 503; nothing acknowledged lost; resident memory
/// stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_capacity_offered_is_refused_cleanly_with_bounded_memory() {
    let _one = crate::SERIAL.lock().await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_overload");
    let key = prepare(&db, "ingest");
    let server = Server::start(&db, &[]).await;
    let base = server.base.clone();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // Capacity: 8 closed-loop clients for 5 s.
    let measured = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (base, key, next, measured) =
                (base.clone(), key.clone(), next.clone(), measured.clone());
            tokio::spawn(async move {
                let http = http_client();
                while Instant::now() < until {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if send(&http, &base, &key, n).await.status == 200 {
                        measured.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let capacity = measured.load(std::sync::atomic::Ordering::SeqCst) as f64 / 5.0; // batches/s
    let rate = (capacity * 2.0).max(10.0);
    let rss_before = rss_mib(server.pid()).expect("the server's resident memory is readable");

    // Twice that, open loop, for 20 s. Idle connections are dropped before the server's 5 s
    // keep-alive would close them, so a request never races a closing connection.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let log: Arc<Mutex<Vec<Rec>>> = Arc::default();
    let mut inflight = Vec::new();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut rss_max = rss_before;
    // At most 512 connections at once (as a load tool holds a fixed set of connections).
    let slots = Arc::new(tokio::sync::Semaphore::new(512));
    while started.elapsed() < Duration::from_secs(20) {
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let (http, base, key, log) = (http.clone(), base.clone(), key.clone(), log.clone());
            let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let slot = slots.clone().acquire_owned().await.unwrap();
            inflight.push(tokio::spawn(async move {
                let r = send(&http, &base, &key, n).await;
                log.lock().unwrap().push(r);
                drop(slot);
            }));
            sent += 1;
        }
        rss_max = rss_max.max(rss_mib(server.pid()).expect("the server is running"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for f in inflight {
        f.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let statuses: BTreeMap<u16, usize> = log.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.status).or_default() += 1;
        m
    });
    let no_answer: Vec<&String> = log
        .iter()
        .filter_map(|r| r.error.as_ref())
        .take(3)
        .collect();
    assert!(
        statuses.keys().all(|s| [200, 429, 503].contains(s)),
        "only 2xx, 429 or 503: {statuses:?}; no answer: {no_answer:?}"
    );
    let stored = stored_per_batch(&db).await;
    let acked: Vec<usize> = log
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.batch)
        .collect();
    for b in &acked {
        assert_eq!(
            stored.get(b).copied(),
            Some(BATCH as i64),
            "acknowledged batch {b}"
        );
    }
    assert_counted_once(&db).await;
    assert!(
        rss_max < 400,
        "resident memory stayed bounded: {rss_max} MiB"
    );
    let p99 = {
        let mut lat: Vec<Duration> = log.iter().map(|r| r.answered - r.sent).collect();
        lat.sort();
        lat.get(lat.len() * 99 / 100).copied().unwrap_or_default()
    };
    println!(
        "chaos/overload: capacity {capacity:.0} batches/s ({:.0} events/s) measured; offered \
         {rate:.0}/s for 20 s ({sent} batches): {statuses:?}; {} acknowledged, 0 lost; RSS \
         {rss_before} → max {rss_max} MiB; p99 answer {p99:?}",
        capacity * BATCH as f64,
        acked.len()
    );
}

/// Scenario 8. A batch over many accounts is split across the ingest lanes. One lane is held by
/// a row lock while the others commit their parts; the client gives up waiting and the process
/// gets SIGTERM. It must not exit before the held lane commits the rest once the lock goes: the
/// batch ends stored whole. (actix keeps a request whose client left in flight until its
/// handler ends, so the HTTP server's graceful wait covers this one; the ingest drain after it
/// covers lanes given events by handlers that ended first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_lane_is_held_still_commits_every_part_of_a_split_batch() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let _one = crate::SERIAL.lock().await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_split");
    let key = prepare(&db, "ingest");
    let mut server = Server::start(&db, &[]).await;
    const N: usize = 16;
    let at = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let events = |prefix: &str| {
        let evs: Vec<Value> = (0..N)
            .map(|i| {
                json!({"id": format!("{prefix}-{i}"), "account": format!("split-{i}"),
                            "type": "api.request", "timestamp": at})
            })
            .collect();
        json!({ "events": evs })
    };
    let http = http_client();
    let post = |body: Value, timeout: Duration| {
        http.post(format!("{}/v1/events", server.base))
            .bearer_auth(&key)
            .timeout(timeout)
            .json(&body)
            .send()
    };
    // Every account's rollup row of that hour exists.
    let seeded = post(events("seed"), Duration::from_secs(30)).await.unwrap();
    assert_eq!(seeded.status(), 200);
    // One account's row held: the lane that owns it waits on the lock.
    let mut holder = AsyncPgConnection::establish(&db).await.unwrap();
    holder
        .batch_execute("BEGIN; SELECT * FROM usage_rollups WHERE account = 'split-0' FOR UPDATE")
        .await
        .unwrap();
    let sent = post(events("s"), Duration::from_millis(1500)).await;
    assert!(sent.is_err(), "the batch waits on the held lane: {sent:?}");
    let stored = || {
        count(
            &db,
            "(SELECT count(*) FROM events WHERE id LIKE 's-%')::int8",
        )
    };
    let before = stored().await;
    assert!(
        before > 0 && before < N as i64,
        "the other lanes committed their parts, the held one not yet: {before} of {N}"
    );
    server.terminate();
    tokio::time::sleep(Duration::from_secs(2)).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        server.wait_exit(Duration::from_secs(40)).await,
        "the process stopped within its 30 s grace"
    );
    assert_eq!(stored().await, N as i64, "the split batch is stored whole");
    assert_counted_once(&db).await;
}

/// Scenario 9. Ctrl-C (SIGINT) stops the server as SIGTERM does: a batch waiting on a held row
/// lock when the first SIGINT comes still gets its answer once the lock goes, and is stored.
/// A second SIGINT stops the process at once, without waiting for a lane still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_gracefully_and_a_second_sigint_stops_at_once() {
    use diesel_async::SimpleAsyncConnection;
    let _one = crate::SERIAL.lock().await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_sigint");
    let key = prepare(&db, "ingest");
    let http = http_client();
    let stored = |prefix: &str| {
        let sql = format!("(SELECT count(*) FROM events WHERE id LIKE '{prefix}-%')::int8");
        let db = db.clone();
        async move { count(&db, &sql).await }
    };
    for (round, second) in [("graceful", false), ("at-once", true)] {
        let mut server = Server::start(&db, &[]).await;
        let mut holder =
            hold_a_rollup_row(&http, &server, &key, &db, &format!("seed-{round}")).await;
        let request = tokio::spawn(
            http.post(format!("{}/v1/events", server.base))
                .bearer_auth(&key)
                .timeout(Duration::from_secs(40))
                .json(&held_batch(round))
                .send(),
        );
        waiting_on_a_lock(&db).await;
        assert!(
            !request.is_finished(),
            "{round}: the batch was answered before the signal, not held: {:?}",
            request.await.unwrap().map(|r| r.status())
        );
        server.interrupt();
        if second {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let answered_early = request.is_finished();
            server.interrupt();
            assert!(
                server.wait_exit(Duration::from_secs(5)).await,
                "a second SIGINT stops the process at once, the lane still held"
            );
            holder.batch_execute("ROLLBACK").await.unwrap();
            let answer = request.await.unwrap();
            let answer = match answer {
                Ok(r) => Some((r.status(), r.text().await.unwrap_or_default())),
                Err(_) => None,
            };
            assert!(
                answer.is_none(),
                "no answer after a stop at once (answered within 300 ms of the first \
                 SIGINT: {answered_early}): {answer:?}"
            );
            let n = stored(round).await;
            assert!(
                n == 0 || n == 4,
                "the batch is stored whole or not at all: {n}"
            );
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(
                !server.wait_exit(Duration::from_millis(10)).await,
                "the process waits for the request in flight"
            );
            holder.batch_execute("ROLLBACK").await.unwrap();
            let answer = request
                .await
                .unwrap()
                .expect("the request in flight is answered");
            assert_eq!(answer.status(), 200);
            assert!(
                server.wait_exit(Duration::from_secs(30)).await,
                "the process stopped within its grace"
            );
            assert_eq!(stored(round).await, 4, "the answered batch is stored");
        }
    }
    assert_counted_once(&db).await;
}

/// Scenario 10. The shutdown grace is one budget counted from the stop signal: a batch whose
/// lane stays held past it keeps the HTTP server waiting the whole grace, and the ingest drain
/// then gets only what is left of it, so the process exits one grace after SIGTERM, not two.
/// The held batch is not acknowledged and none of it is stored (its transaction never
/// commits); the batch before it is. A grace that is not a number of seconds stops `serve`
/// before it starts, naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_grace_is_counted_once_from_the_signal() {
    use diesel_async::SimpleAsyncConnection;
    let _one = crate::SERIAL.lock().await;
    let cluster = Cluster::start();
    let db = cluster.database("chaos_grace");
    let key = prepare(&db, "ingest");
    let mut refused = std::process::Command::new(release_binary())
        .arg("serve")
        .env("DATABASE_URL", &db)
        .env("ACCRUE_BIND", "127.0.0.1:0")
        .env("ACCRUE_SHUTDOWN_GRACE_SECS", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = refused.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut said).unwrap();
    assert!(
        status.is_some_and(|s| !s.success())
            && said.contains("ACCRUE_SHUTDOWN_GRACE_SECS must be 1 to 3600"),
        "a grace of 0 stops serve before it starts: {status:?} {said}"
    );
    const GRACE: u64 = 4;
    let grace = GRACE.to_string();
    let mut server = Server::start(&db, &[("ACCRUE_SHUTDOWN_GRACE_SECS", grace.as_str())]).await;
    let http = http_client();
    let mut holder = hold_a_rollup_row(&http, &server, &key, &db, "seed").await;
    let request = tokio::spawn(
        http.post(format!("{}/v1/events", server.base))
            .bearer_auth(&key)
            .timeout(Duration::from_secs(30))
            .json(&held_batch("held"))
            .send(),
    );
    waiting_on_a_lock(&db).await;
    let signalled = Instant::now();
    server.terminate();
    assert!(
        server.wait_exit(Duration::from_secs(3 * GRACE)).await,
        "the process exits once its grace is spent"
    );
    let took = signalled.elapsed();
    holder.batch_execute("ROLLBACK").await.unwrap();
    // Not before the grace (it waited for the request in flight), and well before a second
    // grace would have ended (the drain did not start a grace of its own).
    assert!(
        took >= Duration::from_millis(GRACE * 1000 - 500)
            && took < Duration::from_millis(GRACE * 1000 * 3 / 2),
        "exited {took:?} after SIGTERM with a {GRACE} s grace"
    );
    let answer = request.await.unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| r.status() != 200),
        "the held batch is not acknowledged: {answer:?}"
    );
    let stored = |prefix: &str| {
        let sql = format!("(SELECT count(*) FROM events WHERE id LIKE '{prefix}-%')::int8");
        let db = db.clone();
        async move { count(&db, &sql).await }
    };
    assert_eq!(
        (stored("seed").await, stored("held").await),
        (4, 0),
        "the acknowledged batch is stored, the held one is not"
    );
    assert_counted_once(&db).await;
}

/// Waits until a session of the database waits on a held rollup row (a lane behind the
/// holder's `FOR UPDATE`): a row lock's wait, in a statement that writes the rollups. Any lock
/// wait counted before, so another session's brief wait (a relation's extension, an advisory
/// lock) could let the signal come before the batch reached its lane: scenario 9 failed so
/// once on Citus, the server gone before the request it should have waited for.
/// On Citus the waiting session is the worker's, behind the coordinator's:
/// `citus_stat_activity` shows the sessions of every node.
async fn waiting_on_a_lock(db: &str) {
    let view = if on_citus() {
        "citus_stat_activity"
    } else {
        "pg_stat_activity"
    };
    let sql = format!(
        "(SELECT count(*) FROM {view}
           WHERE datname = current_database() AND wait_event_type = 'Lock'
             AND wait_event IN ('transactionid', 'tuple') AND query LIKE '%usage_rollups%')::int8"
    );
    let sql = sql.as_str();
    for _ in 0..200 {
        if count(db, sql).await > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no session waited on the held row within 10 s");
}

/// Four `api.request` events of the account `held`, ids `{prefix}-0` to `{prefix}-3`, ten
/// minutes old: every batch of them adds to the same rollup row.
fn held_batch(prefix: &str) -> Value {
    let at = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let evs: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("{prefix}-{i}"), "account": "held", "type": "api.request", "timestamp": at}))
        .collect();
    json!({ "events": evs })
}

/// Stores a first batch of `held` (ids `{seed}-*`) through `server`, so its rollup row exists,
/// then locks that row in an open transaction: the lane writing `held` waits until the
/// returned connection rolls back.
async fn hold_a_rollup_row(
    http: &reqwest::Client,
    server: &Server,
    key: &str,
    db: &str,
    seed: &str,
) -> diesel_async::AsyncPgConnection {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let seeded = http
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(key)
        .json(&held_batch(seed))
        .send()
        .await
        .unwrap();
    assert_eq!(seeded.status(), 200);
    let mut holder = AsyncPgConnection::establish(db).await.unwrap();
    holder
        .batch_execute("BEGIN; SELECT * FROM usage_rollups WHERE account = 'held' FOR UPDATE")
        .await
        .unwrap();
    holder
}
