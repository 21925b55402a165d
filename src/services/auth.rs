//! API keys: creation (random, shown once, stored as a SHA-256 hash) and authentication with a
//! short-lived in-process cache so the hot paths do not hit the database per request.

use super::ServiceError;
use crate::domain::scope::Scope;
use crate::store::{self, api_keys, Pool};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long a looked-up key is trusted from memory. A revoked key stops working within this.
const CACHE_TTL: Duration = Duration::from_secs(30);

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

#[derive(Default)]
pub struct KeyCache {
    entries: RwLock<HashMap<String, (Option<Principal>, Instant)>>,
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a key and returns its plaintext, which is never stored.
pub async fn create_key(
    pool: &Pool,
    name: &str,
    scopes: &[Scope],
    account: Option<&str>,
    created_by: &str,
) -> Result<String, ServiceError> {
    if name.trim().is_empty() {
        return Err(ServiceError::invalid(
            "invalid_name",
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
        },
    )
    .await?;
    Ok(key)
}

impl KeyCache {
    /// The principal for a presented bearer key, or `None` when the key is unknown or revoked.
    pub async fn authenticate(
        &self,
        pool: &Pool,
        key: &str,
    ) -> Result<Option<Principal>, ServiceError> {
        let hash = hash_key(key);
        if let Some((p, at)) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
        {
            if at.elapsed() < CACHE_TTL {
                return Ok(p.clone());
            }
        }
        let mut conn = pool.get().await.map_err(store::StoreError::from)?;
        let principal = api_keys::find_by_hash(&mut conn, &hash)
            .await?
            .filter(|k| k.revoked_at.is_none())
            .map(|k| Principal {
                key_id: k.id,
                name: k.name,
                scopes: k
                    .scopes
                    .iter()
                    .filter_map(|s| Scope::from_str(s).ok())
                    .collect(),
                account: k.account,
            });
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Unknown keys are cached too (briefly), so a flood of bad keys costs no queries;
        // bound the map so that flood cannot grow memory without limit.
        if entries.len() > 100_000 {
            entries.clear();
        }
        entries.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }
}
