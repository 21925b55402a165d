//! Prometheus metrics of one instance, served at `GET /metrics`.
//!
//! Recorded with the `metrics` crate's macros into a Prometheus recorder each [`Metrics`]
//! owns (through `metrics::with_local_recorder`), not into the process-global recorder: a
//! process may run several instances (the tests do), and each counts its own. Counters and
//! histograms are recorded where things happen; gauges of state (queue depths, cache size,
//! pool use, subscriptions by status, outbox lag) are read when the page is rendered
//! (`services::telemetry`).
//!
//! Names follow Prometheus conventions (`accrue_` prefix, `_total` counters, base units).
//! No label holds an account, a key or an id: cardinality stays bounded by routes, codes and
//! outcomes.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::collections::HashMap;

/// Latency buckets of the request and close histograms, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Group-commit sizes, in events.
const GROUP_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The request counter and duration histogram of each (route, method, status) of the API
    /// seen so far: looked up once, then recorded through their handles.
    http: std::sync::RwLock<HashMap<HttpLabels, (metrics::Counter, metrics::Histogram)>>,
    /// `accrue_check_lookups_total` by result: hit, miss.
    check_lookups: std::sync::OnceLock<[metrics::Counter; 2]>,
    /// The gauges read from the database and when (read at most every [`DB_GAUGES_TTL`], so
    /// scrapes, which need no key, never cost the database more than that).
    pub db_gauges: std::sync::Mutex<Option<(std::time::Instant, DbGauges)>>,
}

/// (route pattern, method, status) of an API request.
type HttpLabels = (&'static str, &'static str, u16);

/// How long gauges read from the database are shown before they are read again.
pub const DB_GAUGES_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// Gauges of the installation's state, read from the database.
#[derive(Debug, Clone, Default)]
pub struct DbGauges {
    /// (status, subscriptions in it).
    pub subscriptions: Vec<(String, i64)>,
    pub pending_deliveries: i64,
    pub oldest_pending: Option<chrono::DateTime<chrono::Utc>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("accrue_ingest_group_events".into()),
                    GROUP_BUCKETS,
                )
            });
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // Only empty bucket lists are refused, and ours are constants.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        let m = Self {
            recorder,
            handle,
            http: std::sync::RwLock::default(),
            check_lookups: std::sync::OnceLock::new(),
            db_gauges: std::sync::Mutex::new(None),
        };
        m.record(describe);
        m
    }

    /// Runs `f` with this instance's recorder behind the `metrics` macros.
    pub fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// Counts and times one answered HTTP request. `method` is one of a fixed set; `route` is
    /// the matched pattern (never a path, so ids stay out of the labels).
    pub fn http_request(
        &self,
        route: std::borrow::Cow<'static, str>,
        method: &'static str,
        status: u16,
        took: std::time::Duration,
    ) {
        let handles = |route: &str| {
            let labels = [
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ];
            self.record(|| {
                (
                    metrics::counter!("accrue_http_requests_total", &labels),
                    metrics::histogram!("accrue_http_request_duration_seconds", &labels),
                )
            })
        };
        let (counter, histogram) = match route {
            // API routes are a fixed set: their handles are kept.
            std::borrow::Cow::Borrowed(r) => {
                let key = (r, method, status);
                let known = self
                    .http
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .cloned();
                known.unwrap_or_else(|| {
                    let h = handles(r);
                    self.http
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, h.clone());
                    h
                })
            }
            std::borrow::Cow::Owned(r) => handles(&r),
        };
        counter.increment(1);
        histogram.record(took.as_secs_f64());
    }

    /// Counts a limit check's cache lookup.
    pub fn check_lookup(&self, hit: bool) {
        let [hits, misses] = self.check_lookups.get_or_init(|| {
            self.record(|| {
                [
                    metrics::counter!("accrue_check_lookups_total", "result" => "hit"),
                    metrics::counter!("accrue_check_lookups_total", "result" => "miss"),
                ]
            })
        });
        if hit { hits } else { misses }.increment(1);
    }

    /// The exposition text (Prometheus format 0.0.4).
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn describe() {
    describe_counter!(
        "accrue_http_requests_total",
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        "accrue_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route and status"
    );
    describe_counter!("accrue_events_accepted_total", "Usage events stored (new)");
    describe_counter!(
        "accrue_events_duplicate_total",
        "Usage events already stored (a retry), counted once"
    );
    describe_counter!(
        "accrue_events_rejected_total",
        "Usage events refused, by rejection code"
    );
    describe_histogram!(
        "accrue_ingest_group_events",
        "Events per group commit of an ingest lane"
    );
    describe_counter!(
        "accrue_ingest_insert_retries_total",
        "Ingest groups whose insert met an event stored already and ran again skipping stored ids"
    );
    describe_gauge!(
        "accrue_ingest_lane_queue_depth",
        "Sub-batches waiting for their lane's next commit, by lane"
    );
    describe_gauge!(
        "accrue_ingest_in_flight_events",
        "Events accepted by requests and not yet answered"
    );
    describe_counter!(
        "accrue_check_lookups_total",
        "Limit checks answered, by whether the account was cached (hit) or loaded (miss)"
    );
    describe_gauge!(
        "accrue_check_cache_entries",
        "Accounts held by the check cache"
    );
    describe_gauge!(
        "accrue_check_cache_staleness_seconds",
        Unit::Seconds,
        "Time since the check cache's last refresh round ended"
    );
    describe_histogram!(
        "accrue_period_close_duration_seconds",
        Unit::Seconds,
        "Duration of a period-close sweep"
    );
    describe_counter!(
        "accrue_period_close_accounts_total",
        "Accounts the period close moved (closed) or could not (failed, see billing-errors)"
    );
    describe_counter!(
        "accrue_invoices_issued_total",
        "Invoices issued by the period close"
    );
    describe_counter!(
        "accrue_webhook_deliveries_total",
        "Outbound webhook attempts, by outcome (delivered, failed, dead)"
    );
    describe_gauge!(
        "accrue_webhook_pending_deliveries",
        "Outbound webhook deliveries waiting (pending)"
    );
    describe_gauge!(
        "accrue_webhook_lag_seconds",
        Unit::Seconds,
        "Age of the oldest pending outbound webhook delivery"
    );
    describe_counter!(
        "accrue_stripe_calls_total",
        "Calls to Stripe, by operation and outcome (ok, declined, refused, unavailable)"
    );
    describe_gauge!(
        "accrue_subscriptions",
        "Subscriptions by status (past_due and suspended are the dunning states)"
    );
    describe_gauge!(
        "accrue_db_pool_connections",
        "Database connections of this instance, by state (in_use, idle)"
    );
    describe_gauge!("accrue_db_pool_max", "The database pool's size limit");
    describe_gauge!(
        "accrue_db_pool_waiting",
        "Tasks waiting for a database connection"
    );
}
