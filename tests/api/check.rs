//! POST /v1/accounts/{account}/check: limits and features from the in-process cache.

use crate::helpers::*;
use serde_json::{json, Value};

async fn check(app: &TestApp, key: &str, account: &str, body: Value) -> Value {
    let (status, v) = app
        .post(key, &format!("/v1/accounts/{account}/check"), &body, None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Status and error code of a check that is refused as a request.
async fn refusal(app: &TestApp, key: &str, body: Value) -> (u16, String) {
    let (status, e) = app.post(key, "/v1/accounts/acme/check", &body, None).await;
    (
        status,
        e["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_flips_to_limit_exceeded_right_after_the_crossing_events_are_acknowledged() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "free"})).await;
    // Free allows 3 active users (hard). Two so far: the cache is loaded with them.
    let users = |ids: &[&str]| json!({"events": ids.iter().map(|u| json!({"id": format!("ua-{u}"), "account": "acme", "type": "user.active", "properties": {"user_id": u}})).collect::<Vec<_>>()});
    app.send(&key, &users(&["ann", "bob"])).await;
    let v = check(
        &app,
        &key,
        "acme",
        json!({"meter": "active_users", "quantity": "1"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"allowed": true, "reason": "within_limit", "used": "2", "limit": "3", "remaining": "1", "upgrade_plan": null})
    );
    // The third distinct user crosses the limit: the very next check sees it.
    let (status, _) = app.send(&key, &users(&["ann", "cid"])).await;
    assert_eq!(status, 200);
    let v = check(
        &app,
        &key,
        "acme",
        json!({"meter": "active_users", "quantity": "1"}),
    )
    .await;
    assert_eq!(v["allowed"], false);
    assert_eq!(v["reason"], "limit_exceeded");
    assert_eq!(
        (v["used"].as_str(), v["remaining"].as_str()),
        (Some("3"), Some("0"))
    );
    assert_eq!(v["upgrade_plan"], "team");
    // A count meter crossing its hard limit: 10,000 API calls on Free.
    for b in 0..10 {
        let evs: Vec<Value> = (0..1000)
            .map(|i| json!({"id": format!("r{b}-{i}"), "account": "acme", "type": "api.request"}))
            .collect();
        let (status, _) = app.send(&key, &json!({"events": evs})).await;
        assert_eq!(status, 200);
        if b == 4 {
            let v = check(&app, &key, "acme", json!({"meter": "api_calls"})).await;
            assert_eq!(
                (v["allowed"].as_bool(), v["used"].as_str()),
                (Some(true), Some("5000"))
            );
        }
    }
    let v = check(
        &app,
        &key,
        "acme",
        json!({"meter": "api_calls", "quantity": 1}),
    )
    .await;
    assert_eq!(
        (
            v["allowed"].as_bool(),
            v["reason"].as_str(),
            v["used"].as_str()
        ),
        (Some(false), Some("limit_exceeded"), Some("10000"))
    );
    assert_eq!(
        check(
            &app,
            &key,
            "acme",
            json!({"meter": "api_calls", "quantity": 0})
        )
        .await["allowed"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limits_features_and_missing_subscriptions() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    let v = check(&app, &key, "nobody", json!({"feature": "sso"})).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("no_subscription"))
    );
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 3}))
        .await;
    let v = check(&app, &key, "acme", json!({"feature": "sso"})).await;
    assert_eq!(v["reason"], "feature_not_in_plan");
    assert_eq!(v["upgrade_plan"], "business");
    let v = check(&app, &key, "acme", json!({"feature": "audit_log"})).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("within_limit"))
    );
    // Team's active_users limit (50) is soft: allowed, overage billed.
    let v = check(
        &app,
        &key,
        "acme",
        json!({"meter": "active_users", "quantity": "51"}),
    )
    .await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("soft_limit_exceeded"))
    );
    // A meter without a limit on the plan.
    let v = check(
        &app,
        &key,
        "acme",
        json!({"meter": "compute_minutes", "quantity": "1000000"}),
    )
    .await;
    assert_eq!(
        (v["allowed"].as_bool(), v["limit"].is_null()),
        (Some(true), true)
    );
    assert_eq!(
        refusal(&app, &key, json!({"meter": "nope"})).await,
        (422, "unknown_meter".to_owned())
    );
    assert_eq!(
        refusal(&app, &key, json!({"meter": "api_calls", "feature": "sso"})).await,
        (422, "invalid_check".to_owned())
    );
    assert_eq!(
        refusal(&app, &key, json!({"meter": "api_calls", "quantity": "x"})).await,
        (422, "invalid_quantity".to_owned())
    );
    // An upgrade accepted through a quote shows in the next check at once.
    let (_, q) = app
        .post(
            &key,
            "/v1/accounts/acme/subscription/quotes",
            &json!({"plan": "business"}),
            None,
        )
        .await;
    let (status, _) = app
        .post(
            &key,
            &format!(
                "/v1/accounts/acme/subscription/quotes/{}/accept",
                q["id"].as_str().unwrap()
            ),
            &json!({}),
            Some("up"),
        )
        .await;
    assert_eq!(status, 200);
    let v = check(&app, &key, "acme", json!({"feature": "sso"})).await;
    assert_eq!(v["allowed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_sees_events_and_changes_after_its_next_refresh_round() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "free"})).await;
    // B's own refresh rounds are an hour apart: this test drives them.
    let (b_base, b_ctx, _) = start_instance(&app.db.url, std::time::Duration::from_secs(3600));
    let b_check = |body: Value| {
        let (http, url, key) = (
            app.http.clone(),
            format!("{b_base}/v1/accounts/acme/check"),
            key.clone(),
        );
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let v = b_check(json!({"meter": "api_calls"})).await;
    assert_eq!(v["used"], "0");
    // Ingested through instance A: B answers from its cache until its refresh round.
    let evs: Vec<Value> = (0..7)
        .map(|i| json!({"id": format!("x{i}"), "account": "acme", "type": "api.request"}))
        .collect();
    app.send(&key, &json!({"events": evs})).await;
    assert_eq!(b_check(json!({"meter": "api_calls"})).await["used"], "0");
    accrue::services::check::refresh_all(&b_ctx).await.unwrap();
    assert_eq!(b_check(json!({"meter": "api_calls"})).await["used"], "7");
    // A plan change through A reaches B the same way.
    let (_, q) = app
        .post(
            &key,
            "/v1/accounts/acme/subscription/quotes",
            &json!({"plan": "business", "seats": 10}),
            None,
        )
        .await;
    let (status, _) = app
        .post(
            &key,
            &format!(
                "/v1/accounts/acme/subscription/quotes/{}/accept",
                q["id"].as_str().unwrap()
            ),
            &json!({}),
            Some("b"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(b_check(json!({"feature": "sso"})).await["allowed"], false);
    accrue::services::check::refresh_all(&b_ctx).await.unwrap();
    assert_eq!(b_check(json!({"feature": "sso"})).await["allowed"], true);
    // And on A itself the change showed at once.
    assert_eq!(
        check(&app, &key, "acme", json!({"feature": "sso"})).await["allowed"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_read_whatever_the_content_type_says() {
    let app = spawn_app().await;
    let key = app.key("check", None).await;
    // `curl -d` sends application/x-www-form-urlencoded; the README's examples rely on this.
    let res = app
        .http
        .post(app.url("/v1/accounts/acme/check"))
        .bearer_auth(&key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"feature": "sso"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["reason"], "no_subscription");
    let res = app
        .http
        .post(app.url("/v1/accounts/acme/check"))
        .bearer_auth(&key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
}

/// Security review M7: a refresh round read every distinct key of every cached account's period
/// (an account with millions of users cost gigabytes a second). A round now reads only the keys
/// written since the previous one, and still counts each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_round_reads_only_the_distinct_keys_written_since_the_last() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 3}))
        .await;
    let users = |prefix: &str, ids: std::ops::Range<u32>| {
        json!({"events": ids.map(|u| json!({
            "id": format!("{prefix}-{u}"), "account": "acme", "type": "user.active",
            "properties": {"user_id": format!("user-{u}")}
        })).collect::<Vec<_>>()})
    };
    app.send(&key, &users("first", 0..200)).await;
    let (b_base, b_ctx, _) = start_instance(&app.db.url, std::time::Duration::from_secs(3600));
    let b_used = || {
        let (http, url, key) = (
            app.http.clone(),
            format!("{b_base}/v1/accounts/acme/check"),
            key.clone(),
        );
        async move {
            let v: Value = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"meter": "active_users"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["used"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(b_used().await, "200");
    assert_eq!(
        b_ctx.checks.keys_read(),
        200,
        "the first load reads them all"
    );
    // A minute passes: the keys are older than the rounds' grace for late commits.
    app.db
        .update_all(
            "usage_unique_keys",
            "SET written_at = written_at - interval '1 minute'",
        )
        .await;
    accrue::services::check::refresh_all(&b_ctx).await.unwrap();
    accrue::services::check::refresh_all(&b_ctx).await.unwrap();
    assert_eq!(b_ctx.checks.keys_read(), 200, "no new key, none read");
    assert_eq!(b_used().await, "200");
    // Through A: three new users and two already counted (under new event ids).
    app.send(&key, &users("second", 198..203)).await;
    accrue::services::check::refresh_all(&b_ctx).await.unwrap();
    assert_eq!(b_used().await, "203", "each user counted once");
    let read = b_ctx.checks.keys_read() - 200;
    assert!(
        (3..=5).contains(&read),
        "the round read the new keys only, not the period's 203: {read}"
    );
}

/// Two requests committed in one group carry the same new id: the check counts that event
/// once, as the database does. The lane is held on the account's rollup row while both
/// queue behind it, so they commit together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_sent_by_two_requests_of_one_group_is_counted_once_by_the_check() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    app.subscribe(&key, "acme", json!({"plan": "team", "seats": 3}))
        .await;
    let call = |id: &str| json!({"events": [{"id": id, "account": "acme", "type": "api.request"}]});
    let (status, v) = app.send(&key, &call("seed")).await;
    assert_eq!(status, 200, "{v}");
    let ask = json!({"meter": "api_calls", "quantity": "1"});
    assert_eq!(check(&app, &key, "acme", ask.clone()).await["used"], "1");
    let blocker = app.db.hold_rollups("acme").await;
    let send = |id: &str| app.send_in_background(&key, call(id));
    let held = send("held");
    // The lane took it (nothing queued, one event in flight) and waits on the row.
    let ingest = &app.ctx.ingest;
    let queued = || ingest.queue_depths().iter().sum::<usize>();
    wait_until(
        || ingest.in_flight_events() == 1 && queued() == 0,
        || "the lane never took it".into(),
    )
    .await;
    let (a, b) = (send("dup"), send("dup"));
    wait_until(|| queued() >= 2, || "the copies never queued".into()).await;
    blocker.release().await;
    assert_eq!(held.await.unwrap()["accepted"], 1);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let accepted = a["accepted"].as_u64().unwrap() + b["accepted"].as_u64().unwrap();
    let duplicates = a["duplicates"].as_u64().unwrap() + b["duplicates"].as_u64().unwrap();
    assert_eq!((accepted, duplicates), (1, 1), "{a} {b}");
    // seed, held and dup: three calls, counted at once (before any refresh could mend it).
    assert_eq!(check(&app, &key, "acme", ask).await["used"], "3");
}

/// A check reaches its answer through one of two doors: a POST whose account needs no
/// decoding is served without the router (`http::accounts::check_direct`), any other request
/// through the route table. Both answer alike, step for step: the key before the body, the
/// body before the key's scope and reach. (Passes before and after the direct door was added:
/// it guards that the two stay the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_doors_of_the_check_route_answer_alike() {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    let ingest_only = app.key("ingest", None).await;
    let other_account = app.key("check", Some("globex")).await;
    app.subscribe(&key, "acme", json!({"plan": "free"})).await;
    let body = json!({"meter": "api_calls", "quantity": "2"});
    // Raw: the client must not normalise the path (`url` keeps `%61`), and may send no key.
    // Each answer is its status, its content type and its error code (or its body).
    let send = |path: &'static str, key: Option<String>, body: String| {
        let mut r = app.http.post(app.url(path)).body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let res = r.send().await.unwrap();
            let status = res.status().as_u16();
            let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
            let v: Value = res.json().await.unwrap_or(Value::Null);
            let what = match v["error"]["code"].as_str() {
                Some(code) => json!(code),
                None => v,
            };
            (status, kind, what)
        }
    };
    let big = json!({"meter": "api_calls", "quantity": "1".repeat(70_000)}).to_string();
    let mut answers = Vec::new();
    // `%61` is `a`: the same account, through the router.
    for path in ["/v1/accounts/acme/check", "/v1/accounts/%61cme/check"] {
        let k = |k: &String| Some(k.clone());
        answers.push(vec![
            send(path, k(&key), body.to_string()).await,
            // The key before the body.
            send(path, None, "{not json".into()).await,
            // The body before the key's scope and reach.
            send(path, k(&ingest_only), "{not json".into()).await,
            send(path, k(&other_account), "{not json".into()).await,
            send(path, k(&other_account), big.clone()).await,
            send(
                path,
                k(&other_account),
                json!({"meter": "api_calls", "extra": 1}).to_string(),
            )
            .await,
            // Then the scope, the reach, the service's own refusals.
            send(path, k(&ingest_only), body.to_string()).await,
            send(path, k(&other_account), body.to_string()).await,
            send(path, k(&key), json!({"meter": "api_cals"}).to_string()).await,
        ]);
    }
    let json_kind = "application/json".to_owned();
    let expected: Vec<(u16, String, Value)> = [
        (
            200,
            json!({"allowed": true, "reason": "within_limit", "used": "0", "limit": "10000",
                   "remaining": "10000", "upgrade_plan": null}),
        ),
        (401, json!("unauthenticated")),
        (400, json!("invalid_json")),
        (400, json!("invalid_json")),
        (413, json!("payload_too_large")),
        (422, json!("unknown_field")),
        (403, json!("forbidden")),
        (404, json!("not_found")),
        (422, json!("unknown_meter")),
    ]
    .into_iter()
    .map(|(status, what)| (status, json_kind.clone(), what))
    .collect();
    assert_eq!(answers[0], expected, "the direct door");
    assert_eq!(answers[1], expected, "through the router");
    // Other methods are the route table's: 405 naming POST.
    let res = app
        .http
        .get(app.url("/v1/accounts/acme/check"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
    assert_eq!(res.headers()["allow"], "POST");
}

/// A check of one API call, as the service takes it.
fn api_call() -> accrue::services::check::CheckRequest {
    serde_json::from_value(json!({"meter": "api_calls", "quantity": "1"})).unwrap()
}

/// An app whose account `busy` is on Free with `calls` API calls stored and is not cached;
/// the key (ingest, check, billing).
async fn busy_account(calls: usize) -> (TestApp, String) {
    let app = spawn_app().await;
    app.publish_plans().await;
    let key = app.key("ingest,check,billing", None).await;
    app.subscribe(&key, "busy", json!({"plan": "free"})).await;
    if calls > 0 {
        let calls: Vec<Value> = (0..calls)
            .map(|i| json!({"id": format!("call-{i}"), "account": "busy", "type": "api.request"}))
            .collect();
        let (status, body) = app.send(&key, &json!({ "events": calls })).await;
        assert_eq!(status, 200, "{body}");
    }
    app.ctx.checks.invalidate("busy");
    (app, key)
}

/// Checks that find one account uncached at once (a burst on an account that was idle, or
/// whose subscription just changed) read it from the database once between them, not once
/// each: 32 checks started together load it once, and every one answers with its usage.
/// Before, each loaded it (32 reads, each holding a pooled connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_miss_one_account_at_once_read_it_once() {
    // Free allows 10,000 API calls.
    let (app, key) = busy_account(3).await;
    let before = app.ctx.checks.loads();
    let answers = futures_util::future::join_all(
        (0..32).map(|_| accrue::services::check::check(&app.ctx, "busy", api_call())),
    )
    .await;
    for a in &answers {
        let a = a.as_ref().expect("a check failed");
        assert!(a.allowed);
        assert_eq!(a.used, Some(rust_decimal::Decimal::from(3)));
        assert_eq!(a.remaining, Some(rust_decimal::Decimal::from(10_000 - 3)));
    }
    assert_eq!(app.ctx.checks.loads() - before, 1, "reads of the account");
    // Once cached, checks read nothing.
    check(&app, &key, "busy", json!({"meter": "api_calls"})).await;
    assert_eq!(app.ctx.checks.loads() - before, 1, "reads of the account");
}

/// When writes of the account keep overlapping the read that checks wait on (so it installs
/// nothing: the entry might miss a write in flight), the checks that came before it began
/// answer with its entry, which holds every event committed before then, instead of each
/// reading again in turn; checks that come later read again. Eight checks started together
/// while the account is being written: the first reads it (every attempt overlapped), the
/// second came after that read began and reads again, and the other six answer with the
/// second's entry: two reads of `LOAD_ATTEMPTS` attempts, where each reading in turn made
/// eight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_waiting_on_a_read_that_writes_kept_overlapping_answer_with_its_entry() {
    use accrue::services::check::LOAD_ATTEMPTS;
    let (app, key) = busy_account(3).await;
    // A write of the account in flight, for as long as the guard lives: no read installs.
    let writing = app.ctx.checks.write_guard("busy");
    let before = app.ctx.checks.loads();
    let answers = futures_util::future::join_all(
        (0..8).map(|_| accrue::services::check::check(&app.ctx, "busy", api_call())),
    )
    .await;
    for a in &answers {
        let a = a.as_ref().expect("a check failed");
        assert!(a.allowed);
        assert_eq!(a.used, Some(rust_decimal::Decimal::from(3)));
    }
    let attempts = app.ctx.checks.loads() - before;
    assert_eq!(attempts, 2 * LOAD_ATTEMPTS as u64, "reads of the account");
    // Nothing was cached: a later check (at a new gate, the eight have answered) reads again.
    check(&app, &key, "busy", json!({"meter": "api_calls"})).await;
    assert_eq!(
        app.ctx.checks.loads() - before,
        attempts + LOAD_ATTEMPTS as u64
    );
    // Once the write ends, a check reads the account once and caches it.
    drop(writing);
    let v = check(&app, &key, "busy", json!({"meter": "api_calls"})).await;
    assert_eq!(v["used"], "3", "{v}");
    check(&app, &key, "busy", json!({"meter": "api_calls"})).await;
    assert_eq!(
        app.ctx.checks.loads() - before,
        attempts + LOAD_ATTEMPTS as u64 + 1
    );
}

/// When the read that checks of one account wait on fails, each of them answers with its
/// failure at once, without reading again (during a database outage, one read per account
/// rather than one per check in turn, each waiting out its own failure); the failure is not
/// kept once they have answered: the next check reads the account and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_waiting_on_a_failed_read_answer_with_its_failure() {
    use diesel_async::SimpleAsyncConnection;
    let (app, key) = busy_account(0).await;
    let before = app.ctx.checks.loads();
    // The read blocks on the subscriptions table, and its connection is ended under it.
    let mut holder = app.db.conn().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE subscriptions IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let holder_pid: i32 = diesel_async::RunQueryDsl::get_result(
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "pg_backend_pid()",
        )),
        &mut holder,
    )
    .await
    .unwrap();
    // The sessions the holder blocks (this test's database only: others run beside it).
    let blocked = format!(
        "(SELECT COUNT(*) FROM pg_stat_activity WHERE pg_blocking_pids(pid) @> ARRAY[{holder_pid}])"
    );
    let (answers, _) = tokio::join!(
        futures_util::future::join_all((0..8).map(|_| accrue::services::check::check(
            &app.ctx,
            "busy",
            api_call()
        )),),
        async {
            crate::fake_stripe::eventually("a read blocked on the lock", || async {
                (app.db.count(&blocked).await == 1).then_some(())
            })
            .await;
            app.db
                .count(&format!(
                    "(SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE pg_blocking_pids(pid) @> ARRAY[{holder_pid}])"
                ))
                .await;
        }
    );
    let failed = answers.iter().filter(|a| a.is_err()).count();
    assert_eq!(failed, 8, "checks answered without the read they waited on");
    assert_eq!(app.ctx.checks.loads() - before, 1, "reads of the account");
    holder.batch_execute("COMMIT").await.unwrap();
    let v = check(&app, &key, "busy", json!({"meter": "api_calls"})).await;
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["limit"], "10000", "{v}");
    assert_eq!(app.ctx.checks.loads() - before, 2, "reads of the account");
}
