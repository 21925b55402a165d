//! Events in the shapes teams already send, turned into accrue's own
//! (`{"id", "account", "type", "timestamp", "properties"}`) before the same validation and the
//! same exactly-once path: CloudEvents 1.0 (structured mode) and Segment track calls.
//!
//! - CloudEvents: `subject` is the account, `type` the event type, `time` the timestamp, `data`
//!   the properties. The dedup key is (`source`, `id`), so accrue's id is both, unambiguously:
//!   `ce:<bytes of source>:<source>:<id>` (the same id from two sources is two events).
//!   Extension attributes are allowed and ignored; `data_base64` and non-JSON data are refused.
//! - Segment: a `track` call's `messageId` is the id (`segment:<messageId>`), `context.groupId`
//!   the account (else a configured path in the call, e.g. `properties.workspace_id`), `event`
//!   the event type (through a configured table, else as sent), `properties` the properties.
//!   Other calls (identify, page, group…) carry no usage and are ignored; a call Segment could
//!   not have sent (no string `type`, a field of the spec with another type) is refused.

use super::event::{Rejection, MAX_ID_LEN};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// An event in accrue's shape, or why it cannot be one (with the sender's id when it had one).
pub type Mapped = Result<Value, (Option<String>, Rejection)>;

fn refuse(id: Option<String>, code: &'static str, message: impl Into<String>) -> Mapped {
    Err((id, Rejection::new(code, message)))
}

fn string_attr<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    obj.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One CloudEvents 1.0 event in structured JSON mode.
pub fn from_cloudevent(ce: Value) -> Mapped {
    let Value::Object(obj) = ce else {
        return refuse(None, "invalid_event", "a CloudEvent must be a JSON object");
    };
    let raw_id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
    match obj.get("specversion").and_then(Value::as_str) {
        Some("1.0") => {}
        Some(v) => {
            return refuse(
                raw_id,
                "invalid_cloudevent",
                format!("specversion `{v}` is not supported; send 1.0"),
            )
        }
        None => {
            return refuse(
                raw_id,
                "invalid_cloudevent",
                "specversion is required (\"1.0\")",
            )
        }
    }
    let Some(id) = string_attr(&obj, "id") else {
        return refuse(None, "missing_id", "id is required (a non-empty string)");
    };
    let Some(source) = string_attr(&obj, "source") else {
        return refuse(
            raw_id,
            "invalid_cloudevent",
            "source is required (a non-empty string)",
        );
    };
    let key = format!("ce:{}:{source}:{id}", source.len());
    if key.len() > MAX_ID_LEN {
        return refuse(
            raw_id,
            "invalid_id",
            format!("source and id together must fit in {MAX_ID_LEN} bytes"),
        );
    }
    if obj.contains_key("data_base64") {
        return refuse(
            raw_id,
            "invalid_properties",
            "data_base64 is not supported: send data as a JSON object",
        );
    }
    if let Some(kind) = obj.get("datacontenttype").and_then(Value::as_str) {
        let essence = kind
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return refuse(
                raw_id,
                "invalid_properties",
                format!("datacontenttype `{kind}` is not JSON"),
            );
        }
    }
    let Some(subject) = obj.get("subject") else {
        return refuse(
            raw_id,
            "missing_account",
            "subject (the account) is required",
        );
    };
    let mut event = Map::new();
    event.insert("id".into(), Value::String(key));
    event.insert("account".into(), subject.clone());
    if let Some(t) = obj.get("type") {
        event.insert("type".into(), t.clone());
    }
    if let Some(t) = obj.get("time") {
        event.insert("timestamp".into(), t.clone());
    }
    match obj.get("data") {
        None | Some(Value::Null) => {}
        Some(d @ Value::Object(_)) => {
            event.insert("properties".into(), d.clone());
        }
        Some(_) => {
            return refuse(raw_id, "invalid_properties", "data must be a JSON object");
        }
    }
    Ok(Value::Object(event))
}

/// How Segment calls become events: where the account is when `context.groupId` is absent, and
/// which event type each Segment event name is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentMapping {
    /// A dotted path in the call (`properties.workspace_id`, `traits.company`), read when
    /// `context.groupId` is absent.
    pub account_path: Option<String>,
    /// Segment event name → accrue event type; a name not listed is used as sent.
    #[serde(default)]
    pub event_types: BTreeMap<String, String>,
}

fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, part| v.get(part))
        .filter(|v| !v.is_null())
}

