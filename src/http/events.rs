//! `POST /v1/events`: one event or `{"events": [...]}`; or CloudEvents 1.0 in structured mode
//! (`Content-Type: application/cloudevents+json`, one; `application/cloudevents-batch+json`,
//! an array). Answers only after the accepted events are committed. `POST
//! /v1/integrations/segment`: Segment track calls (its webhook destination). `GET
//! /v1/events?account=`: what was stored for an account.

use super::auth::authorize;
use super::ApiError;
use crate::domain::event::{EventFields, RawEvent};
use crate::domain::event_shapes;
use crate::domain::scope::Scope;
use crate::services::ingest::{self, MAX_BATCH};
use crate::services::Ctx;
use actix_web::http::{header, StatusCode};
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One usage event (the document's shape; the handler validates each event's fields as sent,
/// `domain::event::EventFields::parse`). `(account, id)` is the dedup key: a replay is counted once.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation of the JSON the handler reads
pub struct EventIn {
    /// Unique per account (at most 256 bytes); a replay with the same content is a duplicate,
    /// with other content `id_reused`.
    #[schema(min_length = 1, max_length = 256, example = "evt_0001")]
    id: String,
    /// The account (created when it does not exist yet).
    #[schema(min_length = 1, example = "acme")]
    account: String,
    /// The event type the meters count (at most 128 bytes).
    #[schema(min_length = 1, max_length = 128, example = "api_call")]
    r#type: String,
    /// When it happened; the receipt time when absent. At most 5 minutes ahead of the server.
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// What the meters read (`{"tokens": 1200}`); at most 1,000 values and 32 KiB.
    #[schema(value_type = Option<Object>)]
    properties: Option<Value>,
}

/// A batch: 1 to 1,000 events, each validated alone (refusals come back in `rejected` with
/// their index; the others are stored).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EventBatch {
    /// Events as in `EventIn`. Each is validated alone: one that is not an event is refused
    /// in `rejected` (with its index), and the others are stored.
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<Value>,
}

/// A 422 of `POST /v1/events`: every event refused, or a body that is neither shape.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Refused {
    Outcome(ingest::IngestOutcome),
    Error(super::openapi::ErrorBody),
}

/// `POST /v1/events` takes one event or a batch (as they are, untagged).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum EventsBody {
    One(EventIn),
    Batch(EventBatch),
}

/// The CloudEvents versions taken.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum SpecVersion {
    #[schema(rename = "1.0")]
    V1,
}

/// A CloudEvents 1.0 event in structured mode. Extension attributes are allowed and ignored
/// (but `data_base64` is refused: `data` must be a JSON object).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CloudEvent {
    /// Only 1.0.
    #[schema(value_type = SpecVersion)]
    specversion: String,
    /// With `source`, the dedup key: the same id from two sources is two events.
    #[schema(min_length = 1)]
    id: String,
    #[schema(min_length = 1, example = "https://api.example.com/billing")]
    source: String,
    /// The event type.
    #[schema(min_length = 1, example = "api_call")]
    r#type: String,
    /// The account.
    #[schema(example = "acme")]
    subject: String,
    time: Option<chrono::DateTime<chrono::Utc>>,
    /// JSON only (`application/json` or a `+json` type); another is refused.
    datacontenttype: Option<String>,
    /// The properties (a JSON object).
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

/// A Segment call as its webhook destination sends it. A `track` call becomes an event:
/// `messageId` the id, `context.groupId` the account (or the configured path), `event` the
/// type (through the configured mapping), `properties` the properties. Other calls (identify,
/// page, group…) are answered with `ignored: true`; a call without a string `type`, or with one
/// of these fields of another type, is refused on every call.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SegmentCall {
    /// track (others are ignored).
    #[schema(example = "track")]
    r#type: String,
    #[schema(example = "ajs-next-1f2e")]
    #[serde(rename = "messageId")]
    message_id: Option<String>,
    #[schema(example = "API Call")]
    event: Option<String>,
    timestamp: Option<String>,
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    properties: Option<Value>,
}

