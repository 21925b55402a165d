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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MovementsQuery {
    /// Start (RFC 3339), required.
    #[serde(default, deserialize_with = "super::time::optional")]
    #[param(required = true)]
    from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive), required.
    #[serde(default, deserialize_with = "super::time::optional")]
    #[param(required = true)]
    to: Option<DateTime<Utc>>,
    /// Only this account's movements.
    account: Option<String>,
    /// The cursor: `next_cursor` of the previous page (a movement id).
    after: Option<i64>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/movements", tag = "revenue", params(MovementsQuery),
    responses((status = 200, description = "MRR movements (new, expansion, contraction, churn, reactivation) in the range", body = super::list::Page<crate::store::revenue::MovementRow>)),
    security(("bearer" = ["finance"])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NrrQuery {
    /// Start (RFC 3339), required.
    #[serde(default, deserialize_with = "super::time::optional")]
    #[param(required = true)]
    from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive), required.
    #[serde(default, deserialize_with = "super::time::optional")]
    #[param(required = true)]
    to: Option<DateTime<Utc>>,
    /// `month`: one window per calendar month.
    #[param(value_type = Option<NrrBy>)]
    by: Option<String>,
}

/// How NRR windows are cut.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_camel_case_types)] // the one value `nrr` takes
pub enum NrrBy {
    month,
}

/// NRR and GRR per window.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the JSON `nrr` builds
pub struct NrrReport {
    windows: Vec<revenue::RetentionWindow>,
}

/// What an export reads.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_camel_case_types)] // the names `exports::Entity::parse` takes
pub enum ExportEntity {
    events,
    invoices,
    lines,
    movements,
    pql,
}

/// A delivery state.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_camel_case_types)] // the states `outbox::deliveries` takes
pub enum DeliveryState {
    pending,
    delivered,
    dead,
}

#[utoipa::path(get, path = "/v1/reports/nrr", tag = "revenue", params(NrrQuery),
    responses((status = 200, description = "NRR and GRR (each account's loss capped at its starting MRR)", body = NrrReport)),
    security(("bearer" = ["finance"])))]
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

#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "revenue",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe")),
    request_body = outbox::EndpointRequest,
    responses(
        (status = 201, description = "The endpoint and its signing secret (shown once)", body = outbox::CreatedEndpoint),
        (status = 409, description = "The Idempotency-Key was used for another endpoint", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EndpointsQuery {
    /// The cursor: `next_cursor` of the previous page (an endpoint id).
    after: Option<i64>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/webhook-endpoints`: oldest first (endpoints are few: read whole, paged here).
#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "revenue", params(EndpointsQuery),
    responses((status = 200, description = "Endpoints, by id", body = super::list::Page<crate::store::outbox::EndpointRow>)),
    security(("bearer" = ["admin"])))]
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
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", tag = "revenue",
    params(("id" = i64, Path, description = "The endpoint id")),
    responses((status = 200, description = "The endpoint", body = crate::store::outbox::EndpointRow)),
    security(("bearer" = ["admin"])))]
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
#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", tag = "revenue",
    params(("id" = i64, Path, description = "The endpoint id")),
    request_body = outbox::EndpointUpdate,
    responses((status = 200, description = "The endpoint, changed", body = crate::store::outbox::EndpointRow)),
    security(("bearer" = ["admin"])))]
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
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", tag = "revenue",
    params(("id" = i64, Path, description = "The endpoint id")),
    responses((status = 204, description = "Deleted; nothing more is delivered to it")),
    security(("bearer" = ["admin"])))]
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
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "revenue",
    params(("id" = i64, Path, description = "The endpoint id")),
    responses((status = 200, description = "The endpoint and its new secret (shown once)", body = outbox::CreatedEndpoint)),
    security(("bearer" = ["admin"])))]
pub async fn rotate_secret(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "a webhook endpoint")?;
    Ok(HttpResponse::Ok().json(outbox::rotate_secret(&ctx, path.into_inner()).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this state.
    #[param(value_type = Option<DeliveryState>)]
    state: Option<String>,
    /// The cursor: `next_cursor` of the previous page (a feed position).
    after: Option<i64>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", tag = "revenue",
    params(("id" = i64, Path, description = "The endpoint id"), DeliveriesQuery),
    responses((status = 200, description = "Deliveries to the endpoint (dead letters: state=dead)", body = super::list::Page<crate::store::outbox::DeliveryRow>)),
    security(("bearer" = ["admin"])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The feed position to read after (0: the beginning).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/feed?after=<cursor>&limit=`: the outbound events in order, for pull consumers.
/// An account-bound key reads its own account's events only.
#[utoipa::path(get, path = "/v1/feed", tag = "revenue", params(FeedQuery),
    responses((status = 200, description = "Outbox events after a position, in order, never skipping one", body = outbox::Feed)),
    security(("bearer" = ["admin", "finance"])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// The cursor: `next_cursor` of the previous page (absent or empty: the beginning).
    after: Option<String>,
    /// Page size, 1 to 10,000 (1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// `GET /v1/exports/{entity}?after=<cursor>&limit=`: events, invoices, lines, movements or pql
/// for warehouses and reverse-ETL, page by page; `next_cursor` is always given (store it and
/// resume from it: an incremental sync never misses or repeats a row). Finance or admin keys
/// not bound to an account.
#[utoipa::path(get, path = "/v1/exports/{entity}", operation_id = "export_page", tag = "revenue",
    params(("entity" = ExportEntity, Path, description = "What to export"), ExportQuery),
    responses((status = 200, description = "Rows after the cursor; resume from `next_cursor`", body = crate::services::exports::Page)),
    security(("bearer" = ["admin", "finance"])))]
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
