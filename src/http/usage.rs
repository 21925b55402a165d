//! `GET /v1/accounts/{account}/usage?from=&to=`: each meter's exact value over whole hours.

use super::auth::{authorize, reach};
use super::ApiError;
use crate::domain::aggregate::{bucket_of, BUCKET_SECONDS};
use crate::domain::scope::Scope;
use crate::services::{usage, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    #[serde(default, deserialize_with = "super::time::optional")]
    /// Start (RFC 3339); the start of the current UTC month when absent.
    from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive); the end of the current hour when absent.
    #[serde(default, deserialize_with = "super::time::optional")]
    to: Option<DateTime<Utc>>,
}

/// Defaults: from the start of the current UTC month to the end of the current hour.
#[utoipa::path(get, path = "/v1/accounts/{account}/usage", tag = "accounts",
    params(("account" = String, Path, description = "The account id"), RangeQuery),
    responses((status = 200, description = "Usage per meter against the plan's limits", body = crate::services::usage::UsageReport)),
    security(("bearer" = ["check", "billing", "finance"])))]
pub async fn account_usage(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    query: super::input::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let principal = authorize(&req, &ctx, &[Scope::Check, Scope::Billing, Scope::Finance]).await?;
    let account = path.into_inner();
    reach(&principal, &account)?;
    let now = ctx.now_of(&account).await?;
    let from = query.from.unwrap_or_else(|| {
        Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now)
    });
    let to = query
        .to
        .unwrap_or_else(|| bucket_of(now) + chrono::Duration::seconds(BUCKET_SECONDS));
    let report = usage::usage(&ctx, &account, from, to).await?;
    Ok(HttpResponse::Ok().json(report))
}
