//! How instants are written, everywhere accrue shows one: RFC 3339 in UTC with `Z` and
//! millisecond precision (`2026-11-30T02:04:45.435Z`), the same in every body, message and
//! export; customer-facing text (invoice line descriptions) shows dates (`2026-11-30`).
//!
//! Serialized fields say so with `#[serde(serialize_with = "crate::domain::ts::ms")]` (or
//! `ms_opt`): chrono's own form varies with the value (no fraction, or 3, 6 or 9 digits).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// `2026-11-30T02:04:45.435Z`.
pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `2026-11-30`, for customer-facing text.
pub fn date(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

pub fn ms<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

pub fn ms_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ms(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_instant_has_exactly_three_fraction_digits_and_z() {
        let whole = Utc.with_ymd_and_hms(2026, 11, 30, 2, 0, 0).unwrap();
        assert_eq!(format(&whole), "2026-11-30T02:00:00.000Z");
        let nanos = whole + chrono::Duration::nanoseconds(435_917_707);
        assert_eq!(format(&nanos), "2026-11-30T02:00:00.435Z");
        assert_eq!(date(&nanos), "2026-11-30");
        let json = serde_json::to_value(Wrapper { at: Some(nanos) }).unwrap();
        assert_eq!(json["at"], "2026-11-30T02:00:00.435Z");
        let none = serde_json::to_value(Wrapper { at: None }).unwrap();
        assert!(none["at"].is_null());
    }

    #[derive(serde::Serialize)]
    struct Wrapper {
        #[serde(serialize_with = "ms_opt")]
        at: Option<DateTime<Utc>>,
    }
}
