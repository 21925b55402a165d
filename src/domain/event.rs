//! A usage event and the rules that accept or reject one, independent of transport.

use crate::domain::account::AccountId;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

/// How far ahead of the server's clock an event's timestamp may be.
pub const MAX_FUTURE_SKEW_SECONDS: i64 = 300;
/// Longest client id we accept (the id is an idempotency key kept forever).
pub const MAX_ID_LEN: usize = 256;
/// Longest event type.
pub const MAX_TYPE_LEN: usize = 128;

/// A validated usage event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub account: AccountId,
    /// The client's idempotency key, unique per account forever.
    pub id: String,
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    /// Always a JSON object (stored as given, as jsonb).
    pub properties: Value,
}

/// Why one event was refused: a stable code and a sentence naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The id of a raw event, when it has a string one (for per-event result reporting).
pub fn raw_id(raw: &Value) -> Option<String> {
    raw.get("id").and_then(Value::as_str).map(str::to_owned)
}

/// Validates the shape of one raw event. `now` is the receipt time, used as the default
/// timestamp and as the reference for the future-timestamp rule.
pub fn parse_event(raw: Value, now: DateTime<Utc>) -> Result<Event, Rejection> {
    let Value::Object(mut obj) = raw else {
        return Err(Rejection::new(
            "invalid_event",
            "an event must be a JSON object",
        ));
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_ID_LEN => s.clone(),
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
            return Err(Rejection::new(
                "invalid_id",
                format!("id is longer than {MAX_ID_LEN} bytes"),
            ))
        }
        Some(Value::String(_)) => {
            return Err(Rejection::new(
                "invalid_id",
                "id must be a non-empty string",
            ))
        }
        Some(_) => return Err(Rejection::new("invalid_id", "id must be a string")),
        None => return Err(Rejection::new("missing_id", "id is required")),
    };
    let account = match obj.get("account") {
        Some(Value::String(s)) => {
            AccountId::parse(s).map_err(|why| Rejection::new("invalid_account", why))?
        }
        Some(_) => {
            return Err(Rejection::new(
                "invalid_account",
                "account must be a string",
            ))
        }
        None => return Err(Rejection::new("missing_account", "account is required")),
    };
    let event_type = match obj.get("type") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_TYPE_LEN => s.clone(),
        Some(_) => {
            return Err(Rejection::new(
                "invalid_type",
                format!("type must be a non-empty string of at most {MAX_TYPE_LEN} bytes"),
            ))
        }
        None => return Err(Rejection::new("missing_type", "type is required")),
    };
    let timestamp = match obj.get("timestamp") {
        None | Some(Value::Null) => now,
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| {
                Rejection::new(
                    "invalid_timestamp",
                    format!("timestamp `{s}` is not RFC 3339: {e}"),
                )
            })?
            .with_timezone(&Utc),
        Some(_) => {
            return Err(Rejection::new(
                "invalid_timestamp",
                "timestamp must be an RFC 3339 string",
            ))
        }
    };
    if timestamp > now + Duration::seconds(MAX_FUTURE_SKEW_SECONDS) {
        return Err(Rejection::new(
            "timestamp_in_future",
            format!(
                "timestamp {} is more than {MAX_FUTURE_SKEW_SECONDS} s ahead of the server clock ({})",
                timestamp.to_rfc3339(),
                now.to_rfc3339()
            ),
        ));
    }
    if id.contains('\0') || event_type.contains('\0') {
        return Err(Rejection::new(
            "invalid_id",
            "id and type must not contain the NUL character",
        ));
    }
    let properties = match obj.remove("properties") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(m)) if m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)) => {
            return Err(Rejection::new(
                "invalid_properties",
                "properties must not contain the NUL character (\\u0000)",
            ))
        }
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(Rejection::new(
                "invalid_properties",
                "properties must be a JSON object",
            ))
        }
    };
    Ok(Event {
        account,
        id,
        event_type,
        timestamp,
        properties,
    })
}

/// Whether any string or key in `v` holds U+0000, which PostgreSQL text and jsonb cannot store.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn code(v: Value) -> &'static str {
        parse_event(v, now()).unwrap_err().code
    }

    #[test]
    fn each_malformed_field_gets_its_own_code() {
        assert_eq!(code(json!([1])), "invalid_event");
        assert_eq!(code(json!({"account": "a", "type": "t"})), "missing_id");
        assert_eq!(
            code(json!({"id": "", "account": "a", "type": "t"})),
            "invalid_id"
        );
        assert_eq!(
            code(json!({"id": 7, "account": "a", "type": "t"})),
            "invalid_id"
        );
        assert_eq!(
            code(json!({"id": "1", "account": "", "type": "t"})),
            "invalid_account"
        );
        assert_eq!(code(json!({"id": "1", "type": "t"})), "missing_account");
        assert_eq!(code(json!({"id": "1", "account": "a"})), "missing_type");
        assert_eq!(
            code(json!({"id": "1", "account": "a", "type": "t", "timestamp": "yesterday"})),
            "invalid_timestamp"
        );
        assert_eq!(
            code(json!({"id": "1", "account": "a", "type": "t", "properties": 3})),
            "invalid_properties"
        );
        assert_eq!(
            code(json!({"id": "1", "account": "a", "type": "t", "properties": {"a": ["x\u{0}"]}})),
            "invalid_properties"
        );
        assert_eq!(
            code(json!({"id": "1\u{0}", "account": "a", "type": "t"})),
            "invalid_id"
        );
    }

    #[test]
    fn timestamps_up_to_five_minutes_ahead_pass_and_beyond_are_refused() {
        let ok =
            json!({"id": "1", "account": "a", "type": "t", "timestamp": "2026-11-25T12:05:00Z"});
        assert!(parse_event(ok, now()).is_ok());
        let late =
            json!({"id": "1", "account": "a", "type": "t", "timestamp": "2026-11-25T12:05:01Z"});
        assert_eq!(
            parse_event(late, now()).unwrap_err().code,
            "timestamp_in_future"
        );
    }

    #[test]
    fn a_missing_timestamp_defaults_to_receipt_time() {
        let e = parse_event(json!({"id": "1", "account": "a", "type": "t"}), now()).unwrap();
        assert_eq!(e.timestamp, now());
    }
}
