//! API keys: creation (random, shown once, stored as a SHA-256 hash), listing, revocation and
//! rotation, and authentication against an in-memory copy of the live keys, so no request, and
//! no guessed key, costs a database query.

use super::ServiceError;
use crate::domain::scope::Scope;
use crate::store::{self, api_keys, Pool};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Set for account-scoped keys: the one account this key reaches.
    pub account: Option<String>,
}

impl Principal {
    /// Whether this key may see `account` at all.
    pub fn reaches(&self, account: &str) -> bool {
        self.account.as_deref().is_none_or(|a| a == account)
    }
}

/// How long an instance trusts its in-memory key set before checking the table's version: a
/// revoked key stops working on every instance within this.
const REFRESH: Duration = Duration::from_secs(1);
/// Least time between two version checks caused by unknown keys: guessing costs no database
/// round trip per guess, at most ten checks a second per instance.
const MISS_RECHECK: Duration = Duration::from_millis(100);

/// The live keys of the installation, in memory. Authentication never queries per request:
/// the set is reloaded when the table's version moves (checked at most once a second, or
/// after an unknown but well-formed key, at most ten times a second).
#[derive(Default)]
pub struct KeyCache {
    snapshot: RwLock<Arc<Snapshot>>,
    refresh: tokio::sync::Mutex<()>,
    /// How many times the database was asked (version checks), for the metrics and tests.
    checks: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Snapshot {
    version: Option<api_keys::Version>,
    /// By the SHA-256 digest of the key (the bytes the stored hex spells).
    keys: HashMap<[u8; 32], LiveKey>,
    checked_at: Option<Instant>,
}

/// A live key: its principal, when it expires, and when it was last used since the last
/// flush to `last_used_at` (microseconds since the epoch, 0: not since; at most a second behind:
/// a use within a second of the stamp leaves it), kept by every copy of the snapshot (a request
/// stamps it without a lock: the check's hot path).
#[derive(Clone)]
struct LiveKey {
    principal: Arc<Principal>,
    expires_at: Option<DateTime<Utc>>,
    last_used: Arc<AtomicI64>,
}

impl LiveKey {
    /// The key's principal unless it has expired; stamps the use.
    fn admit(&self) -> Option<Arc<Principal>> {
        let now = Utc::now();
        if self.expires_at.is_some_and(|e| e <= now) {
            return None;
        }
        // Stamped at most once a second (the stamp is at most a second behind): every
        // request writing it made its cache line travel between the cores.
        let micros = now.timestamp_micros();
        if micros - self.last_used.load(Ordering::Relaxed) >= 1_000_000 {
            self.last_used.fetch_max(micros, Ordering::Relaxed);
        }
        Some(self.principal.clone())
    }

