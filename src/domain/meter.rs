//! Meters: which events count toward a billable or signal quantity, and how they aggregate.
//!
//! A meter is immutable once published (a change is a new code); the catalogue file is read by
//! `catalog::meters`. Here lives the rule that turns one event into one meter reading.

use crate::domain::event::{Event, Rejection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    Sum,
    Max,
    UniqueCount,
    Latest,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Max => "max",
            Aggregation::UniqueCount => "unique_count",
            Aggregation::Latest => "latest",
        }
    }

    /// Whether the meter's property must be a number (sum, max, latest) rather than any scalar.
    pub fn needs_number(self) -> bool {
        matches!(
            self,
            Aggregation::Sum | Aggregation::Max | Aggregation::Latest
        )
    }
}

/// A validated meter definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meter {
    /// Stable code plans and usage reports refer to (`api_calls`).
    pub code: String,
    /// The event `type` this meter reads (`api.request`).
    pub event_type: String,
    pub aggregation: Aggregation,
    /// The event property aggregated; `None` only for `count`.
    pub property: Option<String>,
    /// Property → accepted values; an event matches when every listed property has one of them.
    pub filter: BTreeMap<String, Vec<String>>,
    pub description: String,
    /// Who answers for the instrumentation, so a renamed event never goes unnoticed.
    pub owner: String,
    /// Whether the property may be negative (corrections, refunds); otherwise an event with a
    /// negative value is rejected.
    pub allow_negative: bool,
}

/// What one event contributes to one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Count meters: the event itself.
    One,
    /// Sum, max and latest meters: the property's value.
    Number(Decimal),
    /// Unique-count meters: the property's value as text.
    Key(String),
}

/// Magnitude bound on metered values. Rollup columns are NUMERIC(28, 9) (19 integer digits), so
/// one hourly bucket holds at least 10^7 maximal values before it could overflow.
pub const MAX_ABS_VALUE: i64 = 1_000_000_000_000; // 1e12
/// Most decimal places a metered value may carry (the rollup columns keep 9).
pub const MAX_SCALE: u32 = 9;
/// Longest key a `unique_count` meter counts (a user id, a hostname): the keys are stored and
/// indexed, and PostgreSQL's btree rows stop at about 2.7 KB.
pub const MAX_UNIQUE_KEY_LEN: usize = 256;

impl Meter {
    /// Does this meter read `event` at all (type and filter)?
    pub fn applies_to(&self, event: &Event) -> bool {
        self.matches(&event.event_type, &event.properties)
    }

    /// Does this meter read an event of `event_type` with these properties?
    pub fn matches(&self, event_type: &str, properties: &serde_json::Value) -> bool {
        event_type == self.event_type
            && self.filter.iter().all(|(prop, accepted)| {
                properties
                    .get(prop)
                    .and_then(scalar_text)
                    .is_some_and(|v| accepted.contains(&v))
            })
    }

    /// The reading `event` gives this meter, `None` when the meter does not apply, or the
    /// rejection naming the property when the event is unusable for it.
    pub fn reading(&self, event: &Event) -> Result<Option<Reading>, Rejection> {
        if !self.applies_to(event) {
            return Ok(None);
        }
        let Some(prop) = &self.property else {
            return Ok(Some(Reading::One));
        };
        let Some(raw) = event.properties.get(prop).filter(|v| !v.is_null()) else {
            return Err(Rejection::new(
                "missing_property",
                format!(
                    "event type `{}` needs property `{prop}` for meter `{}`",
                    self.event_type, self.code
                ),
            ));
        };
        if self.aggregation.needs_number() {
            let value = parse_number(raw).map_err(|why| {
                Rejection::new(
                    "invalid_property",
                    format!("property `{prop}` for meter `{}` {why}", self.code),
                )
            })?;
            if value.is_sign_negative() && !value.is_zero() && !self.allow_negative {
                return Err(Rejection::new(
                    "negative_value",
                    format!(
                        "property `{prop}` for meter `{}` is {value}: the meter takes no negative \
                         values (its definition would say allow_negative = true for corrections)",
                        self.code
                    ),
                ));
            }
            Ok(Some(Reading::Number(value)))
        } else {
            let key = scalar_text(raw).ok_or_else(|| {
                Rejection::new(
                    "invalid_property",
                    format!(
                        "property `{prop}` for meter `{}` must be a string or a number",
                        self.code
                    ),
                )
            })?;
            if key.len() > MAX_UNIQUE_KEY_LEN {
                return Err(Rejection::new(
                    "unique_key_too_long",
                    format!(
                        "property `{prop}` for meter `{}` is {} bytes long; the limit is \
                         {MAX_UNIQUE_KEY_LEN}",
                        self.code,
                        key.len()
                    ),
                ));
            }
            Ok(Some(Reading::Key(key)))
        }
    }
}