/// Ingests usage events, durably (a CloudEvents batch is a JSON array of 1 to 1,000
/// `CloudEvent`s, each validated alone): the answer comes once the accepted events are committed.
/// Events are validated one by one: a batch stores the valid ones and lists the refused with
/// their index and code (422 when every event was refused).
#[utoipa::path(post, path = "/v1/events", operation_id = "ingest_events", tag = "events",
    request_body(content(
        (EventsBody = "application/json"),
        (CloudEvent = "application/cloudevents+json"),
        (Vec<serde_json::Value> = "application/cloudevents-batch+json"),
    )),
    responses(
        (status = 200, description = "Stored, known (duplicates) or refused per event", body = ingest::IngestOutcome),
        (status = 422, description = "Every event was refused (the outcome), or the body is not an event or a batch (an error)", body = Refused),
    ),
    security(("bearer" = ["ingest"])))]
pub async fn ingest(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let principal = authorize(&req, &ctx, &[Scope::Ingest]).await?;
    let body = read_limited(&req, payload, MAX_BODY_BYTES).await?;
    let outcome = match content_kind(&req) {
        Kind::CloudEvent => {
            let one = super::input::parse(&body)?;
            let items = vec![event_shapes::from_cloudevent(one)];
            ingest::ingest_mapped_with_key(&ctx, items, &principal).await?
        }
        Kind::CloudEventBatch => {
            let items = cloudevent_batch(&body)?
                .into_iter()
                .map(event_shapes::from_cloudevent)
                .collect();
            ingest::ingest_mapped_with_key(&ctx, items, &principal).await?
        }
        Kind::Accrue => {
            let raw = parse_body(&body)?;
            ingest::ingest_with_key(&ctx, raw, &principal).await?
        }
    };
    Ok(answer(outcome))
}

/// 422 when every event was refused, 200 when anything was stored or known.
fn answer(outcome: ingest::IngestOutcome) -> HttpResponse {
    let status = if outcome.accepted + outcome.duplicates == 0 && !outcome.rejected.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    HttpResponse::build(status).json(outcome)
}

enum Kind {
    Accrue,
    CloudEvent,
    CloudEventBatch,
}

/// Which shape the body is in, by its media type (any other type: accrue's own).
fn content_kind(req: &HttpRequest) -> Kind {
    let essence = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match essence.as_str() {
        "application/cloudevents+json" => Kind::CloudEvent,
        "application/cloudevents-batch+json" => Kind::CloudEventBatch,
        _ => Kind::Accrue,
    }
}

/// A CloudEvents batch: a JSON array of 1 to [`MAX_BATCH`] events.
fn cloudevent_batch(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    match super::input::parse(body)? {
        Value::Array(events) if events.is_empty() => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_batch",
            "the batch is empty",
        )),
        Value::Array(events) => sized(events.len()).map(|()| events),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "application/cloudevents-batch+json is a JSON array of CloudEvents",
        )),
    }
}

/// The answer to a Segment call: the ingest outcome, and whether the call was ignored (not a
/// track: identify, page, group… carry no usage).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SegmentAnswer {
    #[serde(flatten)]
    outcome: ingest::IngestOutcome,
    ignored: bool,
}

/// `POST /v1/integrations/segment`: one Segment call as its webhook destination sends it,
/// authenticated with an ingest key (HTTP Basic with the key as the user name, as Segment
/// sends it, or Bearer).
#[utoipa::path(post, path = "/v1/integrations/segment", tag = "events",
    request_body = SegmentCall,
    responses(
        (status = 200, description = "Stored, a duplicate, or ignored (not a track call)", body = SegmentAnswer),
        (status = 422, description = "The call was refused", body = SegmentAnswer),
    ),
    security(("basic" = ["ingest"]), ("bearer" = ["ingest"])))]
pub async fn segment(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let principal = authorize(&req, &ctx, &[Scope::Ingest]).await?;
    let body = read_limited(&req, payload, MAX_BODY_BYTES).await?;
    let call = super::input::parse(&body)?;
    let mapped = match event_shapes::from_segment(call, &ctx.segment) {
        Ok(None) => {
            return Ok(HttpResponse::Ok().json(SegmentAnswer {
                outcome: ingest::IngestOutcome::default(),
                ignored: true,
            }))
        }
        Ok(Some(event)) => Ok(event),
        Err(refused) => Err(refused),
    };
    let outcome = ingest::ingest_mapped_with_key(&ctx, vec![mapped], &principal).await?;
    let status = answer(outcome.clone()).status();
    Ok(HttpResponse::build(status).json(SegmentAnswer {
        outcome,
        ignored: false,
    }))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the body exceeds {} MiB ({MAX_BODY_BYTES} bytes); split the batch",
            MAX_BODY_BYTES / (1024 * 1024)
        ),
    )
}

