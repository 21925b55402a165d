//! Ingestion: validate a batch, store each new event exactly once and fold it into the hourly
//! rollups, in one transaction that is committed before the caller is answered.
//!
//! Requests do not open transactions themselves: their valid events go to the lane of their
//! account (see [`IngestPipeline`]), which commits everything queued in one transaction
//! (group commit). That keeps fsyncs and rollup upserts per second bounded by the lanes, not by
//! the request rate, and an account's rollup rows are written by its lane only. A lane commits
//! up to two groups at once: the next one starts at once when they are deep (many events per
//! account), otherwise once the one before has written its rows (see `LANE_DEPTH`); the later
//! one then waits on the earlier one's rollup rows.
//!
//! Exactly-once rests on the `(account, id)` primary key of `events`: a group is first
//! inserted as all new, and when an id is stored already that insert fails and the group runs
//! again skipping the stored ids (on Citus, and for a lane's groups after such a failure until
//! one holds only new events, it skips them at once); only the rows actually inserted are
//! added to the rollups, in the same transaction. A retry of a batch, concurrent or after a
//! crash, therefore finds its events stored and adds nothing. Rows are written in key order so
//! concurrent groups cannot deadlock on each other; a transient conflict is retried.

use super::check::CheckCache;
use super::{Ctx, ServiceError};
use crate::domain::aggregate::{bucket_of, AggregateState};
use crate::domain::clock::Clock;
use crate::domain::event::{Event, EventFields, RawEvent, Rejection};
use crate::domain::event_shapes::Mapped;
use crate::domain::meter::Reading;
use crate::store::events::{self as store_events, RollupKey, TypeCount};
use crate::store::{Pool, StoreError};
use foldhash::{HashMap as FastMap, HashSet as FastSet, HashSetExt};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most events in one request.
pub const MAX_BATCH: usize = 1000;
/// How many times a batch is retried after a deadlock or serialization failure.
const MAX_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RejectedEvent {
    pub index: usize,
    pub id: Option<String>,
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = EventRejection)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

/// The per-batch answer: how many were stored now, how many were already stored, and why the
/// others were refused.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq, utoipa::ToSchema)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<RejectedEvent>,
}

/// An event that passed validation, with what it contributes to each meter.
struct Valid {
    event: Event,
    readings: Vec<(String, Reading)>,
    /// Its index in the request.
    index: usize,
}

/// Ingests raw events sent with an API key: the key's account binding restricts the events'
/// accounts, and the key may hold at most [`MAX_KEY_IN_FLIGHT_EVENTS`] of the instance's
/// events in flight (past it 429: one busy key never takes the whole instance).
pub async fn ingest_with_key(
    ctx: &Ctx,
    raw: Vec<RawEvent>,
    key: &super::auth::Principal,
) -> Result<IngestOutcome, ServiceError> {
    ingest_as(ctx, raw, key.account.as_deref(), Some(key.key_id)).await
}

/// As [`ingest_with_key`], for events mapped from another shape (CloudEvents, Segment): those
/// that could not be mapped are reported at their index with why.
pub async fn ingest_mapped_with_key(
    ctx: &Ctx,
    items: Vec<Mapped>,
    key: &super::auth::Principal,
) -> Result<IngestOutcome, ServiceError> {
    let items = items
        .into_iter()
        .map(|m| m.and_then(EventFields::from_value))
        .collect();
    ingest_as(ctx, items, key.account.as_deref(), Some(key.key_id)).await
}

/// Ingests raw events (the demo, benchmarks). `only_account` restricts them to one account.
pub async fn ingest(
    ctx: &Ctx,
    raw: Vec<Value>,
    only_account: Option<&str>,
) -> Result<IngestOutcome, ServiceError> {
    let items = raw.into_iter().map(EventFields::from_value).collect();
    ingest_as(ctx, items, only_account, None).await
}

