//! Aggregation of meter readings into rollups, and of rollups into a range's value.
//!
//! A rollup is the aggregate of one meter for one account over one hour ("bucket"). Every
//! operation here is commutative and associative, so the result of a set of events does not
//! depend on the order they arrive in or how they were batched; duplicates are removed before
//! aggregation by the event id (see `services::ingest`). `latest` breaks timestamp ties by
//! event id so it is order-independent too.

use crate::domain::meter::{Aggregation, Reading};
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeSet;

/// Length of a rollup bucket. Usage ranges are read on these boundaries.
pub const BUCKET_SECONDS: i64 = 3600;

/// Start of the hour bucket `ts` falls in.
pub fn bucket_of(ts: DateTime<Utc>) -> DateTime<Utc> {
    let secs = ts.timestamp();
    let start = secs - secs.rem_euclid(BUCKET_SECONDS);
    Utc.timestamp_opt(start, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// Whether `ts` lies exactly on a bucket boundary.
pub fn is_bucket_boundary(ts: DateTime<Utc>) -> bool {
    ts.timestamp_subsec_nanos() == 0 && ts.timestamp().rem_euclid(BUCKET_SECONDS) == 0
}

/// The latest reading: its time, the event id that broke ties, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub at: DateTime<Utc>,
    pub event_id: String,
    pub value: Decimal,
}

/// Everything needed to answer any aggregation over a set of readings of one meter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggregateState {
    pub event_count: i64,
    pub sum: Decimal,
    pub max: Option<Decimal>,
    pub latest: Option<Latest>,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
    /// Distinct keys, for unique_count meters only.
    pub keys: BTreeSet<String>,
}

impl AggregateState {
    /// Adds one event's reading.
    pub fn add(&mut self, at: DateTime<Utc>, event_id: &str, reading: &Reading) {
        self.event_count += 1;
        self.first_at = Some(self.first_at.map_or(at, |f| f.min(at)));
        self.last_at = Some(self.last_at.map_or(at, |l| l.max(at)));
        match reading {
            Reading::One => {}
            Reading::Number(v) => {
                self.sum += v;
                self.max = Some(self.max.map_or(*v, |m| m.max(*v)));
                // As `later` decides, without copying the id of a reading that loses.
                let wins = self
                    .latest
                    .as_ref()
                    .is_none_or(|c| (&c.at, c.event_id.as_str()) < (&at, event_id));
                if wins {
                    self.latest = Some(Latest {
                        at,
                        event_id: event_id.to_owned(),
                        value: *v,
                    });
                }
            }
            Reading::Key(k) => {
                if !self.keys.contains(k) {
                    self.keys.insert(k.clone());
                }
            }
        }
    }

    /// Combines two disjoint aggregates.
    pub fn merge(&mut self, other: &AggregateState) {
        self.event_count += other.event_count;
        self.sum += other.sum;
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(l) = &other.latest {
            self.latest = Some(later(self.latest.take(), l.clone()));
        }
        self.first_at = match (self.first_at, other.first_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_at = match (self.last_at, other.last_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.keys.extend(other.keys.iter().cloned());
    }

    /// The meter's value under `aggregation`; an empty aggregate is worth zero.
    pub fn value(&self, aggregation: Aggregation) -> Decimal {
        match aggregation {
            Aggregation::Count => Decimal::from(self.event_count),
            Aggregation::Sum => self.sum,
            Aggregation::Max => self.max.unwrap_or_default(),
            Aggregation::UniqueCount => Decimal::from(self.keys.len()),
            Aggregation::Latest => self.latest.as_ref().map(|l| l.value).unwrap_or_default(),
        }
        .normalize()
    }
}

/// The later of two readings by (time, event id).
fn later(current: Option<Latest>, candidate: Latest) -> Latest {
    match current {
        Some(c) if (&c.at, &c.event_id) >= (&candidate.at, &candidate.event_id) => c,
        _ => candidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn buckets_are_hour_starts() {
        assert_eq!(bucket_of(at(3600 * 5 + 59)), at(3600 * 5));
        assert_eq!(bucket_of(at(-1)), at(-3600));
        assert!(is_bucket_boundary(at(7200)));
        assert!(!is_bucket_boundary(at(7201)));
    }

    #[test]
    fn latest_breaks_timestamp_ties_by_event_id() {
        let mut a = AggregateState::default();
        a.add(at(10), "b", &Reading::Number(Decimal::ONE));
        a.add(at(10), "a", &Reading::Number(Decimal::TWO));
        assert_eq!(a.value(Aggregation::Latest), Decimal::ONE);
    }

    /// (seconds, id, value, key) — ids are unique per generated set.
    fn events() -> impl Strategy<Value = Vec<(i64, String, i64, u8)>> {
        prop::collection::vec((0i64..86_400, -1000i64..1000, 0u8..5), 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (s, val, k))| (s, format!("e{i}"), val, k))
                .collect()
        })
    }

    fn aggregate(events: &[(i64, String, i64, u8)], bucketed: bool) -> AggregateState {
        // Dedup by id first, as ingestion does: the first copy of an id wins.
        let mut seen = BTreeSet::new();
        let mut buckets: std::collections::BTreeMap<DateTime<Utc>, AggregateState> =
            Default::default();
        for (s, id, val, key) in events {
            if !seen.insert(id.clone()) {
                continue;
            }
            let b = if bucketed { bucket_of(at(*s)) } else { at(0) };
            let st = buckets.entry(b).or_default();
            st.add(at(*s), id, &Reading::Number(Decimal::new(*val, 2)));
            st.keys.insert(format!("k{key}"));
        }
        let mut total = AggregateState::default();
        for st in buckets.values() {
            total.merge(st);
        }
        total
    }

    proptest! {
        #[test]
        fn aggregation_ignores_order_batching_and_duplicates(
            evs in events(),
            seed in any::<u64>(),
            dup_mask in prop::collection::vec(any::<bool>(), 40),
        ) {
            let reference = aggregate(&evs, false);
            let mut shuffled = evs.clone();
            // Add duplicates of some events, then permute deterministically from the seed.
            for (e, dup) in evs.iter().zip(dup_mask) {
                if dup { shuffled.push(e.clone()); }
            }
            let n = shuffled.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let other = aggregate(&shuffled, true);
            for agg in [Aggregation::Count, Aggregation::Sum, Aggregation::Max,
                        Aggregation::UniqueCount, Aggregation::Latest] {
                prop_assert_eq!(reference.value(agg), other.value(agg));
            }
            prop_assert_eq!(reference.first_at, other.first_at);
            prop_assert_eq!(reference.last_at, other.last_at);
        }
    }
}
