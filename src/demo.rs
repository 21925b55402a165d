//! `accrue demo`: a synthetic product-led company in its own database. A few thousand accounts
//! across segments sign up over the first five sixths of the run (five months of the default
//! six), use the product (events through the real ingest path), upgrade, add seats and sometimes leave; the clock moves day by day and the billing
//! cycle, revenue ledger and PQL scoring run as they would in production. At the end it prints
//! the invoices issued, MRR and NRR by month, the funnel and the hot PQL queue.
//!
//! Deterministic: the same seed gives the same company.

use crate::domain::clock::{Clock, ManualClock};
use crate::domain::scope::Scope;
use crate::services::auth::Principal;
pub use crate::services::payments::Payments;
use crate::services::subscriptions::{self as subs, QuoteRequest, SubscribeRequest};
use crate::services::{ingest, plans, pql, revenue, Ctx};
use crate::store::{self, accounts::Firmographics};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;

/// What the demo simulates.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub accounts: usize,
    pub months: u32,
    pub seed: u64,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p` percent.
    fn chance(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Free,
    Paid,
    Gone,
}

struct Sim {
    id: String,
    signup_day: u32,
    employees: i32,
    /// 0 (tourist) to 3 (power user): how often and how much the account uses the product.
    engagement: u8,
    users: u32,
    stage: Stage,
    seats: u32,
    converts_on: Option<u32>,
    plan: &'static str,
    /// A card that attaches, then declines; the day the customer replaces it, if they do.
    declining_card: bool,
    replaces_card_on: Option<u32>,
}

const INDUSTRIES: &[&str] = &[
    "software",
    "fintech",
    "media",
    "ecommerce",
    "healthcare",
    "education",
    "logistics",
];

fn company(rng: &mut Rng, i: usize, days: u32) -> Sim {
    let employees = match rng.below(100) {
        0..=59 => 1 + rng.below(50) as i32,
        60..=89 => 51 + rng.below(450) as i32,
        _ => 501 + rng.below(4500) as i32,
    };
    let engagement = match rng.below(100) {
        0..=34 => 0,
        35..=64 => 1,
        65..=87 => 2,
        _ => 3,
    };
    Sim {
        id: format!("acct-{i:05}"),
        signup_day: rng.below(u64::from(days * 5 / 6).max(1)) as u32,
        employees,
        engagement,
        users: 1 + rng.below(u64::from(engagement) * 4 + 1) as u32,
        stage: Stage::Free,
        seats: 1,
        converts_on: None,
        plan: "free",
        declining_card: false,
        replaces_card_on: None,
    }
}

/// The demo's progress bar on stderr (drawn only when stderr is a terminal).
fn progress_bar(days: u32) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(days.into());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("[{bar:40}] {percent:>3}% {msg} ({elapsed})")
    {
        bar.set_style(style.progress_chars("#>."));
    }
    bar
}

/// Runs the simulation on `ctx` (a fresh database) and prints the report to `out`.
pub async fn run(
    ctx: &Ctx,
    clock: &Arc<ManualClock>,
    cfg: &DemoConfig,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let start = clock.now();
    let days = cfg.months * 30;
    let bar = progress_bar(days);
    let mut rng = Rng(cfg.seed.max(1));
    plans::publish(&ctx.pool, &ctx.plans(), "demo", start)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let operator = Principal {
        key_id: 0,
        name: "demo".into(),
        scopes: vec![Scope::Admin, Scope::Billing],
        account: None,
    };
    let mut sims: Vec<Sim> = (0..cfg.accounts)
        .map(|i| company(&mut rng, i, days))
        .collect();
    let scheduler = crate::jobs::Scheduler::new(start).map_err(anyhow::Error::msg)?;
    let mut events_sent = 0usize;
    let mut event_no = 0u64;
    let mut took = Took::default();
    for day in 0..days {
        let mut lap = std::time::Instant::now();
        let today = start + Duration::days(day.into());
        clock.set(today + Duration::hours(9));
        let mut batch: Vec<Value> = Vec::new();
        for s in sims.iter_mut() {
            if s.signup_day == day {
                let free_mail = rng.chance(40);
                let f = Firmographics {
                    name: Some(Some(format!("Company {}", &s.id[5..]))),
                    email: Some(Some(if free_mail {
                        format!("founder.{}@gmail.com", &s.id[5..])
                    } else {
                        format!("ops@{}.example", s.id)
                    })),
                    employees: Some(Some(s.employees)),
                    industry: Some(Some(
                        INDUSTRIES[rng.below(INDUSTRIES.len() as u64) as usize].into(),
                    )),
                    country: Some(Some(
                        ["US", "DE", "FR", "GB", "BR", "IN"][rng.below(6) as usize].into(),
                    )),
                    crm_owner: Some(
                        (s.employees > 500 && rng.chance(50))
                            .then(|| "ae-team@vendor.example".to_owned()),
                    ),
                };
                subs::put_account(ctx, &s.id, f, None, None).await?;
                subs::subscribe(
                    ctx,
                    &operator,
                    &s.id,
                    SubscribeRequest {
                        plan: "free".into(),
                        version: None,
                        seats: Some(1),
                        trial: false,
                    },
                    None,
                )
                .await?;
                // Engaged accounts decide to pay after a while.
                if s.engagement >= 2 && rng.chance(55) || s.engagement == 1 && rng.chance(8) {
                    s.converts_on = Some(day + 7 + rng.below(40) as u32);
                }
            }
            if day < s.signup_day || s.stage == Stage::Gone {
                continue;
            }
            let active_today = match s.engagement {
                0 => rng.chance(5),
                1 => rng.chance(20),
                2 => rng.chance(50),
                _ => rng.chance(85),
            };
            if !active_today {
                continue;
            }
            let ts = (today + Duration::minutes(rng.below(8 * 60) as i64)).to_rfc3339();
            let mut ev = |ty: &str, props: Value| {
                event_no += 1;
                json!({"id": format!("e{event_no}"), "account": s.id, "type": ty, "timestamp": ts, "properties": props})
            };
            for u in 0..s.users.min(1 + rng.below(u64::from(s.users)) as u32) {
                batch.push(ev("user.active", json!({"user_id": format!("u{u}")})));
            }
            for _ in 0..(1 + rng.below(u64::from(s.engagement) * 3 + 1)) {
                batch.push(ev("api.request", json!({})));
            }
            if rng.chance(u64::from(s.engagement) * 6) {
                batch.push(ev("project.created", json!({})));
            }
            if rng.chance(u64::from(s.engagement) * 3) {
                s.users += 1;
                batch.push(ev(
                    "teammate.invited",
                    json!({"invitee_email": format!("p{}@{}.example", s.users, s.id)}),
                ));
            }
            if rng.chance(4) {
                batch.push(ev("pricing_page.viewed", json!({})));
            }
            if rng.chance(2) {
                batch.push(ev("support.contacted", json!({})));
            }
            if s.engagement >= 2 && rng.chance(30) {
                batch.push(ev("job.completed", json!({"minutes": 20 + rng.below(200)})));
            }
        }
        took.simulating += took_since(&mut lap);
        for chunk in batch.chunks(1000) {
            ingest::ingest(ctx, chunk.to_vec(), None).await?;
        }
        events_sent += batch.len();
        took.ingesting += took_since(&mut lap);
        // Decisions of the day: upgrades, seat growth, a few departures.
        for s in sims.iter_mut() {
            if s.replaces_card_on == Some(day) {
                crate::services::payments::set_payment_method(ctx, &s.id, "pm_card_visa").await?;
            }
            if s.stage == Stage::Free && s.converts_on == Some(day) {
                let (plan, seats) = if s.employees > 500 && rng.chance(40) {
                    ("enterprise", 50)
                } else if s.employees > 50 && rng.chance(50) {
                    ("business", 5 + (s.users / 2).min(20))
                } else {
                    ("team", 1 + (s.users / 2).min(10))
                };
                let req = QuoteRequest {
                    plan: Some(plan.into()),
                    version: None,
                    seats: Some(seats),
                    cancel: false,
                    trial: false,
                    effective: None,
                    operator_override: false,
                };
                // A few cards fail; half of their owners replace them after four days.
                s.declining_card = rng.chance(8);
                if s.declining_card && rng.chance(50) {
                    s.replaces_card_on = Some(day + 4);
                }
                let card = if s.declining_card {
                    "pm_card_chargeDeclined"
                } else {
                    "pm_card_visa"
                };
                crate::services::payments::set_payment_method(ctx, &s.id, card).await?;
                if let Ok(q) = subs::quote(ctx, &operator, &s.id, req).await {
                    if subs::accept(ctx, &s.id, &q.id, &format!("demo-convert-{}", s.id))
                        .await
                        .is_ok()
                    {
                        s.stage = Stage::Paid;
                        s.seats = seats;
                        s.plan = plan;
                    }
                }
            } else if s.stage == Stage::Paid && day % 30 == 0 && s.plan != "enterprise" {
                if rng.chance(18) {
                    let more = s.seats + 1 + rng.below(3) as u32;
                    let req = QuoteRequest {
                        plan: None,
                        version: None,
                        seats: Some(more),
                        cancel: false,
                        trial: false,
                        effective: None,
                        operator_override: false,
                    };
                    if let Ok(q) = subs::quote(ctx, &operator, &s.id, req).await {
                        if subs::accept(ctx, &s.id, &q.id, &format!("demo-seats-{}-{day}", s.id))
                            .await
                            .is_ok()
                        {
                            s.seats = more;
                        }
                    }
                } else if rng.chance(4) {
                    let req = QuoteRequest {
                        plan: None,
                        version: None,
                        seats: None,
                        cancel: true,
                        trial: false,
                        effective: None,
                        operator_override: false,
                    };
                    if let Ok(q) = subs::quote(ctx, &operator, &s.id, req).await {
                        if subs::accept(ctx, &s.id, &q.id, &format!("demo-cancel-{}", s.id))
                            .await
                            .is_ok()
                        {
                            s.stage = Stage::Gone;
                        }
                    }
                }
            }
        }
        took.deciding += took_since(&mut lap);
        crate::jobs::tick(ctx, &scheduler).await?;
        took.billing += took_since(&mut lap);
        pql::score_dirty(ctx).await?;
        took.scoring += took_since(&mut lap);
        bar.set_position((day + 1).into());
        bar.set_message(format!("day {} of {days}, {events_sent} events", day + 1));
    }
    // Everything marked as windows slid: a last full rescore.
    let all: Vec<String> = sims.iter().map(|s| s.id.clone()).collect();
    let mut lap = std::time::Instant::now();
    pql::score_accounts(ctx, &all).await?;
    took.scoring += took_since(&mut lap);
    bar.finish_and_clear();
    report(ctx, start, clock.now(), cfg, events_sent, out).await?;
    took.reporting += took_since(&mut lap);
    // On stderr: the report on stdout is the same for the same seed, the times are not.
    eprintln!("{took}");
    Ok(())
}

/// Where the demo's time went, by phase.
#[derive(Default)]
struct Took {
    /// Sign-ups (accounts and their free subscriptions) and making up the day's events.
    simulating: std::time::Duration,
    /// The day's events through the ingest path.
    ingesting: std::time::Duration,
    /// Upgrades, seat changes, cancellations and card changes.
    deciding: std::time::Duration,
    /// The scheduler's jobs: period closes, payments and dunning, the outbox.
    billing: std::time::Duration,
    /// PQL scoring.
    scoring: std::time::Duration,
    reporting: std::time::Duration,
}

/// The time since `lap`, which restarts.
fn took_since(lap: &mut std::time::Instant) -> std::time::Duration {
    let now = std::time::Instant::now();
    let d = now - *lap;
    *lap = now;
    d
}

impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            ("sign-ups and simulation", self.simulating),
            ("ingestion", self.ingesting),
            ("plan changes", self.deciding),
            ("billing jobs", self.billing),
            ("PQL scoring", self.scoring),
            ("report", self.reporting),
        ];
        let total: std::time::Duration = parts.iter().map(|p| p.1).sum();
        write!(f, "accrue demo took {:.1} s:", total.as_secs_f64())?;
        for (i, (name, d)) in parts.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{name} {:.1} s", d.as_secs_f64())?;
        }
        Ok(())
    }
}

async fn report(
    ctx: &Ctx,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    cfg: &DemoConfig,
    events: usize,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut conn = ctx.pool.get().await.map_err(store::StoreError::from)?;
    writeln!(
        out,
        "\naccrue demo: {} accounts over {} months ({} to {}), {events} usage events\n",
        cfg.accounts,
        cfg.months,
        start.format("%Y-%m-%d"),
        end.format("%Y-%m-%d")
    )?;
    writeln!(out, "Invoices issued")?;
    writeln!(
        out,
        "  {:<8} {:>9} {:>14}",
        "month", "invoices", "total (USD)"
    )?;
    for m in store::invoices::monthly_totals(&mut conn).await? {
        writeln!(
            out,
            "  {:<8} {:>9} {:>14}",
            m.month,
            m.invoices,
            m.total.round_dp(2)
        )?;
    }
    let paid = store::payments::count_paid(&mut conn).await?;
    let steps: std::collections::BTreeMap<String, i64> = store::payments::step_counts(&mut conn)
        .await?
        .into_iter()
        .collect();
    let step = |k: &str| steps.get(k).copied().unwrap_or(0);
    writeln!(
        out,
        "\nPayments (simulated card network): {paid} invoices paid; {} first failures, {} failed retries, {} recovered, {} suspended",
        step("payment_failed"),
        step("retry_failed"),
        step("recovered"),
        step("suspended")
    )?;
    writeln!(out, "\nMRR at month end (USD)")?;
    let mut month = Utc
        .with_ymd_and_hms(
            chrono::Datelike::year(&start),
            chrono::Datelike::month(&start),
            1,
            0,
            0,
            0,
        )
        .single()
        .unwrap_or(start);
    while month < end {
        let next = month
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(end);
        let at = next.min(end);
        let mrr: Decimal = store::revenue::mrr_before(&mut conn, at)
            .await?
            .iter()
            .map(|m| m.1)
            .sum();
        writeln!(
            out,
            "  {:<8} {:>12}",
            month.format("%Y-%m"),
            mrr.round_dp(2)
        )?;
        month = next;
    }
    drop(conn);
    writeln!(out, "\nNet revenue retention by month")?;
    writeln!(
        out,
        "  {:<8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "month", "starting", "expansion", "contract.", "churn", "NRR", "GRR"
    )?;
    for w in revenue::nrr(ctx, start, end, true).await? {
        let r = &w.retention;
        let pct = |x: Option<Decimal>| {
            x.map_or("-".to_owned(), |v| {
                format!("{:.1}%", v * Decimal::from(100))
            })
        };
        writeln!(
            out,
            "  {:<8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
            w.from.format("%Y-%m"),
            r.starting_mrr.round_dp(0),
            r.expansion.round_dp(0),
            r.contraction.round_dp(0),
            r.churn.round_dp(0),
            pct(r.nrr),
            pct(r.grr)
        )?;
    }
    let f = pql::funnel(ctx, start, end + Duration::days(1)).await?;
    writeln!(out, "\nPLG funnel (accounts that signed up in the period)")?;
    for s in &f.stages {
        writeln!(
            out,
            "  {:<10} {:>6}  {}",
            s.stage,
            s.accounts,
            s.rate
                .as_deref()
                .map(|r| format!("rate {r}"))
                .unwrap_or_default()
        )?;
    }
    for t in &f.pql_to_paid_by_tier {
        writeln!(
            out,
            "  PQL→paid, {:<5} {:>4} of {:>4}",
            t.tier, t.paid_accounts, t.pqls
        )?;
    }
    writeln!(out, "  conversions by attribution: {:?}", f.attribution)?;
    writeln!(out, "\nHot PQL queue (newest first, top 10)")?;
    for r in pql::queue(ctx, "hot", None, 10).await? {
        writeln!(
            out,
            "  {:<12} score {:>3}  zone {:<16} {}",
            r.account,
            r.score,
            r.zone,
            r.owner
                .as_deref()
                .map(|o| format!("owner {o}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
