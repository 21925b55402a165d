//! `GET /v1/invoices`, `GET /v1/invoices/{number}`, `GET /v1/invoices/{number}/lineage`,
//! settlement without the payment rail (`POST /v1/invoices/{number}/pay`, `/void`,
//! `/write-off`: finance keys not bound to an account), `GET /v1/reports/billing-errors`.
//! Invoices are addressed by their gap-free number. An account-scoped key sees its own only.

use super::auth::authorize;
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{billing, settlements, Ctx};
use crate::store::invoices::InvoiceFilter;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this account's invoices.
    account: Option<String>,
    /// Only invoices in this status.
    #[param(value_type = Option<InvoiceStatus>)]
    status: Option<String>,
    /// Invoices whose period starts at or after this instant.
    #[serde(default, deserialize_with = "super::time::optional")]
    period_from: Option<DateTime<Utc>>,
    /// ... and before this one.
    #[serde(default, deserialize_with = "super::time::optional")]
    period_to: Option<DateTime<Utc>>,
    /// The cursor: `next_cursor` of the previous page (an invoice number).
    after: Option<i64>,
    /// Page size, 1 to 500 (50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// An invoice's status.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_camel_case_types)] // the values of `STATUSES`, for the document
pub enum InvoiceStatus {
    open,
    paid,
    void,
    uncollectible,
}

const STATUSES: &[&str] = &["open", "paid", "void", "uncollectible"];

#[utoipa::path(get, path = "/v1/invoices", operation_id = "list_invoices", tag = "invoices", params(ListQuery),
    responses((status = 200, description = "Invoices, newest number last", body = super::list::Page<crate::store::invoices::InvoiceRow>)),
    security(("bearer" = ["finance", "billing"])))]
pub async fn list(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance, Scope::Billing]).await?;
    let q = query.into_inner();
    let account = match (&p.account, q.account) {
        (Some(own), Some(asked)) if *own != asked => {
            return Err(ApiError::not_found(format!("account `{asked}` not found")))
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(super::input::invalid_param(
                "status",
                format!("must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let limit = super::list::limit(q.limit, 50, 500)?;
    let filter = InvoiceFilter {
        account,
        status: q.status,
        period_from: q.period_from,
        period_to: q.period_to,
        after: q.after,
        limit: limit + 1,
    };
    let invoices = billing::list_invoices(&ctx, &filter).await?;
    Ok(super::list::page(invoices, limit, |i| i.number))
}

#[utoipa::path(get, path = "/v1/invoices/{number}", operation_id = "get_invoice", tag = "invoices",
    params(("number" = i64, Path, description = "The invoice number")),
    responses((status = 200, description = "The invoice with its lines, payment and settlement", body = crate::services::billing::Invoice)),
    security(("bearer" = ["finance", "billing"])))]
pub async fn get(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance, Scope::Billing]).await?;
    let inv = billing::get_invoice(&ctx, path.into_inner(), p.account.as_deref()).await?;
    Ok(HttpResponse::Ok().json(inv))
}

/// An invoice's lineage.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the JSON `lineage` builds
pub struct Lineage {
    invoice: i64,
    lines: Vec<billing::LineLineage>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LineageQuery {
    /// Most events listed per usage line, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/invoices/{number}/lineage", operation_id = "invoice_lineage", tag = "invoices",
    params(("number" = i64, Path, description = "The invoice number"), LineageQuery),
    responses((status = 200, description = "Each usage line down to its hourly rollups and events", body = Lineage)),
    security(("bearer" = ["finance", "billing"])))]
