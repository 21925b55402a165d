//! Bearer-key authentication and the per-route scope policy. Handlers call [`authorize`] first.

use super::ApiError;
use crate::domain::scope::{grants, Scope};
use crate::services::auth::Principal;
use crate::services::Ctx;
use actix_web::http::{header, StatusCode};
use actix_web::HttpRequest;

/// Authenticates the request and checks that the key holds one of `needed`.
pub async fn authorize(
    req: &HttpRequest,
    ctx: &Ctx,
    needed: &[Scope],
) -> Result<Principal, ApiError> {
    let Some(raw) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated(
            "missing Authorization header; send `Authorization: Bearer <api key>`",
        ));
    };
    let key = raw
        .to_str()
        .ok()
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, k)| k)
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be `Bearer <api key>`")
        })?;
    let principal = ctx
        .keys
        .authenticate(&ctx.pool, key)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("unknown or revoked API key"))?;
    if !grants(&principal.scopes, needed) {
        let names: Vec<&str> = needed.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this key lacks the scope this route needs ({})",
                names.join(" or ")
            ),
        ));
    }
    Ok(principal)
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
