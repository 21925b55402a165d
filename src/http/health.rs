//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers
//! and every ingest lane runs). Neither needs a key, so neither says more than ready or not:
//! the reason goes to the log.

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