async fn ingest_as(
    ctx: &Ctx,
    raw: Vec<RawEvent>,
    only_account: Option<&str>,
    key: Option<i64>,
) -> Result<IngestOutcome, ServiceError> {
    if raw.len() > MAX_BATCH {
        return Err(ServiceError::invalid(
            "batch_too_large",
            format!(
                "a batch holds at most {MAX_BATCH} events, this one has {}",
                raw.len()
            ),
        ));
    }
    let now = ctx.clock.now();
    // Accounts on a test clock: their events default to, and are bounded by, the clock's time.
    let clocked = if ctx.test_clocks_on() {
        let mut accounts: Vec<String> = raw
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|r| r.account().map(str::to_owned))
            .collect();
        accounts.sort();
        accounts.dedup();
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        ctx.clock_times(&mut conn, &accounts).await?
    } else {
        Default::default()
    };
    let mut outcome = IngestOutcome::default();
    // Each (account, id)'s first copy, as its place in `valid`: found by the key's hash and
    // compared with the copy there (no key is copied).
    let state = foldhash::fast::RandomState::default();
    let hash = |account: &str, id: &str| std::hash::BuildHasher::hash_one(&state, (account, id));
    let mut seen: hashbrown::HashTable<usize> = hashbrown::HashTable::with_capacity(raw.len());
    let mut valid: Vec<Valid> = Vec::with_capacity(raw.len());
    for (index, r) in raw.into_iter().enumerate() {
        let r = match r {
            Ok(r) => r,
            Err((id, rej)) => {
                outcome.rejected.push(RejectedEvent {
                    index,
                    id,
                    error: ErrorBody {
                        code: rej.code,
                        message: rej.message,
                    },
                });
                continue;
            }
        };
        let now = match clocked.is_empty() {
            true => now,
            false => r
                .account()
                .and_then(|a| clocked.get(a))
                .copied()
                .unwrap_or(now),
        };
        match validate(ctx, r, index, now, only_account) {
            Ok(v) => {
                let (account, id) = (v.event.account.as_str(), v.event.id.as_str());
                let first = seen.entry(
                    hash(account, id),
                    |&at| valid[at].event.account.as_str() == account && valid[at].event.id == id,
                    |&at| hash(valid[at].event.account.as_str(), &valid[at].event.id),
                );
                match first {
                    hashbrown::hash_table::Entry::Vacant(slot) => {
                        slot.insert(valid.len());
                        valid.push(v);
                    }
                    // The same id twice in one batch: the first copy counts; a second copy
                    // that says something else is refused (a reused id, not a retry).
                    hashbrown::hash_table::Entry::Occupied(first) => {
                        if same_content(&valid[*first.get()], &v) {
                            outcome.duplicates += 1;
                        } else {
                            outcome.rejected.push(id_reused(index, v.event.id));
                        }
                    }
                }
            }
            Err((id, rej)) => outcome.rejected.push(RejectedEvent {
                index,
                id,
                error: ErrorBody {
                    code: rej.code,
                    message: rej.message,
                },
            }),
        }
    }
    let unique = valid.len();
    let (inserted, not_new) = store_valid(ctx, valid, key).await?;
    outcome.accepted = inserted;
    outcome.duplicates += unique - inserted;
    // Events already stored: a copy that differs from the stored one reuses its id.
    if !not_new.is_empty() {
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        let sent: Vec<&Event> = not_new.iter().map(|v| &v.event).collect();
        let differing = store_events::differing_from_stored(&mut conn, &sent).await?;
        let index_of: FastMap<(&str, &str), usize> = not_new
            .iter()
            .map(|v| ((v.event.account.as_str(), v.event.id.as_str()), v.index))
            .collect();
        let mut reused: Vec<RejectedEvent> = differing
            .iter()
            .filter_map(|(account, id)| {
                let index = *index_of.get(&(account.as_str(), id.as_str()))?;
                Some(id_reused(index, id.clone()))
            })
            .collect();
        outcome.duplicates -= reused.len();
        outcome.rejected.append(&mut reused);
        outcome.rejected.sort_by_key(|r| r.index);
    }
    ctx.metrics.record(|| {
        metrics::counter!("accrue_events_accepted_total").increment(outcome.accepted as u64);
        metrics::counter!("accrue_events_duplicate_total").increment(outcome.duplicates as u64);
        for r in &outcome.rejected {
            metrics::counter!("accrue_events_rejected_total", "code" => r.error.code).increment(1);
        }
    });
    Ok(outcome)
}

/// Whether two copies of an event say the same thing (type and properties; a timestamp left
/// out defaults to the time it arrived, so it is not compared).
fn same_content(a: &Valid, b: &Valid) -> bool {
    a.event.event_type == b.event.event_type && a.event.properties == b.event.properties
}

/// An event whose id is already taken by another event (of the same account) with another type
/// or other properties: not counted, and said so (security review L6: it was counted as a
/// duplicate, silently).
fn id_reused(index: usize, id: String) -> RejectedEvent {
    RejectedEvent {
        index,
        error: ErrorBody {
            code: "id_reused",
            message: format!(
                "an event with id `{id}` is already stored with another type or other \
                 properties; this one was not counted (a new event needs a new id)"
            ),
        },
        id: Some(id),
    }
}

fn validate(
    ctx: &Ctx,
    raw: EventFields,
    index: usize,
    now: chrono::DateTime<chrono::Utc>,
    only_account: Option<&str>,
) -> Result<Valid, (Option<String>, Rejection)> {
    let event = raw.parse(now)?;
    if only_account.is_some_and(|a| a != event.account.as_str()) {
        let why = Rejection::new(
            "account_not_allowed",
            format!(
                "this key cannot send events for account `{}`",
                event.account
            ),
        );
        return Err((Some(event.id), why));
    }
    let mut readings = Vec::new();
    for meter in ctx.meters.for_event_type(&event.event_type) {
        match meter.reading(&event) {
            Ok(Some(reading)) => readings.push((meter.code.clone(), reading)),
            Ok(None) => {}
            Err(why) => return Err((Some(event.id), why)),
        }
    }
    Ok(Valid {
        event,
        readings,
        index,
    })
}

/// Stores the valid events through the account's lanes; returns how many were new.
/// Queues the events on their lanes; answers how many were new, and the events that were
/// already stored.
async fn store_valid(
    ctx: &Ctx,
    valid: Vec<Valid>,
    key: Option<i64>,
) -> Result<(usize, Vec<Valid>), ServiceError> {
    if valid.is_empty() {
        return Ok((0, Vec::new()));
    }
    // The key's share first: a key past it is told to slow down (429) while others go on.
    let mut key_share = match key {
        Some(id) => {
            let share = ctx.ingest.share_of(id);
            match share.try_acquire_many_owned(valid.len() as u32) {
                Ok(p) => Some(p),
                Err(_) => {
                    return Err(ServiceError::RateLimited(format!(
                        "this key has {MAX_KEY_IN_FLIGHT_EVENTS} events in flight already: \
                         retry when some are answered"
                    )))
                }
            }
        }
        None => None,
    };
    // Admission: a bounded number of events in flight per instance. Past it the request is
    // refused at once (503, Retry-After) instead of queueing without bound; nothing of it was
    // stored, so the client's retry is safe.
    let Ok(mut admitted) = ctx
        .ingest
        .in_flight
        .clone()
        .try_acquire_many_owned(valid.len() as u32)
    else {
        return Err(ServiceError::Unavailable(format!(
            "ingestion is at capacity ({MAX_IN_FLIGHT_EVENTS} events in flight): retry shortly"
        )));
    };
    let lanes = &ctx.ingest.lanes;
    let mut parts: Vec<Vec<Valid>> = (0..lanes.len()).map(|_| Vec::new()).collect();
    for v in valid {
        let lane = lane_of(v.event.account.as_str(), lanes.len());
        parts[lane].push(v);
    }
    // A place on every lane the request needs, before any of its events is queued: a request
    // is queued whole or refused whole.
    let mut slots = Vec::new();
    for (lane, events) in parts.into_iter().enumerate() {
        if events.is_empty() {
            continue;
        }
        let slot = lanes[lane].try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ServiceError::Unavailable("ingestion is at capacity: retry shortly".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                ServiceError::Unavailable("the ingest pipeline is shutting down".into())
            }
        })?;
        slots.push((slot, events));
    }
    let mut waits = Vec::new();
    for (slot, events) in slots {
        let (reply, rx) = oneshot::channel();
        // The permits travel with the job: they are returned when the lane is done with it,
        // even if the client went away meanwhile.
        let permit = admitted.split(events.len());
        let key_permit = key_share.as_mut().and_then(|k| k.split(events.len()));
        slot.send(Job {
            events,
            reply,
            _permit: permit,
            _key_permit: key_permit,
        });
        waits.push(rx);
    }
    let mut inserted = 0;
    let mut not_new = Vec::new();
    for rx in waits {
        let (n, mut old) = rx
            .await
            .map_err(|_| ServiceError::Unavailable("the ingest pipeline stopped".into()))??;
        inserted += n;
        not_new.append(&mut old);
    }
    Ok((inserted, not_new))
}

