//! Outbound events: written to the outbox in the transaction of their cause, sequenced in
//! commit order, delivered at least once to registered webhook endpoints (signed like Stripe:
//! `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`), retried with exponential backoff for three
//! days, then dead-lettered; and readable as a feed with a cursor.

use super::{Ctx, ServiceError};
use crate::store::outbox::{self as ob_store, DeliveryRow, EndpointRow, EventRow, NewEvent};
use crate::store::StoreError;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::net::IpAddr;

/// The kinds of outbound event.
pub const KINDS: &[&str] = &[
    "revenue.movement",
    "usage.threshold",
    "limit.hit",
    "dunning.step",
    "pql.tier_changed",
    "routing.zone_changed",
];

/// A new outbox event with a fresh stable id.
pub fn event(account: &str, kind: &str, data: Value, at: DateTime<Utc>) -> NewEvent {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    NewEvent {
        account: account.to_owned(),
        event_id: format!("evt_{}", hex::encode(b)),
        kind: kind.to_owned(),
        payload: data,
        created_at: at,
    }
}

/// The JSON body of an event, as delivered and as listed in the feed.
pub fn body(e: &EventRow) -> Value {
    json!({
        "id": e.event_id,
        "type": e.kind,
        "seq": e.seq,
        "account": e.account,
        "created_at": e.created_at,
        "data": e.payload,
    })
}

/// The `Accrue-Signature` header for `payload` sent at unix time `t`.
pub fn signature(secret: &str, t: i64, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Endpoints

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    pub url: String,
    /// Kinds to deliver; absent or empty: every kind.
    pub kinds: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: EndpointRow,
    /// Shown once: the receiver verifies signatures with it.
    pub secret: String,
}

/// Whether webhook targets may be private or loopback addresses (development only).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookPolicy {
    pub allow_private: bool,
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]) // CGNAT
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// The host and port of an http(s) URL, refusing other schemes and, unless allowed, private
/// targets written literally.
fn check_url(url: &str, policy: WebhookPolicy) -> Result<(String, u16), ServiceError> {
    let invalid = |m: String| ServiceError::invalid("invalid_url", m);
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| invalid(format!("`{url}` is not an absolute http(s) URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}` is not http or https",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("the URL must not carry credentials".into()));
    }
    let host = parsed
        .host()
        .ok_or_else(|| invalid(format!("`{url}` has no host")))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let (name, private) = match host {
        url::Host::Domain(d) => {
            let d = d.to_ascii_lowercase();
            let local = d == "localhost" || d.ends_with(".localhost");
            (d, local)
        }
        url::Host::Ipv4(ip) => (ip.to_string(), is_private(IpAddr::V4(ip))),
        url::Host::Ipv6(ip) => (ip.to_string(), is_private(IpAddr::V6(ip))),
    };
    if private && !policy.allow_private {
        return Err(invalid(format!(
            "`{name}` is a private or loopback address (allowed only with ACCRUE_WEBHOOKS_ALLOW_PRIVATE=true)"
        )));
    }
    Ok((name, port))
}

pub async fn create_endpoint(
    ctx: &Ctx,
    req: EndpointRequest,
) -> Result<CreatedEndpoint, ServiceError> {
    if req.url.len() > 2048 {
        return Err(ServiceError::invalid(
            "invalid_url",
            "url is longer than 2,048 characters",
        ));
    }
    check_url(&req.url, ctx.webhooks)?;
    let kinds = req.kinds.unwrap_or_default();
    if let Some(k) = kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(ServiceError::invalid(
            "unknown_event_kind",
            format!("unknown event kind `{k}`; kinds are {}", KINDS.join(", ")),
        ));
    }
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| ServiceError::Unavailable(e.to_string()))?;
    let secret = format!("whsec_{}", hex::encode(raw));
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    // A new endpoint receives what happens from now on.
    ob_store::sequence(&mut conn).await?;
    let from = ob_store::last_seq(&mut conn).await?;
    let endpoint =
        ob_store::insert_endpoint(&mut conn, &req.url, &kinds, &secret, from, ctx.clock.now())
            .await?;
    Ok(CreatedEndpoint { endpoint, secret })
}

pub async fn endpoints(ctx: &Ctx) -> Result<Vec<EndpointRow>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(ob_store::endpoints(&mut conn).await?)
}

