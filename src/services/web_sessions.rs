//! Sign-ins of the pages accrue serves. A portal link (`POST /v1/portal-sessions`) is a
//! random token, valid for [`LINK_TTL`] and opened once; opening it starts a portal session
//! for that one account. The console is signed in with a finance or admin key that reaches
//! every account; its session lasts while the key does. Only SHA-256 hashes of tokens are
//! stored; each session carries its own form token (CSRF) that every form posts back.

use super::auth::{hash_key, Principal};
use super::{Ctx, ServiceError};
use crate::domain::scope::{grants, Scope};
use crate::store::web_sessions::{self as store, WebSession};
use crate::store::StoreError;
use chrono::{DateTime, Duration, Utc};

/// How long a portal link can be opened (it opens once).
pub const LINK_TTL: Duration = Duration::minutes(10);
/// How long a portal session lasts once opened.
pub const PORTAL_TTL: Duration = Duration::hours(1);
/// How long a console session lasts (or until its key is revoked).
pub const CONSOLE_TTL: Duration = Duration::hours(12);
/// Longest `return_url` kept.
const MAX_RETURN_URL: usize = 2048;

/// A portal link as `POST /v1/portal-sessions` answers it: the token goes into the URL.
pub struct PortalLink {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// A started session: the token for the cookie (never stored) and the stored session.
pub struct Started {
    pub token: String,
    pub session: WebSession,
}

/// A console session and the key it was signed in with.
pub struct ConsoleSession {
    pub session: WebSession,
    pub principal: Principal,
}

/// A token of 256 random bits; refused (503) rather than weak when the system has no
/// randomness to give.
fn random_token(prefix: &str) -> Result<String, ServiceError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| {
        ServiceError::Unavailable(format!("no randomness for a session token: {e}"))
    })?;
    Ok(format!("{prefix}_{}", hex::encode(b)))
}

/// A new link to `account`'s portal. The account must exist; `return_url`, when given, must be
/// an absolute http(s) URL (the portal's "Back" link).
pub async fn create_portal_link(
    ctx: &Ctx,
    account: &str,
    return_url: Option<&str>,
) -> Result<PortalLink, ServiceError> {
    if let Some(u) = return_url {
        let ok = u.len() <= MAX_RETURN_URL
            && url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https"));
        if !ok {
            return Err(ServiceError::invalid_field(
                "invalid_return_url",
                "return_url",
                format!("`return_url` must be an absolute http or https URL of at most {MAX_RETURN_URL} characters"),
            ));
        }
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    if crate::store::accounts::find_by_account(&mut conn, account)
        .await?
        .is_none()
    {
        return Err(ServiceError::NotFound(format!(
            "account `{account}` not found"
        )));
    }
    let now = ctx.clock.now();
    let token = random_token("pls")?;
    let link = WebSession {
        token_hash: hash_key(&token),
        kind: "portal_link".into(),
        account: Some(account.to_owned()),
        key_id: None,
        csrf: random_token("csrf")?,
        return_url: return_url.map(str::to_owned),
        expires_at: now + LINK_TTL,
        used_at: None,
        created_at: now,
    };
    store::insert(&mut conn, &link).await?;
    Ok(PortalLink {
        token,
        expires_at: link.expires_at,
    })
}

/// Opens the portal link `token`: a new portal session for its account, or None when the
/// link is unknown, expired or was opened before.
pub async fn open_portal_link(ctx: &Ctx, token: &str) -> Result<Option<Started>, ServiceError> {
    let now = ctx.clock.now();
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let Some(link) = store::open_link(&mut conn, &hash_key(token), now).await? else {
        return Ok(None);
    };
    let token = random_token("ps")?;
    let session = WebSession {
        token_hash: hash_key(&token),
        kind: "portal".into(),
        account: link.account,
        key_id: None,
        csrf: random_token("csrf")?,
        return_url: link.return_url,
        expires_at: now + PORTAL_TTL,
        used_at: None,
        created_at: now,
    };
    store::insert(&mut conn, &session).await?;
    Ok(Some(Started { token, session }))
}

/// The live portal session of the cookie `token`.
pub async fn portal_session(ctx: &Ctx, token: &str) -> Result<Option<WebSession>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(store::find_live(&mut conn, &hash_key(token), "portal", ctx.clock.now()).await?)
}

/// Why a console sign-in was refused (the page says which).
#[derive(Debug, PartialEq, Eq)]
pub enum SignInRefused {
    /// Unknown, revoked or expired.
    UnknownKey,
    /// A key without the finance or admin scope, or one bound to an account.
    NotFinance,
}

/// Signs in to the console with an API key holding `finance` (or `admin`) and reaching every
/// account.
pub async fn console_sign_in(
    ctx: &Ctx,
    key: &str,
) -> Result<Result<Started, SignInRefused>, ServiceError> {
    let Some(principal) = ctx.keys.authenticate(&ctx.pool, key.trim()).await? else {
        return Ok(Err(SignInRefused::UnknownKey));
    };
    if !grants(&principal.scopes, &[Scope::Finance]) || principal.account.is_some() {
        return Ok(Err(SignInRefused::NotFinance));
    }
    let now = ctx.clock.now();
    let token = random_token("cs")?;
    let session = WebSession {
        token_hash: hash_key(&token),
        kind: "console".into(),
        account: None,
        key_id: Some(principal.key_id),
        csrf: random_token("csrf")?,
        return_url: None,
        expires_at: now + CONSOLE_TTL,
        used_at: None,
        created_at: now,
    };
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    store::insert(&mut conn, &session).await?;
    Ok(Ok(Started { token, session }))
}

/// The live console session of the cookie `token`, while its key is live and still holds
/// the finance (or admin) scope.
pub async fn console_session(
    ctx: &Ctx,
    token: &str,
) -> Result<Option<ConsoleSession>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let Some(session) =
        store::find_live(&mut conn, &hash_key(token), "console", ctx.clock.now()).await?
    else {
        return Ok(None);
    };
    drop(conn);
    let Some(key_id) = session.key_id else {
        return Ok(None);
    };
    let principal = ctx.keys.live_by_id(&ctx.pool, key_id).await?;
    Ok(principal
        .filter(|p| grants(&p.scopes, &[Scope::Finance]) && p.account.is_none())
        .map(|principal| ConsoleSession { session, principal }))
}

/// Ends the session of the cookie `token` (either kind).
pub async fn sign_out(ctx: &Ctx, token: &str) -> Result<(), ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(store::delete(&mut conn, &hash_key(token)).await?)
}

/// Whether a posted form token is this session's (compared in constant time).
pub fn csrf_matches(session: &WebSession, posted: &str) -> bool {
    let (a, b) = (session.csrf.as_bytes(), posted.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
