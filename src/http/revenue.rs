//! Revenue movements, the NRR report, webhook endpoints and the event feed.

use super::auth::{authorize, unbound};
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::outbox::{self, EndpointRequest};
use crate::services::{revenue, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementsQuery {
    #[serde(default, deserialize_with = "super::time::optional")]
    from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::time::optional")]
    to: Option<DateTime<Utc>>,
    account: Option<String>,
    /// The cursor: `next_cursor` of the previous page (a movement id).
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn movements(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<MovementsQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance]).await?;
    let q = query.into_inner();
    let account = match (&p.account, q.account) {
        (Some(own), Some(asked)) if *own != asked => {
            return Err(ApiError::not_found(format!("account `{asked}` not found")))
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let from = q
        .from
        .ok_or_else(|| super::input::missing_param("from", "an RFC 3339 timestamp"))?;
    let to =
        q.to.ok_or_else(|| super::input::missing_param("to", "an RFC 3339 timestamp"))?;
    let limit = super::list::limit(q.limit, 100, 1000)?;
    let rows = revenue::movements(&ctx, from, to, account.as_deref(), q.after, limit + 1).await?;
    Ok(super::list::page(rows, limit, |m| m.id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NrrQuery {
    #[serde(default, deserialize_with = "super::time::optional")]
    from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::time::optional")]
    to: Option<DateTime<Utc>>,
    by: Option<String>,
}

pub async fn nrr(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<NrrQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance]).await?;
    unbound(&p, "the NRR report")?;
    let q = query.into_inner();
    let from = q
        .from
        .ok_or_else(|| super::input::missing_param("from", "an RFC 3339 timestamp"))?;
    let to =
        q.to.ok_or_else(|| super::input::missing_param("to", "an RFC 3339 timestamp"))?;
    let by_month = match q.by.as_deref() {
        None => false,
        Some("month") => true,
        Some(other) => {
            return Err(super::input::invalid_param(
                "by",
                format!("must be `month`, got `{other}`"),
            ))
        }
    };
    let windows = revenue::nrr(&ctx, from, to, by_month).await?;
    Ok(HttpResponse::Ok().json(json!({ "windows": windows })))
}

pub async fn create_endpoint(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    body: super::input::Body<EndpointRequest>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "a webhook endpoint")?;
    // Scoped to the key that sends it: another key's Idempotency-Key never finds its endpoint.
    let key = super::input::idempotency_key(&req)?.map(|k| format!("{}:{k}", p.key_id));
    let created = outbox::create_endpoint(&ctx, body.into_inner(), key.as_deref()).await?;
    Ok(HttpResponse::Created().json(created))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsQuery {
    /// The cursor: `next_cursor` of the previous page (an endpoint id).
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/webhook-endpoints`: oldest first (endpoints are few: read whole, paged here).
pub async fn list_endpoints(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<EndpointsQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "the endpoint list")?;
    let limit = super::list::limit(query.limit, 100, 1000)?;
    let rows = outbox::endpoints(&ctx).await?;
    Ok(super::list::page_of(
        rows,
        query.after.as_ref(),
        limit,
        |e| e.id,
    ))
}

/// `GET /v1/webhook-endpoints/{id}`.
pub async fn get_endpoint(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "a webhook endpoint")?;
    Ok(HttpResponse::Ok().json(outbox::endpoint(&ctx, path.into_inner()).await?))
}

/// `PATCH /v1/webhook-endpoints/{id}` `{"url"?, "kinds"?, "enabled"?}`.
pub async fn update_endpoint(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
    body: super::input::Body<outbox::EndpointUpdate>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "a webhook endpoint")?;
    let ep = outbox::update_endpoint(&ctx, path.into_inner(), body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(ep))
}

/// `DELETE /v1/webhook-endpoints/{id}`: 204.
pub async fn delete_endpoint(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "a webhook endpoint")?;
    outbox::delete_endpoint(&ctx, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret`: the new secret, shown once.
pub async fn rotate_secret(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "a webhook endpoint")?;
    Ok(HttpResponse::Ok().json(outbox::rotate_secret(&ctx, path.into_inner()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    state: Option<String>,
    /// The cursor: `next_cursor` of the previous page (a feed position).
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn deliveries(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
    query: super::input::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "a delivery list")?;
    let q = query.into_inner();
    let limit = super::list::limit(q.limit, 100, 1000)?;
    let rows = outbox::deliveries(
        &ctx,
        path.into_inner(),
        q.state.as_deref(),
        q.after,
        limit + 1,
    )
    .await?;
    Ok(super::list::page(rows, limit, |d| d.seq))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/feed?after=<cursor>&limit=`: the outbound events in order, for pull consumers.
/// An account-bound key reads its own account's events only.
pub async fn feed(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<FeedQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin, Scope::Finance]).await?;
    let q = query.into_inner();
    let limit = super::list::limit(q.limit, 100, 1000)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(super::input::invalid_param("after", "must not be negative"));
    }
    let feed = outbox::feed(&ctx, after, limit, p.account.as_deref()).await?;
    Ok(HttpResponse::Ok().json(feed))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// The cursor: `next_cursor` of the previous page (absent or empty: the beginning).
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/exports/{entity}?after=<cursor>&limit=`: events, invoices, lines, movements or pql
/// for warehouses and reverse-ETL, page by page; `next_cursor` is always given (store it and
/// resume from it: an incremental sync never misses or repeats a row). Finance or admin keys
/// not bound to an account.
pub async fn export(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    query: super::input::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin, Scope::Finance]).await?;
    unbound(&p, "an export")?;
    let name = path.into_inner();
    let entity = crate::services::exports::Entity::parse(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no export `{name}`; there are events, invoices, lines, movements and pql"
        ))
    })?;
    let q = query.into_inner();
    let limit = super::list::limit(q.limit, 1000, 10_000)?;
    let page = crate::services::exports::page(&ctx, entity, q.after.as_deref(), limit).await?;
    Ok(HttpResponse::Ok().json(page))
}