/// Reads the body, refusing (before buffering it whole) anything over `limit` bytes.
async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The events of a body: a single event object or `{"events": [...]}`.
///
/// A batch is read straight from the bytes into each event's fields ([`EventFields`]), with no
/// JSON tree of the envelope or of the events' objects (the tree's allocations and lookups
/// were a third of the server's work on batched ingestion). A body that does not read so (not
/// JSON, another shape, a field besides `events`, a member that is not an object or is an
/// object whose first key is serde_json's number marker) is read again as a tree by
/// [`parse_tree`], which names what is wrong; both give the same fields for the same events.
fn parse_body(body: &[u8]) -> Result<Vec<RawEvent>, ApiError> {
    match serde_json::from_slice::<Batch>(body) {
        Ok(Batch { events, members }) => {
            sized(members)?;
            Ok(events.into_iter().map(Ok).collect())
        }
        Err(_) => Ok(parse_tree(body)?
            .into_iter()
            .map(EventFields::from_value)
            .collect()),
    }
}

/// `{"events": [...]}` with each member an object, read as [`EventFields`]; anything else is
/// an error (then [`parse_tree`] reads the body). Members past [`MAX_BATCH`] are read (as JSON
/// values, as the tree reads them) and counted, not kept: the batch is refused anyway.
struct Batch {
    events: Vec<EventFields>,
    members: usize,
}

impl<'de> serde::Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Envelope;
        impl<'de> serde::de::Visitor<'de> for Envelope {
            type Value = Batch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{\"events\": [...]}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Batch, A::Error> {
                use serde::de::Error;
                let mut events = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key != "events" {
                        return Err(A::Error::custom("a field besides `events`"));
                    }
                    events = Some(map.next_value::<Members>()?.0);
                }
                events.ok_or_else(|| A::Error::custom("no `events`: a single event"))
            }
        }
        struct Members(Batch);
        impl<'de> serde::Deserialize<'de> for Members {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_seq(Members(Batch {
                    events: Vec::new(),
                    members: 0,
                }))
            }
        }
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of event objects")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                mut self,
                mut seq: A,
            ) -> Result<Members, A::Error> {
                let batch = &mut self.0;
                batch
                    .events
                    .reserve(seq.size_hint().unwrap_or(0).min(MAX_BATCH));
                while batch.members < MAX_BATCH {
                    match seq.next_element::<EventFields>()? {
                        Some(event) => batch.events.push(event),
                        None => return Ok(self),
                    }
                    batch.members += 1;
                }
                while seq.next_element::<Value>()?.is_some() {
                    batch.members += 1;
                }
                Ok(self)
            }
        }
        d.deserialize_map(Envelope)
    }
}

/// Refuses a batch of `members` events when there are none or too many.
fn sized(members: usize) -> Result<(), ApiError> {
    if members == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_batch",
            "`events` is empty",
        ));
    }
    if members > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a batch holds at most {MAX_BATCH} events, this one has {members}"),
        ));
    }
    Ok(())
}

