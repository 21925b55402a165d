//! `GET /v1/governance/event-types`: every event type seen, its count, and whether a meter
//! reads it (instrumentation governance).

use super::auth::authorize;
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{usage, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The cursor: `next_cursor` of the previous page (an event type).
    after: Option<String>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Event types in name order, `{"data", "next_cursor"}`.
#[utoipa::path(get, path = "/v1/governance/event-types", tag = "operations", params(ListQuery),
    responses((status = 200, description = "Every event type seen: whether a meter counts it, volumes", body = super::list::Page<crate::services::usage::EventTypeUsage>)),
    security(("bearer" = ["admin", "finance"])))]
pub async fn event_types(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let principal = authorize(&req, &ctx, &[Scope::Admin, Scope::Finance]).await?;
    if principal.account.is_some() {
        // A cross-account report does not exist for a key that reaches one account.
        return Err(ApiError::not_found("no route for this key"));
    }
    let limit = super::list::limit(query.limit, 100, 1000)?;
    let types = usage::event_types(&ctx).await?;
    Ok(super::list::page_of(
        types,
        query.after.as_ref(),
        limit,
        |t| t.event_type.clone(),
    ))
}
