//! `outbox`, `outbox_sequencer`, `webhook_endpoints`, `webhook_deliveries`.

use super::schema::{
    limit_alerts, outbox, outbox_sequencer, webhook_deliveries, webhook_endpoints,
};
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde::Serialize;

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewEvent {
    pub account: String,
    pub event_id: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Writes events to the outbox: on one PostgreSQL in one statement over arrays (a multi-row
/// `VALUES` list of thousands of values spends its time in the parser), on Citus as `VALUES`
/// in chunks, which Citus splits by shard.
pub async fn insert_events(
    conn: &mut AsyncPgConnection,
    rows: &[NewEvent],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    if super::citus::active() {
        for chunk in rows.chunks(2000) {
            diesel::insert_into(outbox::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        return Ok(());
    }
    use diesel::sql_types::{Array, Jsonb, Text, Timestamptz};
    super::prepared::prepared(
        "INSERT INTO outbox (account, event_id, kind, payload, created_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[])",
    )
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.account))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.event_id))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.kind))
    .bind::<Array<Jsonb>, _>(super::column(rows, |r| &r.payload))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.created_at))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = outbox)]
pub struct EventRow {
    pub account: String,
    #[serde(skip)]
    pub id: i64,
    pub event_id: String,
    pub kind: String,
    pub payload: serde_json::Value,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub created_at: DateTime<Utc>,
    pub seq: Option<i64>,
}

/// Gives committed, unsequenced events their place in the feed, in the order the sequencer
/// sees them (one sequencer at a time: the counter row is locked). An event committed after a
/// round gets a later number, so a reader's cursor never passes over it. Returns how many.
pub async fn sequence(conn: &mut AsyncPgConnection) -> Result<i64, StoreError> {
    let round = conn
        .transaction::<i64, StoreError, _>(async |c| {
            let next: i64 = outbox_sequencer::table
                .select(outbox_sequencer::next_seq)
                .for_update()
                .first(c)
                .await?;
            // The previous round must be visible on every shard before this one numbers
            // anything. On Citus the coordinator commits a round (releasing the counter) before
            // its workers do; numbering on meanwhile would let a reader of one shard see this
            // round's events there before the previous round's, and pass them. Rounds number
            // at most `ROUND` events, so the last `ROUND` numbers hold the whole previous round.
            // (One PostgreSQL commits a round at once: there this always holds.)
            let lo = (next - ROUND).max(1);
            let visible: i64 = outbox::table
                .filter(outbox::seq.ge(lo))
                .count()
                .get_result(c)
                .await?;
            if visible != next - lo {
                return Err(StoreError::Message(OVERTAKEN.into()));
            }
            // `o.seq IS NULL` again in the UPDATE: on Citus the coordinator commits a round
            // before its workers do, so the next round can find that round's rows still
            // unnumbered, wait for them, and would renumber them. It skips them instead, and a
            // round that numbered fewer rows than it chose rolls back (its numbers would leave
            // a gap that readers wait at forever); the next round numbers the rest.
            let done: Numbered = super::prepared::prepared(
                "WITH todo AS (
                    SELECT account, id, row_number() OVER (ORDER BY id) AS rn
                      FROM outbox WHERE seq IS NULL ORDER BY id LIMIT $2),
                 upd AS (
                    UPDATE outbox o SET seq = $1 + todo.rn - 1
                      FROM todo
                     WHERE o.account = todo.account AND o.id = todo.id AND o.seq IS NULL
                    RETURNING 1)
                 SELECT (SELECT COUNT(*) FROM upd) AS n, (SELECT COUNT(*) FROM todo) AS chosen",
            )
            .bind::<BigInt, _>(next)
            .bind::<BigInt, _>(ROUND)
            .get_result(c)
            .await?;
            if done.n != done.chosen {
                return Err(StoreError::Message(OVERTAKEN.into()));
            }
            if done.n > 0 {
                diesel::update(outbox_sequencer::table)
                    .set(outbox_sequencer::next_seq.eq(next + done.n))
                    .execute(c)
                    .await?;
            }
            Ok(done.n)
        })
        .await;
    match round {
        Err(StoreError::Message(m)) if m == OVERTAKEN => Ok(0),
        other => other,
    }
}

