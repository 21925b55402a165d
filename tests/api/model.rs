//! A reference model of billing, and random sequences checked against it through the real API.
//!
//! The model is a deliberately simple biller written here, with nothing imported from
//! `accrue::domain`: its own calendar (month lengths, anchor-day clamping), its own tier walks,
//! its own proration and rounding. Each sequence puts one account on its own test clock and
//! drives it through HTTP (subscribe, trials, quotes and acceptance of seat and plan changes,
//! cancellations, usage, late usage, clock advances); afterwards it checks that
//! - every invoice's total is the sum of its lines, and no period is invoiced twice;
//! - every acknowledged compute-minute event is priced exactly once (the quantities billed for
//!   a period, on time and late, add up to the period's events; a late event waits for the
//!   next invoice that recomputes late usage, which for a yearly plan can be a year away);
//! - what was charged (invoice totals less the credit balance still held) is what the model
//!   charges;
//! - every quote charged what it said (quote = charge, and = the model's proration);
//! - the MRR ledger ends where the model's MRR is; seats never exceed the plan's maximum;
//! - GRR lies in [0, 1].
//!
//! `ACCRUE_MODEL_SEQUENCES` sets how many sequences run (64 by default; the long run is
//! 5,000) and `ACCRUE_MODEL_SEED` the first seed. A failure names its seed and its steps.
//! Collection through Stripe (failing and recovering cards) is not modelled yet.

use crate::helpers::*;
use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Value};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// The model: plans as numbers, written out by hand from pricing-plans/.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Free,
    Team,
    Business,
    /// Business billed yearly (the catalogue's latest version, v2).
    BusinessAnnual,
}

impl Plan {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Team => "team",
            Plan::Business => "business",
            Plan::BusinessAnnual => "business_annual",
        }
    }
    pub(crate) fn months(self) -> i64 {
        if self == Plan::BusinessAnnual {
            12
        } else {
            1
        }
    }
    /// The recurring price per month, which decides upgrade or downgrade.
    pub(crate) fn monthly(self, seats: u32) -> Decimal {
        self.recurring(seats) / Decimal::from(self.months())
    }
    /// (base fee in cents, seat price in cents, included, min, max)
    fn fees(self) -> (i64, i64, u32, u32, u32) {
        match self {
            Plan::Free => (0, 0, 3, 1, 3),
            Plan::Team => (5900, 1200, 3, 1, 50),
            Plan::Business => (19900, 2000, 10, 5, 500),
            Plan::BusinessAnnual => (199000, 20000, 10, 5, 500),
        }
    }
    pub(crate) fn recurring(self, seats: u32) -> Decimal {
        let (base, seat, included, _, _) = self.fees();
        Decimal::new(base + seat * i64::from(seats.saturating_sub(included)), 2)
    }
    pub(crate) fn bounds(self) -> (u32, u32) {
        let (_, _, _, min, max) = self.fees();
        (min, max)
    }
    /// The usage charges of a period with `minutes` of compute and a storage peak of `gb`,
    /// each line rounded to the cent.
    pub(crate) fn usage(self, minutes: Decimal, gb: Decimal) -> Decimal {
        self.usage_share(minutes, gb, Decimal::ONE)
    }

    /// The usage charges of a period that covered `share` of a whole one: storage, charged at
    /// its peak once a period, at `share` of its prices; minutes as they were.
    pub(crate) fn usage_share(self, minutes: Decimal, gb: Decimal, share: Decimal) -> Decimal {
        match self {
            Plan::Free => Decimal::ZERO,
            Plan::Team => {
                // Packages of 1,000 minutes at 8.00 after 500 free; storage: 50 GB free,
                // then 0.25 a GB.
                let over = (minutes - Decimal::from(500)).max(Decimal::ZERO);
                let packages = (over / Decimal::from(1000)).ceil();
                let storage =
                    (gb - Decimal::from(50)).max(Decimal::ZERO) * (Decimal::new(25, 2) * share);
                cents(packages * Decimal::from(8)) + cents(storage)
            }
            Plan::Business | Plan::BusinessAnnual => {
                // 0.006 a minute; storage volume-tiered: every GB at the rate of the tier
                // holding the peak (≤ 500 free, ≤ 5,000 at 0.20, above at 0.15; twelve times
                // that on the yearly plan, whose period charges the peak once).
                let year = if self == Plan::BusinessAnnual { 12 } else { 1 };
                let rate = if gb <= Decimal::from(500) {
                    Decimal::ZERO
                } else if gb <= Decimal::from(5000) {
                    Decimal::new(20 * year, 2)
                } else {
                    Decimal::new(15 * year, 2)
                };
                cents(minutes * Decimal::new(6, 3)) + cents(gb * (rate * share))
            }
        }
    }
}

