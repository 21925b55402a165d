//! `POST /v1/portal-sessions`: a link that opens the customer portal for one account, as
//! Stripe's customer portal sessions work; and `GET /v1/accounts/{account}/upcoming-invoice`,
//! the invoice the portal shows as "upcoming".

use super::auth::{authorize, reach};
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{lifecycle, web_sessions, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalSessionRequest {
    /// The account whose portal opens (an account-scoped key: its own only).
    #[schema(example = "acme")]
    account: String,
    /// Where the portal's "Back" link leads (an absolute http(s) URL).
    #[schema(example = "https://app.example.com/settings/billing")]
    return_url: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PortalSession {
    /// Opens the portal once, within ten minutes; then the browser holds the session (an hour).
    url: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// The base URL portal links use: `ACCRUE_PUBLIC_URL`, else the address this request came to.
fn base_url(req: &HttpRequest, ctx: &Ctx) -> String {
    match &ctx.public_url {
        Some(u) => u.to_string(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    }
}

#[utoipa::path(post, path = "/v1/portal-sessions", tag = "portal",
    request_body = PortalSessionRequest,
    responses((status = 201, description = "The link that opens the portal", body = PortalSession)),
    security(("bearer" = ["billing"])))]
pub async fn create(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    body: super::input::Body<PortalSessionRequest>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let b = body.into_inner();
    reach(&p, &b.account)?;
    let link = web_sessions::create_portal_link(&ctx, &b.account, b.return_url.as_deref()).await?;
    Ok(HttpResponse::Created().json(PortalSession {
        url: format!("{}/portal/open/{}", base_url(&req, &ctx), link.token),
        expires_at: link.expires_at,
    }))
}

#[utoipa::path(get, path = "/v1/accounts/{account}/upcoming-invoice", tag = "invoices",
    params(("account" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "The invoice the current period (or trial) ends with if no more usage arrives", body = lifecycle::UpcomingInvoice),
        (status = 204, description = "Nothing will be invoiced (a free plan, a canceled or suspended subscription)"),
    ),
    security(("bearer" = ["billing", "finance"])))]
pub async fn upcoming(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing, Scope::Finance]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    Ok(match lifecycle::upcoming_invoice(&ctx, &account).await? {
        Some(inv) => HttpResponse::Ok().json(inv),
        None => HttpResponse::NoContent().finish(),
    })
}