/// Which lane owns an account: a stable hash, so one account's rows are only ever written by
/// one lane of an instance and lanes never wait on each other's row locks. (Spreading a busy
/// account's events over every lane stored one account 20 % faster, but then an account whose
/// rows are held, by a lock or a slow statement, held every lane, and with them every other
/// account's ingestion: the per-key backpressure test caught it.)
fn lane_of(account: &str, lanes: usize) -> usize {
    // FNV-1a: stable across processes and releases (unlike the std hasher's random seed).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in account.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % lanes as u64) as usize
}

/// A sub-batch waiting for its lane's next commit.
struct Job {
    events: Vec<Valid>,
    /// How many of the events were new, and those that were already stored.
    reply: oneshot::Sender<Result<(usize, Vec<Valid>), ServiceError>>,
    /// This job's share of the instance's in-flight events.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// And of its key's.
    _key_permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Most events one group commit takes.
const MAX_GROUP_EVENTS: usize = 8_000;
/// Accounts, and (account, event type) pairs, a lane knows are stored ([`Known`]); past this
/// many of either it forgets them and relearns.
const MAX_KNOWN: usize = 200_000;

/// The group-commit ingest pipeline: a few lanes, each a task that takes every sub-batch queued
/// while its previous groups were committing and commits them together (up to two groups at
/// once, see [`LANE_DEPTH`]). One fsync and one rollup
/// upsert per (account, meter, hour) then serve many requests, and nobody is answered before
/// the commit that holds their events.
pub struct IngestPipeline {
    lanes: Vec<mpsc::Sender<Job>>,
    /// Permits for events accepted by requests and not yet answered (queued or committing).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Each API key's permits, [`MAX_KEY_IN_FLIGHT_EVENTS`] each.
    per_key: std::sync::Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Semaphore>>>,
}

impl IngestPipeline {
    /// Whether every lane is still taking requests (readiness).
    pub fn running(&self) -> bool {
        self.lanes.iter().all(|l| !l.is_closed())
    }

    fn share_of(&self, key: i64) -> Arc<tokio::sync::Semaphore> {
        self.per_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_KEY_IN_FLIGHT_EVENTS)))
            .clone()
    }
}

/// Most events one instance holds in flight (validated, queued or being committed): the bound
/// on ingestion's memory (events are at most ~33 KiB each, typically a few hundred bytes).
pub const MAX_IN_FLIGHT_EVENTS: usize = 64_000;
/// Most events one API key holds in flight on an instance: a quarter of it.
pub const MAX_KEY_IN_FLIGHT_EVENTS: usize = MAX_IN_FLIGHT_EVENTS / 4;
/// Most requests queued on one lane.
const LANE_QUEUE: usize = 256;

impl IngestPipeline {
    /// Starts `lanes` lane tasks on the current tokio runtime.
    pub fn start(
        pool: Pool,
        clock: Arc<dyn Clock>,
        checks: Arc<CheckCache>,
        pql: Arc<super::pql::PqlState>,
        metrics: Arc<crate::telemetry::Metrics>,
        lanes: usize,
    ) -> Self {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                tokio::spawn(run_lane(
                    rx,
                    pool.clone(),
                    clock.clone(),
                    checks.clone(),
                    pql.clone(),
                    metrics.clone(),
                ));
                tx
            })
            .collect();
        Self {
            lanes,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_EVENTS)),
            per_key: Default::default(),
        }
    }

    /// Sub-batches waiting on each lane.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|l| l.max_capacity() - l.capacity())
            .collect()
    }

    /// Events accepted by requests and not yet answered.
    pub fn in_flight_events(&self) -> usize {
        MAX_IN_FLIGHT_EVENTS.saturating_sub(self.in_flight.available_permits())
    }

    /// At shutdown, once no request is served any more: waits (at most `within`) until the
    /// lanes have committed every event they were given, and takes no more. A request whose
    /// events went to several lanes may have lost its answer with its connection, but each of
    /// its parts is committed: without the wait, the process could exit between one lane's
    /// commit and another's and leave the batch stored in part. Returns the events still
    /// uncommitted when the wait ended (0: all).
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        let all = MAX_IN_FLIGHT_EVENTS as u32;
        match tokio::time::timeout(within, self.in_flight.acquire_many(all)).await {
            Ok(Ok(permits)) => {
                // Held: any request still arriving is refused (503) instead of queued.
                permits.forget();
                0
            }
            _ => self.in_flight_events(),
        }
    }
}

/// When `serve` starts: folds the per-type event counts of lanes idle for an hour (stopped
/// processes' mostly) into one row per type ([`store_events::fold_idle_type_totals`]). A
/// failure only leaves the rows for the next start.
pub async fn fold_idle_type_totals(pool: Pool) {
    let folded = async {
        let mut conn = pool.get().await?;
        if crate::store::citus::active() {
            return Ok(0);
        }
        store_events::fold_idle_type_totals(&mut conn).await
    };
    match folded.await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "folded idle event-type counts"),
        Err(e) => tracing::warn!(error = %e, "could not fold idle event-type counts"),
    }
}

