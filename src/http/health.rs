//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers
//! and every ingest lane runs). Neither needs a key, so neither says more than ready or not:
//! the reason goes to the log. Prometheus metrics (`/metrics`) need no key either: they hold
//! this instance's counts and the installation's subscriptions by status and webhook backlog
//! (read at most every 15 s), never an account, a key or an id; serve them to the scraper only.

use super::ApiError;
use crate::services::Ctx;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the JSON built below
pub struct Status {
    #[schema(example = "ok")]
    status: String,
}

/// Liveness: the process answers (no key).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Status)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the database answers and every ingest lane runs (no key).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Status)))]
pub async fn readyz(ctx: web::Data<Ctx>) -> Result<HttpResponse, ApiError> {
    crate::store::ping(&ctx.pool).await.map_err(|e| {
        tracing::warn!(error = %e, "not ready: the database does not answer");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database does not answer",
        )
    })?;
    if !ctx.ingest.running() {
        tracing::error!("not ready: an ingest lane stopped");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "ingestion is stopped",
        ));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

/// Prometheus metrics of this instance, in the text exposition format (no key).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub async fn metrics(ctx: web::Data<Ctx>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::services::telemetry::render(&ctx).await)
}
