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
use crate::store::accounts::{Account, AccountFilter, Firmographics};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

/// `PATCH /v1/accounts/{account}` changes the fields given (`null` clears one) and keeps the
/// others; `PUT` replaces the record, so it needs every firmographic field (`null` to clear).
#[derive(Deserialize, utoipa::ToSchema)]
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

/// The body of `PUT`: every firmographic field, `null` to clear one (the document's view of
/// [`AccountBody`] as `put_account` requires it).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AccountReplace {
    #[schema(required = true, example = "Acme")]
    name: Option<String>,
    #[schema(required = true, example = "billing@acme.test")]
    email: Option<String>,
    #[schema(required = true, example = 40)]
    employees: Option<i32>,
    #[schema(required = true, example = "software")]
    industry: Option<String>,
    #[schema(required = true, example = "DE")]
    country: Option<String>,
    #[schema(required = true, example = "dana")]
    crm_owner: Option<String>,
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
#[utoipa::path(put, path = "/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "The account id")),
    request_body = AccountReplace,
    responses(
        (status = 200, description = "Replaced", body = Account),
        (status = 201, description = "Created", body = Account),
        (status = 409, description = "`stripe_customer_id` given while Stripe is not configured", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["billing"])))]
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
#[utoipa::path(patch, path = "/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "The account id")),
    request_body = AccountBody,
    responses(
        (status = 200, description = "Changed", body = Account),
        (status = 201, description = "Created", body = Account),
        (status = 409, description = "`stripe_customer_id` given while Stripe is not configured", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["billing"])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only accounts with this CRM owner.
    crm_owner: Option<String>,
    /// Only accounts in this country.
    country: Option<String>,
    /// Only accounts in this industry.
    industry: Option<String>,
    /// The cursor: `next_cursor` of the previous page (an account id).
    after: Option<String>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/accounts`: accounts in id order, `{"data", "next_cursor"}`, filtered by
/// `crm_owner`, `country` and `industry` (exact). An account-scoped key sees its own account.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(ListQuery),
    responses((status = 200, description = "A page of accounts, in id order", body = super::list::Page<Account>)),
    security(("bearer" = ["billing", "finance"])))]
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

/// An account: firmographics, Stripe link, credit balance.
#[utoipa::path(get, path = "/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "The account id")),
    responses((status = 200, description = "The account", body = Account)),
    security(("bearer" = ["billing", "finance"])))]
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

/// Subscribes the account to a plan (self-serve, or a trial where the plan has one). With an
/// `Idempotency-Key`, a retry gets the first answer again.
#[utoipa::path(post, path = "/v1/accounts/{account}/subscription", tag = "subscriptions",
    params(
        ("account" = String, Path, description = "The account id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Makes a retry safe (at most 255 bytes)"),
    ),
    request_body = SubscribeRequest,
    responses(
        (status = 201, description = "Subscribed; the advance fees invoiced", body = crate::services::subscriptions::Subscribed),
        (status = 409, description = "Already subscribed, or the key was used for another request", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["billing"])))]
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

/// The account's subscription: plan, seats, status, current period, scheduled change.
#[utoipa::path(get, path = "/v1/accounts/{account}/subscription", tag = "subscriptions",
    params(("account" = String, Path, description = "The account id")),
    responses((status = 200, description = "The subscription", body = crate::services::subscriptions::SubscriptionView)),
    security(("bearer" = ["billing", "finance"])))]
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
#[utoipa::path(delete, path = "/v1/accounts/{account}/subscription/scheduled-change", tag = "subscriptions",
    params(("account" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "The subscription, with nothing scheduled", body = crate::services::subscriptions::SubscriptionView),
        (status = 409, description = "Nothing is scheduled", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["billing"])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// The cursor: `next_cursor` of the previous page (a change id).
    after: Option<i64>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One side of an accepted change (`null` where it does not exist: a new subscription has no
/// `from`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `store::subscriptions::ChangeRow`'s JSON
pub struct ChangeSide {
    plan: String,
    version: Option<i32>,
    seats: Option<i32>,
}

/// A line of a change.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ChangeLine {
    Fee(crate::domain::invoice::InvoiceLine),
    Proration(crate::domain::proration::ProrationLine),
}

/// An accepted change, as `ChangeRow` serializes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Change {
    id: i64,
    /// subscribed, upgrade, downgrade, seats_added, seats_removed, lateral, cancel…
    kind: String,
    at: chrono::DateTime<chrono::Utc>,
    quote_id: Option<String>,
    from: Option<ChangeSide>,
    to: Option<ChangeSide>,
    /// The lines charged or credited: a new subscription's advance fees, a change's
    /// prorations.
    lines: Vec<ChangeLine>,
    #[schema(value_type = String, example = "83.00")]
    amount: String,
    currency: Option<String>,
}

/// `GET /v1/accounts/{account}/subscription/changes`: accepted changes, oldest first.
#[utoipa::path(get, path = "/v1/accounts/{account}/subscription/changes", tag = "subscriptions",
    params(("account" = String, Path, description = "The account id"), ChangesQuery),
    responses((status = 200, description = "Accepted changes, oldest first", body = super::list::Page<Change>)),
    security(("bearer" = ["billing", "finance"])))]
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

/// Quotes a change (plan, version, seats, cancel, trial): exactly what accepting it will do and
/// charge, valid for a while.
#[utoipa::path(post, path = "/v1/accounts/{account}/subscription/quotes", tag = "subscriptions",
    params(("account" = String, Path, description = "The account id")),
    request_body = QuoteRequest,
    responses(
        (status = 201, description = "The quote", body = crate::services::subscriptions::Quote),
        (status = 409, description = "The subscription does not allow this change now", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["billing"])))]
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
#[utoipa::path(get, path = "/v1/accounts/{account}/subscription/quotes/{quote}", tag = "subscriptions",
    params(
        ("account" = String, Path, description = "The account id"),
        ("quote" = String, Path, description = "The quote id"),
    ),
    responses((status = 200, description = "The quote and its status", body = QuoteStatus)),
    security(("bearer" = ["billing", "finance"])))]
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

/// A stored quote and where it stands.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the JSON `subscriptions::get_quote` builds
pub struct QuoteStatus {
    #[serde(flatten)]
    quote: crate::services::subscriptions::Quote,
    /// open, accepted or expired.
    #[schema(example = "open")]
    status: String,
    accepted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Accepting takes no fields: the body is empty or `{}`.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {}

/// Accepts a quote: executes exactly it (charging `amount_due_now`), once. The
/// `Idempotency-Key` makes a retry return the first answer.
#[utoipa::path(post, path = "/v1/accounts/{account}/subscription/quotes/{quote}/accept", tag = "subscriptions",
    params(
        ("account" = String, Path, description = "The account id"),
        ("quote" = String, Path, description = "The quote id"),
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "Required: makes a retry safe"),
    ),
    request_body(content = Option<AcceptBody>, description = "Empty or `{}`"),
    responses(
        (status = 200, description = "Accepted: the change, its lines and invoices", body = crate::services::subscriptions::Accepted),
        (status = 409, description = "The quote expired, was accepted with another key, or the subscription changed since", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = ["billing"])))]
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

/// May this account do this now? Answers from memory (bounded-stale across instances):
/// allowed or not, why, and usage against the limit.
#[utoipa::path(post, path = "/v1/accounts/{account}/check", tag = "accounts",
    params(("account" = String, Path, description = "The account id")),
    request_body = CheckRequest,
    responses((status = 200, description = "The answer", body = crate::services::check::CheckAnswer)),
    security(("bearer" = ["check"])))]
pub async fn check(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let ctx = super::context(&req)?;
    let p = super::auth::principal(&req, ctx).await?;
    answer_check(ctx, p, &path, payload.into_inner()).await
}

/// The check route's pattern.
pub const CHECK: &str = "/v1/accounts/{account}/check";

/// Where, in the request's path, the account a request asks the check route about lies, when
/// the request can be served by [`check_direct`]: a POST whose path is
/// `/v1/accounts/{account}/check` with an account that needs no decoding (no `%`). Any other
/// request goes through the router as usual (the route is in the table: it answers 405 to
/// other methods, and [`check`] serves encoded accounts).
pub fn check_target(req: &ServiceRequest) -> Option<std::ops::Range<usize>> {
    if req.method() != actix_web::http::Method::POST {
        return None;
    }
    target(req.path())
}

/// The byte range of `path`'s account when `path` is the check route's with an account that
/// reads as written: what actix's router and path extractor would give for it (they decode
/// `%` escapes only; `{account}` is one non-empty segment).
fn target(path: &str) -> Option<std::ops::Range<usize>> {
    const PREFIX: &str = "/v1/accounts/";
    let account = path.strip_prefix(PREFIX)?.strip_suffix("/check")?;
    (!account.is_empty() && !account.contains(['/', '%']))
        .then(|| PREFIX.len()..PREFIX.len() + account.len())
}

/// Serves a request [`check_target`] accepted (`account`: the range it gave) without the
/// router or the route's middleware: checks are the hottest route, and matching the path
/// patterns, stacking the per-route services and passing the key through the request's
/// extensions cost about a fifth of the answer's rate (`benches/speed.sh`: 0.64 of `/healthz`
/// through the router, 0.78-0.80 here). It goes through the same steps as the routed request,
/// in the same order: the key before the body (as [`super::auth::authenticate_first`] does),
/// then [`answer_check`]. Middleware added to the route in `super::resource` does not apply
/// here. The request metrics label it [`CHECK`].
pub async fn check_direct(req: ServiceRequest, account: std::ops::Range<usize>) -> ServiceResponse {
    use actix_web::ResponseError;
    let (req, payload) = req.into_parts();
    let answer = async {
        let ctx = super::context(&req)?;
        let p = super::auth::authenticate(&req, ctx).await?;
        let account = req.path().get(account).unwrap_or_default();
        answer_check(ctx, p, account, payload).await
    }
    .await;
    let res = answer.unwrap_or_else(|e| e.error_response());
    ServiceResponse::new(req, res)
}

/// A check, the key already authenticated: the body, the key's scope and reach, the answer.
async fn answer_check(
    ctx: &Ctx,
    p: std::sync::Arc<crate::services::auth::Principal>,
    account: &str,
    payload: actix_web::dev::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: CheckRequest = super::input::read(payload).await?;
    super::auth::require(&p, &[Scope::Check])?;
    reach(&p, account)?;
    let answer = check::check(ctx, account, body).await?;
    // JSON as `HttpResponse::json` writes it, with the header value made once.
    let json = serde_json::to_vec(&answer)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(HttpResponse::Ok()
        .insert_header((
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderValue::from_static("application/json"),
        ))
        .body(json))
}

#[cfg(test)]
mod tests {
    use super::target;

    /// The direct door takes exactly the paths whose account the router would read as written.
    #[test]
    fn the_direct_door_takes_only_accounts_that_read_as_written() {
        let account = |path: &'static str| target(path).map(|r| &path[r]);
        for (path, expected) in [
            ("/v1/accounts/acme/check", Some("acme")),
            ("/v1/accounts/a+b/check", Some("a+b")),
            ("/v1/accounts/a;b/check", Some("a;b")),
            ("/v1/accounts/../check", Some("..")),
            ("/v1/accounts/check/check", Some("check")),
            ("/v1/accounts/%61cme/check", None),
            ("/v1/accounts/a/b/check", None),
            ("/v1/accounts//check", None),
            ("/v1/accounts/acme/check/", None),
            ("/v1/accounts/acme/checks", None),
            ("/v1/accounts/acme", None),
            ("/v1/accounts/check", None),
        ] {
            assert_eq!(account(path), expected, "{path}");
        }
    }
}
