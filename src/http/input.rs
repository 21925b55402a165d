//! Request input: JSON bodies and query strings, read so that a refusal names what is wrong in
//! the common envelope, never with a parser's own text.
//!
//! [`Body<T>`] reads at most 64 KiB whatever the Content-Type says (`curl -d` sends a form type):
//! - 400 `invalid_json` when the body is not JSON (with its `line` and `column`);
//! - 422 when it is JSON but not what the route takes, naming the field in the message and in
//!   `field`: `unknown_field`, `missing_field` or `invalid_field` (wrong type or value).
//!
//! [`read`] does the same for a handler that takes the body's payload itself.
//!
//! [`Query<T>`] answers 422 naming the parameter: `unknown_field`, `missing_field`, or
//! `invalid_query` for a value that does not read as its type.

use super::ApiError;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The largest body a route with a JSON body reads.
pub const LIMIT: usize = 64 * 1024;

/// A JSON body of type `T` (which should `deny_unknown_fields`).
pub struct Body<T>(pub T);

impl<T> Body<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Body<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Body<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(_: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let payload = payload.take();
        Box::pin(async move { Ok(Body(read(payload).await?)) })
    }
}

/// Reads a JSON body of type `T` from `payload` as [`Body`] does, for a handler that reads the
/// body itself (the limit check's direct door authenticates the key first, without the
/// middleware that does so before [`Body`] is extracted).
pub async fn read<T: DeserializeOwned>(mut payload: Payload) -> Result<T, ApiError> {
    // A small body arrives as one chunk: it is parsed where it lies, not copied.
    let mut first: Option<web::Bytes> = None;
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        let held = first.as_ref().map_or(0, |f| f.len()) + buf.len();
        if held + chunk.len() > LIMIT {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} KiB", LIMIT / 1024),
            ));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(f) = earlier {
                    buf.extend_from_slice(&f);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    let body: &[u8] = match &first {
        Some(f) => f,
        None => &buf,
    };
    parse(body)
}

/// A query parameter the route needs, not given: 422 `missing_field` naming it.
pub fn missing_param(field: &str, what: &str) -> ApiError {
    let mut details = serde_json::Map::new();
    details.insert("field".into(), json!(field));
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_field",
        format!("missing query parameter `{field}` ({what})"),
    )
    .with_details(details)
}

/// A query parameter whose value reads but is not acceptable: 422 `invalid_query` naming it.
pub fn invalid_param(field: &str, message: impl Into<String>) -> ApiError {
    let mut details = serde_json::Map::new();
    details.insert("field".into(), json!(field));
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        format!("query parameter `{field}`: {}", message.into()),
    )
    .with_details(details)
}

/// The query of a route that takes none: any parameter is refused, named.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// A query string read as a `T` (which should `deny_unknown_fields`).
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Query<T> {
    type Error = actix_web::Error;
    type Future = futures_util::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        futures_util::future::ready(
            parse_query(req.query_string())
                .map(Query)
                .map_err(Into::into),
        )
    }
}

/// Reads a query string as a `T`, or names the parameter that is wrong.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
        let path = e.path().to_string();
        let text = e.into_inner().to_string();
        let named = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        };
        let (code, field, message) = if let Some(name) = named("unknown field `") {
            let expected = text
                .split_once(", expected ")
                .map(|(_, e)| format!("; expected {e}"))
                .unwrap_or_default();
            (
                "unknown_field",
                name.clone(),
                format!("unknown query parameter `{name}`{expected}"),
            )
        } else if let Some(name) = named("missing field `") {
            (
                "missing_field",
                name.clone(),
                format!("missing query parameter `{name}`"),
            )
        } else {
            (
                "invalid_query",
                path.clone(),
                format!("query parameter `{path}`: {text}"),
            )
        };
        let mut details = serde_json::Map::new();
        details.insert("field".into(), json!(field));
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_details(details)
    })
}

/// A body that may be left out: empty (or only whitespace) reads as `T::default()`.
pub fn parse_or_default<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse(bytes)
    }
}

/// Reads `bytes` as a `T`, or says what is wrong with them (see the module docs).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Tracking the path costs a wrapper around every value read (measured: a few per cent of
    // batched ingestion's CPU); a body that fails is read again with it, to name where.
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        refusal(e.into_inner(), &path)
    })?;
    de.end().map_err(|e| refusal(e, "."))?;
    Ok(value)
}

