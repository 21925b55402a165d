//! Use cases: each public function is one unit of work, usually one transaction.
//! Services take a [`Ctx`] (pool, catalogue, clock, caches, the payment rail; a few that need only
//! the database take the pool) and return domain-shaped results; they know nothing of HTTP.

pub mod auth;
pub mod billing;
pub mod check;
pub mod exports;
pub mod ingest;
pub mod lifecycle;
pub mod migration;
pub mod outbox;
pub mod payments;
pub mod plans;
pub mod pql;
pub mod revenue;
pub mod settlements;
pub mod subscriptions;
pub mod telemetry;
pub mod test_clocks;
pub mod usage;
pub mod web_sessions;

use crate::catalog::meters::MeterCatalog;
use crate::catalog::plans::PlanCatalog;
use crate::domain::clock::Clock;
use crate::store::{Pool, StoreError};
use std::sync::Arc;

/// What every use case needs: the database, the catalogue and the clock.
#[derive(Clone)]
pub struct Ctx {
    pub pool: Pool,
    pub meters: Arc<MeterCatalog>,
    /// The running catalogue: the plan files overlaid with the versions published in the
    /// database, reloaded within seconds of a publish on a serving instance
    /// ([`Ctx::refreshing`], [`Ctx::plans`]).
    pub live_plans: Arc<plans::LivePlans>,
    pub clock: Arc<dyn Clock>,
    pub keys: Arc<auth::KeyCache>,
    pub ingest: Arc<ingest::IngestPipeline>,
    pub checks: Arc<check::CheckCache>,
    /// Stripe and the dunning policy; None: invoices are collected manually.
    pub payments: Option<Arc<payments::Payments>>,
    /// Which webhook targets are allowed.
    pub webhooks: outbox::WebhookPolicy,
    /// The RevOps configuration and the accounts to rescore.
    pub pql: Arc<pql::PqlState>,
    /// This instance's Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// How Segment track calls become events (`POST /v1/integrations/segment`).
    pub segment: Arc<crate::domain::event_shapes::SegmentMapping>,
    /// Where browsers reach this installation (`ACCRUE_PUBLIC_URL`), for the portal links it
    /// hands out; None: the address the API request came to.
    pub public_url: Option<Arc<str>>,
    /// Test clocks are enabled (`ACCRUE_TEST_CLOCKS=true`): accounts created on one live by its
    /// frozen time. Off, every account lives by `clock` and no lookup is made. Shared with the
    /// background tasks started before it is set.
    test_clocks: Arc<std::sync::atomic::AtomicBool>,
}

impl Ctx {
    /// Builds the context and starts its ingest lanes on the current tokio runtime. A server
    /// also calls [`Ctx::refreshing`]; a command that only reads the database does not.
    pub fn new(
        pool: Pool,
        meters: MeterCatalog,
        plans: PlanCatalog,
        clock: Arc<dyn Clock>,
        ingest_lanes: usize,
        check_staleness: std::time::Duration,
    ) -> Self {
        let meters = Arc::new(meters);
        let checks = Arc::new(check::CheckCache::new(check_staleness, meters.clone()));
        let names = meters.all().iter().map(|m| m.code.clone()).collect();
        // The shipped rubric; `accrue serve` replaces it with config/revops.toml.
        let revops = crate::domain::pql::RevOps::parse(crate::domain::pql::DEFAULT_CONFIG, &names)
            .unwrap_or_else(|e| {
                // Commands that only read the database run without meters: nothing to warn of.
                if !meters.all().is_empty() {
                    tracing::warn!(errors = ?e, "the shipped RevOps rubric does not fit this meter catalogue: no PQL signals");
                }
                crate::domain::pql::RevOps::without_signals()
            });
        let pql = Arc::new(pql::PqlState::new(revops));
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        Self {
            ingest: Arc::new(ingest::IngestPipeline::start(
                pool.clone(),
                clock.clone(),
                checks.clone(),
                pql.clone(),
                metrics.clone(),
                ingest_lanes,
            )),
            pql,
            metrics,
            segment: Arc::default(),
            public_url: None,
            checks,
            pool,
            meters,
            live_plans: Arc::new(plans::LivePlans::new(plans)),
            clock,
            keys: Arc::new(auth::KeyCache::default()),
            payments: None,
            webhooks: outbox::WebhookPolicy::default(),
            test_clocks: Arc::default(),
        }
    }