/// The raw events of a body read as a JSON tree: a single event object or `{"events": [...]}`.
fn parse_tree(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    // Not JSON: 400 with the position. JSON of the wrong shape: 422 below.
    let value: Value = super::input::parse(body)?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be an event object or {\"events\": [...]}",
        ));
    };
    if obj.contains_key("events") {
        if let Some(k) = obj.keys().find(|k| k.as_str() != "events") {
            let mut details = serde_json::Map::new();
            details.insert("field".into(), json!(k));
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_field",
                format!("unknown field `{k}`: a batch is {{\"events\": [...]}} alone"),
            )
            .with_details(details));
        }
    }
    match obj.remove("events") {
        Some(Value::Array(events)) => sized(events.len()).map(|()| events),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "`events` must be an array of event objects",
        )),
        None => Ok(vec![Value::Object(obj)]),
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The account; required for a key not bound to an account.
    account: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// The cursor: `next_cursor` of the previous page (an event id).
    after: Option<String>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/events?account=acme&type=&after=&limit=`: an account's stored events in id order
/// (ingest or admin keys; a bound key reads its own account).
#[utoipa::path(get, path = "/v1/events", operation_id = "list_events", tag = "events", params(ListQuery),
    responses((status = 200, description = "A page of stored events, in id order",
        body = super::list::Page<crate::store::events::StoredEvent>)),
    security(("bearer" = ["ingest", "admin"])))]
pub async fn list(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Ingest, Scope::Admin]).await?;
    let q = query.into_inner();
    let account = match (&p.account, q.account) {
        (_, Some(asked)) => {
            super::auth::reach(&p, &asked)?;
            asked
        }
        (Some(own), None) => own.clone(),
        (None, None) => {
            return Err(super::input::missing_param(
                "account",
                "the account whose events to list",
            ))
        }
    };
    let limit = super::list::limit(q.limit, 100, 1000)?;
    let rows = crate::services::usage::events(
        &ctx,
        &account,
        q.event_type.as_deref(),
        q.after.as_deref(),
        limit + 1,
    )
    .await?;
    Ok(super::list::page(rows, limit, |e| e.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Event, Rejection};
    use proptest::prelude::*;

    type Parsed = Result<Event, (Option<String>, Rejection)>;
    type Refusal = (
        u16,
        &'static str,
        String,
        Option<serde_json::Map<String, Value>>,
    );

    /// What a body comes to: each event judged at one time, or the body's refusal.
    fn judged(events: Result<Vec<RawEvent>, ApiError>) -> Result<Vec<Parsed>, Refusal> {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        match events {
            Ok(events) => Ok(events
                .into_iter()
                .map(|e| e.and_then(|f| f.parse(now)))
                .collect()),
            Err(e) => Err((e.status.as_u16(), e.code, e.message, e.details)),
        }
    }

    /// The body read as a JSON tree only (what every body was read as before the direct read).
    fn by_tree(body: &[u8]) -> Result<Vec<Parsed>, Refusal> {
        judged(parse_tree(body).map(|v| v.into_iter().map(EventFields::from_value).collect()))
    }

    /// Whether the direct read takes the body (else it is read as a tree).
    fn direct(body: &[u8]) -> bool {
        serde_json::from_slice::<Batch>(body).is_ok()
    }

    #[test]
    fn a_batch_read_from_its_bytes_comes_to_what_its_tree_does() {
        let ok = r#"{"id":"e1","account":"acme","type":"api.request","timestamp":"2026-11-25T11:00:00Z","properties":{"n":"1.5","user":"u1"}}"#;
        let many = format!("{{\"events\":[{}]}}", vec![ok; MAX_BATCH + 1].join(","));
        let cases: Vec<(String, bool)> = vec![
            (format!(r#"{{"events":[{ok},{ok}]}}"#), true),
            // A field twice: the last copy counts, as in an object.
            (r#"{"events":[{"id":"a","id":7,"account":"x","type":"t"}]}"#.into(), true),
            (r#"{"events":[{"id":7,"id":"a","account":"x","type":"t"}]}"#.into(), true),
            // Unknown fields: the first in byte order is named, after the id's own refusals.
            (r#"{"events":[{"zeta":1,"id":"a","beta":2,"account":"x","type":"t"}]}"#.into(), true),
            (r#"{"events":[{"zeta":1,"beta":2,"account":"x","type":"t"}]}"#.into(), true),
            (format!(r#"{{"events":[{{"id":"a","{}":1,"account":"x","type":"t"}}]}}"#, "é".repeat(80)), true),
            // An escaped name is the name.
            (r#"{"events":[{"\u0069d":"a","account":"x","type":"t"}]}"#.into(), true),
            // Each field's refusals.
            (r#"{"events":[{"account":"x","type":"t"},{"id":"","account":"x","type":"t"},{"id":"a","type":"t"},{"id":"a","account":7,"type":"t"},{"id":"a","account":"x"},{"id":"a","account":"x","type":""}]}"#.into(), true),
            (r#"{"events":[{"id":"a","account":"x","type":"t","timestamp":null,"properties":null},{"id":"a","account":"x","type":"t","timestamp":"soon"},{"id":"a","account":"x","type":"t","timestamp":"2027-01-01T00:00:00Z"},{"id":"a","account":"x","type":"t","properties":[1]}]}"#.into(), true),
            (r#"{"events":[{"id":"a\u0000","account":"x","type":"t"},{"id":"a","account":"x","type":"t","properties":{"n":1e41}}]}"#.into(), true),
            (format!(r#"{{"events":[{{"id":"{}","account":"x","type":"t"}}]}}"#, "i".repeat(300)), true),
            // Not objects, or an object serde_json reads as a number: read as a tree.
            (format!(r#"{{"events":[{ok},1,"x",null,[1],true]}}"#), false),
            (r#"{"events":[{"$serde_json::private::Number":"5"}]}"#.into(), false),
            (r#"{"events":[{"id":"a","$serde_json::private::Number":"5","account":"x","type":"t"}]}"#.into(), true),
            // A malformed number marker inside an unknown field's value: refused by the tree,
            // so it must not be skipped unread.
            (r#"{"events":[{"id":"a","account":"x","type":"t","zz":{"$serde_json::private::Number":"q"}}]}"#.into(), false),
            // Past the limit, members of any kind are counted.
            (format!(r#"{{"events":[{}]}}"#, vec!["{}"; MAX_BATCH].join(",") + ",1,[2],{\"x\":3}"), true),
            // The envelope's refusals and other shapes.
            (r#"{"events":[]}"#.into(), true),
            (many, true),
            (format!(r#"{{"events":[{ok}],"extra":1}}"#), false),
            (format!(r#"{{"extra":1,"events":[{ok}]}}"#), false),
            (format!(r#"{{"events":5,"events":[{ok}]}}"#), false),
            (format!(r#"{{"events":[{ok}],"events":{{}}}}"#), false),
            (r#"{"events":{}}"#.into(), false),
            (ok.into(), false),
            (format!("[{ok}]"), false),
            (format!(r#"{{"events":[{ok}]}} x"#), false),
            // Read as written (arbitrary precision), then refused as out of range.
            (r#"{"events":[{"id":"a","account":"x","type":"t","properties":{"n":1e999}}]}"#.into(), true),
            (r#"{"events":[{"id":"a""#.into(), false),
        ];
        for (body, takes_direct) in cases {
            let body = body.as_bytes();
            let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            assert_eq!(direct(body), takes_direct, "{shown}");
            assert_eq!(judged(parse_body(body)), by_tree(body), "{shown}");
        }
    }

    /// One member of a batch, written out: an object of fields drawn from the event's own,
    /// others and serde_json's number marker, each with a value of any type (or not an object).
    fn member() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            "id",
            "account",
            "type",
            "timestamp",
            "properties",
            "\\u0069d",
            "aa",
            "zz",
            "time",
            "$serde_json::private::Number",
        ]);
        let value = prop::sample::select(vec![
            r#""e1""#,
            r#""""#,
            r#"" ""#,
            r#""acme""#,
            r#""a/b""#,
            "7",
            "-2.5e3",
            "null",
            "true",
            "{}",
            r#"{"n":"1.5","user":"u1"}"#,
            r#"{"n":1e41}"#,
            "[1]",
            r#""2026-11-25T11:00:00Z""#,
            r#""2030-01-01T00:00:00Z""#,
            r#""x\u0000""#,
            r#""5""#,
        ]);
        prop_oneof![
            4 => prop::collection::vec((name, value), 0..7).prop_map(|fields| {
                let inner: Vec<String> =
                    fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", inner.join(","))
            }),
            1 => prop::sample::select(vec!["1", "\"x\"", "null", "[]", "[{}]"]).prop_map(str::to_owned),
        ]
    }

    proptest! {
        /// Any batch of members, however malformed, comes to the same events and refusals
        /// whether read directly or as a tree.
        #[test]
        fn any_batch_comes_to_what_its_tree_does(members in prop::collection::vec(member(), 0..6)) {
            let body = format!("{{\"events\":[{}]}}", members.join(","));
            // The direct read takes every batch of objects (but those serde_json reads as numbers).
            let objects = members.iter().all(|m| m.starts_with("{") && !m.starts_with("{\"$"));
            prop_assert_eq!(direct(body.as_bytes()), objects, "{}", body);
            prop_assert_eq!(judged(parse_body(body.as_bytes())), by_tree(body.as_bytes()), "{}", body);
        }
    }
}
