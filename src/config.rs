//! Configuration from the environment, with defaults that work on a developer machine.

use crate::domain::dunning::{DunningPolicy, FinalAction};
use crate::payments::StripeConfig;
use std::path::PathBuf;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/accrue";
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: the database accrue owns; created on start when missing.
    pub database_url: String,
    /// `ACCRUE_BIND`: where the HTTP server listens.
    pub bind: String,
    /// `ACCRUE_PLANS_DIR`: the catalogue (meters.toml and the plan versions).
    pub plans_dir: PathBuf,
    /// `ACCRUE_DB_POOL`: connections per instance; ingestion throughput scales with it up to
    /// the database's core count. Each ingest lane holds up to two: keep it well above twice
    /// `ACCRUE_INGEST_LANES`.
    pub pool_size: usize,
    /// `ACCRUE_INGEST_LANES`: group-commit ingest lanes per instance, each committing up to
    /// two groups at once (2: measured best against a 2-core database; more write more
    /// accounts at once, fewer make larger groups).
    pub ingest_lanes: usize,
    /// `ACCRUE_SHUTDOWN_GRACE_SECS`: how long a stopping `serve` waits, counted from the stop
    /// signal, for requests in flight and then for the ingest lanes to commit (30).
    pub shutdown_grace: std::time::Duration,
    /// `ACCRUE_CHECK_STALENESS_MS`: how often the check cache reloads every cached account; the
    /// bound on staleness about changes made through other instances.
    pub check_staleness: std::time::Duration,
    /// `STRIPE_SECRET_KEY` (+ `STRIPE_WEBHOOK_SECRET`, optional `STRIPE_API_BASE`), the names
    /// of DESIGN.md (the older `ACCRUE_STRIPE_KEY`, `ACCRUE_STRIPE_WEBHOOK_SECRET`,
    /// `ACCRUE_STRIPE_API_BASE` are still read, with a deprecation warning): collect invoices
    /// through Stripe. Unset: invoices are issued for manual collection.
    pub stripe: Option<StripeConfig>,
    /// Test clocks (`ACCRUE_TEST_CLOCKS=true`; off by default: their routes answer 404).
    pub test_clocks: bool,
    /// `ACCRUE_DUNNING_RETRY_DAYS` (default `3,5,7`), `ACCRUE_DUNNING_GRACE_DAYS` (default 7),
    /// `ACCRUE_DUNNING_FINAL_ACTION` (`suspend`, the default, or `cancel`).
    pub dunning: DunningPolicy,
    /// `ACCRUE_WEBHOOKS_ALLOW_PRIVATE=true`: webhook endpoints may be private or loopback
    /// addresses (development only; refused by default).
    pub webhooks_allow_private: bool,
    /// `ACCRUE_REVOPS_FILE`: the PQL rubric, tiers, segments and routing rules.
    pub revops_file: PathBuf,
    /// `ACCRUE_SEGMENT_FILE`: how Segment track calls become events (optional file).
    pub segment_file: PathBuf,
    /// `ACCRUE_PUBLIC_URL` (`https://billing.example.com`): where customers' browsers reach
    /// the portal. Unset: portal links use the address the API request came to.
    pub public_url: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let pool_size = var("ACCRUE_DB_POOL", "16");
        let pool_size = pool_size
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("ACCRUE_DB_POOL must be a positive integer, got `{pool_size}`")
            })?;
        let lanes = var("ACCRUE_INGEST_LANES", "2");
        let ingest_lanes = lanes
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| format!("ACCRUE_INGEST_LANES must be 1 to 64, got `{lanes}`"))?;
        let grace = var("ACCRUE_SHUTDOWN_GRACE_SECS", "30");
        let shutdown_grace = grace
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=3600).contains(n))
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| {
                format!("ACCRUE_SHUTDOWN_GRACE_SECS must be 1 to 3600, got `{grace}`")
            })?;
        let stale = var("ACCRUE_CHECK_STALENESS_MS", "1000");
        let check_staleness = stale
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=600_000).contains(n))
            .map(std::time::Duration::from_millis)
            .ok_or_else(|| {
                format!("ACCRUE_CHECK_STALENESS_MS must be 1 to 600000, got `{stale}`")
            })?;
        let stripe = match named("STRIPE_SECRET_KEY", "ACCRUE_STRIPE_KEY") {
            None => None,
            Some(secret_key) => {
                let webhook_secret = named("STRIPE_WEBHOOK_SECRET", "ACCRUE_STRIPE_WEBHOOK_SECRET")
                    .ok_or("STRIPE_WEBHOOK_SECRET is required with STRIPE_SECRET_KEY")?;
                Some(StripeConfig {
                    secret_key,
                    api_base: named("STRIPE_API_BASE", "ACCRUE_STRIPE_API_BASE"),
                    webhook_secret,
                })
            }
        };
        let dunning = DunningPolicy::default()
            .with_retry_days(&var("ACCRUE_DUNNING_RETRY_DAYS", "3,5,7"))
            .map_err(|e| format!("ACCRUE_DUNNING_RETRY_DAYS: {e}"))?;
        let grace = var("ACCRUE_DUNNING_GRACE_DAYS", "7");
        let grace_days = grace
            .parse::<u32>()
            .ok()
            .filter(|d| *d <= 365)
            .ok_or_else(|| format!("ACCRUE_DUNNING_GRACE_DAYS must be 0 to 365, got `{grace}`"))?;
        let final_action = match var("ACCRUE_DUNNING_FINAL_ACTION", "suspend").as_str() {
            "suspend" => FinalAction::Suspend,
            "cancel" => FinalAction::Cancel,
            other => {
                return Err(format!(
                    "ACCRUE_DUNNING_FINAL_ACTION must be `suspend` or `cancel`, got `{other}`"
                ))
            }
        };
        let webhooks_allow_private = match var("ACCRUE_WEBHOOKS_ALLOW_PRIVATE", "false").as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(format!(
                    "ACCRUE_WEBHOOKS_ALLOW_PRIVATE must be true or false, got `{other}`"
                ))
            }
        };
        let test_clocks = match var("ACCRUE_TEST_CLOCKS", "false").as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(format!(
                    "ACCRUE_TEST_CLOCKS must be true or false, got `{other}`"
                ))
            }
        };
        let public_url = match std::env::var("ACCRUE_PUBLIC_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            None => None,
            Some(u) => {
                let ok = url::Url::parse(&u)
                    .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
                if !ok {
                    return Err(format!(
                        "ACCRUE_PUBLIC_URL must be an absolute http(s) URL like https://billing.example.com, got `{u}`"
                    ));
                }
                Some(u.trim_end_matches('/').to_owned())
            }
        };
        Ok(Self {
            public_url,
            test_clocks,
            revops_file: PathBuf::from(var("ACCRUE_REVOPS_FILE", "config/revops.toml")),
            segment_file: PathBuf::from(var("ACCRUE_SEGMENT_FILE", "config/segment.toml")),
            webhooks_allow_private,
            stripe,
            dunning: DunningPolicy {
                grace_days,
                final_action,
                ..dunning
            },
            check_staleness,
            ingest_lanes,
            shutdown_grace,
            database_url: var("DATABASE_URL", DEFAULT_DATABASE_URL),
            bind: var("ACCRUE_BIND", DEFAULT_BIND),
            plans_dir: PathBuf::from(var("ACCRUE_PLANS_DIR", "pricing-plans")),
            pool_size,
        })
    }
}

/// A setting under its documented name `name`, or under its deprecated name `old` (said so on
/// stderr); empty counts as unset.
fn named(name: &str, old: &str) -> Option<String> {
    let read = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
    read(name).or_else(|| {
        read(old).inspect(|_| {
            eprintln!("warning: {old} is deprecated, set {name} instead");
        })
    })
}
