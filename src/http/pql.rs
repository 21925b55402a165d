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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    tier: Option<String>,
    /// The cursor: `next_cursor` of the previous page.
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/pql?tier=hot`: the queue sales works from, newest first.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelQuery {
    #[serde(default, deserialize_with = "super::time::optional")]
    from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::time::optional")]
    to: Option<DateTime<Utc>>,
}

/// `GET /v1/reports/funnel?from=&to=`.
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
