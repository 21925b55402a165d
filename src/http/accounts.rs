//! Accounts, subscriptions, quotes and the limit check: everything under
//! `/v1/accounts/{account}`. An account-scoped key reaches only its own account; any other
//! answers 404 as if it did not exist.

use super::auth::{authorize, reach};
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::check::{self, CheckRequest};
use crate::services::payments;
use crate::services::subscriptions::{self as subs, QuoteRequest, SubscribeRequest};
use crate::services::Ctx;
use crate::store::accounts::{AccountFilter, Firmographics};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

/// `PATCH /v1/accounts/{account}` changes the fields given (`null` clears one) and keeps the
/// others; `PUT` replaces the record, so it needs every firmographic field (`null` to clear).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    #[serde(default, deserialize_with = "given")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    employees: Option<Option<i32>>,
    #[serde(default, deserialize_with = "given")]
    industry: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    country: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    crm_owner: Option<Option<String>>,
    /// Links an existing Stripe customer (unbound keys only; verified through its metadata).
    stripe_customer_id: Option<String>,
    /// A test clock to live by (`ACCRUE_TEST_CLOCKS=true`), when the account is created.
    test_clock: Option<String>,
}

/// A field that is present: `Some(value)`, `Some(None)` for `null` (absent fields take the
/// `default`, `None`).
fn given<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `PUT /v1/accounts/{account}`: the whole record. A field left out is refused (422
/// `missing_field`, naming it) rather than wiped: `PATCH` changes some fields.
pub async fn put_account(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    body: super::input::Body<AccountBody>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    let b = body.into_inner();
    let missing: Vec<&str> = [
        ("name", b.name.is_none()),
        ("email", b.email.is_none()),
        ("employees", b.employees.is_none()),
        ("industry", b.industry.is_none()),
        ("country", b.country.is_none()),
        ("crm_owner", b.crm_owner.is_none()),
    ]
    .into_iter()
    .filter_map(|(f, absent)| absent.then_some(f))
    .collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            format!(
                "PUT replaces the whole account: give {} (null to clear), or PATCH the fields to change",
                missing.join(", ")
            ),
        ));
    }
    save_account(&ctx, &p, &account, b).await
}

/// `PATCH /v1/accounts/{account}`: the fields given change, the others keep their values.
/// Creates the account when it does not exist (201).
pub async fn patch_account(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    body: super::input::Body<AccountBody>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    save_account(&ctx, &p, &account, body.into_inner()).await
}

async fn save_account(
    ctx: &Ctx,
    p: &crate::services::auth::Principal,
    account: &str,
    b: AccountBody,
) -> Result<HttpResponse, ApiError> {
    if let Some(customer) = &b.stripe_customer_id {
        // The link decides whose card pays: accrue manages it, an account's own key never
        // sets it (reviews/security.md C1).
        if p.account.is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "managed_field",
                "stripe_customer_id is managed by accrue: an account-scoped key cannot set it",
            ));
        }
        payments::verify_customer(ctx, account, customer).await?;
    }
    let f = Firmographics {
        name: b.name,
        email: b.email,
        employees: b.employees,
        industry: b.industry,
        country: b.country,
        crm_owner: b.crm_owner,
    };
    let (saved, created) = subs::put_account(
        ctx,
        account,
        f,
        b.test_clock.as_deref(),
        b.stripe_customer_id.as_deref(),
    )
    .await?;
    Ok(if created {
        HttpResponse::Created().json(saved)
    } else {
        HttpResponse::Ok().json(saved)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    crm_owner: Option<String>,
    country: Option<String>,
    industry: Option<String>,
    /// The cursor: `next_cursor` of the previous page (an account id).
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/accounts`: accounts in id order, `{"data", "next_cursor"}`, filtered by
/// `crm_owner`, `country` and `industry` (exact). An account-scoped key sees its own account.
pub async fn list_accounts(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing, Scope::Finance]).await?;
    let q = query.into_inner();
    let limit = super::list::limit(q.limit, 100, 1000)?;
    let filter = AccountFilter {
        account: p.account.clone(),
        crm_owner: q.crm_owner,
        country: q.country,
        industry: q.industry,
        after: q.after,
        limit: limit + 1,
    };
    let rows = subs::list_accounts(&ctx, &filter).await?;
    Ok(super::list::page(rows, limit, |a| a.account.clone()))
}

pub async fn get_account(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing, Scope::Finance]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    Ok(HttpResponse::Ok().json(subs::get_account(&ctx, &account).await?))
}

pub async fn subscribe(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    body: super::input::Body<SubscribeRequest>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    let key = super::input::idempotency_key(&req)?;
    let s = subs::subscribe(&ctx, &p, &account, body.into_inner(), key).await?;
    Ok(HttpResponse::Created().json(s))
}

pub async fn get_subscription(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing, Scope::Finance]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    Ok(HttpResponse::Ok().json(subs::get_subscription(&ctx, &account).await?))
}

/// `DELETE /v1/accounts/{account}/subscription/scheduled-change`: undoes the cancellation or
/// change scheduled for the period end.
pub async fn revoke_scheduled(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    Ok(HttpResponse::Ok().json(subs::revoke_scheduled(&ctx, &account).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// The cursor: `next_cursor` of the previous page (a change id).
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/accounts/{account}/subscription/changes`: accepted changes, oldest first.
pub async fn changes(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    query: super::input::Query<ChangesQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing, Scope::Finance]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    let limit = super::list::limit(query.limit, 100, 1000)?;
    let rows = subs::changes(&ctx, &account, query.after, limit + 1).await?;
    Ok(super::list::page(rows, limit, |c| c.id))
}

pub async fn quote(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    body: super::input::Body<QuoteRequest>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    let q = subs::quote(&ctx, &p, &account, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(q))
}

/// `GET /v1/accounts/{account}/subscription/quotes/{quote}`: a quote and whether it is still
/// open.
pub async fn get_quote(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    _no_query: super::input::Query<super::input::NoQuery>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing, Scope::Finance]).await?;
    let (account, quote_id) = path.into_inner();
    reach(&p, &account)?;
    Ok(HttpResponse::Ok().json(subs::get_quote(&ctx, &account, &quote_id).await?))
}

/// Accepting takes no fields: the body is empty or `{}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {}

pub async fn accept(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Billing]).await?;
    let (account, quote_id) = path.into_inner();
    reach(&p, &account)?;
    let AcceptBody {} = super::input::parse_or_default(&body)?;
    let key = super::input::idempotency_key(&req)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "accepting a quote needs an Idempotency-Key header",
        )
    })?;
    Ok(HttpResponse::Ok().json(subs::accept(&ctx, &account, &quote_id, key).await?))
}

pub async fn check(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<String>,
    body: super::input::Body<CheckRequest>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Check]).await?;
    let account = path.into_inner();
    reach(&p, &account)?;
    Ok(HttpResponse::Ok().json(check::check(&ctx, &account, body.into_inner()).await?))
}
