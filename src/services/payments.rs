//! Collection and dunning: issued invoices are pushed to Stripe and paid; a declined payment
//! moves the subscription to `past_due` and is retried on the policy's schedule; success
//! returns it to `active` (a suspended one whose period ended restarts); exhausted retries
//! apply the final action (`suspend`: entitlements fall to the plan's fallback; `cancel`).
//! An invoice Stripe refuses for good (400, 404) stops as `refused`, unless its payment had
//! already failed: then the refusal is that retry failing. A new payment method
//! tries every failed, exhausted or refused invoice at once. Every step is recorded in
//! `dunning_steps`.
//!
//! One invoice is collected under a session advisory lock of its own (other instances skip
//! it), never inside an open transaction: each Stripe answer is recorded in a short
//! transaction that re-reads the row. Stripe calls carry idempotency keys and a pushed
//! invoice is only ever re-read by its id, so a crash anywhere in between is resumed by the
//! next sweep without a second charge or a second Stripe invoice.

use super::TxError;
use super::{revenue, Ctx, ServiceError};
use crate::domain::dunning::{DunningPolicy, FinalAction, NextStep};
use crate::domain::money::Currency;
use crate::domain::plan::PlanRef;
use crate::payments::{
    from_minor_units, minor_units, PushInvoice, PushLine, Rail, RailError, RemoteInvoice,
    SimulatedRail, StripeConfig, StripeRail,
};
use crate::store::locks::SessionLock;
use crate::store::payments::{self as pay_store, PaymentRow, StepRow};
use crate::store::subscriptions::change;
use crate::store::{self, subscriptions as subs, StoreError};
use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

/// The payment rail and the dunning policy; absent when no Stripe key is configured.
#[derive(Debug, Clone)]
pub struct Payments {
    rail: Rail,
    pub policy: DunningPolicy,
    /// Where Stripe calls are counted (the instance's metrics once `Ctx::with_payments` takes it).
    pub(crate) metrics: std::sync::Arc<crate::telemetry::Metrics>,
}

impl Payments {
    /// Connects the rail, namespacing idempotency keys with this installation's id.
    pub async fn connect(
        pool: &store::Pool,
        config: &StripeConfig,
        policy: DunningPolicy,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        let mut fresh = [0u8; 8];
        getrandom::fill(&mut fresh).map_err(|e| e.to_string())?;
        let id = pay_store::installation_id(&mut conn, &hex::encode(fresh), now)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            rail: Rail::Stripe(Box::new(StripeRail::new(config, &id)?)),
            policy,
            metrics: Default::default(),
        })
    }

    /// The demo's simulated card network (never used with real money).
    pub fn simulated(policy: DunningPolicy) -> Self {
        Self {
            rail: Rail::Simulated(std::sync::Arc::new(SimulatedRail::default())),
            policy,
            metrics: Default::default(),
        }
    }

    /// Counts a call to the rail by operation and outcome, and hands its result on.
    fn counted<T>(&self, op: &'static str, r: Result<T, RailError>) -> Result<T, RailError> {
        let outcome = match &r {
            Ok(_) => "ok",
            Err(RailError::Declined(_)) => "declined",
            Err(RailError::Refused { .. }) => "refused",
            Err(RailError::Unavailable(_)) => "unavailable",
        };
        self.metrics.record(|| {
            metrics::counter!("accrue_stripe_calls_total", "op" => op, "outcome" => outcome)
                .increment(1)
        });
        r
    }

    pub fn installation(&self) -> &str {
        self.rail.installation()
    }

    pub fn webhook_secret(&self) -> Option<&str> {
        self.rail.webhook_secret()
    }

    pub async fn create_customer(
        &self,
        account: &str,
        email: Option<&str>,
        name: Option<&str>,
    ) -> Result<String, RailError> {
        let r = self.rail.create_customer(account, email, name).await;
        self.counted("create_customer", r)
    }

    pub async fn set_payment_method(&self, customer: &str, pm: &str) -> Result<(), RailError> {
        let r = self.rail.set_payment_method(customer, pm).await;
        self.counted("set_payment_method", r)
    }

    pub async fn push(&self, inv: &PushInvoice<'_>) -> Result<RemoteInvoice, RailError> {
        let r = self.rail.push(inv).await;
        self.counted("push", r)
    }

    pub async fn pay(
        &self,
        id: &str,
        number: i64,
        attempt: i32,
    ) -> Result<RemoteInvoice, RailError> {
        let r = self.rail.pay(id, number, attempt).await;
        self.counted("pay", r)
    }

    pub async fn retrieve(&self, id: &str) -> Result<RemoteInvoice, RailError> {
        let r = self.rail.retrieve(id).await;
        self.counted("retrieve", r)
    }

    pub async fn customer_metadata(
        &self,
        id: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>, RailError> {
        let r = self.rail.customer_metadata(id).await;
        self.counted("customer_metadata", r)
    }
}

