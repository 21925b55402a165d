//! Billing periods: anchored on an instant, stepping by whole months (1 or 12), keeping the
//! anchor's day and clamping it to short months (anchor 31 → Feb 28/29 → Mar 31).
//!
//! Boundaries are always computed from the anchor, never from the previous boundary, so a
//! clamped February does not drag March back to the 28th. Anchors are whole UTC hours (see
//! [`anchor_at`]) so that a period's usage is an exact sum of hourly rollups.

use crate::domain::aggregate::bucket_of;
use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// One billing period `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Period {
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub start: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub end: DateTime<Utc>,
}

impl Period {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    pub fn seconds(&self) -> i64 {
        (self.end - self.start).num_seconds()
    }
}

/// The anchor for a subscription starting at `t`: the start of its UTC hour.
pub fn anchor_at(t: DateTime<Utc>) -> DateTime<Utc> {
    bucket_of(t)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default();
    let next = first.checked_add_months(Months::new(1)).unwrap_or(first);
    (next - first).num_days() as u32
}

/// The `k`-th boundary after `anchor` for periods of `months` months (k may be negative).
pub fn boundary(anchor: DateTime<Utc>, months: u32, k: i64) -> DateTime<Utc> {
    let total = anchor.year() as i64 * 12 + (anchor.month0() as i64) + k * months as i64;
    let year = total.div_euclid(12) as i32;
    let month = total.rem_euclid(12) as u32 + 1;
    let day = anchor.day().min(days_in_month(year, month));
    let date = NaiveDate::from_ymd_opt(year, month, day).unwrap_or_default();
    Utc.from_utc_datetime(&date.and_time(anchor.time()))
}

/// The period of `months` months, anchored at `anchor`, that contains `t`.
pub fn period_containing(anchor: DateTime<Utc>, months: u32, t: DateTime<Utc>) -> Period {
    let diff = (t.year() as i64 * 12 + t.month0() as i64)
        - (anchor.year() as i64 * 12 + anchor.month0() as i64);
    let mut k = diff.div_euclid(months as i64);
    // The estimate is off by at most one in either direction (day and time within the month).
    while boundary(anchor, months, k) > t {
        k -= 1;
    }
    while boundary(anchor, months, k + 1) <= t {
        k += 1;
    }
    Period {
        start: boundary(anchor, months, k),
        end: boundary(anchor, months, k + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn anchor_31_clamps_to_february_and_returns_to_31() {
        let a = t("2027-01-31T10:00:00Z");
        assert_eq!(boundary(a, 1, 1), t("2027-02-28T10:00:00Z"));
        assert_eq!(boundary(a, 1, 2), t("2027-03-31T10:00:00Z"));
        assert_eq!(boundary(a, 1, 3), t("2027-04-30T10:00:00Z"));
        let leap = t("2028-01-31T00:00:00Z");
        assert_eq!(boundary(leap, 1, 1), t("2028-02-29T00:00:00Z"));
    }

    #[test]
    fn yearly_periods_from_february_29th() {
        let a = t("2028-02-29T08:00:00Z");
        assert_eq!(boundary(a, 12, 1), t("2029-02-28T08:00:00Z"));
        assert_eq!(boundary(a, 12, 4), t("2032-02-29T08:00:00Z"));
    }

    #[test]
    fn the_containing_period_is_found_on_and_around_boundaries() {
        let a = t("2026-11-30T12:00:00Z");
        let p = period_containing(a, 1, t("2027-02-28T12:00:00Z"));
        assert_eq!(
            (p.start, p.end),
            (t("2027-02-28T12:00:00Z"), t("2027-03-30T12:00:00Z"))
        );
        let p = period_containing(a, 1, t("2027-02-28T11:59:59Z"));
        assert_eq!(
            (p.start, p.end),
            (t("2027-01-30T12:00:00Z"), t("2027-02-28T12:00:00Z"))
        );
        let p = period_containing(a, 1, t("2026-11-30T12:00:00Z"));
        assert_eq!(p.start, a);
    }

    #[test]
    fn anchors_are_whole_hours() {
        assert_eq!(
            anchor_at(t("2026-11-25T10:37:12Z")),
            t("2026-11-25T10:00:00Z")
        );
    }

    proptest! {
        /// Consecutive periods never overlap or leave gaps, across month ends, leap years and
        /// anchor days 28–31, and each starts on the anchor day or the month's last day.
        #[test]
        fn consecutive_periods_tile_time(
            year in 2023i32..2033, month in 1u32..=12, day in 28u32..=31, hour in 0u32..24,
            months in prop::sample::select(vec![1u32, 12]), k0 in -30i64..30,
        ) {
            let day = day.min(days_in_month(year, month));
            let anchor = Utc.with_ymd_and_hms(year, month, day, hour, 0, 0).unwrap();
            for k in k0..k0 + 26 {
                let p = period_containing(anchor, months, boundary(anchor, months, k));
                prop_assert_eq!(p.start, boundary(anchor, months, k));
                prop_assert_eq!(p.end, boundary(anchor, months, k + 1));
                prop_assert!(p.start < p.end);
                let next = period_containing(anchor, months, p.end);
                prop_assert_eq!(next.start, p.end, "gap or overlap after {:?}", p);
                let last = period_containing(anchor, months, p.end - chrono::Duration::seconds(1));
                prop_assert_eq!(last, p);
                let d = p.start.day();
                let dim = days_in_month(p.start.year(), p.start.month());
                prop_assert!(d == anchor.day() || (d == dim && anchor.day() > dim));
            }
        }
    }
}
