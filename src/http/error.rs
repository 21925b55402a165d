//! The error envelope `{"error": {"code", "message"}}` and the exhaustive mapping from service
//! errors to HTTP statuses (the Stripe webhook alone answers its refusals with 400, as Stripe
//! expects; see `http/payments.rs`).

use crate::services::ServiceError;
use crate::store::StoreError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::json;
use std::fmt;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra machine-readable fields merged into the error object (e.g. a JSON position).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Map<String, serde_json::Value>) -> Self {
        self.details = Some(details);
        self
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        if let Some(d) = &self.details {
            error.extend(d.clone());
        }
        let mut res = HttpResponse::build(self.status).json(json!({ "error": error }));
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            // Every 503 is transient (the database or Stripe), and a 429 passes as the key's
            // requests in flight finish: say when to come back.
            res.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid {
                code,
                message,
                field,
            } => {
                let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
                match field {
                    Some(f) => {
                        let mut d = serde_json::Map::new();
                        d.insert("field".into(), json!(f));
                        e.with_details(d)
                    }
                    None => e,
                }
            }
            ServiceError::NotFound(message) => ApiError::not_found(message),
            ServiceError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            ServiceError::Unavailable(message) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ServiceError::RateLimited(message) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            }
            ServiceError::Store(e) => {
                tracing::error!(error = %e, "database failure");
                let message = match e {
                    StoreError::Pool(_) | StoreError::Connect(_) | StoreError::PoolBuild(_) => {
                        "the database is unreachable; retry shortly"
                    }
                    StoreError::Query(_)
                    | StoreError::Migration(_)
                    | StoreError::BadUrl(_)
                    | StoreError::Message(_) => {
                        "the database failed the request; it was not applied, retry shortly"
                    }
                };
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
        }
    }
}

/// A path whose id does not read as one (`/v1/invoices/abc`): nothing can be there, 404.
pub fn path_error(_: actix_web::error::PathError, req: &HttpRequest) -> actix_web::Error {
    ApiError::not_found(format!(
        "nothing at {}: an id in this path is not of the form it takes",
        req.path()
    ))
    .into()
}

/// A known path asked with a method it does not have: 405 with `Allow`.
pub fn method_not_allowed(req: &HttpRequest, allow: &str) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((actix_web::http::header::ALLOW, allow.to_owned()))
        .json(json!({"error": {
            "code": "method_not_allowed",
            "message": format!("{} is not allowed on {}; allowed: {allow}", req.method(), req.path()),
        }}))
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
