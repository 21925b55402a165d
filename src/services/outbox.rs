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
        "created_at": crate::domain::ts::format(&e.created_at),
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

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    pub url: String,
    /// Kinds to deliver; absent or empty: every kind.
    pub kinds: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// Whether an address is anything but a public unicast one: private, loopback, link-local
/// (cloud metadata at 169.254.169.254), shared, reserved, documentation, benchmarking,
/// multicast, and the IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64,
/// 6to4) when the embedded one is.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0 // "this network", 0.0.0.0/8
                || a >= 240 // reserved, 240.0.0.0/4
                || a == 100 && (64..128).contains(&b) // shared (CGNAT), 100.64.0.0/10
                || a == 192 && b == 0 && c == 0 // IETF protocol assignments, 192.0.0.0/24
                || a == 198 && (18..20).contains(&b) // benchmarking, 198.18.0.0/15
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                is_private(IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                )))
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7 (AWS metadata fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link local, fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site local, fec0::/10
                || s[0] == 0x2001 && s[1] == 0x0db8 // documentation, 2001:db8::/32
                || s[0] == 0x2001 && s[1] == 0 // Teredo, 2001::/32
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
                || s[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated)
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && embedded(s[6], s[7]) // NAT64
                || s[0] == 0x2002 && embedded(s[1], s[2]) // 6to4
        }
    }
}

/// The HTTP client of webhook deliveries. Redirects are never followed (the target is the URL
/// that was checked, and a 3xx is a failed delivery); names resolve through
/// [`VettedResolver`], so a connection goes only to addresses that were checked, with no second
/// lookup an attacker's DNS could answer differently; every wait is bounded.
pub fn client(policy: WebhookPolicy) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(VettedResolver { policy }))
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(TIMEOUT_SECONDS))
        .build()
        .unwrap_or_else(|e| {
            // Only a broken TLS backend fails here; deliveries then fail and are retried.
            tracing::error!(error = %e, "webhook client: falling back to defaults");
            reqwest::Client::new()
        })
}

/// Resolves webhook hosts and refuses any whose addresses include a private one (unless the
/// policy allows them): the addresses it returns are the ones the connection uses.
struct VettedResolver {
    policy: WebhookPolicy,
}

impl reqwest::dns::Resolve for VettedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.policy.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            vet(&host, addrs, allow_private)
                .map(|a| Box::new(a.into_iter()) as reqwest::dns::Addrs)
                .map_err(Into::into)
        })
    }
}

/// The addresses a host resolved to, if none is private (or private ones are allowed).
fn vet(
    host: &str,
    addrs: Vec<std::net::SocketAddr>,
    allow_private: bool,
) -> Result<Vec<std::net::SocketAddr>, String> {
    if addrs.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    if let Some(a) = addrs.iter().find(|a| !allow_private && is_private(a.ip())) {
        return Err(format!("{host} resolves to a private address {}", a.ip()));
    }
    Ok(addrs)
}

/// The host and port of an http(s) URL, refusing other schemes and, unless allowed, private
/// targets written literally.
fn check_url(url: &str, policy: WebhookPolicy) -> Result<(String, u16), ServiceError> {
    let invalid = |m: String| ServiceError::invalid_field("invalid_url", "url", m);
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

fn check_endpoint_url(url: &str, policy: WebhookPolicy) -> Result<(), ServiceError> {
    if url.len() > 2048 {
        return Err(ServiceError::invalid_field(
            "invalid_url",
            "url",
            "url is longer than 2,048 characters",
        ));
    }
    check_url(url, policy)?;
    Ok(())
}

fn check_kinds(kinds: &[String]) -> Result<(), ServiceError> {
    match kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        Some(k) => Err(ServiceError::invalid_field(
            "unknown_event_kind",
            "kinds",
            format!("unknown event kind `{k}`; kinds are {}", KINDS.join(", ")),
        )),
        None => Ok(()),
    }
}

fn new_secret() -> Result<String, ServiceError> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| ServiceError::Unavailable(e.to_string()))?;
    Ok(format!("whsec_{}", hex::encode(raw)))
}

