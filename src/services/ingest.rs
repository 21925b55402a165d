//! Ingestion: validate a batch, store each new event exactly once and fold it into the hourly
//! rollups, all in one transaction that is committed before the caller is answered.
//!
//! Exactly-once rests on the `(account, id)` primary key of `events`: the insert skips ids
//! already stored, and only the rows it actually inserted are added to the rollups, in the same
//! transaction. A retry of a batch, concurrent or after a crash, therefore finds its events
//! stored and adds nothing. Rows are written in key order so concurrent batches cannot
//! deadlock on each other; a transient conflict is retried.

use super::{Ctx, ServiceError};
use crate::domain::aggregate::{bucket_of, AggregateState};
use crate::domain::event::{parse_event, raw_id, Event, Rejection};
use crate::domain::meter::Reading;
use crate::store::events::{self as store_events, RollupKey, TypeCount};
use crate::store::StoreError;
use diesel_async::AsyncConnection;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// Most events in one request.
pub const MAX_BATCH: usize = 1000;
/// How many times a batch is retried after a deadlock or serialization failure.
const MAX_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RejectedEvent {
    pub index: usize,
    pub id: Option<String>,
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

/// The per-batch answer: how many were stored now, how many were already stored, and why the
/// others were refused.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<RejectedEvent>,
}

/// An event that passed validation, with what it contributes to each meter.
struct Valid {
    event: Event,
    readings: Vec<(String, Reading)>,
}

/// Ingests raw events. `only_account` restricts an account-scoped key to its own account.
pub async fn ingest(
    ctx: &Ctx,
    raw: &[Value],
    only_account: Option<&str>,
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
    let mut outcome = IngestOutcome::default();
    let mut seen = HashSet::with_capacity(raw.len());
    let mut valid = Vec::with_capacity(raw.len());
    for (index, r) in raw.iter().enumerate() {
        match validate(ctx, r, now, only_account) {
            Ok(v) => {
                if seen.insert((v.event.account.as_str().to_owned(), v.event.id.clone())) {
                    valid.push(v);
                } else {
                    // The same id twice in one batch: the first copy counts.
                    outcome.duplicates += 1;
                }
            }
            Err(rej) => outcome.rejected.push(RejectedEvent {
                index,
                id: raw_id(r),
                error: ErrorBody {
                    code: rej.code,
                    message: rej.message,
                },
            }),
        }
    }
    valid.sort_by(|a, b| {
        (a.event.account.as_str(), a.event.id.as_str())
            .cmp(&(b.event.account.as_str(), b.event.id.as_str()))
    });
    let inserted = store_valid(ctx, &valid, now).await?;
    outcome.accepted = inserted;
    outcome.duplicates += valid.len() - inserted;
    Ok(outcome)
}

fn validate(
    ctx: &Ctx,
    raw: &Value,
    now: chrono::DateTime<chrono::Utc>,
    only_account: Option<&str>,
) -> Result<Valid, Rejection> {
    let event = parse_event(raw, now)?;
    if only_account.is_some_and(|a| a != event.account.as_str()) {
        return Err(Rejection::new(
            "account_not_allowed",
            format!(
                "this key cannot send events for account `{}`",
                event.account
            ),
        ));
    }
    let mut readings = Vec::new();
    for meter in ctx.meters.for_event_type(&event.event_type) {
        if let Some(reading) = meter.reading(&event)? {
            readings.push((meter.code.clone(), reading));
        }
    }
    Ok(Valid { event, readings })
}

/// Stores the valid events in one transaction; returns how many were new.
async fn store_valid(
    ctx: &Ctx,
    valid: &[Valid],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, ServiceError> {
    if valid.is_empty() {
        return Ok(0);
    }
    let events: Vec<&Event> = valid.iter().map(|v| &v.event).collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        let result = conn
            .transaction::<usize, StoreError, _>(async |c| {
                let new = store_events::insert_new(c, &events, now).await?;
                let (rollups, types) = deltas(valid, &new);
                store_events::add_to_rollups(c, &rollups).await?;
                store_events::add_to_type_counts(c, &types).await?;
                Ok(new.len())
            })
            .await;
        match result {
            Ok(n) => return Ok(n),
            Err(e) if e.is_retryable() && attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "retrying ingest transaction");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Rollup and event-type deltas of the events that were actually inserted.
fn deltas(
    valid: &[Valid],
    new: &HashSet<(String, String)>,
) -> (
    BTreeMap<RollupKey, AggregateState>,
    BTreeMap<(String, String), TypeCount>,
) {
    let mut rollups: BTreeMap<RollupKey, AggregateState> = BTreeMap::new();
    let mut types: BTreeMap<(String, String), TypeCount> = BTreeMap::new();
    for v in valid {
        let e = &v.event;
        // Cheap check first: most batches are all new.
        if !new.contains(&(e.account.as_str().to_owned(), e.id.clone())) {
            continue;
        }
        let bucket = bucket_of(e.timestamp);
        for (meter, reading) in &v.readings {
            rollups
                .entry((e.account.as_str().to_owned(), meter.clone(), bucket))
                .or_default()
                .add(e.timestamp, &e.id, reading);
        }
        types
            .entry((e.account.as_str().to_owned(), e.event_type.clone()))
            .and_modify(|c| {
                c.count += 1;
                c.first_at = c.first_at.min(e.timestamp);
                c.last_at = c.last_at.max(e.timestamp);
            })
            .or_insert(TypeCount {
                count: 1,
                first_at: e.timestamp,
                last_at: e.timestamp,
            });
    }
    (rollups, types)
}
