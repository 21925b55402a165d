//! The reference model with cards: random sequences collected through the fake Stripe on test
//! clocks, where the card declines and recovers. The model (its own, beside `model.rs`'s
//! plans, calendar and rounding) knows each invoice's amount, tries it when issued, retries a
//! declined one 3, 5 and 7 days after its first failure, moves the subscription to past due,
//! back to active when everything is paid, and suspends it when an invoice's retries are
//! exhausted: a suspended subscription is not billed, refuses changes, and when a payment
//! succeeds (a later invoice's retry, or a new card, which retries every failed invoice at
//! once) it restarts at that instant (the period it stopped in invoiced in arrears). Checked after each sequence: every charge Stripe made is one the model made, in
//! order; what accrue says is paid is what Stripe charged; the subscription's status; and the
//! amounts billed.
//!
//! `ACCRUE_MODEL_CARD_SEQUENCES` sets how many run (16 by default), `ACCRUE_MODEL_SEED` the
//! first seed. Late usage, yearly plans and trials started by quotes are `model.rs`'s.

use crate::fake_stripe::*;
use crate::helpers::*;
use crate::model::{dec, hour_of, months_after, prorated, Plan, Rng, Run};
use accrue::domain::dunning::DunningPolicy;
use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Trialing,
    Active,
    PastDue,
    Suspended,
    Canceled,
}

#[derive(Debug, Clone)]
struct Coll {
    amount: Decimal,
    first_failure: Option<DateTime<Utc>>,
    attempts: u32,
    next: Option<DateTime<Utc>>,
    paid: bool,
}

#[derive(Debug, Clone)]
struct Model {
    plan: Plan,
    seats: u32,
    status: Status,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    anchor: DateTime<Utc>,
    k: i64,
    /// A cancellation (None: nothing) or a decrease scheduled for the period end.
    scheduled: Option<Option<(Plan, u32)>>,
    card_good: bool,
    events: Vec<(DateTime<Utc>, Decimal, Decimal)>,
    /// Every invoice with something to collect, in issue order.
    colls: Vec<Coll>,
    /// Every invoice total, in issue order (those with nothing to collect too).
    issued: Vec<Decimal>,
    /// Recoveries from suspension that restarted the subscription.
    restarts: u32,
}