/// Text of a scalar JSON value (strings as-is, numbers and booleans as written).
fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            None
        }
    }
}

/// A metered number, from a JSON number or a decimal string, exactly (never through a float).
pub fn parse_number(v: &serde_json::Value) -> Result<Decimal, String> {
    let text = match v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().to_owned(),
        _ => return Err("must be a number".into()),
    };
    let value = Decimal::from_str_exact(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| format!("must be a number, got `{text}`"))?;
    if value.abs() >= Decimal::from(MAX_ABS_VALUE) {
        return Err(format!(
            "is out of range (|value| must be below {MAX_ABS_VALUE})"
        ));
    }
    let value = value.normalize();
    if value.scale() > MAX_SCALE {
        return Err(format!("has more than {MAX_SCALE} decimal places"));
    }
    Ok(value)
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "count" => Ok(Aggregation::Count),
            "sum" => Ok(Aggregation::Sum),
            "max" => Ok(Aggregation::Max),
            "unique_count" => Ok(Aggregation::UniqueCount),
            "latest" => Ok(Aggregation::Latest),
            other => Err(format!(
                "unknown aggregation `{other}` (count, sum, max, unique_count, latest)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::AccountId;
    use serde_json::json;

    fn meter(aggregation: Aggregation, property: Option<&str>) -> Meter {
        Meter {
            code: "m".into(),
            event_type: "t".into(),
            aggregation,
            property: property.map(str::to_owned),
            filter: BTreeMap::from([("region".to_owned(), vec!["eu".to_owned()])]),
            description: String::new(),
            owner: String::new(),
            allow_negative: false,
        }
    }

    #[test]
    fn a_negative_value_is_rejected_unless_the_meter_allows_it() {
        let ev = event(json!({"region": "eu", "n": "-2.5"}));
        let strict = meter(Aggregation::Sum, Some("n"));
        let e = strict.reading(&ev).unwrap_err();
        assert_eq!(e.code, "negative_value");
        assert!(e.message.contains("-2.5"), "{}", e.message);
        let corrections = Meter {
            allow_negative: true,
            ..strict.clone()
        };
        assert_eq!(
            corrections.reading(&ev).unwrap(),
            Some(Reading::Number("-2.5".parse().unwrap()))
        );
        // Zero is not negative.
        let zero = event(json!({"region": "eu", "n": 0}));
        assert!(strict.reading(&zero).unwrap().is_some());
    }

    fn event(props: serde_json::Value) -> Event {
        Event {
            account: AccountId::parse("a").unwrap(),
            id: "1".into(),
            event_type: "t".into(),
            timestamp: chrono::DateTime::UNIX_EPOCH,
            properties: props,
        }
    }

    #[test]
    fn a_filter_excludes_events_whose_property_differs() {
        let m = meter(Aggregation::Count, None);
        assert_eq!(m.reading(&event(json!({"region": "us"}))).unwrap(), None);
        assert_eq!(
            m.reading(&event(json!({"region": "eu"}))).unwrap(),
            Some(Reading::One)
        );
    }

    #[test]
    fn numbers_and_decimal_strings_are_read_exactly() {
        let m = meter(Aggregation::Sum, Some("gb"));
        let r = m
            .reading(&event(json!({"region": "eu", "gb": 0.1})))
            .unwrap();
        assert_eq!(r, Some(Reading::Number(Decimal::new(1, 1))));
        let r = m
            .reading(&event(json!({"region": "eu", "gb": "12.50"})))
            .unwrap();
        assert_eq!(r, Some(Reading::Number(Decimal::new(125, 1))));
    }

    #[test]
    fn missing_and_non_numeric_properties_are_rejected_naming_the_property() {
        let m = meter(Aggregation::Max, Some("gb"));
        let e = m.reading(&event(json!({"region": "eu"}))).unwrap_err();
        assert_eq!(e.code, "missing_property");
        assert!(e.message.contains("`gb`"));
        let e = m
            .reading(&event(json!({"region": "eu", "gb": "lots"})))
            .unwrap_err();
        assert_eq!(e.code, "invalid_property");
        let e = m
            .reading(&event(json!({"region": "eu", "gb": true})))
            .unwrap_err();
        assert_eq!(e.code, "invalid_property");
    }

    #[test]
    fn out_of_range_and_over_precise_values_are_rejected() {
        assert!(parse_number(&json!(1e12)).is_err());
        assert!(parse_number(&json!("999999999999.5")).is_ok());
        assert!(parse_number(&json!("0.0000000001")).is_err());
        assert_eq!(
            parse_number(&json!("1.5000000000")).unwrap(),
            Decimal::new(15, 1)
        );
    }
}
