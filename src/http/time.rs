//! Timestamps in query strings and bodies: RFC 3339, in the years 1970 to 9999. chrono reads
//! years up to ±262,143, which PostgreSQL cannot store: without this bound such a date reached
//! the database and came back as a 503 "retry shortly" (reviews/security.md L1) instead of a
//! 400 naming the value.

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Deserializer};

pub const MIN_YEAR: i32 = 1970;
pub const MAX_YEAR: i32 = 9999;

fn bounded<E: serde::de::Error>(t: DateTime<Utc>) -> Result<DateTime<Utc>, E> {
    if (MIN_YEAR..=MAX_YEAR).contains(&t.year()) {
        Ok(t)
    } else {
        Err(E::custom(format!(
            "{} is out of range: timestamps must fall in the years {MIN_YEAR} to {MAX_YEAR}",
            crate::domain::ts::format(&t)
        )))
    }
}

/// An optional timestamp (`#[serde(default, deserialize_with = "time::optional")]`).
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<DateTime<Utc>>::deserialize(d)?
        .map(bounded)
        .transpose()
}

/// A required timestamp (`#[serde(deserialize_with = "time::required")]`).
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    bounded(DateTime::<Utc>::deserialize(d)?)
}