    /// The last use since the previous flush, if any; the next flush starts from none.
    fn take_use(&self) -> Option<(i64, DateTime<Utc>)> {
        let micros = self.last_used.swap(0, Ordering::Relaxed);
        (micros != 0)
            .then(|| DateTime::from_timestamp_micros(micros))
            .flatten()
            .map(|t| (self.principal.key_id, t))
    }
}

/// Whether `key` has the shape accrue's keys have (`acr_` and 48 lowercase hex digits).
fn well_formed(key: &str) -> bool {
    key.len() == 52
        && key.starts_with("acr_")
        && key[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn hash_key(key: &str) -> String {
    hex::encode(digest(key))
}

/// The SHA-256 digest of a key, as bytes.
fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Creates a key and returns its plaintext, which is never stored.
pub async fn create_key(
    pool: &Pool,
    name: &str,
    scopes: &[Scope],
    account: Option<&str>,
    created_by: &str,
) -> Result<String, ServiceError> {
    create_key_expiring(pool, name, scopes, account, created_by, None).await
}

/// As [`create_key`], for a key that stops working at `expires_at`.
pub async fn create_key_expiring(
    pool: &Pool,
    name: &str,
    scopes: &[Scope],
    account: Option<&str>,
    created_by: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<String, ServiceError> {
    if name.trim().is_empty() {
        return Err(ServiceError::invalid_field(
            "invalid_name",
            "name",
            "key name must not be empty",
        ));
    }
    if let Some(a) = account {
        crate::domain::account::AccountId::parse(a)
            .map_err(|why| ServiceError::invalid("invalid_account", why))?;
    }
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret)
        .map_err(|e| ServiceError::invalid("no_randomness", format!("no OS randomness: {e}")))?;
    let key = format!("acr_{}", hex::encode(secret));
    let mut conn = pool.get().await.map_err(store::StoreError::from)?;
    api_keys::insert(
        &mut conn,
        api_keys::NewApiKey {
            key_hash: &hash_key(&key),
            prefix: &key[..12],
            name,
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            account,
            created_by,
            expires_at,
        },
    )
    .await?;
    Ok(key)
}

/// Keys, oldest first, a page at a time (never their secrets).
pub async fn list_keys(
    pool: &Pool,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<api_keys::KeyInfo>, ServiceError> {
    let mut conn = pool.get().await.map_err(store::StoreError::from)?;
    Ok(api_keys::list(&mut conn, after, limit).await?)
}

/// Revokes a key: it fails on every instance within a second.
pub async fn revoke_key(pool: &Pool, id: i64) -> Result<api_keys::KeyInfo, ServiceError> {
    let mut conn = pool.get().await.map_err(store::StoreError::from)?;
    api_keys::revoke(&mut conn, id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no API key {id}")))
}

/// Replaces a key with a new one of the same name, scopes and account; the old one stops at
/// once, or after `grace` (while the new one is rolled out). Returns the new key's plaintext.
pub async fn rotate_key(
    pool: &Pool,
    id: i64,
    grace: Option<chrono::Duration>,
    created_by: &str,
) -> Result<String, ServiceError> {
    let old = {
        let mut conn = pool.get().await.map_err(store::StoreError::from)?;
        api_keys::find(&mut conn, id)
            .await?
            .filter(|k| k.revoked_at.is_none())
            .ok_or_else(|| ServiceError::NotFound(format!("no live API key {id}")))?
    };
    let scopes: Vec<Scope> = old
        .scopes
        .iter()
        .filter_map(|s| Scope::from_str(s).ok())
        .collect();
    let key = create_key(pool, &old.name, &scopes, old.account.as_deref(), created_by).await?;
    let mut conn = pool.get().await.map_err(store::StoreError::from)?;
    match grace {
        Some(g) if g > chrono::Duration::zero() => {
            api_keys::expire_at(&mut conn, id, Utc::now() + g).await?;
        }
        _ => {
            api_keys::revoke(&mut conn, id).await?;
        }
    }
    Ok(key)
}

impl KeyCache {
    /// The principal for a presented bearer key, or `None` when the key is malformed, unknown,
    /// revoked or expired.
    pub async fn authenticate(
        &self,
        pool: &Pool,
        key: &str,
    ) -> Result<Option<Arc<Principal>>, ServiceError> {
        if !well_formed(key) {
            return Ok(None);
        }
        let hash = digest(key);
        {
            // The common case, read in place: a known key on a fresh copy.
            let snap = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            if snap.checked_at.is_some_and(|t| t.elapsed() < REFRESH) {
                if let Some(live) = snap.keys.get(&hash) {
                    return Ok(live.admit());
                }
            }
        }
        let asked = Instant::now();
        let mut snap = self.current();
        let fresh = snap.checked_at.is_some_and(|t| t.elapsed() < REFRESH);
        if snap.keys.contains_key(&hash) {
            if !fresh {
                // A known key on an old copy: one request refreshes, the others go on with
                // the copy they have rather than queue behind it.
                if let Ok(_one) = self.refresh.try_lock() {
                    self.reload(pool).await?;
                    snap = self.current();
                }
            }
        } else {
            // Unknown here: the key may be newer than the copy. Check once (every request
            // that waited here is answered by the check made after it arrived), at most ten
            // checks a second.
            let _one = self.refresh.lock().await;
            snap = self.current();
            let seen_since = snap.checked_at.is_some_and(|t| t >= asked);
            if !snap.keys.contains_key(&hash) && !seen_since {
                if let Some(wait) = snap
                    .checked_at
                    .map(|t| MISS_RECHECK.saturating_sub(t.elapsed()))
                    .filter(|w| !w.is_zero())
                {
                    tokio::time::sleep(wait).await;
                }
                self.reload(pool).await?;
                snap = self.current();
            }
        }
        Ok(snap.keys.get(&hash).and_then(LiveKey::admit))
    }

    /// The principal of the live key `key_id` (a console session signed in with it): None
    /// once the key is revoked or expired, within the same second as for bearer requests.
    pub async fn live_by_id(
        &self,
        pool: &Pool,
        key_id: i64,
    ) -> Result<Option<Principal>, ServiceError> {
        let fresh = |cache: &Self| {
            cache
                .current()
                .checked_at
                .is_some_and(|t| t.elapsed() < REFRESH)
        };
        if !fresh(self) {
            let _one = self.refresh.lock().await;
            if !fresh(self) {
                self.reload(pool).await?;
            }
        }
        let now = Utc::now();
        Ok(self
            .current()
            .keys
            .values()
            .find(|l| l.principal.key_id == key_id && l.expires_at.is_none_or(|e| e > now))
            .map(|l| Principal::clone(&l.principal)))
    }

    /// How many times authentication has asked the database so far.
    pub fn database_checks(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checks the table's version, reloads the keys if it moved, and flushes last-used times.
    async fn reload(&self, pool: &Pool) -> Result<(), ServiceError> {
        let checked_at = Instant::now();
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = pool.get().await.map_err(store::StoreError::from)?;
        let used: Vec<(i64, DateTime<Utc>)> = self
            .current()
            .keys
            .values()
            .filter_map(LiveKey::take_use)
            .collect();
        touch(&mut conn, &used).await;
        let version = api_keys::version(&mut conn).await?;
        let old = self.current();
        let keys = if old.version == Some(version) {
            old.keys.clone()
        } else {
            api_keys::live(&mut conn)
                .await?
                .into_iter()
                .filter_map(|k| {
                    let principal = Principal {
                        key_id: k.id,
                        name: k.name,
                        scopes: k
                            .scopes
                            .iter()
                            .filter_map(|s| Scope::from_str(s).ok())
                            .collect(),
                        account: k.account,
                    };
                    // A stored hash that is not 64 hex digits matches no key.
                    let mut hash = [0u8; 32];
                    match hex::decode_to_slice(&k.key_hash, &mut hash) {
                        Ok(()) => {
                            // A key kept from the old copy keeps its use stamp.
                            let last_used = old
                                .keys
                                .get(&hash)
                                .map(|l| l.last_used.clone())
                                .unwrap_or_default();
                            Some((
                                hash,
                                LiveKey {
                                    principal: Arc::new(principal),
                                    expires_at: k.expires_at,
                                    last_used,
                                },
                            ))
                        }
                        Err(e) => {
                            tracing::warn!(key_id = k.id, error = %e, "a stored key hash is not 64 hex digits: the key cannot authenticate");
                            None
                        }
                    }
                })
                .collect()
        };
        let gone: Vec<LiveKey> = old
            .keys
            .iter()
            .filter(|(hash, _)| !keys.contains_key(*hash))
            .map(|(_, l)| l.clone())
            .collect();
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Snapshot {
            version: Some(version),
            keys,
            checked_at: Some(checked_at),
        });
        // Keys gone from the new copy (revoked, expired) keep a use made since the flush above,
        // read once the new copy is in place (a request that still holds the old copy may
        // stamp one later: that use is lost, as a use racing a revocation always could be).
        let gone: Vec<(i64, DateTime<Utc>)> = gone.iter().filter_map(LiveKey::take_use).collect();
        touch(&mut conn, &gone).await;
        Ok(())
    }
}

/// Records when keys were last used (a failure is logged: it loses a timestamp, not access).
async fn touch(conn: &mut store::Conn, used: &[(i64, DateTime<Utc>)]) {
    if used.is_empty() {
        return;
    }
    if let Err(e) = api_keys::touch(conn, used).await {
        tracing::warn!(error = %e, "could not record when keys were last used");
    }
}