pub(crate) fn cents(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

pub(crate) fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// `k` months after `anchor`, on the anchor's day clamped to the month's length.
pub(crate) fn months_after(anchor: DateTime<Utc>, k: i64) -> DateTime<Utc> {
    let idx = i64::from(anchor.year()) * 12 + i64::from(anchor.month()) - 1 + k;
    let (y, m) = ((idx / 12) as i32, (idx % 12) as u32 + 1);
    let d = anchor.day().min(days_in_month(y, m));
    Utc.with_ymd_and_hms(y, m, d, anchor.hour(), 0, 0).unwrap()
}

pub(crate) fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
        .unwrap()
}

/// The part of `price` for the rest of [start, end) after `at`, to the second, in cents.
pub(crate) fn prorated(
    price: Decimal,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Decimal {
    let total = (end - start).num_seconds();
    let left = (end - at).num_seconds().clamp(0, total);
    cents(price * Decimal::from(left) / Decimal::from(total))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Trialing,
    Active,
    Canceled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sched {
    plan: Plan,
    seats: u32,
    cancel: bool,
}

#[derive(Debug, Clone)]
struct Closed {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    plan: Plan,
    /// The share of its whole period it covered (1 unless a change cut it short).
    share: Decimal,
}

#[derive(Debug, Clone)]
struct Model {
    plan: Plan,
    seats: u32,
    status: Status,
    /// Trialing: the trial's start and end; otherwise the current period.
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    anchor: DateTime<Utc>,
    k: i64,
    had_trial: bool,
    scheduled: Option<Sched>,
    /// Advance fees and prorations charged.
    fees: Decimal,
    /// (timestamp, compute minutes, storage GB) of every acknowledged event.
    events: Vec<(DateTime<Utc>, Decimal, Decimal)>,
    closed: Vec<Closed>,
    /// Usage revenue per month of the last closed period, as billed at its close.
    last_usage: Decimal,
    /// How many of `events` the last invoice that recomputes late usage saw (a period close,
    /// the part of a period an interval change ended, a trial canceled at its end): later
    /// events of closed periods wait for the next such invoice.
    billed_upto: usize,
}

impl Model {
    fn usage_in(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> (Decimal, Decimal) {
        self.usage_known(start, end, self.events.len())
    }

    /// The usage of [start, end) among the first `known` events.
    fn usage_known(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        known: usize,
    ) -> (Decimal, Decimal) {
        let mut minutes = Decimal::ZERO;
        let mut gb = Decimal::ZERO;
        for (t, m, g) in &self.events[..known] {
            if *t >= start && *t < end {
                minutes += m;
                gb = gb.max(*g);
            }
        }
        (minutes, gb)
    }

    fn subscribe(plan: Plan, seats: u32, trial: bool, now: DateTime<Utc>) -> Model {
        let start = hour_of(now);
        let mut m = Model {
            plan,
            seats,
            status: Status::Active,
            start,
            end: months_after(start, plan.months()),
            anchor: start,
            k: 0,
            had_trial: trial,
            scheduled: None,
            fees: Decimal::ZERO,
            events: Vec::new(),
            closed: Vec::new(),
            last_usage: Decimal::ZERO,
            billed_upto: 0,
        };
        if trial {
            m.status = Status::Trialing;
            m.end = start + Duration::days(14);
        } else {
            m.fees += plan.recurring(seats);
        }
        m
    }

    /// Everything due up to `to`, in time order.
    fn advance(&mut self, to: DateTime<Utc>) {
        loop {
            match self.status {
                Status::Trialing if self.end <= to => {
                    let end = self.end;
                    match self.scheduled.take() {
                        Some(s) if s.cancel => {
                            self.status = Status::Canceled;
                            self.billed_upto = self.events.len();
                            return;
                        }
                        Some(s) => {
                            self.plan = s.plan;
                            self.seats = s.seats;
                        }
                        None => {}
                    }
                    self.status = Status::Active;
                    self.anchor = end;
                    self.k = 0;
                    self.start = end;
                    self.end = months_after(end, self.plan.months());
                    self.fees += self.plan.recurring(self.seats);
                }
                Status::Active if self.end <= to => {
                    let (minutes, gb) = self.usage_in(self.start, self.end);
                    self.billed_upto = self.events.len();
                    if self.plan != Plan::Free {
                        self.closed.push(Closed {
                            start: self.start,
                            end: self.end,
                            plan: self.plan,
                            share: Decimal::ONE,
                        });
                    }
                    self.last_usage =
                        self.plan.usage(minutes, gb) / Decimal::from(self.plan.months());
                    let months = self.plan.months();
                    match self.scheduled.take() {
                        Some(s) if s.cancel => {
                            self.status = Status::Canceled;
                            return;
                        }
                        Some(s) => {
                            self.plan = s.plan;
                            self.seats = s.seats;
                        }
                        None => {}
                    }
                    if self.plan.months() != months {
                        // Another interval: the new plan's periods start at this period end.
                        self.anchor = self.end;
                        self.k = -1;
                    }
                    self.k += 1;
                    self.start = self.end;
                    self.end = months_after(self.anchor, (self.k + 1) * self.plan.months());
                    self.fees += self.plan.recurring(self.seats);
                }
                Status::Canceled => {
                    // A canceled subscription's late usage is billed on an invoice of its own
                    // whenever its clock moves.
                    self.billed_upto = self.events.len();
                    return;
                }
                _ => return,
            }
        }
    }

    /// What a quote for (plan, seats) or a cancellation does at `now`: Err(code) when
    /// refused, else (immediate, amount due now).
    fn change(
        &mut self,
        to: Option<(Plan, u32)>,
        cancel: bool,
        now: DateTime<Utc>,
    ) -> Result<Decimal, &'static str> {
        if self.status == Status::Canceled {
            return Err("subscription_canceled");
        }
        if cancel {
            self.scheduled = Some(Sched {
                plan: self.plan,
                seats: self.seats,
                cancel: true,
            });
            return Ok(Decimal::ZERO);
        }
        let (plan, seats) = to.unwrap();
        let (min, max) = plan.bounds();
        if seats > max {
            return Err("seat_limit");
        }
        if seats < min {
            return Err("seat_minimum");
        }
        if plan == self.plan && seats == self.seats {
            return Err("no_change");
        }
        let (old, new) = (self.plan.recurring(self.seats), plan.recurring(seats));
        // Decided by the monthly price; at an equal price, fewer seats on the same plan is
        // still a decrease.
        let (old_m, new_m) = (self.plan.monthly(self.seats), plan.monthly(seats));
        let decrease = new_m < old_m || (new_m == old_m && plan == self.plan && seats < self.seats);
        if decrease {
            // A decrease waits for the period end.
            if self.scheduled.is_some_and(|s| s.cancel) {
                return Err("cancellation_scheduled");
            }
            self.scheduled = Some(Sched {
                plan,
                seats,
                cancel: false,
            });
            return Ok(Decimal::ZERO);
        }
        let due = if self.status == Status::Trialing {
            Decimal::ZERO
        } else if plan.months() != self.plan.months() {
            // Another interval ends the period at the change's hour: the part that ran is
            // closed (its usage in arrears), the old fees credited from that hour, the new
            // plan's whole first period charged from it.
            let at = hour_of(now);
            let credit = prorated(old, self.start, self.end, at);
            self.billed_upto = self.events.len();
            if at > self.start && self.plan != Plan::Free {
                self.closed.push(Closed {
                    start: self.start,
                    end: at,
                    plan: self.plan,
                    share: Decimal::from((at - self.start).num_seconds())
                        / Decimal::from((self.end - self.start).num_seconds()),
                });
            }
            self.anchor = at;
            self.k = 0;
            self.start = at;
            self.end = months_after(at, plan.months());
            new - credit
        } else {
            prorated(new, self.start, self.end, now) - prorated(old, self.start, self.end, now)
        };
        self.fees += due;
        self.plan = plan;
        self.seats = seats;
        if self.scheduled.is_some_and(|s| !s.cancel) {
            self.scheduled = None;
        }
        Ok(due)
    }

    /// A trial from the free plan, through a quote.
    fn trial(&mut self, plan: Plan, seats: u32, now: DateTime<Utc>) -> Result<(), &'static str> {
        if self.status == Status::Canceled {
            return Err("subscription_canceled");
        }
        let (min, max) = plan.bounds();
        if seats > max {
            return Err("seat_limit");
        }
        if seats < min {
            return Err("seat_minimum");
        }
        if self.had_trial || self.status == Status::Trialing {
            return Err("trial_used");
        }
        if self.plan != Plan::Free {
            return Err("trial_not_available");
        }
        self.plan = plan;
        self.seats = seats;
        self.status = Status::Trialing;
        self.had_trial = true;
        self.start = hour_of(now);
        self.end = self.start + Duration::days(14);
        if self.scheduled.is_some_and(|s| !s.cancel) {
            self.scheduled = None;
        }
        Ok(())
    }

    fn mrr(&self) -> Decimal {
        match self.status {
            Status::Active => self.plan.monthly(self.seats) + self.last_usage,
            Status::Trialing => self.last_usage,
            Status::Canceled => Decimal::ZERO,
        }
    }

    /// Everything the account owes by now: fees and prorations, and every closed period's
    /// usage as it stands.
    fn owed(&self) -> Decimal {
        self.fees
            + self
                .closed
                .iter()
                .map(|c| {
                    let (minutes, gb) = self.usage_known(c.start, c.end, self.billed_upto);
                    c.plan.usage_share(minutes, gb, c.share)
                })
                .sum::<Decimal>()
    }
}

// ---------------------------------------------------------------------------------------------
// Random sequences, run through the API.

/// xorshift64*: a small deterministic generator, so a failing seed replays.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

pub(crate) fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

pub(crate) struct Run<'a> {
    pub(crate) app: &'a TestApp,
    pub(crate) key: &'a str,
    pub(crate) account: String,
    pub(crate) clock: String,
    pub(crate) now: DateTime<Utc>,
    pub(crate) log: Vec<String>,
    pub(crate) event_no: u32,
}

