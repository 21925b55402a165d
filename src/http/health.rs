//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers).

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
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("database not reachable: {e}"),
        )
    })?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