async fn run_lane(
    mut rx: mpsc::Receiver<Job>,
    pool: Pool,
    clock: Arc<dyn Clock>,
    checks: Arc<CheckCache>,
    pql: Arc<super::pql::PqlState>,
    metrics: Arc<crate::telemetry::Metrics>,
) {
    let lane = Arc::new(LaneState {
        known: std::sync::Mutex::new(Known::default()),
        plain: AtomicBool::new(true),
        shards: LaneState::new_shards(),
        metrics: metrics.clone(),
    });
    let (free_slots, mut slots) = mpsc::unbounded_channel();
    for index in 0..LANE_DEPTH {
        let _ = free_slots.send(index);
    }
    loop {
        // A free slot (a connection, and a shard) first, then whatever queued meanwhile: while
        // both of the lane's groups are committing, requests gather into the next one.
        let Some(index) = slots.recv().await else {
            break;
        };
        let slot = Slot {
            index,
            free: free_slots.clone(),
        };
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut size = first.events.len();
        let mut jobs = vec![first];
        while size < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        metrics.record(|| metrics::histogram!("accrue_ingest_group_events").record(size as f64));
        let accounts: FastSet<&str> = jobs
            .iter()
            .flat_map(|j| &j.events)
            .map(|v| v.event.account.as_str())
            .collect();
        let deep = size >= DEEP_GROUP_EVENTS_PER_ACCOUNT * accounts.len();
        drop(accounts);
        let (pool, clock, checks, pql, lane) = (
            pool.clone(),
            clock.clone(),
            checks.clone(),
            pql.clone(),
            lane.clone(),
        );
        let (written, written_rx) = oneshot::channel();
        tokio::spawn(async move {
            // A panic while handling one group (none is known) must not stop the lane: that
            // group's requests are answered 503 (their reply channels close) and the lane
            // goes on.
            let written = Written(std::sync::Mutex::new(Some(written)));
            let group = std::panic::AssertUnwindSafe(process_group(
                jobs,
                &pool,
                &clock,
                &checks,
                &pql,
                (&lane, &lane.shards[slot.index]),
                &written,
            ));
            if futures_util::FutureExt::catch_unwind(group).await.is_err() {
                tracing::error!("ingest lane: a group panicked; its requests were answered 503");
            }
            drop(slot);
        });
        if !deep {
            // A group of many accounts with few events each: the next one waits until it has
            // written its rows (or ended), so the requests queued meanwhile make one group
            // with more events per account; it then starts while this one commits and
            // answers.
            let _ = written_rx.await;
        }
    }
    // The queue is closed: the groups still committing finish (their requests are answered).
    for _ in 0..LANE_DEPTH {
        let _ = slots.recv().await;
    }
}

/// One of a lane's [`LANE_DEPTH`] group slots, held by a group until it has ended (however it
/// ends): its index names the group's shard of `event_type_totals`, which no other group in
/// flight then uses.
struct Slot {
    index: usize,
    free: mpsc::UnboundedSender<usize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.free.send(self.index);
    }
}

/// Groups a lane commits at once, each in its own transaction on its own connection: the next
/// group inserts its events while the previous one writes its rollups, commits and answers.
/// Both write only the lane's accounts, in one lock order (accounts, events, then the counters
/// in the one order their shared statement parts give them, `store::events::counter_parts`;
/// each table's rows sorted by key), so the later one waits for the earlier one's rows at
/// most, never in a cycle.
///
/// Only a group with at least [`DEEP_GROUP_EVENTS_PER_ACCOUNT`] events per account is
/// followed at once: a group's rollup rows are one per account, meter and hour whatever its
/// size, so splitting the queue of a lane with many busy accounts into two groups
/// nearly doubles those rows (measured: 1,000 accounts at 8 events each per group stored 15 %
/// fewer events per second two at a time), while one account's groups are nearly all events.
/// A shallower group is followed once it has written its rows ([`Written`]): the requests
/// queued while it wrote make the next group, which starts while this one commits and answers
/// (its rows of the same accounts wait for that commit; the per-type counts are on the other
/// slot's shard). Waiting for the commit and answers too left a
/// core idle through each commit's flush (BENCHMARKS.md, eighth session: the machine idle
/// 16–19 % of the time at 1,000 accounts, 11–14 % with the next group started at the write's
/// end).
const LANE_DEPTH: usize = 2;
/// See [`LANE_DEPTH`].
const DEEP_GROUP_EVENTS_PER_ACCOUNT: usize = 32;

/// Tells the lane that a group has written its rows and is about to commit: a shallow group's
/// successor starts then (see [`LANE_DEPTH`]). Dropped unfired (the group ended without
/// writing), it tells the same.
struct Written(std::sync::Mutex<Option<oneshot::Sender<()>>>);

impl Written {
    fn fire(&self) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

/// What a lane keeps from one group to the next.
struct LaneState {
    known: std::sync::Mutex<Known>,
    /// Whether the next group is inserted as all new (see [`commit_group`]).
    plain: AtomicBool,
    /// The lane's shards of `event_type_totals` (see [`store_events::Counters::shard`]), one
    /// per group slot ([`Slot`]): names no other lane or process uses.
    shards: [String; LANE_DEPTH],
    metrics: Arc<crate::telemetry::Metrics>,
}

impl LaneState {
    fn new_shards() -> [String; LANE_DEPTH] {
        static LANES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let lane = LANES.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 8];
        if getrandom::fill(&mut id).is_err() {
            // Never seen; the time and the process keep names apart all the same.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            id = (nanos ^ u64::from(std::process::id()).rotate_left(40)).to_le_bytes();
        }
        let id = hex::encode(id);
        std::array::from_fn(|i| format!("{id}-{lane}/{i}"))
    }
}