    /// Starts the background refreshers of a serving instance on the current tokio runtime:
    /// the check cache every staleness interval, the published plan catalogue every few
    /// seconds. A one-shot command leaves them off: they would hold its one connection and
    /// log the pool's closing at exit.
    pub fn refreshing(self) -> Self {
        tokio::spawn(check::refresh_loop(self.clone()));
        tokio::spawn(plans::refresh_loop(
            self.live_plans.clone(),
            self.pool.clone(),
        ));
        self
    }

    /// The plan catalogue as this instance last loaded it (a snapshot: hold it for one use).
    pub fn plans(&self) -> Arc<PlanCatalog> {
        self.live_plans.current()
    }

    /// Reloads the plan catalogue now if versions were published since it was loaded.
    pub async fn refresh_plans(&self) -> Result<(), StoreError> {
        self.live_plans.refresh(&self.pool).await
    }

    /// Turns test clocks on (`ACCRUE_TEST_CLOCKS=true`).
    pub fn enable_test_clocks(&self) {
        self.test_clocks
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn test_clocks_on(&self) -> bool {
        self.test_clocks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// "Now" for `account`: its test clock's frozen time when it lives by one, else the clock.
    pub async fn now_for(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        account: &str,
    ) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
        if !self.test_clocks_on() {
            return Ok(self.clock.now());
        }
        let times =
            crate::store::test_clocks::times_of_accounts(conn, &[account.to_owned()]).await?;
        Ok(times
            .get(account)
            .copied()
            .unwrap_or_else(|| self.clock.now()))
    }

    /// [`Ctx::now_for`] on a connection of its own (no query when test clocks are off).
    pub async fn now_of(
        &self,
        account: &str,
    ) -> Result<chrono::DateTime<chrono::Utc>, ServiceError> {
        if !self.test_clocks_on() {
            return Ok(self.clock.now());
        }
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        Ok(self.now_for(&mut conn, account).await?)
    }

    /// The test-clock times of those of `accounts` that live by one (empty when test clocks
    /// are off).
    pub async fn clock_times(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        accounts: &[String],
    ) -> Result<std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>, StoreError> {
        if !self.test_clocks_on() || accounts.is_empty() {
            return Ok(Default::default());
        }
        crate::store::test_clocks::times_of_accounts(conn, accounts).await
    }

    /// How invoices are collected: `stripe` through the payment rail, else `manual`.
    pub fn collection(&self) -> &'static str {
        if self.payments.is_some() {
            "stripe"
        } else {
            MANUAL
        }
    }

    /// Maps Segment calls with `mapping` from now on.
    pub fn with_segment(mut self, mapping: crate::domain::event_shapes::SegmentMapping) -> Self {
        self.segment = Arc::new(mapping);
        self
    }

    /// Collects invoices through `payments` from now on.
    pub fn with_payments(mut self, mut payments: payments::Payments) -> Self {
        payments.metrics = self.metrics.clone();
        self.payments = Some(Arc::new(payments));
        self
    }
}

/// How invoices are collected while no payment rail is configured.
pub const MANUAL: &str = "manual";

/// Errors of the use cases. The HTTP layer maps each variant to a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is well-formed but a value in it breaks a rule (422).
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        /// The request field at fault, when one is (`error.field` in the answer).
        field: Option<String>,
    },
    /// The request conflicts with the current state (409): retry after re-reading.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The thing asked for does not exist (or is outside the key's reach) (404).
    #[error("{0}")]
    NotFound(String),
    /// The database could not be reached or failed (503: safe to retry).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service is stopping or overloaded (503: safe to retry).
    #[error("{0}")]
    Unavailable(String),
    /// This key holds more than its share of the instance (429: retry after a moment; other
    /// keys are still served).
    #[error("{0}")]
    RateLimited(String),
}

impl ServiceError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A 422 naming the request field at fault.
    pub fn invalid_field(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ServiceError::Invalid {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

/// Transaction errors: the store's, or a refusal that rolls the transaction back.
pub(crate) enum TxError {
    Store(StoreError),
    Refused(ServiceError),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Store(e.into())
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<ServiceError> for TxError {
    fn from(e: ServiceError) -> Self {
        TxError::Refused(e)
    }
}

impl From<TxError> for ServiceError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Store(s) => ServiceError::Store(s),
            TxError::Refused(r) => r,
        }
    }
}

pub(crate) fn refuse(code: &'static str, message: impl Into<String>) -> TxError {
    TxError::Refused(ServiceError::invalid(code, message))
}

/// A refusal naming the request field at fault.
pub(crate) fn refuse_field(
    code: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> TxError {
    TxError::Refused(ServiceError::invalid_field(code, field, message))
}

pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> TxError {
    TxError::Refused(ServiceError::Conflict {
        code,
        message: message.into(),
    })
}
