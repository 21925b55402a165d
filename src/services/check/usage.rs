//! One cached account's usage over its current period, kept as small as the check allows.
//!
//! The check reads one number per meter: the value of the meter's aggregation. So an entry
//! keeps, per meter, only what that aggregation needs (a count, a sum, a maximum, the latest
//! reading, or the distinct keys), not the full [`AggregateState`] the rollups carry. Distinct
//! keys are kept as 128-bit digests (the first half of their SHA-256) rather than as strings:
//! 16 bytes a key whatever its length. Two different keys would have to share a digest for a
//! count to be off by one, which for n keys happens with probability about n² / 2¹²⁹, and
//! cannot be aimed at, so the count is exact in practice. Invoices never read this: they
//! count the keys themselves in the database.

use crate::domain::aggregate::AggregateState;
use crate::domain::meter::{Aggregation, Reading};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// The usage of every meter with readings in the period, in no order (a plan has a few).
#[derive(Default)]
pub struct Usage(Vec<(Box<str>, Tally)>);

/// One meter's usage, reduced to what its aggregation reads.
pub enum Tally {
    Count(i64),
    Sum(Decimal),
    Max(Option<Decimal>),
    Latest(Option<LatestReading>),
    Unique(Digests),
}

/// The latest reading and the event that breaks ties between readings of the same time (as
/// [`AggregateState`] breaks them, so the check agrees with the rollups).
pub struct LatestReading {
    at: DateTime<Utc>,
    event_id: Box<str>,
    value: Decimal,
}

/// Distinct keys as digests. The set hashes them with the standard library's randomly keyed
/// hasher, not by their own bits: a client that chose its keys could otherwise find many whose
/// digests share the bits that pick a bucket and slow every insert of the account.
pub type Digests = HashSet<u128>;

/// A distinct key's digest: the first 16 bytes of its SHA-256.
pub fn digest(key: &str) -> u128 {
    let full = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&full[..16]);
    u128::from_be_bytes(first)
}

impl Tally {
    fn empty(aggregation: Aggregation) -> Self {
        match aggregation {
            Aggregation::Count => Tally::Count(0),
            Aggregation::Sum => Tally::Sum(Decimal::ZERO),
            Aggregation::Max => Tally::Max(None),
            Aggregation::Latest => Tally::Latest(None),
            Aggregation::UniqueCount => Tally::Unique(Digests::default()),
        }
    }

    /// What the check keeps of a rollup's aggregate under `aggregation`.
    fn of_state(aggregation: Aggregation, s: &AggregateState) -> Self {
        match aggregation {
            Aggregation::Count => Tally::Count(s.event_count),
            Aggregation::Sum => Tally::Sum(s.sum),
            Aggregation::Max => Tally::Max(s.max),
            Aggregation::Latest => Tally::Latest(s.latest.as_ref().map(|l| LatestReading {
                at: l.at,
                event_id: l.event_id.as_str().into(),
                value: l.value,
            })),
            Aggregation::UniqueCount => Tally::Unique(s.keys.iter().map(|k| digest(k)).collect()),
        }
    }

    /// Adds one event's reading (as [`AggregateState::add`] does for the same aggregation).
    fn add(&mut self, at: DateTime<Utc>, event_id: &str, reading: &Reading) {
        match (self, reading) {
            (Tally::Count(n), _) => *n += 1,
            (Tally::Sum(s), Reading::Number(v)) => *s += v,
            (Tally::Max(m), Reading::Number(v)) => *m = Some(m.map_or(*v, |m| m.max(*v))),
            (Tally::Latest(l), Reading::Number(v)) => {
                let later = l
                    .as_ref()
                    .is_none_or(|c| (c.at, &*c.event_id) < (at, event_id));
                if later {
                    *l = Some(LatestReading {
                        at,
                        event_id: event_id.into(),
                        value: *v,
                    });
                }
            }
            (Tally::Unique(keys), Reading::Key(k)) => {
                keys.insert(digest(k));
            }
            // A reading of another shape adds nothing to this aggregation's value.
            _ => {}
        }
    }

