//! Product-qualified leads: an account's score and routing, the sales queue, the funnel.

use super::auth::{authorize, reach, unbound};
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{pql, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// `GET /v1/accounts/{account}/pql`: score, tier, each signal with its value and points, the
/// zone with its reasons, the owner, and the funnel milestones.
#[utoipa::path(get, path = "/v1/accounts/{account}/pql", operation_id = "get_account_pql", tag = "pql",
    params(("account" = String, Path, description = "The account id")),
    responses((status = 200, description = "The account's score, tier, zone and breakdown", body = crate::store::pql::PqlRow)),
    security(("bearer" = ["admin", "finance", "billing"])))]
pub async fn account(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin, Scope::Finance, Scope::Billing]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    Ok(HttpResponse::Ok().json(pql::account_view(&ctx, &account).await?))
}

/// A PQL tier.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_camel_case_types)] // the tiers `domain::pql::Tier` parses
pub enum PqlTier {
    hot,
    warm,
    watching,
    none,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// The tier (default `hot`).
    #[param(value_type = Option<PqlTier>)]
    tier: Option<String>,
    /// The cursor: `next_cursor` of the previous page.
    after: Option<String>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/pql?tier=hot`: the queue sales works from, newest first.
#[utoipa::path(get, path = "/v1/pql", operation_id = "pql_queue", tag = "pql", params(QueueQuery),
    responses((status = 200, description = "The queue sales works from: accounts of the tier", body = super::list::Page<crate::store::pql::PqlRow>)),
    security(("bearer" = ["admin", "finance"])))]
pub async fn queue(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<QueueQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin, Scope::Finance]).await?;
    unbound(&p, "the queue")?;
    let q = query.into_inner();
    let limit = super::list::limit(q.limit, 100, 1000)?;
    let tier = q.tier.unwrap_or_else(|| "hot".into());
    let rows = pql::queue(&ctx, &tier, q.after.as_deref(), limit + 1).await?;
    Ok(super::list::page(rows, limit, pql::cursor))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FunnelQuery {
    /// Start (RFC 3339), required.
    #[serde(default, deserialize_with = "super::time::optional")]
    #[param(required = true)]
    from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive), required.
    #[serde(default, deserialize_with = "super::time::optional")]
    #[param(required = true)]
    to: Option<DateTime<Utc>>,
}

/// `GET /v1/reports/funnel?from=&to=`.
#[utoipa::path(get, path = "/v1/reports/funnel", operation_id = "pql_funnel", tag = "pql", params(FunnelQuery),
    responses((status = 200, description = "Sign-ups, PQLs and conversions over the range", body = crate::services::pql::Funnel)),
    security(("bearer" = ["admin", "finance"])))]
pub async fn funnel(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<FunnelQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin, Scope::Finance]).await?;
    unbound(&p, "the funnel")?;
    let q = query.into_inner();
    let from = q
        .from
        .ok_or_else(|| super::input::missing_param("from", "an RFC 3339 timestamp"))?;
    let to =
        q.to.ok_or_else(|| super::input::missing_param("to", "an RFC 3339 timestamp"))?;
    Ok(HttpResponse::Ok().json(pql::funnel(&ctx, from, to).await?))
}
