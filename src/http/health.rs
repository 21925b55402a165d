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

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

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

pub async fn metrics(ctx: web::Data<Ctx>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::services::telemetry::render(&ctx).await)
}