/// What a lane has seen committed: accounts that exist (it created them or saw them stored)
/// and, per account, the event types whose `event_type_counts` row is stored, so it writes
/// neither again. Nothing deletes those rows, and forgetting one only costs writing it again
/// (an insert that finds it stored): past [`MAX_KNOWN`] accounts, or as many pairs, it forgets
/// those and relearns. (Hashed with SipHash: it lives long and holds names clients choose.)
#[derive(Default)]
struct Known {
    accounts: std::collections::HashMap<String, HashSet<String>>,
    pairs: usize,
}

impl Known {
    fn has_account(&self, account: &str) -> bool {
        self.accounts.contains_key(account)
    }

    fn has_type(&self, account: &str, event_type: &str) -> bool {
        self.accounts
            .get(account)
            .is_some_and(|types| types.contains(event_type))
    }

    fn learn_account(&mut self, account: &str) {
        if !self.accounts.contains_key(account) {
            self.accounts.insert(account.to_owned(), HashSet::new());
        }
    }

    fn learn_type(&mut self, account: &str, event_type: &str) {
        self.learn_account(account);
        if let Some(types) = self.accounts.get_mut(account) {
            if types.insert(event_type.to_owned()) {
                self.pairs += 1;
            }
        }
    }

    fn forget_if_full(&mut self) {
        if self.accounts.len() > MAX_KNOWN {
            *self = Self::default();
        } else if self.pairs > MAX_KNOWN {
            self.accounts.values_mut().for_each(HashSet::clear);
            self.pairs = 0;
        }
    }
}

/// Commits one group of requests and answers them.
async fn process_group(
    jobs: Vec<Job>,
    pool: &Pool,
    clock: &Arc<dyn Clock>,
    checks: &Arc<CheckCache>,
    pql: &Arc<super::pql::PqlState>,
    (lane, shard): (&LaneState, &str),
    written: &Written,
) {
    // Tell the check cache which accounts are being written until their events are applied.
    let accounts: FastSet<&str> = jobs
        .iter()
        .flat_map(|j| &j.events)
        .map(|v| v.event.account.as_str())
        .collect();
    checks.begin_writes(&accounts);
    let mut writes = GroupWrites {
        checks,
        accounts: accounts.iter().map(|a| (*a).to_owned()).collect(),
        applied: false,
    };
    lane.known
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .forget_if_full();
    let (answers, stored) = commit_isolated(pool, clock.now(), &jobs, (lane, shard), written).await;
    // Only the copy that stored an event counts it: two requests of a group may carry the
    // same new id.
    for (job, stored) in jobs.iter().zip(&stored.by_job) {
        for (v, stored) in job.events.iter().zip(stored) {
            let e = &v.event;
            if *stored && !v.readings.is_empty() {
                checks.apply(e.account.as_str(), e.timestamp, &e.id, &v.readings);
            }
        }
    }
    writes.applied = true;
    drop(writes);
    // Usage thresholds reached by these events (for accounts the check cache holds;
    // others are evaluated when they are next checked).
    let now = clock.now();
    for account in &stored.accounts {
        pql.mark([account.as_str()]);
        if let Some((period, alerts)) = checks.new_alerts(account) {
            super::check::spawn_alerts(pool.clone(), account.clone(), period, alerts, now);
        }
    }
    for ((job, answer), stored) in jobs.into_iter().zip(answers).zip(stored.by_job) {
        let answer = answer.map(|n| {
            let old = job
                .events
                .into_iter()
                .zip(stored)
                .filter(|(_, stored)| !stored)
                .map(|(v, _)| v)
                .collect();
            (n, old)
        });
        let _ = job.reply.send(answer);
    }
}

/// What a group stored: for each job, which of its events it stored (see [`stored_by_job`]),
/// and the accounts that got a new event, sorted.
#[derive(Default)]
struct Stored {
    by_job: Vec<Vec<bool>>,
    accounts: Vec<String>,
}

/// A group's events once each, as (job, index) in key order (account, id): the first job
/// holding an (account, id) owns it, and later copies (in that job or a later one) are left
/// out. Key order is the order the group writes rows in, so that concurrent writers (the
/// lane's other group, other instances) lock them in one order.
fn owned_in_key_order(jobs: &[Vec<(&str, &str)>]) -> Vec<(usize, usize)> {
    let n = jobs.iter().map(Vec::len).sum();
    let mut seen: FastSet<(&str, &str)> = FastSet::with_capacity(n);
    let mut owned = Vec::with_capacity(n);
    for (j, keys) in jobs.iter().enumerate() {
        for (i, key) in keys.iter().enumerate() {
            if seen.insert(*key) {
                owned.push((j, i));
            }
        }
    }
    owned.sort_unstable_by_key(|&(j, i)| jobs[j][i]);
    owned
}

/// For each job's events, whether that job stored it: it is the copy that owns its key
/// (`owned`, from [`owned_in_key_order`]) and the insert found it new (`new`, one flag per
/// owned event). The others go back to their request, which compares them with the stored
/// copy (a copy that differs reuses the id).
fn stored_by_job(lens: &[usize], owned: &[(usize, usize)], new: &[bool]) -> Vec<Vec<bool>> {
    let mut by_job: Vec<Vec<bool>> = lens.iter().map(|n| vec![false; *n]).collect();
    for (&(j, i), new) in owned.iter().zip(new) {
        by_job[j][i] = *new;
    }
    by_job
}

/// The check cache's "being written" marks of a group's accounts, ended however the group
/// ends; if it ended before its events were applied to the cache (a panic), the accounts'
/// cache entries are dropped so the next check reloads them from the database.
struct GroupWrites<'a> {
    checks: &'a CheckCache,
    accounts: Vec<String>,
    applied: bool,
}