/// Creates an endpoint. With an `idempotency_key`, a retry of the same request answers the
/// endpoint the first one created (with its secret); the key used for another url or other
/// kinds is refused (409 `idempotency_key_reused`).
pub async fn create_endpoint(
    ctx: &Ctx,
    req: EndpointRequest,
    idempotency_key: Option<&str>,
) -> Result<CreatedEndpoint, ServiceError> {
    check_endpoint_url(&req.url, ctx.webhooks)?;
    let kinds = req.kinds.unwrap_or_default();
    check_kinds(&kinds)?;
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let replay = |found: EndpointRow| {
        if found.url != req.url || found.kinds != kinds {
            return Err(ServiceError::Conflict {
                code: "idempotency_key_reused",
                message: format!(
                    "Idempotency-Key `{}` was already used for webhook endpoint {} (another \
                     url or other kinds)",
                    idempotency_key.unwrap_or_default(),
                    found.id
                ),
            });
        }
        let secret = found.secret.clone();
        Ok(CreatedEndpoint {
            endpoint: found,
            secret,
        })
    };
    if let Some(key) = idempotency_key {
        if let Some(found) = ob_store::endpoint_by_idempotency_key(&mut conn, key).await? {
            return replay(found);
        }
    }
    let secret = new_secret()?;
    // A new endpoint receives what happens from now on.
    ob_store::sequence(&mut conn).await?;
    let from = ob_store::last_seq(&mut conn).await?;
    let now = ctx.clock.now();
    match ob_store::insert_endpoint(
        &mut conn,
        &req.url,
        &kinds,
        &secret,
        from,
        now,
        idempotency_key,
    )
    .await?
    {
        Some(endpoint) => Ok(CreatedEndpoint { endpoint, secret }),
        // A concurrent retry with the same key created it first.
        None => {
            let key = idempotency_key.unwrap_or_default();
            let found = ob_store::endpoint_by_idempotency_key(&mut conn, key)
                .await?
                .ok_or_else(|| {
                    ServiceError::Unavailable("the endpoint being created is not readable".into())
                })?;
            replay(found)
        }
    }
}

/// What `PATCH /v1/webhook-endpoints/{id}` changes; absent fields stay as they are.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    /// Kinds to deliver; empty: every kind.
    pub kinds: Option<Vec<String>>,
    /// false: nothing is sent to it (its pending deliveries wait); true again: it receives
    /// what happens from then on.
    pub enabled: Option<bool>,
}

fn endpoint_not_found(id: i64) -> ServiceError {
    ServiceError::NotFound(format!("webhook endpoint {id} not found"))
}

pub async fn endpoint(ctx: &Ctx, id: i64) -> Result<EndpointRow, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    ob_store::endpoint(&mut conn, id)
        .await?
        .ok_or_else(|| endpoint_not_found(id))
}

pub async fn update_endpoint(
    ctx: &Ctx,
    id: i64,
    req: EndpointUpdate,
) -> Result<EndpointRow, ServiceError> {
    if let Some(url) = &req.url {
        check_endpoint_url(url, ctx.webhooks)?;
    }
    if let Some(kinds) = &req.kinds {
        check_kinds(kinds)?;
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut ep = ob_store::endpoint(&mut conn, id)
        .await?
        .ok_or_else(|| endpoint_not_found(id))?;
    let was_enabled = ep.disabled_at.is_none();
    ep.url = req.url.unwrap_or(ep.url);
    ep.kinds = req.kinds.unwrap_or(ep.kinds);
    let resume_after = match req.enabled {
        Some(false) => {
            ep.disabled_at = ep.disabled_at.or(Some(ctx.clock.now()));
            None
        }
        Some(true) if !was_enabled => {
            ep.disabled_at = None;
            ob_store::sequence(&mut conn).await?;
            Some(ob_store::last_seq(&mut conn).await?)
        }
        _ => None,
    };
    ob_store::update_endpoint(&mut conn, &ep, resume_after)
        .await?
        .ok_or_else(|| endpoint_not_found(id))
}

/// A new signing secret, in force at once (the old one signs nothing more).
pub async fn rotate_secret(ctx: &Ctx, id: i64) -> Result<CreatedEndpoint, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut ep = ob_store::endpoint(&mut conn, id)
        .await?
        .ok_or_else(|| endpoint_not_found(id))?;
    ep.secret = new_secret()?;
    let endpoint = ob_store::update_endpoint(&mut conn, &ep, None)
        .await?
        .ok_or_else(|| endpoint_not_found(id))?;
    Ok(CreatedEndpoint {
        secret: ep.secret,
        endpoint,
    })
}