impl Run<'_> {
    pub(crate) fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\naccount {} steps:\n  {}",
            self.account,
            self.log.join("\n  ")
        )
    }

    async fn advance(&mut self, to: DateTime<Utc>) {
        let (status, body) = self
            .app
            .post(
                self.key,
                &format!("/v1/test-clocks/{}/advance", self.clock),
                &json!({ "frozen_time": to }),
                None,
            )
            .await;
        if status != 200 {
            self.fail(&format!("advance: {status} {body}"));
        }
        self.now = to;
    }

    async fn send(&mut self, ts: Option<DateTime<Utc>>, minutes: u32, gb: u32) -> bool {
        self.event_no += 1;
        let mut job = json!({"id": format!("j{}", self.event_no), "account": self.account, "type": "job.completed", "properties": {"minutes": minutes}});
        let mut snap = json!({"id": format!("s{}", self.event_no), "account": self.account, "type": "storage.snapshot", "properties": {"gb": gb}});
        if let Some(ts) = ts {
            job["timestamp"] = json!(ts);
            snap["timestamp"] = json!(ts);
        }
        let (status, body) = self
            .app
            .send(self.key, &json!({"events": [job, snap]}))
            .await;
        if status != 200 || body["accepted"] != 2 {
            self.fail(&format!("events: {status} {body}"));
        }
        true
    }

    /// Quotes and, when the quote is made, accepts; returns the refusal code or the charge
    /// (checked: quote = charge).
    pub(crate) async fn quote_accept(&mut self, body: Value) -> Result<Decimal, String> {
        let (status, q) = self
            .app
            .post(
                self.key,
                &format!("/v1/accounts/{}/subscription/quotes", self.account),
                &body,
                None,
            )
            .await;
        if status != 201 {
            return Err(q["error"]["code"].as_str().unwrap_or("?").to_owned());
        }
        let id = q["id"].as_str().unwrap();
        let (status, a) = self
            .app
            .post(
                self.key,
                &format!(
                    "/v1/accounts/{}/subscription/quotes/{id}/accept",
                    self.account
                ),
                &json!({}),
                Some(&format!("k-{id}")),
            )
            .await;
        if status != 200 {
            self.fail(&format!("accept: {status} {a}"));
        }
        if a["amount_due_now"] != q["amount_due_now"] {
            self.fail(&format!("quote {q} charged {a}"));
        }
        let max = match a["subscription"]["plan"].as_str().unwrap() {
            "free" => Plan::Free,
            "team" => Plan::Team,
            "business_annual" => Plan::BusinessAnnual,
            _ => Plan::Business,
        }
        .bounds()
        .1;
        if a["subscription"]["seats"].as_u64().unwrap() > u64::from(max) {
            self.fail(&format!("seats above the maximum: {a}"));
        }
        Ok(dec(&q["amount_due_now"]))
    }
}