    /// The meter's value; an empty tally is worth zero.
    pub fn value(&self) -> Decimal {
        match self {
            Tally::Count(n) => Decimal::from(*n),
            Tally::Sum(s) => *s,
            Tally::Max(m) => m.unwrap_or_default(),
            Tally::Latest(l) => l.as_ref().map(|l| l.value).unwrap_or_default(),
            Tally::Unique(keys) => Decimal::from(keys.len()),
        }
        .normalize()
    }
}

impl Usage {
    /// From the rollups' aggregates, each meter under its aggregation.
    pub fn of_states(
        states: impl IntoIterator<Item = (String, AggregateState)>,
        aggregation: impl Fn(&str) -> Aggregation,
    ) -> Self {
        let mut out: Vec<(Box<str>, Tally)> = states
            .into_iter()
            .map(|(m, s)| {
                let t = Tally::of_state(aggregation(&m), &s);
                (m.into_boxed_str(), t)
            })
            .collect();
        out.shrink_to_fit();
        Usage(out)
    }

    fn tally_mut(&mut self, meter: &str, aggregation: Aggregation) -> &mut Tally {
        let i = match self.0.iter().position(|(m, _)| &**m == meter) {
            Some(i) => i,
            None => {
                self.0.push((meter.into(), Tally::empty(aggregation)));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    /// Adds one event's reading of `meter`.
    pub fn add(
        &mut self,
        meter: &str,
        aggregation: Aggregation,
        at: DateTime<Utc>,
        event_id: &str,
        reading: &Reading,
    ) {
        self.tally_mut(meter, aggregation)
            .add(at, event_id, reading);
    }

    /// Adds distinct keys (their digests) to `meter` when its aggregation counts them; a meter
    /// of another aggregation is left as it is.
    pub fn add_digests(
        &mut self,
        meter: &str,
        aggregation: Aggregation,
        digests: impl IntoIterator<Item = u128>,
    ) {
        if aggregation != Aggregation::UniqueCount {
            return;
        }
        if let Tally::Unique(keys) = self.tally_mut(meter, aggregation) {
            keys.extend(digests);
        }
    }

    /// The value of `meter`; zero when it has no readings.
    pub fn value(&self, meter: &str) -> Decimal {
        self.0
            .iter()
            .find(|(m, _)| &**m == meter)
            .map_or(Decimal::ZERO, |(_, t)| t.value())
    }

    /// The distinct-key digests of every unique-count meter (what a reload of the same period
    /// keeps instead of reading the keys again).
    pub fn digests(&self) -> Vec<(String, Digests)> {
        self.0
            .iter()
            .filter_map(|(m, t)| match t {
                Tally::Unique(keys) if !keys.is_empty() => Some((m.to_string(), keys.clone())),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// (seconds into the test's hour, event id, reading).
    type Readings = Vec<(i64, &'static str, Reading)>;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + s, 0).unwrap()
    }

    /// Every aggregation's tally agrees with the full aggregate over the same readings, in
    /// whatever order they come, and with the aggregate it was built from plus later ones.
    #[test]
    fn a_tally_reads_what_the_full_aggregate_reads() {
        let d = |s: &str| Reading::Number(s.parse().unwrap());
        let cases: Vec<(Aggregation, Readings)> = vec![
            (
                Aggregation::Count,
                vec![(1, "a", Reading::One), (2, "b", Reading::One)],
            ),
            (
                Aggregation::Sum,
                vec![(1, "a", d("1.5")), (2, "b", d("-0.25")), (3, "c", d("2"))],
            ),
            (
                Aggregation::Max,
                vec![(1, "a", d("3")), (2, "b", d("7.1")), (3, "c", d("2"))],
            ),
            (
                Aggregation::Latest,
                // Two readings at the same time: the greater event id wins.
                vec![(5, "b", d("4")), (5, "c", d("9")), (1, "z", d("1"))],
            ),
            (
                Aggregation::UniqueCount,
                vec![
                    (1, "a", Reading::Key("u1".into())),
                    (2, "b", Reading::Key("u2".into())),
                    (3, "c", Reading::Key("u1".into())),
                ],
            ),
        ];
        for (agg, readings) in cases {
            for split in 0..=readings.len() {
                let mut full = AggregateState::default();
                let mut first = AggregateState::default();
                for (i, (s, id, r)) in readings.iter().enumerate() {
                    full.add(at(*s), id, r);
                    if i < split {
                        first.add(at(*s), id, r);
                    }
                }
                let mut usage = Usage::of_states([("m".to_owned(), first)], |_| agg);
                for (s, id, r) in readings.iter().skip(split).rev() {
                    usage.add("m", agg, at(*s), id, r);
                }
                assert_eq!(
                    usage.value("m"),
                    full.value(agg),
                    "{agg:?} split at {split}"
                );
            }
        }
    }

    /// Each value worked out by hand: readings of other shapes add nothing, a maximum of
    /// negative readings is negative, and the latest of two at the same time is the greater
    /// event id's.
    #[test]
    fn each_tally_reads_the_value_worked_out_by_hand() {
        let n = |s: &str| Reading::Number(s.parse().unwrap());
        let key = |s: &str| Reading::Key(s.into());
        let cases: Vec<(Aggregation, Readings, &str)> = vec![
            (
                Aggregation::Count,
                vec![
                    (1, "a", Reading::One),
                    (2, "b", Reading::One),
                    (3, "c", Reading::One),
                ],
                "3",
            ),
            (
                Aggregation::Sum,
                vec![
                    (1, "a", n("1.5")),
                    (2, "b", n("-0.25")),
                    (3, "c", Reading::One),
                    (4, "d", n("2")),
                ],
                "3.25",
            ),
            (
                Aggregation::Max,
                vec![
                    (1, "a", n("-3")),
                    (2, "b", n("-7.1")),
                    (3, "c", key("k")),
                    (4, "d", n("-2")),
                ],
                "-2",
            ),
            (
                Aggregation::Latest,
                vec![
                    (5, "b", n("4")),
                    (5, "c", n("9")),
                    (1, "z", n("1")),
                    (6, "a", Reading::One),
                ],
                "9",
            ),
            (
                Aggregation::UniqueCount,
                vec![
                    (1, "a", key("u1")),
                    (2, "b", key("u2")),
                    (3, "c", key("u1")),
                    (4, "d", n("5")),
                ],
                "2",
            ),
        ];
        for (agg, readings, want) in cases {
            let mut usage = Usage::default();
            for (s, id, r) in &readings {
                usage.add("m", agg, at(*s), id, r);
            }
            assert_eq!(usage.value("m").to_string(), want, "{agg:?}");
        }
    }

    #[test]
    fn distinct_keys_count_once_whatever_their_length_and_an_unread_meter_is_zero() {
        let mut usage = Usage::default();
        let long = "x".repeat(10_000);
        for k in [
            "a@example.com",
            &long,
            "a@example.com",
            "A@example.com",
            &long,
        ] {
            usage.add(
                "users",
                Aggregation::UniqueCount,
                at(0),
                "e",
                &Reading::Key(k.into()),
            );
        }
        assert_eq!(usage.value("users"), Decimal::from(3));
        assert_eq!(usage.value("storage"), Decimal::ZERO);
        let kept = usage.digests();
        let mut again = Usage::default();
        for (m, d) in kept {
            again.add_digests(&m, Aggregation::UniqueCount, d);
        }
        again.add_digests(
            "users",
            Aggregation::UniqueCount,
            [digest("b@example.com"), digest("a@example.com")],
        );
        // Keys offered to a meter that does not count them change nothing.
        again.add_digests("api_calls", Aggregation::Count, [digest("x")]);
        assert_eq!(again.value("api_calls"), Decimal::ZERO);
        assert_eq!(again.value("users"), Decimal::from(4));
    }
}