/// A fault injected by `ACCRUE_FAILPOINT` (crash tests): the process aborts at that point.
fn failpoint(name: &str) {
    if std::env::var("ACCRUE_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Records a dunning step and its outbound event, in the caller's transaction.
async fn record_step(
    c: &mut AsyncPgConnection,
    account: &str,
    number: i64,
    at: DateTime<Utc>,
    step: &str,
    attempt: i32,
    reason: &str,
) -> Result<i64, StoreError> {
    let id = pay_store::insert_step(c, account, number, at, step, attempt, reason).await?;
    let ev = super::outbox::event(
        account,
        "dunning.step",
        json!({"account": account, "invoice": number, "step": step, "attempt": attempt,
               "reason": reason, "at": crate::domain::ts::format(&at)}),
        at,
    );
    store::outbox::insert_events(c, &[ev]).await?;
    Ok(id)
}

/// What one collection sweep did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CollectReport {
    pub paid: usize,
    pub failed: usize,
    pub deferred: usize,
    /// Invoices Stripe refused (collection stopped until the payment details change).
    pub refused: usize,
    /// Invoices whose attempt failed on our side (logged; retried at the next sweep).
    pub errors: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Paid,
    Failed,
    /// Stripe unreachable or the row was someone else's: tried again later.
    Deferred,
    /// Stripe refused the invoice: collection stopped, recorded as a dunning step.
    Refused,
    Skipped,
}

/// How long a collection waits after Stripe was unavailable.
const UNAVAILABLE_BACKOFF_MINUTES: i64 = 10;

/// Collects every invoice whose collection (first attempt or retry) is due.
pub async fn collect_due(ctx: &Ctx) -> Result<CollectReport, ServiceError> {
    let mut report = CollectReport::default();
    let Some(p) = ctx.payments.clone() else {
        return Ok(report);
    };
    loop {
        let now = ctx.clock.now();
        let due = {
            let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
            pay_store::due(&mut conn, now, 200).await?
        };
        let mut progressed = false;
        for (account, number) in &due {
            // One invoice that cannot be collected never stops the others.
            match collect_one(
                ctx,
                &p,
                account,
                *number,
                When::Due,
                &mut Default::default(),
            )
            .await
            {
                Ok(outcome) => {
                    progressed |= outcome != Outcome::Skipped;
                    tally(&mut report, outcome);
                }
                Err(e) => {
                    tracing::error!(account, invoice = number, error = %e, "collection failed");
                    report.errors += 1;
                }
            }
        }
        if due.len() < 200 || !progressed {
            return Ok(report);
        }
    }
}

/// Collects an account's due invoices now (after a subscription or change issued one).
pub async fn collect_account(ctx: &Ctx, account: &str) -> Result<CollectReport, ServiceError> {
    let mut report = CollectReport::default();
    let Some(p) = ctx.payments.clone() else {
        return Ok(report);
    };
    let due = {
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        let now = ctx.now_for(&mut conn, account).await?;
        pay_store::due_by_account(&mut conn, account, now).await?
    };
    for number in due {
        let outcome =
            collect_one(ctx, &p, account, number, When::Due, &mut Default::default()).await?;
        tally(&mut report, outcome);
    }
    Ok(report)
}

/// Tries the account's failed, exhausted and refused invoices at once, oldest first, after it got a new
/// payment method, then collects whatever else is due: a payment recovers the account as a
/// scheduled retry would (a suspended subscription restarts); a decline leaves the dunning
/// schedule as it was.
pub async fn retry_with_new_payment_method(
    ctx: &Ctx,
    account: &str,
) -> Result<CollectReport, ServiceError> {
    let mut report = CollectReport::default();
    let Some(p) = ctx.payments.clone() else {
        return Ok(report);
    };
    let unpaid = {
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        pay_store::failed_by_account(&mut conn, account).await?
    };
    // One wait shared by all of them: an account with several invoices held by attempts in
    // flight is answered within it, not after it once per invoice. Each invoice still waits
    // a little once it is spent, for a webhook's transaction of a few milliseconds.
    let mut budget = NEW_CARD_WAIT;
    for number in unpaid {
        let allowed = budget.max(NEW_CARD_WAIT_EACH);
        let mut wait = allowed;
        let outcome =
            collect_one(ctx, &p, account, number, When::NewPaymentMethod, &mut wait).await?;
        budget = budget.saturating_sub(allowed - wait);
        tally(&mut report, outcome);
    }
    // Then whatever else is due, such as the invoices a recovery just issued.
    let due = collect_account(ctx, account).await?;
    report.paid += due.paid;
    report.failed += due.failed;
    report.deferred += due.deferred;
    report.refused += due.refused;
    Ok(report)
}

/// Starts [`collect_account`] in the background, logging what fails (the sweep retries it).
pub fn spawn_collect_account(ctx: &Ctx, account: &str) {
    if ctx.payments.is_none() {
        return;
    }
    let ctx = ctx.clone();
    let account = account.to_owned();
    tokio::spawn(async move {
        if let Err(e) = collect_account(&ctx, &account).await {
            tracing::warn!(account, error = %e, "collection failed; the sweep will retry");
        }
    });
}

fn tally(report: &mut CollectReport, outcome: Outcome) {
    match outcome {
        Outcome::Paid => report.paid += 1,
        Outcome::Failed => report.failed += 1,
        Outcome::Deferred => report.deferred += 1,
        Outcome::Refused => report.refused += 1,
        Outcome::Skipped => {}
    }
}

/// Collections running at once in this instance: each holds a connection while it waits on
/// Stripe (or, for a new card's attempts, up to [`NEW_CARD_WAIT`] for invoices' locks), so a
/// slow Stripe can never take more than these from the pool.
static COLLECTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// How long a new card's attempts wait, all together, for invoices someone else is
/// collecting or recording (a webhook's transaction lasts milliseconds)...
const NEW_CARD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// ...and how long each may wait once that is spent.
const NEW_CARD_WAIT_EACH: std::time::Duration = std::time::Duration::from_millis(200);

/// Collects one invoice. If someone else holds it, waits at most `wait` for them (less the
/// time waited, on return). No Stripe call runs inside a database transaction (a slow Stripe
/// must not hold row locks or a transaction open): the collection is claimed with a session
/// advisory lock on a pooled connection, released when the attempt ends; if the attempt is
/// cancelled or fails, the connection is closed instead of going back to the pool, which ends
/// the claim too (as the process dying does). Each Stripe answer is recorded in a short
/// transaction that re-reads the row under its lock.
async fn collect_one(
    ctx: &Ctx,
    p: &Payments,
    account: &str,
    number: i64,
    when: When,
    wait: &mut std::time::Duration,
) -> Result<Outcome, ServiceError> {
    let Ok(_turn) = COLLECTING.acquire().await else {
        return Ok(Outcome::Skipped);
    };
    let conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let key = pay_store::collection_lock_key(account, number);
    // A due collection skips an invoice someone else holds (`wait` zero): the row stays due,
    // so the next sweep comes back to it. A new card's attempt comes once, so it waits a
    // little for the holder, such as a webhook recording the last retry's failure (a
    // transaction of a few milliseconds); an attempt still in flight after that is
    // collecting the invoice already.
    let asked = std::time::Instant::now();
    let taken = SessionLock::take_within(conn, key, *wait).await;
    *wait = wait.saturating_sub(asked.elapsed());
    let Some(mut claim) = taken? else {
        return Ok(Outcome::Skipped);
    };
    let _writing = ctx.checks.write_guard(account);
    let outcome = attempt(ctx, p, claim.conn(), account, number, when).await?;
    claim.release().await?;
    Ok(outcome)
}

/// When an attempt runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// The invoice's first attempt or a scheduled retry, when it falls due.
    Due,
    /// At once, on a failed or exhausted invoice, because the account has a new payment
    /// method (after whoever holds the invoice's lock, waited for within [`NEW_CARD_WAIT`]
    /// for all the account's invoices, or [`NEW_CARD_WAIT_EACH`]): a failure keeps the
    /// dunning schedule as it was.
    NewPaymentMethod,
}