impl Drop for GroupWrites<'_> {
    fn drop(&mut self) {
        if !self.applied {
            for a in &self.accounts {
                self.checks.invalidate(a);
            }
        }
        let accounts: FastSet<&str> = self.accounts.iter().map(String::as_str).collect();
        self.checks.end_writes(&accounts);
    }
}

/// Commits a lane's jobs together; if that fails for a reason other than the database being
/// unreachable, commits each job alone, so one request's bad data can never fail another's.
/// Returns each job's answer (how many of its events were new) and what it stored.
async fn commit_isolated(
    pool: &Pool,
    now: chrono::DateTime<chrono::Utc>,
    jobs: &[Job],
    lane: (&LaneState, &str),
    written: &Written,
) -> (Vec<Result<usize, ServiceError>>, Stored) {
    let count = |stored: &[bool]| stored.iter().filter(|s| **s).count();
    let none = |job: &Job| vec![false; job.events.len()];
    let size: usize = jobs.iter().map(|j| j.events.len()).sum();
    let error = match commit_group(pool, now, jobs, lane, written).await {
        Ok(stored) => {
            let answers = stored.by_job.iter().map(|s| Ok(count(s))).collect();
            return (answers, stored);
        }
        Err(e) => e,
    };
    if jobs.len() == 1 || !matches!(error, StoreError::Query(_)) {
        tracing::error!(error = %error, events = size, "ingest group failed");
        let answers = jobs.iter().map(|_| Err(job_error(&error))).collect();
        let by_job = jobs.iter().map(none).collect();
        return (
            answers,
            Stored {
                by_job,
                accounts: Vec::new(),
            },
        );
    }
    tracing::warn!(error = %error, jobs = jobs.len(), "ingest group failed: committing its requests one by one");
    // The lane's next group waits for all of them (this one's end), not only the first.
    let written = &Written(std::sync::Mutex::new(None));
    let mut answers = Vec::with_capacity(jobs.len());
    let mut all = Stored::default();
    for job in jobs {
        match commit_group(pool, now, std::slice::from_ref(job), lane, written).await {
            Ok(Stored {
                mut by_job,
                accounts,
            }) => {
                let stored = by_job.pop().unwrap_or_default();
                answers.push(Ok(count(&stored)));
                all.by_job.push(stored);
                all.accounts.extend(accounts);
            }
            Err(e) => {
                tracing::warn!(error = %e, events = job.events.len(), "ingest request failed");
                answers.push(Err(job_error(&e)));
                all.by_job.push(none(job));
            }
        }
    }
    all.accounts.sort_unstable();
    all.accounts.dedup();
    (answers, all)
}

/// The answer to a request whose events could not be committed: the database refusing the data
/// itself is the request's fault (422, retrying cannot help); anything else is retryable (503).
fn job_error(e: &StoreError) -> ServiceError {
    if e.is_data_error() {
        ServiceError::invalid(
            "events_not_storable",
            format!(
                "the database refused this request's events ({e}); retrying it unchanged \
                 cannot help (any of its events already stored are reported as duplicates)"
            ),
        )
    } else {
        ServiceError::Store(StoreError::Message(e.to_string()))
    }
}