/// A sequencing round that found the previous round not yet visible everywhere, or rows
/// another round had numbered meanwhile: it numbers nothing, and a later round goes on.
const OVERTAKEN: &str = "sequencing overtook a round not yet committed on every shard";

/// The most events one sequencing round numbers.
const ROUND: i64 = 10_000;

#[derive(QueryableByName)]
struct Numbered {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    chosen: i64,
}

/// Sequenced events after `after`, in order.
pub async fn feed(
    conn: &mut AsyncPgConnection,
    after: i64,
    limit: i64,
    account: Option<&str>,
) -> Result<Vec<EventRow>, StoreError> {
    let mut q = outbox::table.filter(outbox::seq.gt(after)).into_boxed();
    if let Some(a) = account {
        q = q.filter(outbox::account.eq(a.to_owned()));
    }
    let rows: Vec<EventRow> = q
        .order(outbox::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
        .await?;
    // The whole feed is dense; one account's part of it is not.
    Ok(match account {
        None => dense_prefix(after, rows, |r| r.seq),
        Some(_) => rows,
    })
}

/// The rows whose sequence numbers follow `after` without a gap. Sequencing numbers events
/// densely (a round takes the next n), so a gap is a round not visible yet: on Citus a read of
/// every shard has no single snapshot, and a round's commit reaches the shards one after
/// another. A reader that stops before the gap reads on from there next time; one that passed
/// it would never see the missing events.
fn dense_prefix<T>(after: i64, rows: Vec<T>, seq: impl Fn(&T) -> Option<i64>) -> Vec<T> {
    let mut expected = after + 1;
    rows.into_iter()
        .take_while(|r| {
            let next = seq(r) == Some(expected);
            expected += 1;
            next
        })
        .collect()
}

pub async fn events_by_seqs(
    conn: &mut AsyncPgConnection,
    seqs: &[i64],
) -> Result<Vec<EventRow>, StoreError> {
    Ok(outbox::table
        .filter(outbox::seq.eq_any(seqs))
        .select(EventRow::as_select())
        .load(conn)
        .await?)
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = webhook_endpoints)]
pub struct EndpointRow {
    pub id: i64,
    pub url: String,
    pub kinds: Vec<String>,
    #[serde(skip)]
    pub secret: String,
    #[serde(skip)]
    pub cursor_seq: i64,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub disabled_at: Option<DateTime<Utc>>,
    /// The Idempotency-Key of the POST that created it.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// A new endpoint. `None` when `idempotency_key` is already another endpoint's.
pub async fn insert_endpoint(
    conn: &mut AsyncPgConnection,
    url: &str,
    kinds: &[String],
    secret: &str,
    cursor_seq: i64,
    now: DateTime<Utc>,
    idempotency_key: Option<&str>,
) -> Result<Option<EndpointRow>, StoreError> {
    Ok(diesel::insert_into(webhook_endpoints::table)
        .values((
            webhook_endpoints::url.eq(url),
            webhook_endpoints::kinds.eq(kinds),
            webhook_endpoints::secret.eq(secret),
            webhook_endpoints::cursor_seq.eq(cursor_seq),
            webhook_endpoints::created_at.eq(now),
            webhook_endpoints::idempotency_key.eq(idempotency_key),
        ))
        .on_conflict_do_nothing()
        .returning(EndpointRow::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// The endpoint a POST with this Idempotency-Key created.
pub async fn endpoint_by_idempotency_key(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> Result<Option<EndpointRow>, StoreError> {
    Ok(webhook_endpoints::table
        .filter(webhook_endpoints::idempotency_key.eq(key))
        .select(EndpointRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn endpoints(conn: &mut AsyncPgConnection) -> Result<Vec<EndpointRow>, StoreError> {
    Ok(webhook_endpoints::table
        .order(webhook_endpoints::id.asc())
        .select(EndpointRow::as_select())
        .load(conn)
        .await?)
}

pub async fn endpoint(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<EndpointRow>, StoreError> {
    Ok(webhook_endpoints::table
        .filter(webhook_endpoints::id.eq(id))
        .select(EndpointRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Saves an endpoint's url, kinds and state; re-enabling moves its cursor to `resume_after`
/// (events from while it was disabled are not sent). `None` when there is no such endpoint.
pub async fn update_endpoint(
    conn: &mut AsyncPgConnection,
    ep: &EndpointRow,
    resume_after: Option<i64>,
) -> Result<Option<EndpointRow>, StoreError> {
    let mut updated =
        diesel::update(webhook_endpoints::table.filter(webhook_endpoints::id.eq(ep.id)))
            .set((
                webhook_endpoints::url.eq(&ep.url),
                webhook_endpoints::kinds.eq(&ep.kinds),
                webhook_endpoints::secret.eq(&ep.secret),
                webhook_endpoints::disabled_at.eq(ep.disabled_at),
            ))
            .returning(EndpointRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
    if let (Some(row), Some(seq)) = (updated.as_mut(), resume_after) {
        *row = diesel::update(webhook_endpoints::table.filter(webhook_endpoints::id.eq(ep.id)))
            .set(webhook_endpoints::cursor_seq.eq(seq))
            .returning(EndpointRow::as_returning())
            .get_result(conn)
            .await?;
    }
    Ok(updated)
}

/// Deletes an endpoint and its deliveries; false when there was none.
pub async fn delete_endpoint(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, StoreError> {
    conn.transaction::<bool, StoreError, _>(async |c| {
        diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::endpoint_id.eq(id)))
            .execute(c)
            .await?;
        Ok(
            diesel::delete(webhook_endpoints::table.filter(webhook_endpoints::id.eq(id)))
                .execute(c)
                .await?
                > 0,
        )
    })
    .await
}

/// The highest sequenced event (new endpoints start after it).
pub async fn last_seq(conn: &mut AsyncPgConnection) -> Result<i64, StoreError> {
    Ok(outbox_sequencer::table
        .select(outbox_sequencer::next_seq)
        .first::<i64>(conn)
        .await?
        - 1)
}

/// Turns the endpoint's next sequenced events (up to 1,000) into pending deliveries for the
/// kinds it takes and moves its cursor past them, under the endpoint's row lock (one fan-out
/// at a time). Returns how many events it looked at (1,000: there may be more).
pub async fn fan_out(
    conn: &mut AsyncPgConnection,
    endpoint_id: i64,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    conn.transaction::<usize, StoreError, _>(async |c| {
        // On Citus the outbox is read from every shard and then the endpoint (a coordinator
        // table with a foreign key to it) is written: Citus allows that in one transaction
        // only over one connection per node. (Plain PostgreSQL keeps the setting unread.)
        c.batch_execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
            .await?;
        let Some(ep) = webhook_endpoints::table
            .filter(webhook_endpoints::id.eq(endpoint_id))
            .filter(webhook_endpoints::disabled_at.is_null())
            .select(EndpointRow::as_select())
            .for_update()
            .skip_locked()
            .first(c)
            .await
            .optional()?
        else {
            return Ok(0);
        };
        // One statement, so one snapshot: the events read and the cursor's new place agree.
        // (Reading the kinds' events and then the latest seq in a second statement let a
        // sequencing round committed in between move the cursor past events never read.)
        // Sequencing rounds commit one at a time and in order, so on one PostgreSQL a snapshot
        // that holds seq n holds every seq before it; on Citus it may not, so the cursor stops
        // at the first gap ([`dense_prefix`]).
        let seen: Vec<(i64, String, String, String)> = outbox::table
            .filter(outbox::seq.gt(ep.cursor_seq))
            .order(outbox::seq.asc())
            .limit(1000)
            .select((
                outbox::seq.assume_not_null(),
                outbox::account,
                outbox::event_id,
                outbox::kind,
            ))
            .load(c)
            .await?;
        let seen = dense_prefix(ep.cursor_seq, seen, |e| Some(e.0));
        // The cursor passes every sequenced event seen, delivered or filtered out.
        let upto = seen.last().map(|e| e.0);
        let events: Vec<(i64, String, String)> = seen
            .iter()
            .filter(|e| ep.kinds.is_empty() || ep.kinds.contains(&e.3))
            .map(|(seq, account, id, _)| (*seq, account.clone(), id.clone()))
            .collect();
        let rows: Vec<_> = events
            .iter()
            .map(|(seq, account, event_id)| {
                (
                    webhook_deliveries::endpoint_id.eq(ep.id),
                    webhook_deliveries::seq.eq(*seq),
                    webhook_deliveries::account.eq(account.clone()),
                    webhook_deliveries::event_id.eq(event_id.clone()),
                    webhook_deliveries::state.eq("pending"),
                    webhook_deliveries::next_attempt_at.eq(now),
                    webhook_deliveries::created_at.eq(now),
                )
            })
            .collect();
        for chunk in rows.chunks(1000) {
            diesel::insert_into(webhook_deliveries::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
        }
        if let Some(upto) = upto {
            diesel::update(webhook_endpoints::table.filter(webhook_endpoints::id.eq(ep.id)))
                .set(webhook_endpoints::cursor_seq.eq(upto))
                .execute(c)
                .await?;
        }
        Ok(seen.len())
    })
    .await
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = webhook_deliveries)]
pub struct DeliveryRow {
    pub endpoint_id: i64,
    pub seq: i64,
    pub account: String,
    pub event_id: String,
    pub state: String,
    pub attempts: i32,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` due deliveries to `endpoints` (the enabled ones) by pushing their next
/// attempt to `lease_until` (another dispatcher skips them meanwhile; a crashed one's claims
/// come due again).
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    endpoints: &[i64],
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    conn.transaction::<Vec<DeliveryRow>, StoreError, _>(async |c| {
        let due: Vec<DeliveryRow> = webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq_any(endpoints))
            .filter(webhook_deliveries::state.eq("pending"))
            .filter(webhook_deliveries::next_attempt_at.le(now))
            .order(webhook_deliveries::next_attempt_at.asc())
            .limit(limit)
            .select(DeliveryRow::as_select())
            .for_update()
            .skip_locked()
            .load(c)
            .await?;
        for d in &due {
            diesel::update(
                webhook_deliveries::table
                    .filter(webhook_deliveries::endpoint_id.eq(d.endpoint_id))
                    .filter(webhook_deliveries::seq.eq(d.seq)),
            )
            .set(webhook_deliveries::next_attempt_at.eq(lease_until))
            .execute(c)
            .await?;
        }
        Ok(due)
    })
    .await
}

pub async fn mark_delivered(
    conn: &mut AsyncPgConnection,
    endpoint_id: i64,
    seq: i64,
    attempts: i32,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    diesel::update(
        webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
            .filter(webhook_deliveries::seq.eq(seq)),
    )
    .set((
        webhook_deliveries::state.eq("delivered"),
        webhook_deliveries::attempts.eq(attempts),
        webhook_deliveries::delivered_at.eq(now),
        // Nothing is due any more (it read as a retry still to come).
        webhook_deliveries::next_attempt_at.eq(now),
        webhook_deliveries::last_error.eq(None::<String>),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn mark_failed(
    conn: &mut AsyncPgConnection,
    endpoint_id: i64,
    seq: i64,
    attempts: i32,
    error: &str,
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    diesel::update(
        webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
            .filter(webhook_deliveries::seq.eq(seq)),
    )
    .set((
        webhook_deliveries::state.eq(if next.is_some() { "pending" } else { "dead" }),
        webhook_deliveries::attempts.eq(attempts),
        webhook_deliveries::next_attempt_at.eq(next.unwrap_or(now)),
        webhook_deliveries::last_error.eq(Some(error)),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn deliveries(
    conn: &mut AsyncPgConnection,
    endpoint_id: i64,
    state: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut q = webhook_deliveries::table
        .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
        .filter(webhook_deliveries::seq.gt(after.unwrap_or(0)))
        .into_boxed();
    if let Some(s) = state {
        q = q.filter(webhook_deliveries::state.eq(s.to_owned()));
    }
    Ok(q.order(webhook_deliveries::seq.asc())
        .limit(limit)
        .select(DeliveryRow::as_select())
        .load(conn)
        .await?)
}

/// Records usage alerts of one account and period; returns the thresholds not recorded before.
pub async fn record_alerts(
    conn: &mut AsyncPgConnection,
    account: &str,
    period_start: DateTime<Utc>,
    alerts: &[(String, i16)],
    now: DateTime<Utc>,
) -> Result<Vec<(String, i16)>, StoreError> {
    let rows: Vec<_> = alerts
        .iter()
        .map(|(meter, threshold)| {
            (
                limit_alerts::account.eq(account),
                limit_alerts::meter.eq(meter.clone()),
                limit_alerts::period_start.eq(period_start),
                limit_alerts::threshold.eq(*threshold),
                limit_alerts::at.eq(now),
            )
        })
        .collect();
    Ok(diesel::insert_into(limit_alerts::table)
        .values(rows)
        .on_conflict_do_nothing()
        .returning((limit_alerts::meter, limit_alerts::threshold))
        .get_results(conn)
        .await?)
}

/// Outbound deliveries waiting, and when the oldest of them was created (the `/metrics` page).
pub async fn pending_deliveries(
    conn: &mut AsyncPgConnection,
) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
    Ok(webhook_deliveries::table
        .filter(webhook_deliveries::state.eq("pending"))
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::min(webhook_deliveries::created_at),
        ))
        .first(conn)
        .await?)
}

/// Sequenced events of `kinds` after `after`, in order (the movements and PQL exports), at
/// most `limit`, and the position to read on from: the last event returned when `limit` were
/// found, else the end of what was looked through (events of other kinds included).
///
/// Never past a gap in the sequence: a read of only some kinds cannot see a gap among the
/// others, so the numbers visible without one are found first ([`dense_prefix`]), and the
/// kinds are read up to there. An event seen in the first read is seen by the second.
pub async fn of_kinds_after(
    conn: &mut AsyncPgConnection,
    kinds: &[&str],
    after: i64,
    limit: i64,
) -> Result<(Vec<EventRow>, i64), StoreError> {
    const SCAN: i64 = 5_000;
    let mut rows: Vec<EventRow> = Vec::new();
    let mut from = after;
    loop {
        let seqs: Vec<i64> = outbox::table
            .filter(outbox::seq.gt(from))
            .order(outbox::seq.asc())
            .limit(SCAN)
            .select(outbox::seq.assume_not_null())
            .load(conn)
            .await?;
        let read = seqs.len();
        let dense = dense_prefix(from, seqs, |s| Some(*s));
        let Some(&upto) = dense.last() else {
            return Ok((rows, from));
        };
        let wanted = limit - rows.len() as i64;
        let found: Vec<EventRow> = outbox::table
            .filter(outbox::seq.gt(from))
            .filter(outbox::seq.le(upto))
            .filter(outbox::kind.eq_any(kinds))
            .order(outbox::seq.asc())
            .limit(wanted)
            .select(EventRow::as_select())
            .load(conn)
            .await?;
        let filled = found.len() as i64 == wanted;
        rows.extend(found);
        if filled {
            let last = rows.last().and_then(|r| r.seq).unwrap_or(upto);
            return Ok((rows, last));
        }
        from = upto;
        // A gap, or the end of the sequence: nothing after it is readable yet.
        if dense.len() < read || read < SCAN as usize {
            return Ok((rows, from));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dense_prefix;

    #[test]
    fn a_reader_stops_at_the_first_gap_in_the_sequence() {
        let seqs = |v: Vec<i64>| dense_prefix(10, v, |s| Some(*s));
        assert_eq!(seqs(vec![11, 12, 13]), vec![11, 12, 13]);
        assert_eq!(seqs(vec![11, 12, 14, 15]), vec![11, 12]);
        assert_eq!(seqs(vec![12, 13]), Vec::<i64>::new());
        assert_eq!(seqs(vec![]), Vec::<i64>::new());
        assert_eq!(
            dense_prefix(0, vec![Some(1), None, Some(3)], |s| *s),
            vec![Some(1)]
        );
    }
}
