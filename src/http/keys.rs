//! `GET /v1/keys` and `DELETE /v1/keys/{id}`: API keys for operators (unbound admin keys).
//! Keys are created and rotated with `accrue keys create|rotate`, which print the secret once.

use super::auth::{authorize, unbound};
use super::ApiError;
use crate::domain::scope::Scope;
use crate::services::{auth, Ctx};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The cursor: `next_cursor` of the previous page (a key id).
    after: Option<i64>,
    /// Page size, 1 to 1,000 (100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Every key (never its secret): name, prefix, scopes, account, creation, expiry, last use,
/// revocation; oldest first, `{"data", "next_cursor"}`.
#[utoipa::path(get, path = "/v1/keys", operation_id = "list_keys", tag = "operations", params(ListQuery),
    responses((status = 200, description = "Keys, by id (never their secrets)", body = super::list::Page<crate::store::api_keys::KeyInfo>)),
    security(("bearer" = ["admin"])))]
pub async fn list(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    query: super::input::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "the API key list")?;
    let q = query.into_inner();
    let limit = super::list::limit(q.limit, 100, 1000)?;
    let keys = auth::list_keys(&ctx.pool, q.after, limit + 1).await?;
    Ok(super::list::page(keys, limit, |k| k.id))
}

/// Revokes a key: every instance refuses it within a second. Answers the revoked key.
#[utoipa::path(delete, path = "/v1/keys/{id}", operation_id = "revoke_key", tag = "operations",
    params(("id" = i64, Path, description = "The key id")),
    responses((status = 200, description = "The revoked key (it fails on every instance within a second)", body = crate::store::api_keys::KeyInfo)),
    security(("bearer" = ["admin"])))]
pub async fn revoke(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let p = authorize(&req, &ctx, &[Scope::Admin]).await?;
    unbound(&p, "key revocation")?;
    let key = auth::revoke_key(&ctx.pool, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(key))
}
