//! `POST /v1/test-clocks`, `GET /v1/test-clocks/{id}`, `POST /v1/test-clocks/{id}/advance`
//! (admin keys; 404 unless `ACCRUE_TEST_CLOCKS=true`).

use super::auth::authorize;
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{test_clocks, Ctx};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(deserialize_with = "super::time::required")]
    frozen_time: DateTime<Utc>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvanceBody {
    #[serde(deserialize_with = "super::time::required")]
    frozen_time: DateTime<Utc>,
}

async fn admin(req: &HttpRequest, ctx: &Ctx) -> Result<(), ApiError> {
    if !ctx.test_clocks_on() {
        return Err(ApiError::not_found("test clocks are off on this server"));
    }
    authorize(req, ctx, &[Scope::Admin]).await?;
    Ok(())
}

pub async fn create(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    body: super::input::Body<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &ctx).await?;
    let b = body.into_inner();
    let clock = test_clocks::create(&ctx, b.frozen_time, b.name.as_deref()).await?;
    Ok(HttpResponse::build(StatusCode::CREATED).json(clock))
}

pub async fn get(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &ctx).await?;
    Ok(HttpResponse::Ok().json(test_clocks::get(&ctx, &path.into_inner()).await?))
}

pub async fn advance(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    body: super::input::Body<AdvanceBody>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &ctx).await?;
    let clock =
        test_clocks::advance(&ctx, &path.into_inner(), body.into_inner().frozen_time).await?;
    Ok(HttpResponse::Ok().json(clock))
}
