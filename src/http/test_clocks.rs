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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(deserialize_with = "super::time::required")]
    frozen_time: DateTime<Utc>,
    name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/v1/test-clocks", operation_id = "create_test_clock", tag = "operations", request_body = CreateBody,
    responses((status = 201, description = "The clock (404 unless the server runs with ACCRUE_TEST_CLOCKS=true)", body = crate::store::test_clocks::TestClockRow)),
    security(("bearer" = ["admin"])))]
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

#[utoipa::path(get, path = "/v1/test-clocks/{id}", operation_id = "get_test_clock", tag = "operations",
    params(("id" = String, Path, description = "The clock id")),
    responses((status = 200, description = "The clock", body = crate::store::test_clocks::TestClockRow)),
    security(("bearer" = ["admin"])))]
pub async fn get(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &ctx).await?;
    Ok(HttpResponse::Ok().json(test_clocks::get(&ctx, &path.into_inner()).await?))
}

#[utoipa::path(post, path = "/v1/test-clocks/{id}/advance", operation_id = "advance_test_clock", tag = "operations",
    params(("id" = String, Path, description = "The clock id")),
    request_body = AdvanceBody,
    responses(
        (status = 200, description = "The clock, advanced; what fell due in between ran", body = crate::store::test_clocks::TestClockRow),
        (status = 409, description = "The clock is being advanced already", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
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