fn refusal(e: serde_json::Error, path: &str) -> ApiError {
    use serde_json::error::Category;
    let text = e.to_string();
    // serde_json appends " at line L column C"; the position goes in fields of its own.
    let bare = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    match e.classify() {
        Category::Data => {
            let named = |prefix: &str| {
                bare.strip_prefix(prefix)
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_owned)
            };
            let within = |name: String| match path {
                "." | "" => name,
                p => format!("{p}.{name}"),
            };
            let (code, field, message) = if let Some(name) = named("unknown field `") {
                // The path already ends at the unknown key.
                let field = if path.ends_with(&name) {
                    path.to_owned()
                } else {
                    within(name)
                };
                let expected = bare
                    .split_once(", expected ")
                    .map(|(_, e)| format!("; expected {e}"))
                    .unwrap_or_default();
                (
                    "unknown_field",
                    field.clone(),
                    format!("unknown field `{field}`{expected}"),
                )
            } else if let Some(name) = named("missing field `") {
                let field = within(name);
                (
                    "missing_field",
                    field.clone(),
                    format!("missing field `{field}`"),
                )
            } else {
                let field = if path == "." {
                    String::new()
                } else {
                    path.to_owned()
                };
                let message = if field.is_empty() {
                    format!("the body is not what this route takes: {bare}")
                } else {
                    format!("field `{field}`: {bare}")
                };
                ("invalid_field", field, message)
            };
            let mut details = serde_json::Map::new();
            details.insert("field".into(), json!(field));
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_details(details)
        }
        Category::Eof if e.line() == 1 && e.column() == 0 => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body is empty: send a JSON object",
        ),
        Category::Syntax | Category::Eof | Category::Io => {
            let mut details = serde_json::Map::new();
            details.insert("line".into(), json!(e.line()));
            details.insert("column".into(), json!(e.column()));
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!(
                    "the body is not valid JSON: {bare} (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
            .with_details(details)
        }
    }
}

/// The request's `Idempotency-Key`, if it sent one; 400 when it is not 1 to 255 visible
/// ASCII characters.
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(raw) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        plan: String,
        seats: Option<u32>,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        amount: u32,
    }

    fn refused(body: &str) -> (u16, &'static str, String, serde_json::Value) {
        let e = parse::<Req>(body.as_bytes()).unwrap_err();
        let field = e
            .details
            .as_ref()
            .and_then(|d| d.get("field").cloned())
            .unwrap_or(serde_json::Value::Null);
        (e.status.as_u16(), e.code, e.message, field)
    }

    #[test]
    fn each_kind_of_bad_body_names_what_is_wrong() {
        let (s, c, m, f) = refused(r#"{"plan": "team", "seat": 3}"#);
        assert_eq!((s, c, f.as_str()), (422, "unknown_field", Some("seat")));
        assert!(m.starts_with("unknown field `seat`; expected"), "{m}");
        let (s, c, m, f) = refused(r#"{"seats": 3}"#);
        assert_eq!(
            (s, c, f.as_str(), m.as_str()),
            (422, "missing_field", Some("plan"), "missing field `plan`")
        );
        let (s, c, m, f) = refused(r#"{"plan": "team", "seats": "ten"}"#);
        assert_eq!((s, c, f.as_str()), (422, "invalid_field", Some("seats")));
        assert!(m.starts_with("field `seats`: invalid type"), "{m}");
        let (s, c, _, f) = refused(r#"{"plan": "team", "inner": {"amount": 1, "x": 2}}"#);
        assert_eq!((s, c, f.as_str()), (422, "unknown_field", Some("inner.x")));
        let (s, c, _, f) = refused(r#"{"plan": "team", "inner": {}}"#);
        assert_eq!(
            (s, c, f.as_str()),
            (422, "missing_field", Some("inner.amount"))
        );
        let (s, c, m, _) = refused(r#"{"plan": "team""#);
        assert_eq!((s, c), (400, "invalid_json"));
        assert!(
            m.contains("line 1") && !m.contains("Json deserialize"),
            "{m}"
        );
        let (s, c, _, _) = refused("");
        assert_eq!((s, c), (400, "invalid_json"));
        let (s, c, _, _) = refused(r#"{"plan": "team"} trailing"#);
        assert_eq!((s, c), (400, "invalid_json"));
        assert_eq!(
            parse::<Req>(br#" {"plan": "team", "seats": 2} "#)
                .unwrap()
                .seats,
            Some(2)
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Q {
        limit: Option<i64>,
        tier: String,
    }

    #[test]
    fn each_kind_of_bad_query_names_the_parameter() {
        let e = parse_query::<Q>("tier=hot&limt=5").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, "unknown_field"));
        assert!(
            e.message.starts_with("unknown query parameter `limt`"),
            "{}",
            e.message
        );
        let e = parse_query::<Q>("limit=5").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("missing_field", "missing query parameter `tier`")
        );
        let e = parse_query::<Q>("tier=hot&limit=ten").unwrap_err();
        assert_eq!(e.code, "invalid_query");
        assert!(
            e.message.starts_with("query parameter `limit`: "),
            "{}",
            e.message
        );
        assert_eq!(parse_query::<Q>("tier=hot&limit=5").unwrap().limit, Some(5));
    }
}