async fn run_sequence(app: &TestApp, key: &str, seed: u64) {
    let mut rng = Rng::new(seed);
    // Start at a random hour in 2027, often on a month's last days (anchor clamping).
    let day = rng.pick(&[1u32, 15, 28, 29, 30, 31]);
    let month = 1 + rng.below(12) as u32;
    let start = Utc
        .with_ymd_and_hms(
            2027,
            month,
            day.min(days_in_month(2027, month)),
            rng.below(24) as u32,
            rng.below(60) as u32,
            0,
        )
        .unwrap();
    let (status, c) = app
        .post(
            key,
            "/v1/test-clocks",
            &json!({ "frozen_time": start }),
            None,
        )
        .await;
    assert_eq!(status, 201, "{c}");
    let clock = c["id"].as_str().unwrap().to_owned();
    let account = format!("m{seed}");
    let (status, acc) = app
        .patch(
            key,
            &format!("/v1/accounts/{account}"),
            &json!({ "test_clock": clock }),
        )
        .await;
    assert_eq!(status, 201, "{acc}");
    let mut run = Run {
        app,
        key,
        account: account.clone(),
        clock,
        now: start,
        log: vec![format!("seed {seed}, clock at {start}")],
        event_no: 0,
    };

    let (plan, trial) = rng.pick(&[
        (Plan::Free, false),
        (Plan::Team, false),
        (Plan::Business, false),
        (Plan::BusinessAnnual, false),
        (Plan::Team, true),
        (Plan::Business, true),
    ]);
    let (min, max) = plan.bounds();
    let seats = min + rng.below(u64::from((max - min).min(12)) + 1) as u32;
    run.log
        .push(format!("subscribe {plan:?} {seats} trial={trial}"));
    let s = app
        .subscribe(
            key,
            &account,
            json!({"plan": plan.code(), "seats": seats, "trial": trial}),
        )
        .await;
    let mut m = Model::subscribe(plan, seats, trial, start);
    if dec(&s["amount_due_now"])
        != if trial {
            Decimal::ZERO
        } else {
            plan.recurring(seats)
        }
    {
        run.fail(&format!("subscribe charged {s}"));
    }

    let steps = 4 + rng.below(10);
    for _ in 0..steps {
        match rng.below(10) {
            0..=2 => {
                // Clock: an hour to ten weeks.
                let to = run.now + Duration::minutes(60 + rng.below(70 * 24 * 60) as i64);
                run.log.push(format!("advance to {to}"));
                run.advance(to).await;
                m.advance(to);
            }
            3 | 4 => {
                let (minutes, gb) = (rng.below(3000) as u32, rng.below(700) as u32);
                run.log
                    .push(format!("usage {minutes} min, {gb} GB at {}", run.now));
                run.send(None, minutes, gb).await;
                m.events
                    .push((run.now, Decimal::from(minutes), Decimal::from(gb)));
            }
            5 => {
                // Late usage for the last closed period (billed by the next close, or, once
                // canceled, by an invoice of its own at the next advance).
                let Some(last) = m.closed.last().cloned() else {
                    continue;
                };
                if m.status == Status::Trialing {
                    continue;
                }
                let ts = last.start + Duration::minutes(30);
                let (minutes, gb) = (rng.below(3000) as u32, rng.below(900) as u32);
                run.log
                    .push(format!("late usage {minutes} min, {gb} GB at {ts}"));
                run.send(Some(ts), minutes, gb).await;
                m.events
                    .push((ts, Decimal::from(minutes), Decimal::from(gb)));
            }
            6 | 7 => {
                let plan = rng.pick(&[
                    Plan::Free,
                    Plan::Team,
                    Plan::Business,
                    Plan::BusinessAnnual,
                    m.plan,
                    m.plan,
                ]);
                let (min, max) = plan.bounds();
                let seats = (min + rng.below(u64::from((max - min).min(14)) + 3) as u32)
                    .saturating_sub(1)
                    .max(1);
                run.log
                    .push(format!("quote {plan:?} {seats} seats at {}", run.now));
                let got = run
                    .quote_accept(json!({"plan": plan.code(), "seats": seats}))
                    .await;
                let want = m.change(Some((plan, seats)), false, run.now);
                if got.as_ref().map_err(String::as_str) != want.as_ref().map_err(|e| *e) {
                    run.fail(&format!("quote: accrue {got:?}, model {want:?}"));
                }
            }
            8 => {
                run.log.push(format!("cancel at {}", run.now));
                let got = run.quote_accept(json!({"cancel": true})).await;
                let want = m.change(None, true, run.now);
                if got.as_ref().map_err(String::as_str) != want.as_ref().map_err(|e| *e) {
                    run.fail(&format!("cancel: accrue {got:?}, model {want:?}"));
                }
            }
            _ => {
                let plan = rng.pick(&[Plan::Team, Plan::Business]);
                let seats = plan.bounds().0 + rng.below(4) as u32;
                run.log
                    .push(format!("trial of {plan:?} {seats} at {}", run.now));
                let got = run
                    .quote_accept(json!({"plan": plan.code(), "seats": seats, "trial": true}))
                    .await
                    .map(|_| ());
                let want = m.trial(plan, seats, run.now);
                if got.as_ref().map_err(String::as_str) != want.as_ref().map_err(|e| *e) {
                    run.fail(&format!("trial: accrue {got:?}, model {want:?}"));
                }
            }
        }
    }
    // Two more months: every late correction is billed by a close after it.
    let to = run.now + Duration::days(62);
    run.log.push(format!("advance to {to}"));
    run.advance(to).await;
    m.advance(to);
    check(&run, &m).await;
}

