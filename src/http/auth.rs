//! Bearer-key authentication (a middleware, before any body is read) and the per-route scope
//! policy: handlers call [`authorize`] first. The limit check's direct door
//! (`super::accounts::check_direct`) keeps the same order without the middleware: it calls
//! [`authenticate`] before reading the body, and [`require`] after.

use super::ApiError;
use crate::domain::scope::{grants, Scope};
use crate::services::auth::Principal;
use crate::services::Ctx;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, ResponseError};
use std::sync::Arc;

/// Authenticates the request and checks that the key holds one of `needed`.
pub async fn authorize(
    req: &HttpRequest,
    ctx: &Ctx,
    needed: &[Scope],
) -> Result<Arc<Principal>, ApiError> {
    let principal = principal(req, ctx).await?;
    require(&principal, needed)?;
    Ok(principal)
}

/// The request's principal: the one the middleware authenticated before the body was read
/// ([`authenticate_first`]), taken, not cloned (a handler asks once), or else authenticated now.
pub async fn principal(req: &HttpRequest, ctx: &Ctx) -> Result<Arc<Principal>, ApiError> {
    let known = req.extensions_mut().remove::<Arc<Principal>>();
    match known {
        Some(p) => Ok(p),
        None => authenticate(req, ctx).await,
    }
}

/// Refuses a key that holds none of `needed` (403 naming them).
pub fn require(principal: &Principal, needed: &[Scope]) -> Result<(), ApiError> {
    if grants(&principal.scopes, needed) {
        return Ok(());
    }
    let names: Vec<&str> = needed.iter().map(|s| s.as_str()).collect();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this key lacks the scope this route needs ({})",
            names.join(" or ")
        ),
    ))
}

/// The key of the request's `Authorization` header, if it is one we know: `Bearer <key>`, or
/// HTTP Basic with the key as the user name and no password (as Stripe takes its keys, and as
/// Segment's webhook destination sends its shared secret).
pub async fn authenticate(req: &HttpRequest, ctx: &Ctx) -> Result<Arc<Principal>, ApiError> {
    let Some(raw) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated(
            "missing Authorization header; send `Authorization: Bearer <api key>`",
        ));
    };
    let key = raw
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|(scheme, value)| {
            if scheme.eq_ignore_ascii_case("bearer") {
                Some(value.trim().to_owned())
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic_user(value.trim())
            } else {
                None
            }
        })
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "the Authorization header must be `Bearer <api key>` (or Basic with the key as \
                 the user name)",
            )
        })?;
    ctx.keys
        .authenticate(&ctx.pool, &key)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("unknown or revoked API key"))
}

/// The user name of HTTP Basic credentials (`base64(user:password)`).
fn basic_user(credentials: &str) -> Option<String> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, _) = text.split_once(':').unwrap_or((&text, ""));
    Some(user.trim().to_owned())
}

/// The pattern of the API route a request matched, set by its resource before anything else
/// runs (the request metrics label by it without matching the path a second time; a check
/// answered by the direct door is labelled by the metrics layer itself).
#[derive(Clone, Copy)]
pub struct Route(pub &'static str);

/// Middleware of the API route `pattern`: every `/v1` route but Stripe's webhook (signed, not
/// keyed) authenticates its key before anything reads the request's body, so an
/// unauthenticated caller gets 401 at once and never has a body parsed. The principal is kept
/// for [`authorize`].
pub async fn authenticate_first(
    pattern: &'static str,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    req.extensions_mut().insert(Route(pattern));
    if keyed(pattern) {
        // The context is borrowed, not cloned: its count is shared by every worker thread.
        let known = match req.app_data::<web::Data<Ctx>>() {
            Some(ctx) => Some(authenticate(req.request(), ctx).await),
            None => None,
        };
        match known {
            Some(Ok(p)) => {
                req.extensions_mut().insert(p);
            }
            Some(Err(e)) => {
                let res = e.error_response();
                return Ok(req.into_response(res).map_into_right_body());
            }
            None => {}
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Whether the API route `pattern` needs a key.
fn keyed(pattern: &str) -> bool {
    pattern.starts_with("/v1/") && pattern != "/v1/stripe/webhook"
}

/// Refuses account-scoped keys on a route that covers every account (`what` names it).
pub fn unbound(principal: &Principal, what: &str) -> Result<(), ApiError> {
    match &principal.account {
        Some(_) => Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} covers every account: use a key not bound to one"),
        )),
        None => Ok(()),
    }
}

/// Refuses an account outside an account-scoped key's reach as if it did not exist.
pub fn reach(principal: &Principal, account: &str) -> Result<(), ApiError> {
    if principal.reaches(account) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "account `{account}` not found"
        )))
    }
}