/// One Segment call: `Ok(None)` for a call that is not a track (nothing to count).
pub fn from_segment(
    call: Value,
    mapping: &SegmentMapping,
) -> Result<Option<Value>, (Option<String>, Rejection)> {
    if !call.is_object() {
        return refuse(
            None,
            "invalid_event",
            "a Segment call must be a JSON object",
        )
        .map(Some);
    }
    // Fields of the call's own spec are checked on every call, track or not: a call Segment
    // could not have sent is refused rather than ignored.
    for (field, kind, ok) in [
        (
            "messageId",
            "a string",
            Value::is_string as fn(&Value) -> bool,
        ),
        ("event", "a string", Value::is_string),
        ("timestamp", "a string", Value::is_string),
        ("context", "an object", Value::is_object),
        ("properties", "an object", Value::is_object),
    ] {
        if let Some(v) = call.get(field).filter(|v| !v.is_null() && !ok(v)) {
            let _ = v;
            return refuse(
                None,
                "invalid_event",
                format!("{field} must be {kind} when given"),
            )
            .map(Some);
        }
    }
    match call.get("type") {
        Some(Value::String(t)) if t == "track" => {}
        Some(Value::String(_)) => return Ok(None),
        _ => {
            return refuse(
                None,
                "invalid_event",
                "type is required: a string (track, identify, page, group…)",
            )
            .map(Some)
        }
    }
    let raw_id = call
        .get("messageId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(message_id) = raw_id.as_deref().filter(|s| !s.is_empty()) else {
        return refuse(None, "missing_id", "messageId is required").map(Some);
    };
    let account = at_path(&call, "context.groupId").or_else(|| {
        mapping
            .account_path
            .as_deref()
            .and_then(|p| at_path(&call, p))
    });
    let Some(account) = account else {
        let message = match &mapping.account_path {
            Some(p) => format!("the account is context.groupId or `{p}`; the call has neither"),
            None => "the account is context.groupId; the call has none".to_owned(),
        };
        return refuse(raw_id, "missing_account", message).map(Some);
    };
    let mut event = Map::new();
    event.insert("id".into(), Value::String(format!("segment:{message_id}")));
    event.insert("account".into(), account.clone());
    match call.get("event").and_then(Value::as_str) {
        Some(name) => {
            let kind = mapping.event_types.get(name).map_or(name, String::as_str);
            event.insert("type".into(), Value::String(kind.to_owned()));
        }
        None => {
            return refuse(raw_id, "missing_type", "event (the event name) is required").map(Some)
        }
    }
    if let Some(t) = call.get("timestamp") {
        event.insert("timestamp".into(), t.clone());
    }
    match call.get("properties") {
        None | Some(Value::Null) => {}
        Some(p) => {
            event.insert("properties".into(), p.clone());
        }
    }
    Ok(Some(Value::Object(event)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cloudevent_maps_subject_type_time_and_data_and_keys_by_source_and_id() {
        let e = from_cloudevent(json!({
            "specversion": "1.0", "id": "e1", "source": "/jobs", "type": "job.completed",
            "subject": "acme", "time": "2026-11-25T12:00:00Z", "data": {"minutes": 3},
            "traceparent": "00-abc"
        }))
        .unwrap();
        assert_eq!(
            e,
            json!({"id": "ce:5:/jobs:e1", "account": "acme", "type": "job.completed",
                   "timestamp": "2026-11-25T12:00:00Z", "properties": {"minutes": 3}})
        );
        // Same id, another source: another key. A source with a colon cannot be confused.
        let other = from_cloudevent(
            json!({"specversion": "1.0", "id": "e1", "source": "/jobs:e1",
            "type": "t", "subject": "acme"}),
        )
        .unwrap();
        assert_eq!(other["id"], "ce:8:/jobs:e1:e1");
    }

    #[test]
    fn a_cloudevent_without_what_accrue_needs_is_refused_naming_it() {
        let code = |v: Value| from_cloudevent(v).unwrap_err().1.code;
        let ok =
            json!({"specversion": "1.0", "id": "e", "source": "s", "type": "t", "subject": "a"});
        let without = |k: &str| {
            let mut v = ok.clone();
            v.as_object_mut().unwrap().remove(k);
            v
        };
        assert_eq!(code(without("specversion")), "invalid_cloudevent");
        assert_eq!(code(without("source")), "invalid_cloudevent");
        assert_eq!(code(without("id")), "missing_id");
        assert_eq!(code(without("subject")), "missing_account");
        let mut v = ok.clone();
        v["data_base64"] = json!("AAAA");
        assert_eq!(code(v), "invalid_properties");
        let mut v = ok.clone();
        v["datacontenttype"] = json!("text/xml");
        assert_eq!(code(v), "invalid_properties");
        let mut v = ok.clone();
        v["data"] = json!([1, 2]);
        assert_eq!(code(v), "invalid_properties");
        let mut v = ok;
        v["source"] = json!("s".repeat(300));
        assert_eq!(code(v), "invalid_id");
    }

    #[test]
    fn a_segment_track_maps_its_group_event_and_properties_and_other_calls_are_ignored() {
        let mapping = SegmentMapping {
            account_path: Some("properties.workspace".into()),
            event_types: [("API Request".to_owned(), "api.request".to_owned())].into(),
        };
        let e = from_segment(
            json!({"type": "track", "messageId": "m1", "event": "API Request",
                   "timestamp": "2026-11-25T12:00:00.000Z", "context": {"groupId": "acme"},
                   "properties": {"path": "/x"}}),
            &mapping,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            e,
            json!({"id": "segment:m1", "account": "acme", "type": "api.request",
                   "timestamp": "2026-11-25T12:00:00.000Z", "properties": {"path": "/x"}})
        );
        // No group: the configured path; an unmapped name is kept as sent.
        let e = from_segment(
            json!({"type": "track", "messageId": "m2", "event": "job.completed",
                   "properties": {"workspace": "globex", "minutes": 2}}),
            &mapping,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (e["account"].as_str(), e["type"].as_str()),
            (Some("globex"), Some("job.completed"))
        );
        assert_eq!(
            from_segment(json!({"type": "identify", "userId": "u"}), &mapping),
            Ok(None)
        );
        let missing = from_segment(
            json!({"type": "track", "messageId": "m3", "event": "x"}),
            &mapping,
        )
        .unwrap_err();
        assert_eq!(missing.1.code, "missing_account");
        assert!(missing.1.message.contains("properties.workspace"));
    }
}
