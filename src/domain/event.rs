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
/// Largest `properties` object, measured as the bytes of its keys, strings and numbers plus two
/// per value: what the event costs to store and to read back (lineage, exports).
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;
/// Most values (at any depth) in `properties`.
pub const MAX_PROPERTY_VALUES: usize = 1_000;
/// Deepest nesting of objects and arrays in `properties`.
pub const MAX_PROPERTY_DEPTH: usize = 8;
/// Longest property name.
pub const MAX_PROPERTY_KEY_LEN: usize = 256;
/// Longest number as written, and the largest decimal exponent it may carry: PostgreSQL stores
/// numbers exactly (`1e999999` would not fit, `1e100000` would print as 100,001 digits).
pub const MAX_NUMBER_LEN: usize = 64;
pub const MAX_NUMBER_EXPONENT: i64 = 40;

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

/// The fields of an event; any other is refused.
const FIELDS: &[&str] = &["id", "account", "type", "timestamp", "properties"];

/// An event object's fields as sent, before any rule is applied: each of the five as any JSON
/// value (absent: `None`), and the first other field's name (in byte order, the order a JSON
/// object's keys are kept in). Read from a parsed object ([`EventFields::from_value`]) or
/// straight from a request's bytes (its `Deserialize`, which builds no object of the event);
/// both hold the same for the same object, so both are judged alike by [`EventFields::parse`].
#[derive(Debug, Default)]
pub struct EventFields {
    id: Option<Value>,
    account: Option<Value>,
    event_type: Option<Value>,
    timestamp: Option<Value>,
    properties: Option<Value>,
    unknown: Option<String>,
}

/// An event as sent, or why it is not one (with the sender's id when it had a string one).
pub type RawEvent = Result<EventFields, (Option<String>, Rejection)>;

impl EventFields {
    /// The fields of a JSON value, which must be an object.
    pub fn from_value(raw: Value) -> RawEvent {
        let Value::Object(mut obj) = raw else {
            return Err((
                None,
                Rejection::new("invalid_event", "an event must be a JSON object"),
            ));
        };
        let mut fields = EventFields {
            id: obj.remove("id"),
            account: obj.remove("account"),
            event_type: obj.remove("type"),
            timestamp: obj.remove("timestamp"),
            properties: obj.remove("properties"),
            unknown: None,
        };
        fields.unknown = obj.into_iter().next().map(|(k, _)| k);
        Ok(fields)
    }

    /// The account named, when it is a string.
    pub fn account(&self) -> Option<&str> {
        self.account.as_ref().and_then(Value::as_str)
    }

    /// Sets a field read from JSON. A field sent twice keeps its last value, as a JSON
    /// object does; of the unknown ones the name kept is the one first in byte order (the
    /// order a JSON object keeps its keys in, from which the one named is taken).
    fn set(&mut self, name: Name, value: Value) {
        let slot = match name {
            Name::Id => &mut self.id,
            Name::Account => &mut self.account,
            Name::Type => &mut self.event_type,
            Name::Timestamp => &mut self.timestamp,
            Name::Properties => &mut self.properties,
            Name::Other(other) => {
                if self.unknown.as_ref().is_none_or(|u| other < *u) {
                    self.unknown = Some(other);
                }
                return;
            }
        };
        *slot = Some(value);
    }

    /// Validates the fields. `now` is the receipt time, used as the default timestamp and as
    /// the reference for the future-timestamp rule. On refusal, gives back the event's id when
    /// it had a string one (for the per-event results), without copying it on the way.
    pub fn parse(mut self, now: DateTime<Utc>) -> Result<Event, (Option<String>, Rejection)> {
        // Checked in this order: the id first.
        let id = match self.id.take() {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_ID_LEN => s,
            Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
                let why = format!("id is longer than {MAX_ID_LEN} bytes");
                return Err((Some(s), Rejection::new("invalid_id", why)));
            }
            Some(Value::String(s)) => {
                let why = Rejection::new("invalid_id", "id must be a non-empty string");
                return Err((Some(s), why));
            }
            Some(_) => return Err((None, Rejection::new("invalid_id", "id must be a string"))),
            None => return Err((None, Rejection::new("missing_id", "id is required"))),
        };
        match parse_fields(self, &id, now) {
            Ok((account, event_type, timestamp, properties)) => Ok(Event {
                account,
                id,
                event_type,
                timestamp,
                properties,
            }),
            Err(why) => Err((Some(id), why)),
        }
    }
}