impl Model {
    fn usage_in(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Decimal {
        let mut minutes = Decimal::ZERO;
        let mut gb = Decimal::ZERO;
        for (t, m, g) in &self.events {
            if *t >= start && *t < end {
                minutes += m;
                gb = gb.max(*g);
            }
        }
        self.plan.usage(minutes, gb)
    }

    /// Issues an invoice of `total` at `at` and, when there is something to collect, tries it.
    fn issue(&mut self, total: Decimal, at: DateTime<Utc>) {
        self.issued.push(total);
        if total > Decimal::ZERO {
            self.colls.push(Coll {
                amount: total,
                first_failure: None,
                attempts: 0,
                next: Some(at),
                paid: false,
            });
        }
    }

    /// The collection attempts due at `at`, in invoice order.
    fn collect(&mut self, at: DateTime<Utc>) {
        for i in 0..self.colls.len() {
            let due = !self.colls[i].paid && self.colls[i].next.is_some_and(|n| n <= at);
            if due {
                self.attempt(i, at);
            }
        }
    }

    /// One attempt to collect invoice `i` at `at`.
    fn attempt(&mut self, i: usize, at: DateTime<Utc>) {
        self.colls[i].attempts += 1;
        if self.card_good {
            self.colls[i].paid = true;
            self.colls[i].next = None;
            let failing = self
                .colls
                .iter()
                .any(|c| !c.paid && c.first_failure.is_some());
            if matches!(self.status, Status::PastDue | Status::Suspended) && !failing {
                if self.status == Status::Suspended && at >= self.end {
                    self.restart(at);
                } else {
                    self.status = Status::Active;
                }
            }
            return;
        }
        // The next retry is the first of days 3, 5 and 7 after the first failure still
        // ahead; none left: the retries are exhausted.
        let first = *self.colls[i].first_failure.get_or_insert(at);
        let ahead = [3, 5, 7]
            .iter()
            .map(|d| first + Duration::days(*d))
            .find(|r| *r > at);
        if let Some(retry) = ahead {
            self.colls[i].next = Some(retry);
            if self.status == Status::Active {
                self.status = Status::PastDue;
            }
        } else {
            self.colls[i].next = None;
            if !matches!(self.status, Status::Canceled | Status::Suspended) {
                self.status = Status::Suspended;
                if self.scheduled != Some(None) {
                    self.scheduled = None;
                }
            }
        }
    }

    /// A new card: every invoice whose collection failed (retrying or exhausted) is tried at
    /// once, in order; a decline keeps its schedule.
    fn new_card(&mut self, good: bool, at: DateTime<Utc>) {
        self.card_good = good;
        let failed: Vec<usize> = (0..self.colls.len())
            .filter(|i| !self.colls[*i].paid && self.colls[*i].first_failure.is_some())
            .collect();
        for i in failed {
            self.attempt(i, at);
        }
        // Then whatever else is due (the invoices a recovery just issued).
        self.collect(at);
    }

    /// Recovery after the period ended while suspended: that period's usage in arrears, then
    /// a new period from the recovery's hour with its fees.
    fn restart(&mut self, at: DateTime<Utc>) {
        self.restarts += 1;
        let arrears = self.usage_in(self.start, self.end);
        self.status = Status::Active;
        if self.plan != Plan::Free {
            self.issue(arrears, at);
        }
        if self.scheduled.take() == Some(None) {
            // The cancellation scheduled before the suspension ends it.
            self.status = Status::Canceled;
            return;
        }
        let start = hour_of(at);
        self.anchor = start;
        self.k = 0;
        self.start = start;
        self.end = months_after(start, 1);
        let fees = self.plan.recurring(self.seats);
        if !fees.is_zero() {
            self.issue(fees, at);
        }
    }

    /// The next instant after `after` when something falls due: a period or trial end, a retry.
    fn next_due(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let period = matches!(
            self.status,
            Status::Trialing | Status::Active | Status::PastDue
        )
        .then_some(self.end);
        period
            .into_iter()
            .chain(self.colls.iter().filter(|c| !c.paid).filter_map(|c| c.next))
            .filter(|t| *t > after)
            .min()
    }

    /// Period ends and trial ends due by `at` (the catch-up), then collection.
    fn run_due(&mut self, at: DateTime<Utc>) {
        loop {
            match self.status {
                Status::Trialing if self.end <= at => {
                    let end = self.end;
                    match self.scheduled.take() {
                        Some(None) => {
                            self.status = Status::Canceled;
                            break;
                        }
                        Some(Some((p, s))) => {
                            self.plan = p;
                            self.seats = s;
                        }
                        None => {}
                    }
                    self.status = Status::Active;
                    self.anchor = end;
                    self.k = 0;
                    self.start = end;
                    self.end = months_after(end, 1);
                    let fees = self.plan.recurring(self.seats);
                    if !fees.is_zero() {
                        self.issue(fees, at);
                    }
                }
                Status::Active | Status::PastDue if self.end <= at => {
                    let arrears = self.usage_in(self.start, self.end);
                    let had_charges = self.plan != Plan::Free;
                    match self.scheduled.take() {
                        Some(None) => {
                            self.status = Status::Canceled;
                            if had_charges {
                                self.issue(arrears, at);
                            }
                            break;
                        }
                        Some(Some((p, s))) => {
                            self.plan = p;
                            self.seats = s;
                        }
                        None => {}
                    }
                    self.k += 1;
                    self.start = self.end;
                    self.end = months_after(self.anchor, self.k + 1);
                    let fees = self.plan.recurring(self.seats);
                    if had_charges || !fees.is_zero() {
                        self.issue(arrears + fees, at);
                    }
                }
                _ => break,
            }
        }
        self.collect(at);
    }

    fn advance(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) {
        let mut at = from;
        loop {
            let step = match self.next_due(at) {
                Some(t) if t < to => t,
                _ => to,
            };
            self.run_due(step);
            at = step;
            if step == to {
                return;
            }
        }
    }

    /// A quote for (plan, seats) or a cancellation at `now`: the refusal code, or the amount
    /// due now (collected at once when above zero).
    fn change(
        &mut self,
        to: Option<(Plan, u32)>,
        now: DateTime<Utc>,
    ) -> Result<Decimal, &'static str> {
        match self.status {
            Status::Canceled => return Err("subscription_canceled"),
            Status::Suspended => return Err("subscription_suspended"),
            _ => {}
        }
        let Some((plan, seats)) = to else {
            self.scheduled = Some(None);
            return Ok(Decimal::ZERO);
        };
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
        let decrease = new < old || (new == old && plan == self.plan && seats < self.seats);
        if decrease {
            if self.scheduled == Some(None) {
                return Err("cancellation_scheduled");
            }
            self.scheduled = Some(Some((plan, seats)));
            return Ok(Decimal::ZERO);
        }
        let credit = prorated(old, self.start, self.end, now);
        let charge = prorated(new, self.start, self.end, now);
        let due = if self.status == Status::Trialing {
            Decimal::ZERO
        } else {
            charge - credit
        };
        self.plan = plan;
        self.seats = seats;
        if matches!(self.scheduled, Some(Some(_))) {
            self.scheduled = None;
        }
        if self.status != Status::Trialing && !(credit.is_zero() && charge.is_zero()) {
            self.issue(due, now);
            self.collect(now);
        }
        Ok(due)
    }

