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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    account: Option<String>,
    status: Option<String>,
    /// Invoices whose period starts at or after this instant.
    #[serde(default, deserialize_with = "super::time::optional")]
    period_from: Option<DateTime<Utc>>,
    /// ... and before this one.
    #[serde(default, deserialize_with = "super::time::optional")]
    period_to: Option<DateTime<Utc>>,
    /// The cursor: `next_cursor` of the previous page (an invoice number).
    after: Option<i64>,
    limit: Option<i64>,
}

const STATUSES: &[&str] = &["open", "paid", "void", "uncollectible"];

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageQuery {
    /// Most events listed per usage line (default 100, at most 1,000).
    limit: Option<i64>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingErrorsQuery {
    /// The cursor: `next_cursor` of the previous page (an account).
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/reports/billing-errors`: accounts whose period close failed and has not succeeded
/// since (finance keys not bound to an account).
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// The amount received: the invoice's total, as a decimal string.
    #[serde(with = "rust_decimal::serde::str")]
    amount: rust_decimal::Decimal,
    /// When it was received (default: now); not in the future.
    #[serde(default, deserialize_with = "super::time::optional")]
    paid_at: Option<DateTime<Utc>>,
    /// The bank or cheque reference.
    reference: Option<String>,
}

/// `POST /v1/invoices/{number}/void` and `/write-off`: an optional reason (the body may be
/// empty).
#[derive(Deserialize, Default)]
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
