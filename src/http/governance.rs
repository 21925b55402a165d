//! `GET /v1/governance/event-types`: every event type seen, its count, and whether a meter
//! reads it (instrumentation governance).

use super::auth::authorize;
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{usage, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

pub async fn event_types(req: HttpRequest, ctx: web::Data<Ctx>) -> Result<HttpResponse, ApiError> {
    let principal = authorize(&req, &ctx, &[Scope::Admin, Scope::Finance]).await?;
    if principal.account.is_some() {
        // A cross-account report does not exist for a key that reaches one account.
        return Err(ApiError::not_found("no route for this key"));
    }
    let types = usage::event_types(&ctx).await?;
    Ok(HttpResponse::Ok().json(json!({ "event_types": types })))
}