/// Reads an event object's fields from JSON without building the object: each field's value,
/// an unknown one's too, is read as a JSON value (not skipped: a value the tree refuses, such
/// as a malformed number inside it, must be refused here too). Anything but an object is an
/// error (so is an object whose first key is serde_json's marker of a number: its parsed tree
/// would read it as a number); callers then read the request the slow way.
impl<'de> serde::Deserialize<'de> for EventFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
    type Value = EventFields;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<EventFields, A::Error> {
        let mut fields = EventFields::default();
        let mut first = true;
        while let Some(name) = map.next_key::<Name>()? {
            if first && matches!(&name, Name::Other(n) if n == NUMBER_MARKER) {
                return Err(serde::de::Error::custom("a number, not an event object"));
            }
            first = false;
            let value: Value = map.next_value()?;
            fields.set(name, value);
        }
        Ok(fields)
    }
}

/// The key serde_json (with `arbitrary_precision`) reads a number through, as a map of one.
const NUMBER_MARKER: &str = "$serde_json::private::Number";

/// A key of an event object: one of [`FIELDS`] (read without copying it), or another.
enum Name {
    Id,
    Account,
    Type,
    Timestamp,
    Properties,
    Other(String),
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Name, E> {
                Ok(match name {
                    "id" => Name::Id,
                    "account" => Name::Account,
                    "type" => Name::Type,
                    "timestamp" => Name::Timestamp,
                    "properties" => Name::Properties,
                    other => Name::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Validates the shape of one raw event. `now` is the receipt time, used as the default
/// timestamp and as the reference for the future-timestamp rule.
pub fn parse_event(raw: Value, now: DateTime<Utc>) -> Result<Event, Rejection> {
    EventFields::from_value(raw)
        .and_then(|fields| fields.parse(now))
        .map_err(|(_, why)| why)
}

/// An event's fields past its id: account, type, timestamp and properties.
type Fields = (AccountId, String, DateTime<Utc>, Value);

/// The rest of [`EventFields::parse`]: the fields of an event past its id (`rest`, its id
/// taken out), once the id (`id`) was found well formed.
fn parse_fields(rest: EventFields, id: &str, now: DateTime<Utc>) -> Result<Fields, Rejection> {
    // A misspelt field would otherwise be dropped unseen (`"time"` for `"timestamp"` became
    // the receipt time).
    if let Some(k) = rest.unknown {
        return Err(Rejection::new(
            "unknown_field",
            format!(
                "unknown field `{}`; an event has {}",
                k.chars().take(64).collect::<String>(),
                FIELDS.join(", ")
            ),
        ));
    }
    let account = match rest.account {
        Some(Value::String(s)) => {
            AccountId::parse_owned(s).map_err(|why| Rejection::new("invalid_account", why))?
        }
        Some(_) => {
            return Err(Rejection::new(
                "invalid_account",
                "account must be a string",
            ))
        }
        None => return Err(Rejection::new("missing_account", "account is required")),
    };
    let event_type = match rest.event_type {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_TYPE_LEN => s,
        Some(_) => {
            return Err(Rejection::new(
                "invalid_type",
                format!("type must be a non-empty string of at most {MAX_TYPE_LEN} bytes"),
            ))
        }
        None => return Err(Rejection::new("missing_type", "type is required")),
    };
    let timestamp = match &rest.timestamp {
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
                crate::domain::ts::format(&timestamp),
                crate::domain::ts::format(&now)
            ),
        ));
    }
    if id.contains('\0') || event_type.contains('\0') {
        return Err(Rejection::new(
            "invalid_id",
            "id and type must not contain the NUL character",
        ));
    }
    let properties = match rest.properties {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => {
            let mut size = Size::default();
            measure(&v, 0, &mut size)?;
            if size.bytes > MAX_PROPERTIES_BYTES || size.values > MAX_PROPERTY_VALUES {
                return Err(Rejection::new(
                    "properties_too_large",
                    format!(
                        "properties hold {} values in about {} bytes; the limit is \
                         {MAX_PROPERTY_VALUES} values and {MAX_PROPERTIES_BYTES} bytes",
                        size.values, size.bytes
                    ),
                ));
            }
            v
        }
        Some(_) => {
            return Err(Rejection::new(
                "invalid_properties",
                "properties must be a JSON object",
            ))
        }
    };
    Ok((account, event_type, timestamp, properties))
}

/// What a `properties` value costs: about how many bytes it takes, how many values it holds.
#[derive(Default)]
struct Size {
    bytes: usize,
    values: usize,
}

/// Walks a property value, adding up its size and refusing what PostgreSQL cannot store (the
/// NUL character, numbers beyond its range) or what is unreasonably deep or long. Stops early
/// once the size is over the limit.
fn measure(v: &Value, depth: usize, size: &mut Size) -> Result<(), Rejection> {
    size.values += 1;
    size.bytes += 2;
    if size.bytes > MAX_PROPERTIES_BYTES || size.values > MAX_PROPERTY_VALUES {
        return Ok(());
    }
    match v {
        Value::Null | Value::Bool(_) => {}
        Value::Number(n) => {
            let text = n.to_string();
            size.bytes += text.len();
            if !storable_number(&text) {
                return Err(Rejection::new(
                    "number_out_of_range",
                    format!(
                        "property number `{}` is out of range: at most {MAX_NUMBER_LEN} \
                         characters and an exponent within ±{MAX_NUMBER_EXPONENT}",
                        text.chars().take(MAX_NUMBER_LEN).collect::<String>()
                    ),
                ));
            }
        }
        Value::String(s) => {
            size.bytes += s.len();
            if s.contains('\0') {
                return Err(nul());
            }
        }
        Value::Array(_) | Value::Object(_) if depth >= MAX_PROPERTY_DEPTH => {
            return Err(Rejection::new(
                "properties_too_deep",
                format!("properties nest more than {MAX_PROPERTY_DEPTH} levels deep"),
            ));
        }
        Value::Array(items) => {
            for item in items {
                measure(item, depth + 1, size)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                size.bytes += k.len();
                if k.len() > MAX_PROPERTY_KEY_LEN {
                    return Err(Rejection::new(
                        "property_name_too_long",
                        format!(
                            "a property name is {} bytes long; the limit is {MAX_PROPERTY_KEY_LEN}",
                            k.len()
                        ),
                    ));
                }
                if k.contains('\0') {
                    return Err(nul());
                }
                measure(item, depth + 1, size)?;
            }
        }
    }
    Ok(())
}

fn nul() -> Rejection {
    Rejection::new(
        "invalid_properties",
        "properties must not contain the NUL character (\\u0000)",
    )
}

/// Whether a JSON number (as written) fits PostgreSQL's numeric comfortably: at most
/// [`MAX_NUMBER_LEN`] characters and an exponent within ±[`MAX_NUMBER_EXPONENT`], so it is
/// stored and printed back in at most about a hundred digits.
fn storable_number(text: &str) -> bool {
    if text.len() > MAX_NUMBER_LEN {
        return false;
    }
    match text.find(['e', 'E']) {
        None => true,
        Some(i) => text[i + 1..]
            .parse::<i64>()
            .is_ok_and(|e| e.abs() <= MAX_NUMBER_EXPONENT),
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
    fn properties_postgresql_cannot_store_or_that_are_too_big_are_refused() {
        let with = |props: Value| {
            code(json!({"id": "1", "account": "a", "type": "t", "properties": props}))
        };
        let n = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
        assert_eq!(with(json!({"n": n("1e999999")})), "number_out_of_range");
        assert_eq!(with(json!({"n": n("1e-20000")})), "number_out_of_range");
        assert_eq!(
            with(json!({"n": [1, {"m": n("-2.5E41")}]})),
            "number_out_of_range"
        );
        assert_eq!(
            with(json!({"n": n(&"9".repeat(65))})),
            "number_out_of_range"
        );
        assert_eq!(
            with(json!({"s": "x".repeat(33 * 1024)})),
            "properties_too_large"
        );
        let many: Map<String, Value> = (0..1001).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(with(Value::Object(many)), "properties_too_large");
        assert_eq!(with(json!({"k".repeat(257): 1})), "property_name_too_long");
        let mut deep = json!(1);
        for _ in 0..9 {
            deep = json!([deep]);
        }
        assert_eq!(with(json!({ "d": deep })), "properties_too_deep");
        assert_eq!(with(json!({"s": "a\u{0}b"})), "invalid_properties");
        // At the limits: accepted.
        let ok = |props: Value| {
            parse_event(
                json!({"id": "1", "account": "a", "type": "t", "properties": props}),
                now(),
            )
            .unwrap()
        };
        ok(json!({"n": n("1e40"), "m": n("-1.5e-40"), "big": n(&"9".repeat(64))}));
        ok(json!({"s": "x".repeat(30 * 1024), "k".repeat(256): [[[[[[[1]]]]]]]}));
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
    fn an_unknown_field_is_refused_naming_it() {
        let typo = json!({"id": "1", "account": "a", "type": "t", "time": "2026-11-25T12:00:00Z"});
        let e = parse_event(typo, now()).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        assert!(
            e.message.starts_with("unknown field `time`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_missing_timestamp_defaults_to_receipt_time() {
        let e = parse_event(json!({"id": "1", "account": "a", "type": "t"}), now()).unwrap();
        assert_eq!(e.timestamp, now());
    }
}
