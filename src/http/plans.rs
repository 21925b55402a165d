//! `GET /v1/plans` and `GET /v1/plans/{plan}/versions/{n}`: the published catalogue.

use super::auth::authorize;
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{plans, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

/// Any valid key may read the catalogue: prices are what customers see anyway.
const ANY: &[Scope] = &[
    Scope::Ingest,
    Scope::Check,
    Scope::Billing,
    Scope::Finance,
    Scope::Admin,
];

pub async fn list(req: HttpRequest, ctx: web::Data<Ctx>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &ctx, ANY).await?;
    let plans = plans::list(&ctx.pool).await?;
    Ok(HttpResponse::Ok().json(json!({ "plans": plans })))
}

pub async fn version(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<(String, i32)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &ctx, ANY).await?;
    let (plan, version) = path.into_inner();
    Ok(HttpResponse::Ok().json(plans::get(&ctx.pool, &plan, version).await?))
}