/// One collection attempt, under the collection claim: push the invoice (or re-read the one
/// an earlier attempt pushed), then pay it unless Stripe already shows it paid.
async fn attempt(
    ctx: &Ctx,
    p: &Payments,
    c: &mut AsyncPgConnection,
    account: &str,
    number: i64,
    when: When,
) -> Result<Outcome, TxError> {
    let now = ctx.now_for(c, account).await?;
    let Some(row) = pay_store::find(c, account, number).await? else {
        return Ok(Outcome::Skipped);
    };
    let attempts_seen = row.attempts;
    let due = match when {
        When::Due => {
            matches!(row.state.as_str(), "pending" | "failed")
                && row.next_attempt_at.is_some_and(|t| t <= now)
        }
        When::NewPaymentMethod => {
            matches!(row.state.as_str(), "failed" | "exhausted" | "refused")
        }
    };
    if !due {
        return Ok(Outcome::Skipped);
    }
    let (inv, lines) = store::invoices::find_by_account_and_number(c, account, number)
        .await?
        .ok_or_else(|| {
            TxError::Refused(ServiceError::NotFound(format!(
                "invoice {number} not found"
            )))
        })?;
    let currency = Currency::from_code(&inv.currency).ok_or_else(|| {
        TxError::Refused(ServiceError::invalid(
            "unknown_currency",
            format!("invoice {} has an unknown currency", inv.currency),
        ))
    })?;
    // Stripe forgets idempotency keys after 24 hours: once pushed, an invoice is only ever
    // re-read by its id, so a retry days later can never create a second Stripe invoice.
    let remote = match &row.stripe_invoice_id {
        Some(id) => p.retrieve(id).await.map_err(PushError::Rail),
        None => {
            async {
                let customer = customer_for(p, c, account).await?;
                failpoint("before_stripe_push");
                let push = PushInvoice {
                    account,
                    number,
                    customer: &customer,
                    currency,
                    lines: lines
                        .iter()
                        .map(|l| PushLine {
                            line_no: l.line_no,
                            amount: l.amount,
                            description: l.description.clone(),
                        })
                        .collect(),
                };
                let remote = p.push(&push).await?;
                pay_store::set_stripe_invoice(c, account, number, &remote.id).await?;
                failpoint("after_stripe_push");
                Ok(remote)
            }
            .await
        }
    };
    let answer = match remote {
        Err(PushError::Store(e)) => return Err(e.into()),
        // Final only when retrying cannot help: an amount Stripe cannot take (status 0, our
        // own check), a request it calls invalid (400) or a customer or invoice it does not
        // have (404). A 401 or 403 (the key rotated, a permission missing) is the operator's
        // to fix and must not stop every collection: deferred like an outage.
        Err(PushError::Rail(RailError::Refused {
            status: 0 | 400 | 404,
            message,
        })) => Answer::Refused(message),
        Err(PushError::Rail(e)) => Answer::Unavailable(e),
        Ok(remote) if remote.status == "paid" => Answer::Paid(row.attempts, remote),
        Ok(remote) => {
            let attempt = row.attempts + 1;
            match p.pay(&remote.id, number, attempt).await {
                Ok(paid) if paid.status == "paid" => {
                    failpoint("after_stripe_pay");
                    Answer::Paid(attempt, paid)
                }
                Ok(other) => Answer::Failed(
                    attempt,
                    format!("the payment left the invoice {}", other.status),
                ),
                Err(RailError::Declined(reason))
                | Err(RailError::Refused {
                    message: reason, ..
                }) => Answer::Failed(attempt, reason),
                Err(e @ RailError::Unavailable(_)) => Answer::Unavailable(e),
            }
        }
    };
    let outcome = c
        .transaction::<Outcome, TxError, _>(async |c| {
            // Re-read under the row lock: if the row moved on meanwhile (a webhook recorded
            // the payment, another attempt was counted), there is nothing left to record.
            let Some(mut row) = pay_store::lock(c, account, number).await? else {
                return Ok(Outcome::Skipped);
            };
            // (A webhook about this invoice defers to this attempt: see [`webhook`].)
            if row.state == "paid" || row.attempts != attempts_seen {
                return Ok(Outcome::Skipped);
            }
            match answer {
                Answer::Unavailable(e) => {
                    defer(c, &mut row, &e, now).await?;
                    Ok(Outcome::Deferred)
                }
                Answer::Paid(attempt, paid) => {
                    row.attempts = attempt;
                    row.stripe_invoice_id = Some(paid.id.clone());
                    record_paid(ctx, c, &mut row, &paid, currency, now, "paid").await?;
                    Ok(Outcome::Paid)
                }
                Answer::Failed(attempt, reason) => {
                    row.attempts = attempt;
                    record_failure(ctx, p, c, &mut row, &reason, now).await?;
                    Ok(Outcome::Failed)
                }
                // An invoice whose payment already failed stays on the dunning schedule: a
                // refusal counts as that attempt failing (retried on the retry days, the final
                // action when they run out), or a past-due account would keep its access
                // forever.
                Answer::Refused(reason) if row.first_failure_at.is_some() => {
                    row.attempts += 1;
                    let reason = format!("Stripe refused the invoice: {reason}");
                    record_failure(ctx, p, c, &mut row, &reason, now).await?;
                    Ok(Outcome::Failed)
                }
                Answer::Refused(reason) => {
                    tracing::error!(
                        account,
                        invoice = number,
                        reason,
                        "Stripe refused the invoice; its collection stops until the account's \
                         payment details change"
                    );
                    row.state = "refused".into();
                    row.next_attempt_at = None;
                    row.last_error = Some(format!("Stripe refused the invoice: {reason}"));
                    row.updated_at = now;
                    pay_store::save(c, &row).await?;
                    record_step(
                        c,
                        account,
                        number,
                        now,
                        "collection_refused",
                        row.attempts,
                        &reason,
                    )
                    .await?;
                    Ok(Outcome::Refused)
                }
            }
        })
        .await?;
    Ok(outcome)
}

/// What Stripe said to one collection attempt.
enum Answer {
    /// Unreachable, slow or rate limited: try again later, no dunning attempt counted.
    Unavailable(RailError),
    /// Paid (by this attempt, whose number is given, or before it).
    Paid(i32, RemoteInvoice),
    /// Declined or refused at attempt n, for this reason.
    Failed(i32, String),
    /// Stripe refused the invoice itself (a 400 or 404 on the push or the re-read): retrying
    /// cannot help. A first collection stops as `refused` (not the customer's payment
    /// failing); a retry of an invoice whose payment already failed counts as that retry
    /// failing (dunning goes on). 401/403 are never this: they defer, like an outage.
    Refused(String),
}

enum PushError {
    Store(StoreError),
    Rail(RailError),
}

impl From<StoreError> for PushError {
    fn from(e: StoreError) -> Self {
        PushError::Store(e)
    }
}

impl From<RailError> for PushError {
    fn from(e: RailError) -> Self {
        PushError::Rail(e)
    }
}

/// The account's Stripe customer, created (idempotently) and remembered on first use.
async fn customer_for(
    p: &Payments,
    c: &mut AsyncPgConnection,
    account: &str,
) -> Result<String, PushError> {
    if let Some(id) = pay_store::customer_of(c, account).await? {
        return Ok(id);
    }
    let acc = store::accounts::find_by_account(c, account).await?;
    let id = p
        .create_customer(
            account,
            acc.as_ref().and_then(|a| a.email.as_deref()),
            acc.as_ref().and_then(|a| a.name.as_deref()),
        )
        .await?;
    pay_store::set_customer(c, account, &id).await?;
    Ok(id)
}