/// Commits a group of jobs in one transaction; returns which events of each job it stored.
/// An account the events name that does not exist yet is created with them (as OpenMeter
/// creates subjects), so its usage, checks and PQL score work before anyone registers it.
async fn commit_group(
    pool: &Pool,
    now: chrono::DateTime<chrono::Utc>,
    jobs: &[Job],
    (lane, shard): (&LaneState, &str),
    written: &Written,
) -> Result<Stored, StoreError> {
    let keys: Vec<Vec<(&str, &str)>> = jobs
        .iter()
        .map(|j| {
            j.events
                .iter()
                .map(|v| (v.event.account.as_str(), v.event.id.as_str()))
                .collect()
        })
        .collect();
    let owned = owned_in_key_order(&keys);
    let unique: Vec<&Valid> = owned.iter().map(|&(j, i)| &jobs[j].events[i]).collect();
    let events: Vec<&Event> = unique.iter().map(|v| &v.event).collect();
    // Sorted (the events are), so concurrent writers insert account rows in one order.
    let mut accounts: Vec<&str> = events.iter().map(|e| e.account.as_str()).collect();
    accounts.dedup();
    let unknown: Vec<&str> = {
        let known = lane.known.lock().unwrap_or_else(|e| e.into_inner());
        accounts
            .iter()
            .copied()
            .filter(|a| !known.has_account(a))
            .collect()
    };
    let mut attempt = 0;
    // Most groups hold only new events: they are inserted without looking for stored copies
    // first. A stored one (a retried batch) fails that insert; the group then runs again
    // skipping what is stored, and so do the lane's next groups until one holds only new
    // events (a client retrying many batches costs one failed insert, not one per group).
    let mut expect_new = lane.plain.load(Ordering::Relaxed) && !crate::store::citus::active();
    // Whether each of a group's (account, type) pairs may lack its stored row (the lane has
    // not seen it committed).
    let unseen = |types: &[((&str, &str), TypeCount)]| -> Vec<bool> {
        let known = lane.known.lock().unwrap_or_else(|e| e.into_inner());
        types
            .iter()
            .map(|((a, t), _)| !known.has_type(a, t))
            .collect()
    };
    // The pairs whose row the committed group stored (or found stored), to learn (on Citus,
    // where every group writes its pairs' counts, none).
    let stored_pairs = |types: &[((&str, &str), TypeCount)], unseen: &[bool]| {
        if crate::store::citus::active() {
            return Vec::new();
        }
        types
            .iter()
            .zip(unseen)
            .filter(|(_, u)| **u)
            .map(|(((a, t), _), _)| ((*a).to_owned(), (*t).to_owned()))
            .collect::<Vec<_>>()
    };
    // One flag per event of `events`: whether this group inserted it.
    let new: Vec<bool> = loop {
        attempt += 1;
        let mut conn = pool.get().await?;
        // In a transaction even when the group is one statement: its write then commits only
        // if this process is still there to say so once the statement is done. Alone, a
        // statement waiting on a row lock would commit after the process had stopped, its
        // requests unanswered (the chaos suite's shutdown-grace case).
        let result = async {
            store_events::begin_group(&mut conn).await?;
            let c: &mut diesel_async::AsyncPgConnection = &mut conn;
            let body = async {
                crate::store::accounts::ensure_many(c, &unknown, now).await?;
                if expect_new {
                    let new = vec![true; events.len()];
                    let (rollups, types) = deltas(&unique, &new);
                    let unseen = unseen(&types);
                    let counters = store_events::Counters {
                        rollups: &rollups,
                        types: &types,
                        unseen: &unseen,
                        shard,
                    };
                    store_events::insert_all_with_counters(c, &events, now, &counters).await?;
                    written.fire();
                    return Ok((new, stored_pairs(&types, &unseen)));
                }
                let inserted = store_events::insert_new(c, &events, now).await?;
                let inserted: FastSet<(&str, &str)> = inserted
                    .iter()
                    .map(|(a, i)| (a.as_str(), i.as_str()))
                    .collect();
                let new: Vec<bool> = events
                    .iter()
                    .map(|e| inserted.contains(&(e.account.as_str(), e.id.as_str())))
                    .collect();
                let (rollups, types) = deltas(&unique, &new);
                let unseen = unseen(&types);
                let counters = store_events::Counters {
                    rollups: &rollups,
                    types: &types,
                    unseen: &unseen,
                    shard,
                };
                store_events::add_counters(c, &counters).await?;
                written.fire();
                Ok((new, stored_pairs(&types, &unseen)))
            }
            .await;
            store_events::end_group(&mut conn, body).await
        }
        .await;
        match result {
            Ok((new, pairs)) => {
                let mut known = lane.known.lock().unwrap_or_else(|e| e.into_inner());
                for a in &unknown {
                    known.learn_account(a);
                }
                for (a, t) in &pairs {
                    known.learn_type(a, t);
                }
                drop(known);
                lane.plain
                    .store(expect_new || new.iter().all(|n| *n), Ordering::Relaxed);
                break new;
            }
            Err(e) if expect_new && e.is_unique_violation() => {
                expect_new = false;
                // At once, not after the commit: the lane's next group may start before that.
                lane.plain.store(false, Ordering::Relaxed);
                attempt -= 1;
                lane.metrics.record(|| {
                    metrics::counter!("accrue_ingest_insert_retries_total").increment(1)
                });
            }
            Err(e) if e.is_retryable() && attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "retrying ingest transaction");
            }
            Err(e) => return Err(e),
        }
    };
    let lens: Vec<usize> = keys.iter().map(Vec::len).collect();
    let mut accounts: Vec<&str> = events
        .iter()
        .zip(&new)
        .filter(|(_, new)| **new)
        .map(|(e, _)| e.account.as_str())
        .collect();
    accounts.dedup();
    Ok(Stored {
        by_job: stored_by_job(&lens, &owned, &new),
        accounts: accounts.into_iter().map(str::to_owned).collect(),
    })
}

/// A group's rollup deltas and type-count deltas, keyed by borrowed account, meter and type,
/// each key once and in key order.
type Deltas<'a> = (
    Vec<(RollupKey<'a>, AggregateState)>,
    Vec<((&'a str, &'a str), TypeCount)>,
);

/// Rollup and event-type deltas of the events that were actually inserted (`new`, one flag
/// per event of `valid`). The events come in key order, so an account's events follow one
/// another: each is added to a row among its account's last few rows (at most
/// [`RECENT_ROWS`]), not looked up among the whole group's, and the rows are put in key order
/// once at the end, where rows of one key (an account's backfill over many hours) merge.
fn deltas<'a>(valid: &[&'a Valid], new: &[bool]) -> Deltas<'a> {
    let mut rollups: Vec<(RollupKey<'a>, AggregateState)> = Vec::new();
    let mut types: Vec<((&'a str, &'a str), TypeCount)> = Vec::new();
    // Where the current account's rows start.
    let (mut first_rollup, mut first_type, mut current) = (0, 0, None);
    for (v, _) in valid.iter().zip(new).filter(|(_, new)| **new) {
        let e = &v.event;
        let account = e.account.as_str();
        if current != Some(account) {
            (first_rollup, first_type, current) = (rollups.len(), types.len(), Some(account));
        }
        let bucket = bucket_of(e.timestamp);
        for (meter, reading) in &v.readings {
            let key = (account, meter.as_str(), bucket);
            // Rows from `first_rollup` on are the account's: only meter and hour are compared.
            let from = first_rollup.max(rollups.len().saturating_sub(RECENT_ROWS));
            let at = match rollups[from..]
                .iter()
                .position(|(k, _)| k.2 == bucket && k.1 == key.1)
            {
                Some(i) => from + i,
                None => {
                    rollups.push((key, AggregateState::default()));
                    rollups.len() - 1
                }
            };
            rollups[at].1.add(e.timestamp, &e.id, reading);
        }
        let key = (account, e.event_type.as_str());
        let from = first_type.max(types.len().saturating_sub(RECENT_ROWS));
        match types[from..].iter_mut().find(|(k, _)| k.1 == key.1) {
            Some((_, c)) => c.merge(&TypeCount::one(e.timestamp)),
            None => types.push((key, TypeCount::one(e.timestamp))),
        }
    }
    let rollups = in_key_order(rollups, |into, from| into.merge(&from));
    let types = in_key_order(types, |into, from| into.merge(&from));
    (rollups, types)
}

/// How many of the current account's latest rows an event's reading is looked for among
/// before it starts a row of its own (merged at the end): live traffic has a few rows per
/// account, a backfill one per meter and hour, and a search among all of them would be
/// quadratic in the group.
const RECENT_ROWS: usize = 8;