/// Deletes the endpoint and its deliveries (sent or not).
pub async fn delete_endpoint(ctx: &Ctx, id: i64) -> Result<(), ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    if ob_store::delete_endpoint(&mut conn, id).await? {
        Ok(())
    } else {
        Err(endpoint_not_found(id))
    }
}

pub async fn endpoints(ctx: &Ctx) -> Result<Vec<EndpointRow>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(ob_store::endpoints(&mut conn).await?)
}

pub async fn deliveries(
    ctx: &Ctx,
    endpoint: i64,
    state: Option<&str>,
    after: Option<i64>,
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
    Ok(ob_store::deliveries(&mut conn, endpoint, state, after, limit).await?)
}

// ---------------------------------------------------------------------------------------------
// The feed

/// A page of the feed. Unlike other lists its cursor is never null: the feed is a stream, and
/// the position after the last event read is where the next poll starts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Feed {
    pub data: Vec<Value>,
    /// Pass as `after` to read on.
    pub next_cursor: i64,
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
    let next_cursor = rows.last().and_then(|r| r.seq).unwrap_or(after);
    Ok(Feed {
        data: rows.iter().map(body).collect(),
        next_cursor,
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
    let enabled: Vec<i64> = endpoints
        .iter()
        .filter(|e| e.disabled_at.is_none())
        .map(|e| e.id)
        .collect();
    for id in &enabled {
        while ob_store::fan_out(&mut conn, *id, now).await? == 1000 {}
    }
    loop {
        let lease = now + Duration::seconds(LEASE_SECONDS);
        let due = ob_store::claim_due(&mut conn, &enabled, now, lease, 100).await?;
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
                    delivery_outcome(ctx, "delivered");
                }
                Err(e) => {
                    tracing::warn!(
                        endpoint = d.endpoint_id,
                        seq = d.seq,
                        attempt = tries,
                        error = %e,
                        "webhook delivery failed"
                    );
                    let next = now + backoff(d.attempts);
                    let give_up = next > d.created_at + Duration::hours(GIVE_UP_AFTER_HOURS);
                    let next = (!give_up).then_some(next);
                    ob_store::mark_failed(&mut conn, d.endpoint_id, d.seq, tries, &e, next, now)
                        .await?;
                    if give_up {
                        report.dead += 1;
                        delivery_outcome(ctx, "dead");
                    } else {
                        report.failed += 1;
                        delivery_outcome(ctx, "failed");
                    }
                }
            }
        }
    }
}

fn delivery_outcome(ctx: &Ctx, outcome: &'static str) {
    ctx.metrics.record(|| {
        metrics::counter!("accrue_webhook_deliveries_total", "outcome" => outcome).increment(1)
    });
}

async fn deliver(
    ctx: &Ctx,
    http: &reqwest::Client,
    ep: &EndpointRow,
    ev: &EventRow,
) -> Result<(), String> {
    // Literal addresses are checked here; names by the client's resolver as it connects.
    check_url(&ep.url, ctx.webhooks).map_err(|e| e.to_string())?;
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
    let http = client(ctx.webhooks);
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
    fn every_non_public_address_is_private() {
        for ip in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001:0:1::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::",
            "::ffff:93.184.216.34",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_name_resolving_to_any_private_address_is_refused_at_connection() {
        let public: std::net::SocketAddr = "93.184.216.34:0".parse().unwrap();
        let metadata: std::net::SocketAddr = "169.254.169.254:0".parse().unwrap();
        assert_eq!(vet("ok.example", vec![public], false), Ok(vec![public]));
        assert!(vet("rebind.example", vec![public, metadata], false)
            .unwrap_err()
            .contains("169.254.169.254"));
        assert_eq!(vet("dev.example", vec![metadata], true), Ok(vec![metadata]));
        assert!(vet("none.example", vec![], true).is_err());
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_six_hours() {
        assert_eq!(backoff(0), Duration::seconds(10));
        assert_eq!(backoff(1), Duration::seconds(20));
        assert_eq!(backoff(5), Duration::seconds(320));
        assert_eq!(backoff(20), Duration::hours(6));
    }
}