pub async fn deliveries(
    ctx: &Ctx,
    endpoint: i64,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, ServiceError> {
    if let Some(s) = state {
        if !["pending", "delivered", "dead"].contains(&s) {
            return Err(ServiceError::invalid(
                "invalid_state",
                "state must be pending, delivered or dead",
            ));
        }
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    if ob_store::endpoint(&mut conn, endpoint).await?.is_none() {
        return Err(ServiceError::NotFound(format!(
            "webhook endpoint {endpoint} not found"
        )));
    }
    Ok(ob_store::deliveries(&mut conn, endpoint, state, limit).await?)
}

// ---------------------------------------------------------------------------------------------
// The feed

#[derive(Debug, Clone, Serialize)]
pub struct Feed {
    pub events: Vec<Value>,
    /// Pass as `after` to read on.
    pub next_after: i64,
}

pub async fn feed(
    ctx: &Ctx,
    after: i64,
    limit: i64,
    account: Option<&str>,
) -> Result<Feed, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    ob_store::sequence(&mut conn).await?;
    let rows = ob_store::feed(&mut conn, after, limit, account).await?;
    let next_after = rows.last().and_then(|r| r.seq).unwrap_or(after);
    Ok(Feed {
        events: rows.iter().map(body).collect(),
        next_after,
    })
}

// ---------------------------------------------------------------------------------------------
// The dispatcher

/// Deliveries are given up after this long (then `dead`).
const GIVE_UP_AFTER_HOURS: i64 = 72;
/// How long a claimed delivery is the claimer's before another dispatcher may retry it.
const LEASE_SECONDS: i64 = 60;
const TIMEOUT_SECONDS: u64 = 10;

/// The wait before attempt `attempts + 1`: 10 s doubling, at most 6 h.
pub fn backoff(attempts: i32) -> Duration {
    Duration::seconds((10i64 << attempts.clamp(0, 20)).min(6 * 3600))
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DispatchReport {
    pub sequenced: i64,
    pub delivered: usize,
    pub failed: usize,
    pub dead: usize,
}

/// One dispatcher round: sequence, fan out to every endpoint, deliver what is due.
pub async fn dispatch(ctx: &Ctx, http: &reqwest::Client) -> Result<DispatchReport, ServiceError> {
    let now = ctx.clock.now();
    let mut report = DispatchReport::default();
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    report.sequenced = ob_store::sequence(&mut conn).await?;
    let endpoints = ob_store::endpoints(&mut conn).await?;
    for ep in endpoints.iter().filter(|e| e.disabled_at.is_none()) {
        while ob_store::fan_out(&mut conn, ep.id, now).await? == 1000 {}
    }
    loop {
        let due = ob_store::claim_due(&mut conn, now, now + Duration::seconds(LEASE_SECONDS), 100)
            .await?;
        if due.is_empty() {
            return Ok(report);
        }
        let seqs: Vec<i64> = due.iter().map(|d| d.seq).collect();
        let events: std::collections::HashMap<i64, EventRow> =
            ob_store::events_by_seqs(&mut conn, &seqs)
                .await?
                .into_iter()
                .filter_map(|e| e.seq.map(|s| (s, e)))
                .collect();
        let attempts = due.iter().map(|d| {
            let ep = endpoints.iter().find(|e| e.id == d.endpoint_id);
            let ev = events.get(&d.seq);
            async move {
                let result = match (ep, ev) {
                    (Some(ep), Some(ev)) => deliver(ctx, http, ep, ev).await,
                    _ => Err("the endpoint or the event is gone".to_owned()),
                };
                (d, result)
            }
        });
        let results = futures_util::future::join_all(attempts).await;
        for (d, result) in results {
            let tries = d.attempts + 1;
            match result {
                Ok(()) => {
                    ob_store::mark_delivered(&mut conn, d.endpoint_id, d.seq, tries, now).await?;
                    report.delivered += 1;
                }
                Err(e) => {
                    let next = now + backoff(d.attempts);
                    let give_up = next > d.created_at + Duration::hours(GIVE_UP_AFTER_HOURS);
                    let next = (!give_up).then_some(next);
                    ob_store::mark_failed(&mut conn, d.endpoint_id, d.seq, tries, &e, next, now)
                        .await?;
                    if give_up {
                        report.dead += 1;
                    } else {
                        report.failed += 1;
                    }
                }
            }
        }
    }
}

async fn deliver(
    ctx: &Ctx,
    http: &reqwest::Client,
    ep: &EndpointRow,
    ev: &EventRow,
) -> Result<(), String> {
    let (host, port) = check_url(&ep.url, ctx.webhooks).map_err(|e| e.to_string())?;
    if !ctx.webhooks.allow_private {
        // The name may resolve to a private address: refuse it at delivery time too.
        let addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        for a in addrs {
            if is_private(a.ip()) {
                return Err(format!("{host} resolves to a private address {}", a.ip()));
            }
        }
    }
    let payload = body(ev).to_string();
    let t = chrono::Utc::now().timestamp();
    let res = http
        .post(&ep.url)
        .timeout(std::time::Duration::from_secs(TIMEOUT_SECONDS))
        .header("Content-Type", "application/json")
        .header("Accrue-Signature", signature(&ep.secret, t, &payload))
        .header("Accrue-Event-Id", &ev.event_id)
        .body(payload)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", res.status()))
    }
}

/// Runs the dispatcher every second until the process stops.
pub async fn run_forever(ctx: Ctx) {
    let http = reqwest::Client::new();
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        interval.tick().await;
        if let Err(e) = dispatch(&ctx, &http).await {
            tracing::warn!(error = %e, "webhook dispatch failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_http_urls_are_accepted_by_default() {
        let strict = WebhookPolicy::default();
        for bad in [
            "ftp://example.com/x",
            "example.com/x",
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.1/hook",
            "http://[::1]:8080/hook",
            "http://169.254.169.254/latest",
            "http://user:pw@example.com/",
        ] {
            assert!(check_url(bad, strict).is_err(), "{bad}");
        }
        assert_eq!(
            check_url("https://hooks.example.com/accrue?x=1", strict).unwrap(),
            ("hooks.example.com".to_owned(), 443)
        );
        assert_eq!(
            check_url("http://example.com:8080/a", strict).unwrap(),
            ("example.com".to_owned(), 8080)
        );
        let dev = WebhookPolicy {
            allow_private: true,
        };
        assert_eq!(
            check_url("http://127.0.0.1:9000/hook", dev).unwrap(),
            ("127.0.0.1".to_owned(), 9000)
        );
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_six_hours() {
        assert_eq!(backoff(0), Duration::seconds(10));
        assert_eq!(backoff(1), Duration::seconds(20));
        assert_eq!(backoff(5), Duration::seconds(320));
        assert_eq!(backoff(20), Duration::hours(6));
    }
}
