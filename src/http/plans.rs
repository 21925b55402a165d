//! `GET /v1/plans`, `GET /v1/plans/{plan}` and `GET /v1/plans/{plan}/versions/{n|latest}`: the
//! published catalogue;
//! `POST /v1/plans/publish` (admin): publish plan versions, live on every instance within
//! seconds.

use super::auth::authorize;
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{plans, Ctx};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

/// Any valid key may read the catalogue: prices are what customers see anyway.
const ANY: &[Scope] = &[
    Scope::Ingest,
    Scope::Check,
    Scope::Billing,
    Scope::Finance,
    Scope::Admin,
];

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The cursor: `next_cursor` of the previous page (a plan code).
    after: Option<String>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/plans`: published plans in code order, each with its versions.
#[utoipa::path(get, path = "/v1/plans", operation_id = "list_plans", tag = "plans", params(ListQuery),
    responses((status = 200, description = "Published plans, by code", body = super::list::Page<crate::services::plans::PlanSummary>)),
    security(("bearer" = ["ingest", "check", "billing", "finance", "admin"])))]
pub async fn list(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &ctx, ANY).await?;
    let limit = super::list::limit(query.limit, 100, 1000)?;
    let plans = plans::list(&ctx.pool).await?;
    Ok(super::list::page_of(
        plans,
        query.after.as_ref(),
        limit,
        |p| p.plan.clone(),
    ))
}

/// `GET /v1/plans/{plan}`: one plan as listed (name, latest version, every version).
#[utoipa::path(get, path = "/v1/plans/{plan}", operation_id = "get_plan", tag = "plans",
    params(("plan" = String, Path, description = "The plan code")),
    responses((status = 200, description = "The plan and its versions", body = crate::services::plans::PlanSummary)),
    security(("bearer" = ["ingest", "check", "billing", "finance", "admin"])))]
pub async fn plan(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &ctx, ANY).await?;
    let code = path.into_inner();
    let found = plans::list(&ctx.pool)
        .await?
        .into_iter()
        .find(|p| p.plan == code)
        .ok_or_else(|| ApiError::not_found(format!("plan `{code}` is not published")))?;
    Ok(HttpResponse::Ok().json(found))
}

/// `GET /v1/plans/{plan}/versions/{version}`: a published definition; `latest` for the newest.
#[utoipa::path(get, path = "/v1/plans/{plan}/versions/{version}", operation_id = "get_plan_version", tag = "plans",
    params(("plan" = String, Path, description = "The plan code"),
        ("version" = String, Path, description = "A version number, or `latest`")),
    responses((status = 200, description = "The version: prices, meters, features, limits", body = crate::services::plans::VersionDetail)),
    security(("bearer" = ["ingest", "check", "billing", "finance", "admin"])))]
pub async fn version(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &ctx, ANY).await?;
    let (plan, version) = path.into_inner();
    let version = match version.as_str() {
        "latest" => plans::list(&ctx.pool)
            .await?
            .into_iter()
            .find(|p| p.plan == plan)
            .map(|p| p.latest_version)
            .ok_or_else(|| ApiError::not_found(format!("plan `{plan}` is not published")))?,
        v => v.parse::<i32>().map_err(|_| {
            ApiError::not_found(format!(
                "plan {plan} has no version `{v}`: a version is a number or `latest`"
            ))
        })?,
    };
    Ok(HttpResponse::Ok().json(plans::get(&ctx.pool, &plan, version).await?))
}

/// What publishing answered, per file.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the JSON `publish` builds
pub struct Published {
    data: Vec<plans::PublishResult>,
}

/// `{"files": {"team/v3.toml": "<the file's text>", ...}}`: plan files as in the plans folder,
/// each named `<plan>/v<N>.toml`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    files: BTreeMap<String, String>,
}

/// At most this many files in one publish.
const MAX_FILES: usize = 200;

#[utoipa::path(post, path = "/v1/plans/publish", operation_id = "publish_plans", tag = "plans", request_body = PublishBody,
    responses(
        (status = 200, description = "Each file published or unchanged (all or nothing); live on every instance within seconds", body = Published),
    ),
    security(("bearer" = ["admin"])))]
pub async fn publish(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    body: super::input::Body<PublishBody>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    super::auth::unbound(&p, "publishing plans")?;
    let files = body.into_inner().files;
    if files.is_empty() || files.len() > MAX_FILES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_files",
            format!(
                "files: give 1 to {MAX_FILES} plan files, each as \"<plan>/v<N>.toml\": \"<text>\""
            ),
        ));
    }
    let actor = format!("api:{} (key {})", p.name, p.key_id);
    let results = plans::publish_files(&ctx, &files, &actor).await?;
    Ok(HttpResponse::Ok().json(json!({ "data": results })))
}