pub async fn lineage(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
    query: super::input::Query<LineageQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance, Scope::Billing]).await?;
    let limit = super::list::limit(query.limit, 100, 1000)?;
    let number = path.into_inner();
    let lines = billing::lineage(&ctx, number, p.account.as_deref(), limit).await?;
    Ok(HttpResponse::Ok().json(json!({ "invoice": number, "lines": lines })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BillingErrorsQuery {
    /// The cursor: `next_cursor` of the previous page (an account).
    after: Option<String>,
    /// Page size, 1 to 500 (50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// `GET /v1/reports/billing-errors`: accounts whose period close failed and has not succeeded
/// since (finance keys not bound to an account).
#[utoipa::path(get, path = "/v1/reports/billing-errors", tag = "invoices", params(BillingErrorsQuery),
    responses((status = 200, description = "Accounts whose period close failed, retried later", body = super::list::Page<crate::store::billing_errors::BillingErrorRow>)),
    security(("bearer" = ["finance"])))]
pub async fn billing_errors(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<BillingErrorsQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance]).await?;
    super::auth::unbound(&p, "the billing errors report")?;
    let q = query.into_inner();
    let limit = super::list::limit(q.limit, 50, 500)?;
    let rows = billing::billing_errors(&ctx, q.after.as_deref(), limit + 1).await?;
    Ok(super::list::page(rows, limit, |r| r.account.clone()))
}

/// `POST /v1/invoices/{number}/pay`: finance records a payment received outside the rail.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// The amount received: the invoice's total, as a decimal string.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(example = "83.00")]
    amount: rust_decimal::Decimal,
    /// When it was received (default: now); not in the future.
    #[serde(default, deserialize_with = "super::time::optional")]
    paid_at: Option<DateTime<Utc>>,
    /// The bank or cheque reference.
    reference: Option<String>,
}

/// `POST /v1/invoices/{number}/void` and `/write-off`: an optional reason (the body may be
/// empty).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

fn reason_body(body: &[u8]) -> Result<ReasonBody, ApiError> {
    super::input::parse_or_default(body)
}

/// Who settled: the key's name and id, kept with the settlement.
fn settler(p: &crate::services::auth::Principal) -> String {
    format!("{} (key {})", p.name, p.key_id)
}

async fn settle(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    number: i64,
    how: settlements::Settle,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Finance]).await?;
    super::auth::unbound(&p, "settling an invoice")?;
    let inv = settlements::settle(&ctx, number, how, &settler(&p)).await?;
    Ok(HttpResponse::Ok().json(inv))
}

#[utoipa::path(post, path = "/v1/invoices/{number}/pay", operation_id = "pay_invoice", tag = "invoices",
    params(("number" = i64, Path, description = "The invoice number")),
    request_body = PayBody,
    responses(
        (status = 200, description = "Records a payment received outside the rail (amount, date, reference); the invoice as it stands", body = crate::services::billing::Invoice),
        (status = 409, description = "The invoice is not open, or Stripe is collecting it", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["finance"])))]
pub async fn pay(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
    body: super::input::Body<PayBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let how = settlements::Settle::Paid {
        amount: b.amount,
        paid_at: b.paid_at,
        reference: b.reference,
    };
    settle(req, ctx, path.into_inner(), how).await
}

#[utoipa::path(post, path = "/v1/invoices/{number}/void", operation_id = "void_invoice", tag = "invoices",
    params(("number" = i64, Path, description = "The invoice number")),
    request_body = Option<ReasonBody>,
    responses(
        (status = 200, description = "Voids the invoice, with a credit note; the invoice as it stands", body = crate::services::billing::Invoice),
        (status = 409, description = "The invoice is not open, or Stripe is collecting it", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["finance"])))]
pub async fn void(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b = reason_body(&body)?;
    let how = settlements::Settle::Void { reason: b.reason };
    settle(req, ctx, path.into_inner(), how).await
}

#[utoipa::path(post, path = "/v1/invoices/{number}/write-off", operation_id = "write_off_invoice", tag = "invoices",
    params(("number" = i64, Path, description = "The invoice number")),
    request_body = Option<ReasonBody>,
    responses(
        (status = 200, description = "Writes the invoice off as uncollectible; the invoice as it stands", body = crate::services::billing::Invoice),
        (status = 409, description = "The invoice is not open, or Stripe is collecting it", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["finance"])))]
pub async fn write_off(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b = reason_body(&body)?;
    let how = settlements::Settle::WriteOff { reason: b.reason };
    settle(req, ctx, path.into_inner(), how).await
}