/// Stripe could not be reached: try again later, without counting a dunning attempt.
async fn defer(
    c: &mut AsyncPgConnection,
    row: &mut PaymentRow,
    e: &RailError,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    tracing::warn!(account = %row.account, invoice = row.number, error = %e, "collection deferred");
    row.last_error = Some(e.to_string());
    row.next_attempt_at = Some(now + Duration::minutes(UNAVAILABLE_BACKOFF_MINUTES));
    row.updated_at = now;
    pay_store::save(c, row).await?;
    Ok(())
}

async fn record_paid(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    row: &mut PaymentRow,
    remote: &RemoteInvoice,
    currency: Currency,
    now: DateTime<Utc>,
    how: &str,
) -> Result<(), TxError> {
    let recovered = row.first_failure_at.is_some();
    row.state = "paid".into();
    row.amount_paid = from_minor_units(remote.amount_paid, currency);
    row.paid_at = Some(now);
    row.next_attempt_at = None;
    row.last_error = None;
    row.updated_at = now;
    pay_store::save(c, row).await?;
    pay_store::set_invoice_status(c, &row.account, row.number, "paid").await?;
    let step_id = if recovered {
        Some(
            record_step(
                c,
                &row.account,
                row.number,
                now,
                "recovered",
                row.attempts,
                &format!("{how} on attempt {}", row.attempts),
            )
            .await?,
        )
    } else {
        None
    };
    // Paid up: a past-due or suspended subscription is active again once nothing else is
    // being chased.
    if let Some(mut sub) = subs::lock_by_account(c, &row.account).await? {
        if matches!(sub.status.as_str(), "past_due" | "suspended")
            && pay_store::count_failed_by_account(c, &row.account, row.number).await? == 0
        {
            let was_suspended = sub.status == "suspended";
            sub.status = "active".into();
            sub.past_due_since = None;
            sub.updated_at = now;
            if was_suspended && now >= sub.period_end {
                reanchor_after_suspension(ctx, c, &mut sub, now).await?;
            }
            subs::save(c, &sub).await?;
            let change_id = record_change(ctx, c, &sub, "payment_recovered", now).await?;
            if was_suspended {
                // Recovered onto its plan, or (a cancellation was scheduled) ended.
                let ended = sub.status == "canceled";
                revenue::record(
                    ctx,
                    c,
                    &[revenue::MrrInput {
                        account: row.account.clone(),
                        at: now,
                        cause: if ended {
                            revenue::Cause::Cancellation
                        } else {
                            revenue::Cause::Recovered
                        },
                        plan: (!ended).then(|| {
                            (
                                PlanRef {
                                    plan: sub.plan.clone(),
                                    version: sub.plan_version as u32,
                                },
                                sub.seats as u32,
                            )
                        }),
                        usage: None,
                        reference: match step_id {
                            Some(id) => ("dunning_step", id),
                            None => ("subscription_change", change_id),
                        },
                    }],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Ends the period of a subscription canceled by dunning at the start of `now`'s hour: the
/// usage of the part that ran is invoiced in arrears (with the minimum in proportion).
async fn cancel_mid_period(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    sub: &mut subs::SubscriptionRow,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    use crate::domain::period::{anchor_at, Period};
    let Some(plan) = ctx
        .plans()
        .get(&PlanRef {
            plan: sub.plan.clone(),
            version: sub.plan_version as u32,
        })
        .cloned()
    else {
        return Ok(());
    };
    let full = Period {
        start: sub.period_start,
        end: sub.period_end,
    };
    let ended = Period {
        start: sub.period_start,
        end: anchor_at(now).clamp(sub.period_start, sub.period_end),
    };
    if ended.end > ended.start {
        let drafts: Vec<_> = super::billing::partial_period_invoice(
            ctx,
            c,
            &sub.account,
            ended,
            &full,
            &plan,
            sub.seats as u32,
            now,
        )
        .await?
        .into_iter()
        .collect();
        super::billing::issue(ctx, c, &drafts).await?;
    }
    sub.period_end = ended.end;
    Ok(())
}

/// A subscription recovered after its period ended while suspended: that period's usage is
/// invoiced in arrears, the periods spent suspended are not billed, and a new period starts
/// at the recovery with its advance fees (a scheduled cancellation ends it instead).
async fn reanchor_after_suspension(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    sub: &mut subs::SubscriptionRow,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    use crate::domain::period::{anchor_at, boundary, Period};
    let plan = ctx
        .plans()
        .get(&PlanRef {
            plan: sub.plan.clone(),
            version: sub.plan_version as u32,
        })
        .cloned()
        .ok_or_else(|| {
            TxError::Refused(ServiceError::invalid(
                "plan_not_available",
                format!(
                    "{}@{} is not in this server's catalogue",
                    sub.plan, sub.plan_version
                ),
            ))
        })?;
    let seats = sub.seats as u32;
    let closed = Period {
        start: sub.period_start,
        end: sub.period_end,
    };
    let mut drafts: Vec<_> = super::billing::period_invoice(
        ctx,
        c,
        &sub.account,
        closed,
        &plan,
        seats,
        None,
        now,
        &super::billing::Prefetched::default(),
        &[],
    )
    .await?
    .into_iter()
    .collect();
    let cancel = sub
        .scheduled
        .take()
        .and_then(|v| serde_json::from_value::<super::lifecycle::Scheduled>(v).ok())
        .is_some_and(|s| s.cancel);
    sub.revision += 1;
    if cancel {
        sub.status = "canceled".into();
    } else {
        let start = anchor_at(now);
        let next = Period {
            start,
            end: boundary(start, plan.interval.months(), 1),
        };
        sub.anchor = start;
        sub.period_start = next.start;
        sub.period_end = next.end;
        drafts.extend(super::billing::start_invoice(
            &sub.account,
            &plan,
            seats,
            next,
            now,
        ));
    }
    super::billing::issue(ctx, c, &drafts).await?;
    Ok(())
}

async fn record_failure(
    ctx: &Ctx,
    p: &Payments,
    c: &mut AsyncPgConnection,
    row: &mut PaymentRow,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    let first = *row.first_failure_at.get_or_insert(now);
    let step = if row.attempts <= 1 || first == now {
        "payment_failed"
    } else {
        "retry_failed"
    };
    record_step(c, &row.account, row.number, now, step, row.attempts, reason).await?;
    row.last_error = Some(reason.to_owned());
    row.updated_at = now;
    let mut sub = subs::lock_by_account(c, &row.account).await?;
    match p.policy.next_step(first, now) {
        NextStep::Retry { at } => {
            row.state = "failed".into();
            row.next_attempt_at = Some(at);
            record_step(
                c,
                &row.account,
                row.number,
                now,
                "retry_scheduled",
                row.attempts,
                &format!(
                    "attempt {} at {}",
                    row.attempts + 1,
                    crate::domain::ts::format(&at)
                ),
            )
            .await?;
            if let Some(s) = sub.as_mut() {
                if matches!(s.status.as_str(), "active" | "trialing") {
                    s.status = "past_due".into();
                    s.past_due_since = Some(first);
                    s.updated_at = now;
                    subs::save(c, s).await?;
                    record_change(ctx, c, s, "past_due", now).await?;
                }
            }
        }
        NextStep::Final { action } => {
            row.state = "exhausted".into();
            row.next_attempt_at = None;
            if let Some(s) = sub.as_mut() {
                if !matches!(s.status.as_str(), "canceled" | "suspended") {
                    let (status, step) = match action {
                        FinalAction::Suspend => ("suspended", "suspended"),
                        FinalAction::Cancel => ("canceled", "canceled"),
                    };
                    let was_running = matches!(s.status.as_str(), "active" | "past_due");
                    s.status = status.into();
                    s.past_due_since.get_or_insert(first);
                    // A scheduled cancellation survives (a recovery then ends the subscription
                    // instead of starting a new period); any other scheduled change is dropped.
                    let cancel_scheduled = s
                        .scheduled
                        .clone()
                        .and_then(|v| serde_json::from_value::<super::lifecycle::Scheduled>(v).ok())
                        .is_some_and(|x| x.cancel);
                    if !cancel_scheduled || action == FinalAction::Cancel {
                        s.scheduled = None;
                    }
                    s.revision += 1;
                    s.updated_at = now;
                    if action == FinalAction::Cancel && was_running {
                        // Canceled mid-period: the usage so far is billed in arrears.
                        cancel_mid_period(ctx, c, s, now).await?;
                    }
                    subs::save(c, s).await?;
                    record_change(ctx, c, s, step, now).await?;
                    let why = match (action, fallback_of(ctx, &s.plan, s.plan_version)) {
                        (FinalAction::Suspend, Some(fb)) => format!(
                            "every retry failed: entitlements fall to the fallback plan `{fb}`"
                        ),
                        (FinalAction::Suspend, None) => {
                            "every retry failed: access suspended (the plan has no fallback)"
                                .to_owned()
                        }
                        (FinalAction::Cancel, _) => {
                            "every retry failed: the subscription is canceled".to_owned()
                        }
                    };
                    let step_id =
                        record_step(c, &row.account, row.number, now, step, row.attempts, &why)
                            .await?;
                    let plans = ctx.plans();
                    let plan = match action {
                        FinalAction::Suspend => fallback_of(ctx, &s.plan, s.plan_version)
                            .and_then(|fb| plans.latest(&fb))
                            .map(|fb| (fb.plan_ref(), fb.seats.as_ref().map_or(0, |x| x.min))),
                        FinalAction::Cancel => None,
                    };
                    revenue::record(
                        ctx,
                        c,
                        &[revenue::MrrInput {
                            account: row.account.clone(),
                            at: now,
                            cause: match action {
                                FinalAction::Suspend => revenue::Cause::DunningSuspension,
                                FinalAction::Cancel => revenue::Cause::Cancellation,
                            },
                            plan,
                            usage: Some(Decimal::ZERO),
                            reference: ("dunning_step", step_id),
                        }],
                    )
                    .await?;
                }
            }
        }
    }
    pay_store::save(c, row).await?;
    Ok(())
}

async fn record_change(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    s: &subs::SubscriptionRow,
    kind: &str,
    now: DateTime<Utc>,
) -> Result<i64, TxError> {
    let currency = ctx
        .plans()
        .get(&crate::domain::plan::PlanRef {
            plan: s.plan.clone(),
            version: s.plan_version as u32,
        })
        .map(|p| p.currency.code())
        .unwrap_or("USD");
    let ch = change(s, kind, now, None, json!([]), Decimal::ZERO, currency);
    Ok(subs::insert_change(c, &ch).await?)
}

/// The plan whose entitlements a suspended (or past grace) subscription of `plan@version`
/// gets: its own version's fallback (a later version publishing another one does not change
/// what existing subscribers fall to).
pub fn fallback_of(ctx: &Ctx, plan: &str, version: i32) -> Option<String> {
    ctx.plans()
        .get(&PlanRef {
            plan: plan.to_owned(),
            version: version as u32,
        })
        .and_then(|v| v.fallback.clone())
}

// ---------------------------------------------------------------------------------------------
// Customers and payment methods

/// Checks that Stripe customer `customer` may be linked to `account`: it exists and its
/// metadata names this account (`accrue_account`) and no other installation
/// (`accrue_installation`), as the customers accrue creates do. Nothing is written: the caller
/// stores the link.
pub async fn verify_customer(ctx: &Ctx, account: &str, customer: &str) -> Result<(), ServiceError> {
    let p = ctx.payments.as_ref().ok_or_else(not_configured)?;
    if !customer.starts_with("cus_") || customer.len() > 255 {
        return Err(ServiceError::invalid(
            "invalid_customer",
            "stripe_customer_id must be a Stripe customer id (cus_...)",
        ));
    }
    let metadata = p
        .customer_metadata(customer)
        .await
        .map_err(rail_error)?
        .ok_or_else(|| {
            ServiceError::invalid(
                "unknown_customer",
                format!("stripe_customer_id: Stripe has no customer `{customer}`"),
            )
        })?;
    let owner = metadata.get("accrue_account").map(String::as_str);
    let installation = metadata.get("accrue_installation").map(String::as_str);
    if owner != Some(account) || installation.is_some_and(|i| i != p.installation()) {
        return Err(ServiceError::invalid(
            "customer_mismatch",
            format!(
                "stripe_customer_id: Stripe customer `{customer}` is not account `{account}`'s \
                 (its metadata must say accrue_account = \"{account}\")"
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentMethodSet {
    pub account: String,
    pub customer: String,
    pub payment_method: String,
    /// The failed and exhausted invoices tried at once with the new payment method.
    pub retried: CollectReport,
}

/// Links the account to its Stripe customer (created when missing) and makes `pm` (created
/// client-side with Stripe.js) the default for its invoices.
pub async fn set_payment_method(
    ctx: &Ctx,
    account: &str,
    pm: &str,
) -> Result<PaymentMethodSet, ServiceError> {
    let p = ctx.payments.as_ref().ok_or_else(not_configured)?;
    if !pm.starts_with("pm_") || pm.len() > 255 {
        return Err(ServiceError::invalid_field(
            "invalid_payment_method",
            "payment_method",
            "payment_method must be a Stripe payment method id (pm_...)",
        ));
    }
    // No pooled connection is held across a Stripe call.
    let acc = {
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        store::accounts::find_by_account(&mut conn, account)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("account `{account}` not found")))?
    };
    let customer = match acc.stripe_customer_id.clone() {
        Some(c) => c,
        None => {
            let id = p
                .create_customer(account, acc.email.as_deref(), acc.name.as_deref())
                .await
                .map_err(rail_error)?;
            let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
            pay_store::set_customer(&mut conn, account, &id).await?;
            id
        }
    };
    p.set_payment_method(&customer, pm)
        .await
        .map_err(|e| match e {
            RailError::Refused { message, .. } | RailError::Declined(message) => {
                ServiceError::invalid_field(
                    "invalid_payment_method",
                    "payment_method",
                    format!("Stripe refused payment method `{pm}`: {message}"),
                )
            }
            other => rail_error(other),
        })?;
    {
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        pay_store::set_payment_method(&mut conn, account, pm).await?;
    }
    // The card is saved whatever the retries do: one that cannot run now is the sweep's.
    let retried = match retry_with_new_payment_method(ctx, account).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(account, error = %e, "retry with the new payment method failed");
            CollectReport {
                errors: 1,
                ..CollectReport::default()
            }
        }
    };
    Ok(PaymentMethodSet {
        account: account.to_owned(),
        customer,
        payment_method: pm.to_owned(),
        retried,
    })
}

fn not_configured() -> ServiceError {
    ServiceError::Conflict {
        code: "stripe_not_configured",
        message: "no Stripe key is configured: invoices are collected manually".into(),
    }
}

fn rail_error(e: RailError) -> ServiceError {
    match e {
        RailError::Unavailable(m) => ServiceError::Unavailable(m),
        RailError::Refused { message, .. } | RailError::Declined(message) => {
            ServiceError::Conflict {
                code: "stripe_refused",
                message,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dunning state

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DunningView {
    pub account: String,
    pub status: Option<String>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub past_due_since: Option<DateTime<Utc>>,
    pub in_grace: Option<bool>,
    /// While past due: when access stops being granted on grace (the grace period's end).
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub grace_ends_at: Option<DateTime<Utc>>,
    /// While past due: what happens if the last retry fails (`suspend` or `cancel`), and when
    /// that retry is due.
    pub final_action: Option<crate::domain::dunning::FinalAction>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub final_action_at: Option<DateTime<Utc>>,
    /// Whether a payment method is on file for collection.
    pub payment_method_on_file: bool,
    pub payments: Vec<PaymentRow>,
    pub steps: Vec<StepRow>,
}

pub async fn dunning(ctx: &Ctx, account: &str) -> Result<DunningView, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let sub = subs::find_by_account(&mut conn, account).await?;
    if sub.is_none()
        && store::accounts::find_by_account(&mut conn, account)
            .await?
            .is_none()
    {
        return Err(ServiceError::NotFound(format!(
            "account `{account}` not found"
        )));
    }
    let steps = pay_store::steps_by_account(&mut conn, account).await?;
    let mut numbers: Vec<i64> = steps.iter().map(|s| s.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut payments = pay_store::find_by_account_and_numbers(&mut conn, account, &numbers).await?;
    let currency = store::accounts::find_by_account(&mut conn, account)
        .await?
        .and_then(|a| a.currency)
        .and_then(|c| Currency::from_code(&c));
    for p in &mut payments {
        p.amount_paid.rescale(currency.map_or(2, |c| c.exponent()));
    }
    let now = ctx.clock.now();
    let policy = ctx
        .payments
        .as_ref()
        .map(|p| p.policy.clone())
        .unwrap_or_default();
    let past_due = sub
        .as_ref()
        .and_then(|s| s.past_due_since.filter(|_| s.status == "past_due"));
    let payment_method_on_file = pay_store::has_payment_method(&mut conn, account).await?;
    Ok(DunningView {
        account: account.to_owned(),
        status: sub.as_ref().map(|s| s.status.clone()),
        past_due_since: sub.as_ref().and_then(|s| s.past_due_since),
        in_grace: past_due.map(|since| policy.in_grace(since, now)),
        grace_ends_at: past_due
            .map(|since| since + chrono::Duration::days(policy.grace_days.into())),
        final_action: past_due.map(|_| policy.final_action),
        final_action_at: past_due.and_then(|since| {
            let last = policy.retry_days.last()?;
            Some(since + chrono::Duration::days((*last).into()))
        }),
        payment_method_on_file,
        payments,
        steps,
    })
}

/// One account of the dunning queue: where it stands and what happens next.
#[derive(Debug, Clone, Serialize)]
pub struct DunningEntry {
    pub account: String,
    /// `past_due` or `suspended`.
    pub status: String,
    pub past_due_since: Option<DateTime<Utc>>,
    /// Its unpaid invoices, by number.
    pub unpaid: Vec<i64>,
    pub attempts: i32,
    /// The next collection attempt, when one is scheduled.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub grace_ends_at: Option<DateTime<Utc>>,
    /// When the final action applies if the last retry fails, and which (past due only).
    pub final_action_at: Option<DateTime<Utc>>,
    pub final_action: Option<crate::domain::dunning::FinalAction>,
}

/// The dunning queue: every past-due or suspended subscription, longest overdue first, with
/// its unpaid invoices and next retry.
pub async fn dunning_queue(ctx: &Ctx, limit: i64) -> Result<Vec<DunningEntry>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let subs_due = subs::in_dunning(&mut conn, limit).await?;
    let accounts: Vec<String> = subs_due.iter().map(|s| s.account.clone()).collect();
    let unpaid = pay_store::unpaid_by_accounts(&mut conn, &accounts).await?;
    let policy = ctx
        .payments
        .as_ref()
        .map(|p| p.policy.clone())
        .unwrap_or_default();
    Ok(subs_due
        .into_iter()
        .map(|s| {
            let mine: Vec<&PaymentRow> = unpaid.iter().filter(|p| p.account == s.account).collect();
            let past_due = s.past_due_since.filter(|_| s.status == "past_due");
            DunningEntry {
                unpaid: mine.iter().map(|p| p.number).collect(),
                attempts: mine.iter().map(|p| p.attempts).max().unwrap_or(0),
                next_attempt_at: mine.iter().filter_map(|p| p.next_attempt_at).min(),
                last_error: mine.iter().rev().find_map(|p| p.last_error.clone()),
                grace_ends_at: past_due
                    .map(|since| since + chrono::Duration::days(policy.grace_days.into())),
                final_action_at: past_due.and_then(|since| {
                    let last = policy.retry_days.last()?;
                    Some(since + chrono::Duration::days((*last).into()))
                }),
                final_action: past_due.map(|_| policy.final_action),
                past_due_since: s.past_due_since,
                status: s.status,
                account: s.account,
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Webhooks

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WebhookAnswer {
    pub received: bool,
    pub duplicate: bool,
    /// What the event changed: `none`, `paid`, `failed`.
    pub effect: &'static str,
}

/// Verifies, de-duplicates and applies one Stripe webhook delivery. The event's object is
/// re-read from Stripe before anything changes (deliveries come at least once, in any order).
pub async fn webhook(
    ctx: &Ctx,
    payload: &str,
    signature: &str,
) -> Result<WebhookAnswer, ServiceError> {
    let p = ctx.payments.as_ref().ok_or_else(not_configured)?;
    let event = stripe_webhook::Webhook::construct_event(
        payload,
        signature,
        p.webhook_secret().ok_or_else(not_configured)?,
    )
    .map_err(|e| match e {
        stripe_webhook::WebhookError::BadTimestamp(t) => ServiceError::invalid(
            "stale_signature",
            format!("the signature's timestamp {t} is more than 300 s from now"),
        ),
        stripe_webhook::WebhookError::BadParse(m) => ServiceError::invalid("invalid_event", m),
        other => ServiceError::invalid(
            "invalid_signature",
            format!("the Stripe-Signature header does not match the body: {other}"),
        ),
    })?;
    let event_id = event.id.as_str().to_owned();
    let event_type = event.type_.as_str().to_owned();
    let object_id = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["data"]["object"]["id"].as_str().map(str::to_owned));
    let duplicate = WebhookAnswer {
        received: true,
        duplicate: true,
        effect: "none",
    };
    {
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        if pay_store::event_seen(&mut conn, &event_id).await? {
            return Ok(duplicate);
        }
    }
    // Re-read the object: the event body may be stale or out of order.
    let remote = match (&object_id, event_type.starts_with("invoice.")) {
        (Some(id), true) => match p.retrieve(id).await {
            Ok(r) => Some(r),
            // No such invoice in this Stripe account: not ours.
            Err(RailError::Refused { status: 404, .. }) => None,
            // Anything else (a rotated key's 401, a 403, Stripe down): not processed, so
            // Stripe sends the event again (reviews/security.md M9).
            Err(e) => {
                return Err(ServiceError::Unavailable(format!(
                    "cannot re-read {id} from Stripe: {e}"
                )))
            }
        },
        _ => None,
    };
    let ours = remote.as_ref().and_then(|r| {
        if r.metadata.get("accrue_installation").map(String::as_str) != Some(p.installation()) {
            return None;
        }
        let account = r.metadata.get("accrue_account")?.clone();
        let number = r.metadata.get("accrue_invoice")?.parse::<i64>().ok()?;
        Some((account, number))
    });
    let _writing = ours.as_ref().map(|(a, _)| ctx.checks.write_guard(a));
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let answer = conn
        .transaction::<WebhookAnswer, TxError, _>(async |c| {
            let now = match &ours {
                Some((account, _)) => ctx.now_for(c, account).await?,
                None => ctx.clock.now(),
            };
            let first = pay_store::record_event(
                c,
                &event_id,
                &event_type,
                object_id.as_deref(),
                ours.as_ref().map(|(a, _)| a.as_str()),
                now,
            )
            .await?;
            if !first {
                return Ok(duplicate.clone());
            }
            let mut answer = WebhookAnswer {
                received: true,
                duplicate: false,
                effect: "none",
            };
            let (Some(remote), Some((account, number))) = (&remote, &ours) else {
                return Ok(answer);
            };
            // An event that can change the collection defers to an attempt in flight (its
            // answer from Stripe not recorded yet), which knows which attempt paid: it is
            // refused for now (503), so Stripe sends it again, and no connection waits
            // meanwhile. By then the attempt has recorded its answer, or ended.
            let may_change = remote.status == "paid" || event_type == "invoice.payment_failed";
            if may_change
                && !crate::store::locks::try_for_transaction(
                    c,
                    &pay_store::collection_lock_key(account, *number),
                )
                .await?
            {
                return Err(TxError::Refused(ServiceError::Unavailable(format!(
                    "invoice {number} of account `{account}` is being collected right now; \
                     send the event again"
                ))));
            }
            let Some(mut row) = pay_store::lock(c, account, *number).await? else {
                return Ok(answer);
            };
            if row
                .stripe_invoice_id
                .as_deref()
                .is_some_and(|id| id != remote.id)
            {
                return Ok(answer);
            }
            let currency = Currency::from_code(&remote.currency.to_uppercase());
            if remote.status == "paid" && row.state != "paid" {
                row.stripe_invoice_id = Some(remote.id.clone());
                let currency = currency.ok_or_else(|| {
                    TxError::Refused(ServiceError::invalid(
                        "unknown_currency",
                        format!("Stripe invoice currency `{}`", remote.currency),
                    ))
                })?;
                record_paid(ctx, c, &mut row, remote, currency, now, "paid (webhook)").await?;
                answer.effect = "paid";
            } else if event_type == "invoice.payment_failed"
                && remote.status == "open"
                && row.state == "pending"
                && row.attempts > 0
            {
                // A failure we did not see from the pay call itself (asynchronous methods).
                record_failure(ctx, p, c, &mut row, "payment failed (webhook)", now).await?;
                answer.effect = "failed";
            }
            Ok(answer)
        })
        .await?;
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StripeSide {
    pub id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_paid: Decimal,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReconciledInvoice {
    pub number: i64,
    pub account: String,
    pub kind: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub currency: String,
    pub status: String,
    pub collection: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_paid: Decimal,
    pub stripe: Option<StripeSide>,
    /// How finance settled it outside the rail (paid by wire, void, written off).
    pub settlement: Option<crate::store::settlements::SettlementRow>,
    pub mismatches: Vec<&'static str>,
}

/// The period's invoices by outcome, in one currency: what was invoiced, paid (through the
/// rail or recorded by finance), voided (credit notes), written off, and still outstanding.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PeriodTotals {
    #[serde(with = "rust_decimal::serde::str")]
    pub invoiced: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub voided: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub written_off: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub outstanding: Decimal,
}

impl PeriodTotals {
    /// Nothing yet, written at the currency's scale (`0.00`, not `0`).
    fn zero(exponent: u32) -> Self {
        let z = Decimal::new(0, exponent);
        Self {
            invoiced: z,
            paid: z,
            voided: z,
            written_off: z,
            outstanding: z,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    pub number: i64,
    pub account: String,
    pub kind: &'static str,
    pub ours: String,
    pub stripe: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    pub period: String,
    pub invoices: Vec<ReconciledInvoice>,
    pub mismatches: Vec<Mismatch>,
    pub matched: usize,
    /// By currency.
    pub totals: std::collections::BTreeMap<String, PeriodTotals>,
}

/// Stripe invoices the reconciliation reads at once (each is its own request; Stripe allows
/// about 25 a second on one endpoint, and a 429 fails the report).
const STRIPE_READS_AT_ONCE: usize = 4;

/// Why the reconciliation has no report: Stripe would not show invoice `number` (`id`). Down
/// or rate limited: 503, retry later; refused (a revoked key, a key of another account's
/// mode): 409, retrying will not help.
fn unreadable(number: i64, id: &str, e: RailError) -> ServiceError {
    tracing::warn!(number, id, error = %e, "reconciliation: Stripe would not show an invoice");
    let message = format!("cannot read invoice {number} ({id}) from Stripe: {e}");
    match e {
        RailError::Unavailable(_) => ServiceError::Unavailable(message),
        RailError::Refused { .. } | RailError::Declined(_) => ServiceError::Conflict {
            code: "stripe_refused",
            message,
        },
    }
}

/// Each invoice issued in the month `period` (YYYY-MM, UTC) beside its Stripe invoice, and
/// every difference: `missing_in_stripe` (not pushed to Stripe yet, or Stripe answers it has
/// no such invoice: a 404), `amount_mismatch`, `currency_mismatch`, `status_mismatch`,
/// `paid_amount_mismatch`. No report when Stripe will not show an invoice for any other
/// reason ([`unreadable`]). Stripe is read [`STRIPE_READS_AT_ONCE`] invoices at a time.
pub async fn reconciliation(ctx: &Ctx, period: &str) -> Result<Reconciliation, ServiceError> {
    let first =
        chrono::NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d").map_err(|_| {
            ServiceError::invalid_field(
                "invalid_period",
                "period",
                format!("period `{period}`: expected YYYY-MM"),
            )
        })?;
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .ok_or_else(|| {
            ServiceError::invalid_field(
                "invalid_period",
                "period",
                format!("period `{period}` is out of range"),
            )
        })?;
    let from = first.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let to = next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let (rows, settled) = {
        let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run::<_, StoreError, _>(async |c| {
                let rows = pay_store::issued_between(c, from, to).await?;
                let settled =
                    crate::store::settlements::of_invoices_issued_between(c, from, to).await?;
                Ok((rows, settled))
            })
            .await?
    };
    let mut settled: std::collections::HashMap<(String, i64), _> = settled
        .into_iter()
        .map(|s| ((s.account.clone(), s.number), s))
        .collect();
    let mut out = Reconciliation {
        period: period.to_owned(),
        invoices: Vec::with_capacity(rows.len()),
        mismatches: Vec::new(),
        matched: 0,
        totals: Default::default(),
    };
    // Each collected invoice beside its Stripe side, read a few at a time (each row travels
    // with its own read); the first answer other than "no such invoice" fails the report.
    let read: Vec<_> = {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(rows.into_iter().map(|(inv, payment)| async move {
            let id = payment.as_ref().and_then(|p| p.stripe_invoice_id.clone());
            let remote = match (&ctx.payments, id) {
                (Some(p), Some(id)) => match p.retrieve(&id).await {
                    Ok(r) => Some(r),
                    // No such invoice in this Stripe account: missing there.
                    Err(RailError::Refused { status: 404, .. }) => None,
                    // Anything else (a revoked key's 401, a 403, Stripe down) says nothing
                    // about the invoice: no report rather than every invoice reported missing.
                    Err(e) => return Err(unreadable(inv.number, &id, e)),
                },
                _ => None,
            };
            Ok((inv, payment, remote))
        }))
        .buffered(STRIPE_READS_AT_ONCE)
        .try_collect()
        .await?
    };
    for (inv, payment, remote) in read {
        let currency = Currency::from_code(&inv.currency);
        let exp = currency.map_or(2, |c| c.exponent());
        let mut settlement = settled.remove(&(inv.account.clone(), inv.number));
        let mut amount_paid = payment.as_ref().map_or(Decimal::ZERO, |p| p.amount_paid);
        if let Some(s) = settlement.as_mut() {
            s.amount.rescale(exp);
            s.credit_restored.rescale(exp);
            if s.kind == "paid" {
                amount_paid = s.amount;
            }
        }
        amount_paid.rescale(exp);
        let mut total = inv.total;
        total.rescale(exp);
        let t = out
            .totals
            .entry(inv.currency.clone())
            .or_insert_with(|| PeriodTotals::zero(exp));
        t.invoiced += total;
        match inv.status.as_str() {
            "paid" => t.paid += amount_paid,
            "void" => t.voided += total,
            "uncollectible" => t.written_off += total,
            _ => t.outstanding += total,
        }
        let mut rec = ReconciledInvoice {
            number: inv.number,
            account: inv.account.clone(),
            kind: inv.kind.clone(),
            total,
            currency: inv.currency.clone(),
            status: inv.status.clone(),
            collection: inv.collection.clone(),
            amount_paid,
            stripe: None,
            settlement,
            mismatches: Vec::new(),
        };
        let mut found: Vec<(&'static str, String, String)> = Vec::new();
        let expected = inv.collection == "stripe" && payment.is_some();
        match (remote, currency) {
            (Some(r), Some(cur)) => {
                let side = StripeSide {
                    id: r.id.clone(),
                    amount: from_minor_units(r.total, cur),
                    currency: r.currency.to_uppercase(),
                    status: r.status.clone(),
                    amount_paid: from_minor_units(r.amount_paid, cur),
                };
                let ours_minor = minor_units(inv.total, cur).unwrap_or(i64::MIN);
                if ours_minor != r.total {
                    found.push((
                        "amount_mismatch",
                        total.to_string(),
                        side.amount.to_string(),
                    ));
                }
                if !r.currency.eq_ignore_ascii_case(&inv.currency) {
                    found.push((
                        "currency_mismatch",
                        inv.currency.clone(),
                        r.currency.clone(),
                    ));
                }
                if (inv.status == "paid") != (r.status == "paid") {
                    found.push(("status_mismatch", inv.status.clone(), r.status.clone()));
                }
                if amount_paid != side.amount_paid {
                    found.push((
                        "paid_amount_mismatch",
                        amount_paid.to_string(),
                        side.amount_paid.to_string(),
                    ));
                }
                rec.stripe = Some(side);
            }
            _ if expected => {
                found.push(("missing_in_stripe", total.to_string(), "none".into()));
            }
            _ => {}
        }
        for (kind, ours, stripe) in found {
            rec.mismatches.push(kind);
            out.mismatches.push(Mismatch {
                number: inv.number,
                account: inv.account.clone(),
                kind,
                ours,
                stripe,
            });
        }
        if rec.mismatches.is_empty() {
            out.matched += 1;
        }
        out.invoices.push(rec);
    }
    Ok(out)
}