/// Rows sorted by key, each key once: rows of one key are merged into one by `merge`.
fn in_key_order<K: Ord, V>(mut rows: Vec<(K, V)>, merge: impl Fn(&mut V, V)) -> Vec<(K, V)> {
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(K, V)> = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        match out.last_mut() {
            Some((last, into)) if *last == k => merge(into, v),
            _ => out.push((k, v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(account: &str, id: &str, minute: u32, readings: &[(&str, Reading)]) -> Valid {
        use chrono::TimeZone;
        Valid {
            event: Event {
                account: crate::domain::account::AccountId::parse(account).unwrap(),
                id: id.into(),
                event_type: "job.completed".into(),
                timestamp: chrono::Utc
                    .with_ymd_and_hms(2026, 11, 25, 12, minute, 0)
                    .unwrap(),
                properties: serde_json::json!({}),
            },
            readings: readings
                .iter()
                .map(|(m, r)| ((*m).to_owned(), r.clone()))
                .collect(),
            index: 0,
        }
    }

    /// Rows come out once per key and in key order (the upserts lock rows in that order and
    /// may not touch a row twice), including when an account's events do not follow one
    /// another; only new events count.
    #[test]
    fn a_groups_deltas_hold_each_key_once_in_key_order() {
        use chrono::Timelike;
        use rust_decimal::Decimal;
        let dec = |v: &str| v.parse::<Decimal>().unwrap();
        let n = |v: &str| Reading::Number(dec(v));
        let events = [
            valid(
                "b",
                "1",
                5,
                &[("minutes", n("1.5")), ("jobs", Reading::One)],
            ),
            valid("b", "2", 7, &[("minutes", n("2"))]),
            valid("a", "3", 9, &[("minutes", n("4"))]),
            valid("b", "4", 1, &[("minutes", n("10"))]),
            valid("a", "5", 2, &[("minutes", n("100"))]),
        ];
        let refs: Vec<&Valid> = events.iter().collect();
        // "a"'s second event was stored before: it adds nothing.
        let (rollups, types) = deltas(&refs, &[true, true, true, true, false]);
        let hour = events[0].event.timestamp - chrono::Duration::minutes(5);
        let keys: Vec<RollupKey> = rollups.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            vec![
                ("a", "minutes", hour),
                ("b", "jobs", hour),
                ("b", "minutes", hour)
            ]
        );
        let sums: Vec<(i64, Decimal)> = rollups
            .iter()
            .map(|(_, s)| (s.event_count, s.sum))
            .collect();
        assert_eq!(sums, vec![(1, dec("4")), (1, dec("0")), (3, dec("13.5"))]);
        // b's latest minutes are event 2's (12:07), not event 4's, which came later but
        // happened earlier (12:01).
        let latest = rollups[2].1.latest.as_ref().unwrap();
        assert_eq!((latest.event_id.as_str(), latest.value), ("2", dec("2")));
        let counts: Vec<((&str, &str), i64)> = types.iter().map(|(k, c)| (*k, c.count)).collect();
        assert_eq!(
            counts,
            vec![(("a", "job.completed"), 1), (("b", "job.completed"), 3)]
        );
        let b = &types[1].1;
        assert_eq!((b.first_at.minute(), b.last_at.minute()), (1, 7));
    }

    /// A backfill: one account's events over more hours than an event's reading is looked for
    /// among, each hour twice, far apart. Each hour still comes out once, in order, with both
    /// events.
    #[test]
    fn a_backfill_over_many_hours_gives_one_row_per_hour() {
        let hours = 3 * RECENT_ROWS as i64;
        let events: Vec<Valid> = (0..2 * hours)
            .map(|k| {
                let mut v = valid("acme", &format!("e{k:03}"), 0, &[("jobs", Reading::One)]);
                v.event.timestamp -= chrono::Duration::hours(k % hours);
                v
            })
            .collect();
        let refs: Vec<&Valid> = events.iter().collect();
        let (rollups, types) = deltas(&refs, &vec![true; refs.len()]);
        let last = events[0].event.timestamp;
        let want: Vec<(RollupKey, i64)> = (0..hours)
            .rev()
            .map(|h| (("acme", "jobs", last - chrono::Duration::hours(h)), 2))
            .collect();
        let got: Vec<(RollupKey, i64)> = rollups.iter().map(|(k, s)| (*k, s.event_count)).collect();
        assert_eq!(got, want);
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].1.count, 2 * hours);
    }

    fn keys<'a>(ids: &[&'a str]) -> Vec<(&'a str, &'a str)> {
        ids.iter().map(|i| ("acme", *i)).collect()
    }

    /// Two requests of one group commit carry the same id: the first stored it, so the second
    /// gets its copy back to compare (it was counted a duplicate unseen, even when it said
    /// something else: security review L6). An id stored before the group goes back to the
    /// job that sent it too.
    #[test]
    fn a_later_request_of_the_group_gets_back_the_id_an_earlier_one_stored() {
        let jobs = vec![keys(&["b", "a"]), keys(&["b", "c"]), keys(&["old"])];
        let owned = owned_in_key_order(&jobs);
        // Key order, each key once, owned by its first holder.
        assert_eq!(owned, vec![(0, 1), (0, 0), (1, 1), (2, 0)]);
        // The insert found a, b and c new, "old" stored before.
        let new = [true, true, true, false];
        assert_eq!(
            stored_by_job(&[2, 2, 1], &owned, &new),
            vec![vec![true, true], vec![false, true], vec![false]]
        );
    }

    /// Keys repeated within one job (requests drop their own repeats before queueing, so this
    /// guards the lane's side alone): the first copy owns the key, the later one is not stored.
    #[test]
    fn a_key_repeated_within_one_job_is_owned_by_its_first_copy() {
        let jobs = vec![keys(&["x", "x", "y"])];
        let owned = owned_in_key_order(&jobs);
        assert_eq!(owned, vec![(0, 0), (0, 2)]);
        assert_eq!(
            stored_by_job(&[3], &owned, &[true, true]),
            vec![vec![true, false, true]]
        );
    }
}