    fn status_name(&self) -> &'static str {
        match self.status {
            Status::Trialing => "trialing",
            Status::Active => "active",
            Status::PastDue => "past_due",
            Status::Suspended => "suspended",
            Status::Canceled => "canceled",
        }
    }
}

impl Run<'_> {
    /// Waits until no invoice of the account waits for its first attempt (subscribing and
    /// accepting start that attempt in the background).
    async fn settled(&self) {
        for _ in 0..400 {
            let (_, list) = self
                .app
                .get(
                    self.key,
                    &format!("/v1/invoices?account={}&limit=500", self.account),
                )
                .await;
            let mut pending = false;
            for i in list["data"].as_array().unwrap() {
                let (_, inv) = self
                    .app
                    .get(self.key, &format!("/v1/invoices/{}", i["number"]))
                    .await;
                if inv["payment"]["state"] == "pending" {
                    pending = true;
                }
            }
            if !pending {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        self.fail("a first collection attempt never ran");
    }

    async fn card(&self, number: &str) {
        let pm = fake_stripe().card(number).await;
        let (status, set) = self
            .app
            .put(
                self.key,
                &format!("/v1/accounts/{}/payment-method", self.account),
                &json!({ "payment_method": pm }),
            )
            .await;
        if status != 200 {
            self.fail(&format!("payment method: {status} {set}"));
        }
    }
}

async fn run_sequence(app: &TestApp, key: &str, seed: u64) -> (bool, bool, bool) {
    let mut rng = Rng::new(seed);
    let month = 1 + rng.below(12) as u32;
    let day = rng
        .pick(&[1u32, 15, 28, 31])
        .min(crate::model::days_in_month(2027, month));
    let start = Utc
        .with_ymd_and_hms(
            2027,
            month,
            day,
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
    let account = format!("c{seed}");
    let mut body = account_body(&format!("{account}@example.com"));
    body["test_clock"] = c["id"].clone();
    let (status, acc) = app
        .patch(key, &format!("/v1/accounts/{account}"), &body)
        .await;
    assert_eq!(status, 201, "{acc}");
    let mut run = Run {
        app,
        key,
        account: account.clone(),
        clock: c["id"].as_str().unwrap().to_owned(),
        now: start,
        log: vec![format!("seed {seed}, clock at {start}")],
        event_no: 0,
    };
    let card_good = rng.below(2) == 0;
    run.card(if card_good { GOOD_CARD } else { DECLINING_CARD })
        .await;
    let (plan, trial) = rng.pick(&[
        (Plan::Team, false),
        (Plan::Business, false),
        (Plan::Team, true),
        (Plan::Free, false),
    ]);
    let (min, max) = plan.bounds();
    let seats = min + rng.below(u64::from((max - min).min(8)) + 1) as u32;
    run.log.push(format!(
        "card good={card_good}; subscribe {plan:?} {seats} trial={trial}"
    ));
    let anchor = hour_of(start);
    let mut m = Model {
        plan,
        seats,
        status: if trial {
            Status::Trialing
        } else {
            Status::Active
        },
        start: anchor,
        end: if trial {
            anchor + Duration::days(14)
        } else {
            months_after(anchor, 1)
        },
        anchor,
        k: 0,
        scheduled: None,
        card_good,
        events: Vec::new(),
        colls: Vec::new(),
        issued: Vec::new(),
        restarts: 0,
    };
    app.subscribe(
        key,
        &account,
        json!({"plan": plan.code(), "seats": seats, "trial": trial}),
    )
    .await;
    if !trial {
        let fees = plan.recurring(seats);
        if !fees.is_zero() {
            m.issue(fees, start);
            m.collect(start);
        }
    }
    run.settled().await;

    for _ in 0..(6 + rng.below(10)) {
        match rng.below(11) {
            0..=3 => {
                // A suspended account is often left so past its period's end (the recovery
                // then restarts it), so suspended ones advance further.
                let days = if m.status == Status::Suspended {
                    45
                } else {
                    20
                };
                let to = run.now + Duration::hours(1 + rng.below(days * 24) as i64);
                run.log.push(format!("advance to {to}"));
                let (status, body) = app
                    .post(
                        key,
                        &format!("/v1/test-clocks/{}/advance", run.clock),
                        &json!({ "frozen_time": to }),
                        None,
                    )
                    .await;
                if status != 200 {
                    run.fail(&format!("advance: {status} {body}"));
                }
                m.advance(run.now, to);
                run.now = to;
            }
            4 => {
                let (minutes, gb) = (rng.below(3000) as u32, rng.below(700) as u32);
                run.event_no += 1;
                run.log.push(format!("usage {minutes} min, {gb} GB"));
                let n = run.event_no;
                let (status, b) = app
                    .send(key, &json!({"events": [
                        {"id": format!("j{n}"), "account": account, "type": "job.completed", "properties": {"minutes": minutes}},
                        {"id": format!("s{n}"), "account": account, "type": "storage.snapshot", "properties": {"gb": gb}}]}))
                    .await;
                if status != 200 {
                    run.fail(&format!("events: {status} {b}"));
                }
                m.events
                    .push((run.now, Decimal::from(minutes), Decimal::from(gb)));
            }
            5 | 6 => {
                let good = rng.below(2) == 0;
                run.log.push(format!("card good={good}"));
                run.card(if good { GOOD_CARD } else { DECLINING_CARD })
                    .await;
                run.settled().await;
                m.new_card(good, run.now);
            }
            7..=9 => {
                let plan = rng.pick(&[Plan::Free, Plan::Team, Plan::Business, m.plan]);
                let (min, max) = plan.bounds();
                let seats = min + rng.below(u64::from((max - min).min(10)) + 1) as u32;
                run.log
                    .push(format!("quote {plan:?} {seats} at {}", run.now));
                let got = run
                    .quote_accept(json!({"plan": plan.code(), "seats": seats}))
                    .await;
                run.settled().await;
                let want = m.change(Some((plan, seats)), run.now);
                if got.as_ref().map_err(String::as_str) != want.as_ref().map_err(|e| *e) {
                    run.fail(&format!("quote: accrue {got:?}, model {want:?}"));
                }
            }
            _ => {
                run.log.push(format!("cancel at {}", run.now));
                let got = run.quote_accept(json!({"cancel": true})).await;
                run.settled().await;
                let want = m.change(None, run.now);
                if got.as_ref().map_err(String::as_str) != want.as_ref().map_err(|e| *e) {
                    run.fail(&format!("cancel: accrue {got:?}, model {want:?}"));
                }
            }
        }
    }
    check(&run, &m).await;
    (
        m.colls.iter().any(|c| c.first_failure.is_some()),
        m.status == Status::Suspended,
        m.restarts > 0,
    )
}

async fn check(run: &Run<'_>, m: &Model) {
    let (app, key, account) = (run.app, run.key, &run.account);
    let (_, d) = app
        .get(key, &format!("/v1/accounts/{account}/dunning"))
        .await;
    if d["status"] != m.status_name() {
        run.fail(&format!(
            "status {} where the model has {} ({:?})",
            d["status"],
            m.status_name(),
            m.colls
        ));
    }
    let (_, list) = app
        .get(key, &format!("/v1/invoices?account={account}&limit=500"))
        .await;
    let mut totals = Vec::new();
    let mut paid = Vec::new();
    for i in list["data"].as_array().unwrap() {
        let (_, inv) = app.get(key, &format!("/v1/invoices/{}", i["number"])).await;
        totals.push(dec(&inv["total"]));
        if inv["payment"]["state"] == "paid" {
            paid.push(dec(&inv["payment"]["amount_paid"]));
        }
    }
    if totals != m.issued {
        run.fail(&format!(
            "invoices {totals:?}, the model issued {:?}",
            m.issued
        ));
    }
    let model_paid: Vec<Decimal> = m
        .colls
        .iter()
        .filter(|c| c.paid)
        .map(|c| c.amount)
        .collect();
    if paid != model_paid {
        run.fail(&format!("paid {paid:?}, the model paid {model_paid:?}"));
    }
    // What Stripe charged successfully is what accrue says was paid, cent for cent.
    let (_, acc) = app.get(key, &format!("/v1/accounts/{account}")).await;
    let customer = acc["stripe_customer_id"].as_str().unwrap();
    let mut charged: Vec<Decimal> = fake_stripe()
        .charges_of(customer)
        .await
        .iter()
        .filter(|c| c["status"] == "succeeded")
        .map(|c| Decimal::new(c["amount"].as_i64().unwrap(), 2))
        .collect();
    let mut expected = model_paid.clone();
    charged.sort();
    expected.sort();
    if charged != expected {
        run.fail(&format!(
            "Stripe charged {charged:?}, the model paid {expected:?}"
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_with_failing_and_recovering_cards_bill_what_the_model_bills() {
    let app = spawn_stripe_app(DunningPolicy::default()).await;
    app.ctx.enable_test_clocks();
    app.publish_plans().await;
    let key = app.key("admin,ingest,billing,finance", None).await;
    let n: u64 = std::env::var("ACCRUE_MODEL_CARD_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let first: u64 = std::env::var("ACCRUE_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut seen = (0, 0, 0);
    for seed in first..first + n {
        let (failed, suspended, restarted) = run_sequence(&app, &key, seed).await;
        seen.0 += usize::from(failed);
        seen.1 += usize::from(suspended);
        seen.2 += usize::from(restarted);
    }
    eprintln!(
        "{n} sequences: {} with a declined payment, {} ending suspended, {} restarted after a suspension",
        seen.0, seen.1, seen.2
    );
    // The sequences do reach the cases they are for.
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "{seen:?}");
}
