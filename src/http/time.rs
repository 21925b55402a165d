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

fn read<E: serde::de::Error>(s: &str) -> Result<DateTime<Utc>, E> {
    let t = DateTime::parse_from_rfc3339(s).map_err(|_| {
        E::custom(format!(
            "`{s}` is not an RFC 3339 timestamp; write one like 2026-11-01T00:00:00Z"
        ))
    })?;
    bounded(t.with_timezone(&Utc))
}

/// An optional timestamp (`#[serde(default, deserialize_with = "time::optional")]`).
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| read(&s))
        .transpose()
}

/// A required timestamp (`#[serde(deserialize_with = "time::required")]`).
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    read(&String::deserialize(d)?)
}
