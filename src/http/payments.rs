//! Stripe's webhook, payment methods, dunning state and the reconciliation report.

use super::auth::{authorize, reach, unbound};
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{payments, Ctx, ServiceError};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

/// `POST /v1/stripe/webhook`: authenticated by the `Stripe-Signature` header over the raw body
/// (not by an API key). A refused signature answers 400 so Stripe shows the failure.
/// Stripe's events (signed with `STRIPE_WEBHOOK_SECRET`, not keyed): payments succeeded or
/// failed, payment methods attached. A bad signature or event answers 400, as Stripe expects.
#[utoipa::path(post, path = "/v1/stripe/webhook", tag = "payments",
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature of the body")),
    request_body(content = serde_json::Value, description = "A Stripe event"),
    responses(
        (status = 200, description = "Handled (or already handled)", body = crate::services::payments::WebhookAnswer),
        (status = 400, description = "Bad signature or not a Stripe event", body = super::openapi::ErrorBody),
        (status = 409, description = "Stripe is not configured on this server", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is larger than accepted"),
        (status = 503, description = "Not processed now, for Stripe to send again: Stripe could not be read, or the invoice is being collected at this moment", body = super::openapi::ErrorBody),
    ))]
pub async fn webhook(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let signature = req
        .headers()
        .get("Stripe-Signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_signature",
                "the Stripe-Signature header is missing",
            )
        })?;
    let payload = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            "the body is not UTF-8",
        )
    })?;
    match payments::webhook(&ctx, payload, signature).await {
        Ok(answer) => Ok(HttpResponse::Ok().json(answer)),
        Err(ServiceError::Invalid { code, message, .. }) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, code, message))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodBody {
    /// A Stripe payment method id (`pm_…`), attached to the account's customer.
    #[schema(example = "pm_card_visa")]
    payment_method: String,
}

/// `PUT /v1/accounts/{account}/payment-method`: the card the account's invoices are charged to.
/// Sets the account's default payment method; a past-due account is retried with it at once.
#[utoipa::path(put, path = "/v1/accounts/{account}/payment-method", tag = "payments",
    params(("account" = String, Path, description = "The account id")),
    request_body = PaymentMethodBody,
    responses(
        (status = 200, description = "Set", body = crate::services::payments::PaymentMethodSet),
        (status = 409, description = "Stripe is not configured, or the account has no customer", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["billing"])))]
pub async fn put_payment_method(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    body: super::input::Body<PaymentMethodBody>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    let set = payments::set_payment_method(&ctx, &account, &body.payment_method).await?;
    Ok(HttpResponse::Ok().json(set))
}

/// `GET /v1/accounts/{account}/dunning`: collection state and every dunning step.
/// Where the account's collection stands: past due, retries, suspension.
#[utoipa::path(get, path = "/v1/accounts/{account}/dunning", tag = "payments",
    params(("account" = String, Path, description = "The account id")),
    responses((status = 200, description = "The dunning state", body = crate::services::payments::DunningView)),
    security(("bearer" = ["billing", "finance"])))]
pub async fn dunning(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing, Scope::Finance]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    Ok(HttpResponse::Ok().json(payments::dunning(&ctx, &account).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReconciliationQuery {
    /// The month, `YYYY-MM` (required).
    #[param(required = true, example = "2026-11")]
    period: Option<String>,
}

/// `GET /v1/reports/reconciliation?period=YYYY-MM` (finance keys not bound to an account).
/// Invoiced against collected for a month, and every mismatch.
#[utoipa::path(get, path = "/v1/reports/reconciliation", tag = "payments", params(ReconciliationQuery),
    responses((status = 200, description = "The month's reconciliation", body = crate::services::payments::Reconciliation),
        (status = 409, description = "Stripe refused to show an invoice (`stripe_refused`: a revoked key, a key of another mode); the message names it", body = super::openapi::ErrorBody),
        (status = 503, description = "Stripe could not be read for an invoice (down or rate limited); the message names it; retry later", body = super::openapi::ErrorBody)),
    security(("bearer" = ["finance"])))]
pub async fn reconciliation(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<ReconciliationQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance]).await?;
    unbound(&p, "the reconciliation report")?;
    let period = query
        .into_inner()
        .period
        .ok_or_else(|| super::input::missing_param("period", "a month, YYYY-MM"))?;
    Ok(HttpResponse::Ok().json(payments::reconciliation(&ctx, &period).await?))
}