async fn check(run: &Run<'_>, m: &Model) {
    let (app, key, account) = (run.app, run.key, &run.account);
    let (status, list) = app
        .get(key, &format!("/v1/invoices?account={account}&limit=500"))
        .await;
    assert_eq!(status, 200, "{list}");
    let mut total = Decimal::ZERO;
    let mut periods = Vec::new();
    let mut minutes_billed: BTreeMap<String, Decimal> = BTreeMap::new();
    for i in list["data"].as_array().unwrap() {
        let (_, inv) = app.get(key, &format!("/v1/invoices/{}", i["number"])).await;
        let lines: Decimal = inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| dec(&l["amount"]))
            .sum();
        if lines != dec(&inv["total"]) {
            run.fail(&format!("invoice total is not the sum of its lines: {inv}"));
        }
        if dec(&inv["total"]) < Decimal::ZERO {
            run.fail(&format!("negative invoice: {inv}"));
        }
        total += dec(&inv["total"]);
        if inv["kind"] == "period" {
            periods.push(inv["period_start"].as_str().unwrap().to_owned());
        }
        for l in inv["lines"].as_array().unwrap() {
            if l["meter"] == "compute_minutes" {
                *minutes_billed
                    .entry(l["usage_from"].as_str().unwrap().to_owned())
                    .or_default() += dec(&l["quantity"]);
            }
        }
    }
    let mut unique = periods.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != periods.len() {
        run.fail(&format!("a period invoiced twice: {periods:?}"));
    }
    for c in &m.closed {
        let (minutes, _) = m.usage_known(c.start, c.end, m.billed_upto);
        let key = c.start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let billed = minutes_billed.get(&key).copied().unwrap_or_default();
        if billed != minutes {
            run.fail(&format!(
                "period {key}: {billed} compute minutes billed, {minutes} acknowledged"
            ));
        }
    }
    let (_, acc) = app.get(key, &format!("/v1/accounts/{account}")).await;
    // Credit carried forward raised invoice totals by what the balance still holds.
    let charged = total - dec(&acc["credit_balance"]);
    if charged != m.owed() {
        run.fail(&format!(
            "charged {charged} (invoices {total}, credit {}), the model says {}",
            acc["credit_balance"],
            m.owed()
        ));
    }
    let (_, moves) = app
        .get(
            key,
            &format!(
                "/v1/movements?from=2026-01-01T00:00:00Z&to=2031-01-01T00:00:00Z&account={account}&limit=1000"
            ),
        )
        .await;
    let mrr = moves["data"]
        .as_array()
        .unwrap()
        .last()
        .map_or(Decimal::ZERO, |mv| dec(&mv["mrr_after"]));
    // The ledger keeps MRR to nine decimals (a yearly plan's twelfth does not end) and shows
    // it in cents, rounded half away from zero.
    let cents = m
        .mrr()
        .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    if mrr != cents {
        run.fail(&format!(
            "MRR ledger at {mrr}, the model's {} ({:?} {:?} {} seats, last usage {}): {}",
            m.mrr(),
            m.status,
            m.plan,
            m.seats,
            m.last_usage,
            moves["data"]
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_bill_what_the_reference_model_bills() {
    let app = spawn_app().await;
    app.ctx.enable_test_clocks();
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let n: u64 = std::env::var("ACCRUE_MODEL_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let first: u64 = std::env::var("ACCRUE_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for seed in first..first + n {
        run_sequence(&app, &key, seed).await;
    }
    // Retention over everything the sequences did: GRR within [0, 1].
    let (status, body) = app
        .get(
            &key,
            "/v1/reports/nrr?from=2027-01-01T00:00:00Z&to=2029-06-01T00:00:00Z&by=month",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for w in body["windows"].as_array().unwrap() {
        if let Some(g) = w["grr"].as_str() {
            let g: Decimal = g.parse().unwrap();
            assert!(g >= Decimal::ZERO && g <= Decimal::ONE, "{w}");
        }
    }
}
