//! The lifecycle: the only code that moves a subscription through time. The catch-up
//! ([`advance`]) converts trials (or lets them fall to the fallback plan), applies scheduled
//! changes at period ends, renews, and drafts the invoices of what closed; [`Effects`] writes
//! what it produced at the end of the caller's transaction. The period-close sweep
//! ([`close_due_periods`]) runs it for every due account. Billing and revenue are called from
//! here and never call back.

use super::billing::{self, Prefetched};
use super::{revenue, Ctx, ServiceError, TxError};
use crate::domain::invoice::{advance_fee_lines, InvoiceDraft};
use crate::domain::period::{boundary, period_containing, Period};
use crate::domain::plan::{PlanRef, PlanVersion};
use crate::store::subscriptions::{self as subs, change, NewChange, SubscriptionRow};
use crate::store::{self, StoreError};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A change waiting for the period end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scheduled {
    pub plan: String,
    pub version: u32,
    pub seats: u32,
    pub cancel: bool,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub at: DateTime<Utc>,
}

/// A published plan version by reference, from the running catalogue.
pub(crate) fn plan_of(ctx: &Ctx, plan: &str, version: i32) -> Result<PlanVersion, TxError> {
    ctx.plans()
        .get(&PlanRef {
            plan: plan.to_owned(),
            version: version as u32,
        })
        .cloned()
        .ok_or_else(|| {
            TxError::Refused(ServiceError::invalid(
                "plan_not_available",
                format!("{plan}@{version} is not in this server's catalogue"),
            ))
        })
}

/// Catches the subscription up with `now`: trial conversion, scheduled changes and renewals at
/// period ends, each recorded as a change. Returns whether anything changed.
pub(crate) async fn advance(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    row: &mut SubscriptionRow,
    now: DateTime<Utc>,
    fx: &mut Effects,
    pre: &billing::Prefetched,
) -> Result<bool, TxError> {
    let mut changed = false;
    loop {
        let plan = plan_of(ctx, &row.plan, row.plan_version)?;
        match row.status.as_str() {
            "trialing" => {
                let Some(end) = row.trial_end.filter(|e| now >= *e) else {
                    break;
                };
                // A change accepted during the trial takes effect at its end: a cancellation
                // ends it with nothing charged; a plan or seat change converts onto it.
                let scheduled: Option<Scheduled> = row
                    .scheduled
                    .take()
                    .and_then(|v| serde_json::from_value(v).ok());
                if let Some(s) = &scheduled {
                    let from = (row.plan.clone(), row.plan_version, row.seats);
                    row.revision += 1;
                    row.updated_at = now;
                    if s.cancel {
                        row.status = "canceled".into();
                        row.period_end = end;
                        let trial = Period {
                            start: row.period_start,
                            end,
                        };
                        let late = billing::late_only_invoice(
                            ctx,
                            c,
                            &row.account,
                            trial,
                            &plan,
                            row.seats as u32,
                            now,
                            &fx.drafts,
                        )
                        .await?;
                        fx.drafts.extend(late);
                        // Nothing of the trial was MRR; what the account had before it ends.
                        fx.revenue.push(PendingMrr {
                            account: row.account.clone(),
                            at: end,
                            cause: revenue::Cause::Cancellation,
                            plan: None,
                            usage: None,
                            reference: MrrRef::ChangeAt("canceled", end),
                        });
                        fx.mark(row, "canceled", end, &from, plan.currency.code());
                        changed = true;
                        break;
                    }
                    row.plan = s.plan.clone();
                    row.plan_version = s.version as i32;
                    row.seats = s.seats as i32;
                    fx.mark(
                        row,
                        "scheduled_change_applied",
                        end,
                        &from,
                        plan.currency.code(),
                    );
                }
                // With Stripe collecting and no payment method on file, the trial does not
                // convert: the account falls to the plan's fallback (or ends without one),
                // with no invoice and no dunning.
                if ctx.payments.is_some()
                    && !crate::store::payments::has_payment_method(c, &row.account).await?
                {
                    let from = (row.plan.clone(), row.plan_version, row.seats);
                    let was = plan_of(ctx, &row.plan, row.plan_version)?;
                    row.revision += 1;
                    row.updated_at = now;
                    row.trial_end = Some(end);
                    let plans = ctx.plans();
                    let fallback = was
                        .fallback
                        .as_deref()
                        .and_then(|f| plans.latest(f))
                        .cloned();
                    let Some(fb) = fallback else {
                        row.status = "canceled".into();
                        row.period_end = end;
                        fx.mark(row, "trial_ended", end, &from, was.currency.code());
                        changed = true;
                        break;
                    };
                    row.status = "active".into();
                    row.plan = fb.plan.clone();
                    row.plan_version = fb.version as i32;
                    row.seats = fb.seats.as_ref().map_or(0, |s| s.min) as i32;
                    row.anchor = end;
                    row.period_start = end;
                    row.period_end = boundary(end, fb.interval.months(), 1);
                    fx.mark(
                        row,
                        "trial_ended_to_fallback",
                        end,
                        &from,
                        fb.currency.code(),
                    );
                    changed = true;
                    continue;
                }
                let plan = plan_of(ctx, &row.plan, row.plan_version)?;
                let months = plan.interval.months();
                // Converts: with a payment method on file, or without Stripe (nothing to require).
                row.status = "active".into();
                row.anchor = end;
                row.period_start = end;
                row.period_end = boundary(end, months, 1);
                row.revision += 1;
                row.updated_at = now;
                let period = Period {
                    start: row.period_start,
                    end: row.period_end,
                };
                fx.drafts.extend(billing::start_invoice(
                    &row.account,
                    &plan,
                    row.seats as u32,
                    period,
                    now,
                ));
                let lines = advance_fee_lines(&plan, row.seats as u32, &period);
                let amount = lines.iter().map(|l| l.amount).sum();
                fx.changes.push(change(
                    row,
                    "trial_converted",
                    end,
                    None,
                    json!(lines),
                    amount,
                    plan.currency.code(),
                ));
                fx.revenue.push(PendingMrr {
                    account: row.account.clone(),
                    at: end,
                    cause: revenue::Cause::TrialConverted,
                    plan: Some(plan_ref(row)),
                    usage: None,
                    reference: MrrRef::ChangeAt("trial_converted", end),
                });
                changed = true;
            }
            "active" | "past_due" if now >= row.period_end => {
                let at = row.period_end;
                let closed = Period {
                    start: row.period_start,
                    end: row.period_end,
                };
                let from = (row.plan.clone(), row.plan_version, row.seats);
                let scheduled: Option<Scheduled> = row
                    .scheduled
                    .take()
                    .and_then(|v| serde_json::from_value(v).ok());
                row.revision += 1;
                row.updated_at = now;
                if let Some(s) = &scheduled {
                    if s.cancel {
                        row.status = "canceled".into();
                        let account = row.account.clone();
                        let before = fx.drafts.len();
                        let closing = billing::period_invoice(
                            ctx,
                            c,
                            &account,
                            closed,
                            &plan,
                            from.2 as u32,
                            None,
                            now,
                            pre,
                            &fx.drafts,
                        )
                        .await?;
                        fx.drafts.extend(closing);
                        fx.mark(row, "canceled", at, &from, plan.currency.code());
                        fx.usage_closed(&account, at, &from, before, "canceled");
                        fx.revenue.push(PendingMrr {
                            account,
                            at,
                            cause: revenue::Cause::Cancellation,
                            plan: None,
                            usage: None,
                            reference: MrrRef::ChangeAt("canceled", at),
                        });
                        changed = true;
                        break;
                    }
                    row.plan = s.plan.clone();
                    row.plan_version = s.version as i32;
                    row.seats = s.seats as i32;
                }
                let new_plan = plan_of(ctx, &row.plan, row.plan_version)?;
                if new_plan.interval != plan.interval {
                    row.anchor = at;
                }
                row.period_start = at;
                row.period_end = period_containing(row.anchor, new_plan.interval.months(), at).end;
                let next = Period {
                    start: row.period_start,
                    end: row.period_end,
                };
                let account = row.account.clone();
                let before = fx.drafts.len();
                let closing = billing::period_invoice(
                    ctx,
                    c,
                    &account,
                    closed,
                    &plan,
                    from.2 as u32,
                    Some((&new_plan, row.seats as u32, next)),
                    now,
                    pre,
                    &fx.drafts,
                )
                .await?;
                fx.drafts.extend(closing);
                let lines = advance_fee_lines(&new_plan, row.seats as u32, &next);
                let amount = lines.iter().map(|l| l.amount).sum();
                let kind = if scheduled.is_some() {
                    "scheduled_change_applied"
                } else {
                    "renewed"
                };
                fx.usage_closed(&account, at, &from, before, kind);
                if scheduled.is_some() {
                    let what = classify(&plan, from.2 as u32, &new_plan, row.seats as u32);
                    fx.revenue.push(PendingMrr {
                        account: account.clone(),
                        at,
                        cause: revenue::Cause::of_change(
                            what,
                            plan.monthly_recurring(from.2 as u32),
                            new_plan.monthly_recurring(row.seats as u32),
                        ),
                        plan: Some(plan_ref(row)),
                        usage: None,
                        reference: MrrRef::ChangeAt("scheduled_change_applied", at),
                    });
                }
                fx.changes.push(change(
                    row,
                    kind,
                    at,
                    Some((&from.0, from.1, from.2)),
                    json!(lines),
                    amount,
                    new_plan.currency.code(),
                ));
                changed = true;
            }
            _ => break,
        }
    }
    Ok(changed)
}

/// What catching up produced, written at the end of the transaction in bulk: the change
/// history and the invoice drafts.
#[derive(Default)]
pub(crate) struct Effects {
    pub drafts: Vec<InvoiceDraft>,
    pub changes: Vec<NewChange>,
    /// MRR recomputations, in order, once the changes and invoices they refer to exist.
    pub revenue: Vec<PendingMrr>,
}

/// What a pending MRR recomputation refers to before ids exist.
pub(crate) enum MrrRef {
    Change(i64),
    /// A change of `fx.changes`, found by its kind and time.
    ChangeAt(&'static str, DateTime<Utc>),
    /// An invoice of `fx.drafts`, by index.
    Draft(usize),
}

pub(crate) struct PendingMrr {
    pub account: String,
    pub at: DateTime<Utc>,
    pub cause: revenue::Cause,
    pub plan: Option<(PlanRef, u32)>,
    pub usage: Option<Decimal>,
    pub reference: MrrRef,
}

impl Effects {
    /// Records a change of `row` from `from` (plan, version, seats) that charges nothing.
    fn mark(
        &mut self,
        row: &SubscriptionRow,
        kind: &str,
        at: DateTime<Utc>,
        from: &(String, i32, i32),
        currency: &str,
    ) {
        self.changes.push(change(
            row,
            kind,
            at,
            Some((&from.0, from.1, from.2)),
            json!([]),
            Decimal::ZERO,
            currency,
        ));
    }

    /// Writes everything gathered; answers the numbers of the invoices it issued, in order.
    pub async fn flush(self, ctx: &Ctx, c: &mut AsyncPgConnection) -> Result<Vec<i64>, TxError> {
        // A bulk write: its foreign-key checks may reuse generic plans.
        store::generic_plans(c).await?;
        let ids = subs::insert_changes(c, &self.changes).await?;
        store::custom_plans(c).await?;
        // Each MRR input's reference: a change's id (known now) or a draft's invoice number
        // (known once numbered).
        enum Ref {
            Known(i64),
            Draft(usize),
        }
        let mut inputs: Vec<revenue::MrrInput<Ref>> = Vec::with_capacity(self.revenue.len());
        for p in self.revenue {
            let reference = match p.reference {
                MrrRef::Change(id) => Ref::Known(id),
                // Recorded with its change: one not written would leave a ledger gap.
                MrrRef::ChangeAt(kind, at) => Ref::Known(
                    ids.iter()
                        .find(|(a, k, t, _)| *a == p.account && k == kind && *t == at)
                        .ok_or_else(|| {
                            store::StoreError::Message(format!(
                                "the MRR input of account `{}` refers to a `{kind}` change at \
                                 {at} that was not written",
                                p.account
                            ))
                        })?
                        .3,
                ),
                MrrRef::Draft(i) => Ref::Draft(i),
            };
            inputs.push(revenue::MrrInput {
                account: p.account,
                at: p.at,
                cause: p.cause,
                plan: p.plan,
                usage: p.usage,
                reference,
            });
        }
        // The MRR and the PQL conversions need no invoice number: written before the
        // numbering takes the gap-free counter, whose lock every other close batch waits on
        // until this one commits. A draft without a number fails the transaction
        // (`write_movements`).
        let mut moved = revenue::apply(ctx, c, &inputs).await?;
        // The scorer's locks of every account converting or invoiced here, in one statement
        // (in account order) and before the counter, as on every path: `billing::issue` then
        // finds its accounts' locks held. Two statements could each hold a lock the scorer's
        // one statement waits on while it holds one the other waits on.
        let scored: Vec<String> = moved
            .converting()
            .chain(self.drafts.iter().map(|d| d.account.as_str()))
            .map(str::to_owned)
            .collect();
        store::pql::lock_accounts(c, &scored).await?;
        moved.write_conversions(c).await?;
        let numbers = billing::issue(ctx, c, &self.drafts).await?;
        revenue::write_movements(c, moved, |i| match inputs[i].reference {
            Ref::Known(id) => Some(("subscription_change", id)),
            Ref::Draft(d) => numbers.get(d).map(|n| ("invoice", *n)),
        })
        .await?;
        Ok(numbers)
    }
}

impl Effects {
    /// The usage revenue of the period that closed at `at` (the arrears usage lines of the
    /// invoice drafted after index `before`; none when no invoice was: a free plan's period)
    /// becomes the usage part of the account's MRR on plan `from`. `kind` is the change the
    /// close records, referenced when there is no invoice.
    fn usage_closed(
        &mut self,
        account: &str,
        at: DateTime<Utc>,
        from: &(String, i32, i32),
        before: usize,
        kind: &'static str,
    ) {
        let (usage, reference) = if self.drafts.len() <= before {
            (Decimal::ZERO, MrrRef::ChangeAt(kind, at))
        } else {
            let i = self.drafts.len() - 1;
            let usage = self.drafts[i]
                .lines
                .iter()
                .filter(|l| l.kind == "usage")
                .map(|l| l.amount)
                .sum();
            (usage, MrrRef::Draft(i))
        };
        self.revenue.push(PendingMrr {
            account: account.to_owned(),
            at,
            cause: revenue::Cause::Usage,
            plan: Some((
                PlanRef {
                    plan: from.0.clone(),
                    version: from.1 as u32,
                },
                from.2 as u32,
            )),
            usage: Some(usage),
            reference,
        });
    }
}

pub(crate) fn plan_ref(row: &SubscriptionRow) -> (PlanRef, u32) {
    (
        PlanRef {
            plan: row.plan.clone(),
            version: row.plan_version as u32,
        },
        row.seats as u32,
    )
}

/// Whether [`advance`] would move the subscription at `now`: its trial or its period has
/// ended (the condition `store::subscriptions::due_accounts` selects by).
pub(crate) fn is_due(row: &SubscriptionRow, now: DateTime<Utc>) -> bool {
    match row.status.as_str() {
        "trialing" => row.trial_end.is_some_and(|e| now >= e),
        "active" | "past_due" => now >= row.period_end,
        _ => false,
    }
}

/// Locks the account's subscription and catches it up with `now`, issuing the invoices of the
/// periods that closed meanwhile.
pub(crate) async fn lock_and_catch_up(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    account: &str,
    now: DateTime<Utc>,
) -> Result<SubscriptionRow, TxError> {
    let mut row = lock_existing(c, account).await?;
    let mut fx = Effects::default();
    catch_up(ctx, c, &mut row, now, &mut fx).await?;
    fx.flush(ctx, c).await?;
    Ok(row)
}

/// Locks the account's subscription; 404 when it has none.
pub(crate) async fn lock_existing(
    c: &mut AsyncPgConnection,
    account: &str,
) -> Result<SubscriptionRow, TxError> {
    subs::lock_by_account(c, account).await?.ok_or_else(|| {
        TxError::Refused(ServiceError::NotFound(format!(
            "account `{account}` has no subscription"
        )))
    })
}

/// Runs [`advance`] on a locked row and saves it when it moved; the effects are the caller's
/// to flush (with whatever else its transaction adds).
pub(crate) async fn catch_up(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    row: &mut SubscriptionRow,
    now: DateTime<Utc>,
    fx: &mut Effects,
) -> Result<(), TxError> {
    if advance(ctx, c, row, now, fx, &billing::Prefetched::default()).await? {
        subs::save(c, row).await?;
    }
    Ok(())
}

pub(crate) fn classify(
    old: &PlanVersion,
    old_seats: u32,
    new: &PlanVersion,
    new_seats: u32,
) -> &'static str {
    let (a, b) = (
        old.monthly_recurring(old_seats),
        new.monthly_recurring(new_seats),
    );
    let same_plan = old.plan == new.plan;
    match a.cmp(&b) {
        std::cmp::Ordering::Less if same_plan && old_seats < new_seats => "seats_added",
        std::cmp::Ordering::Less => "upgrade",
        std::cmp::Ordering::Greater if same_plan && old_seats > new_seats => "seats_removed",
        std::cmp::Ordering::Greater => "downgrade",
        std::cmp::Ordering::Equal if same_plan && old_seats < new_seats => "seats_added",
        std::cmp::Ordering::Equal if same_plan && old_seats > new_seats => "seats_removed",
        std::cmp::Ordering::Equal => "lateral",
    }
}

// ---------------------------------------------------------------------------------------------
// The period-close sweep

/// What one close sweep did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CloseReport {
    pub accounts: usize,
    pub invoices: usize,
}

/// Accounts moved per transaction by the sweep.
pub const CLOSE_BATCH: usize = 500;

/// How a sweep cuts its work.
#[derive(Debug, Clone, Copy)]
pub struct SweepSizes {
    /// Due accounts read per query (several transactions' worth: the query sorts what is due).
    pub page: i64,
    /// Accounts moved per transaction.
    pub batch: usize,
    /// Connections the sweep uses at once: as many batches, or one fewer and the next page's
    /// read.
    pub workers: usize,
}

impl SweepSizes {
    /// What every sweep uses.
    pub const DEFAULT: Self = Self {
        page: 5000,
        batch: CLOSE_BATCH,
        workers: 2,
    };
}

/// Closes every due period: each account whose period (or trial) has ended is caught up under
/// its row lock (taken with SKIP LOCKED, so several instances share the work) and its invoices
/// are issued in the same transaction. Idempotent: an account already caught up is not due.
pub async fn close_due_periods(ctx: &Ctx) -> Result<CloseReport, ServiceError> {
    close_due_periods_sized(ctx, SweepSizes::DEFAULT).await
}

/// [`close_due_periods`] with other sizes: tests cross many page and batch edges with few
/// accounts.
#[doc(hidden)]
pub async fn close_due_periods_sized(
    ctx: &Ctx,
    sizes: SweepSizes,
) -> Result<CloseReport, ServiceError> {
    let started = std::time::Instant::now();
    let report = close_due(ctx, sizes).await?;
    ctx.metrics.record(|| {
        metrics::histogram!("accrue_period_close_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("accrue_period_close_accounts_total", "outcome" => "closed")
            .increment(report.accounts as u64);
        metrics::counter!("accrue_invoices_issued_total").increment(report.invoices as u64);
    });
    Ok(report)
}

async fn close_due(ctx: &Ctx, sizes: SweepSizes) -> Result<CloseReport, ServiceError> {
    let now = ctx.clock.now();
    let (accounts, invoices) = close_pages(ctx, now, sizes).await?;
    let mut report = CloseReport { accounts, invoices };
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    report.invoices += bill_late_after_cancellation(ctx, &mut conn, now).await?;
    Ok(report)
}

/// An account due for its close: its account, period start and period end.
type Due = (String, DateTime<Utc>, DateTime<Utc>);

/// Closes every due account, page by page, in batches, several at a time, each on its own
/// connection (one batch's rating overlaps another's writes; the invoice counter's row lock
/// orders their numbering). The page reads run in the same stream as the batches, started
/// when a connection is free and no batch is left to start, so the running batches go on
/// while the next page is read; the stream never holds more than `sizes.workers` futures, each
/// on one connection. After a failure nothing more starts; what runs finishes, never dropped
/// inside its transaction, and the first failure is returned.
async fn close_pages(
    ctx: &Ctx,
    now: DateTime<Utc>,
    sizes: SweepSizes,
) -> Result<(usize, usize), ServiceError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    enum Done {
        Batch(Result<(usize, usize), ServiceError>),
        /// The page's due accounts and the cursor past it; None past the last page.
        Page(Result<Option<(Vec<Due>, String)>, ServiceError>),
    }
    type Work = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;
    // Owned arguments: a future borrowing the sweep trips the spawned job's `Send` bound.
    fn batch(ctx: Ctx, now: DateTime<Utc>, due: Vec<Due>) -> Work {
        Box::pin(async move {
            let closed = async {
                let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
                close_batch(&ctx, &mut conn, now, &due).await
            };
            Done::Batch(closed.await)
        })
    }
    // The accounts on a test clock are left out: they close when their clock is advanced.
    fn page(ctx: Ctx, now: DateTime<Utc>, after: String, size: i64) -> Work {
        Box::pin(async move {
            let read = async {
                let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
                let mut page = subs::due_accounts(&mut conn, now, &after, size).await?;
                let Some(last) = page.last() else {
                    return Ok(None);
                };
                let after = last.0.clone();
                let accounts: Vec<String> = page.iter().map(|d| d.0.clone()).collect();
                let clocked = ctx.clock_times(&mut conn, &accounts).await?;
                page.retain(|d| !clocked.contains_key(&d.0));
                Ok(Some((page, after)))
            };
            Done::Page(read.await)
        })
    }
    let mut running: FuturesUnordered<Work> = FuturesUnordered::new();
    let mut waiting: std::collections::VecDeque<Vec<Due>> = Default::default();
    // The cursor of the next page: None while its read runs and after the last page.
    let mut after = Some(String::new());
    let (mut total, mut first_error) = ((0, 0), None);
    loop {
        while first_error.is_none() && running.len() < sizes.workers.max(1) {
            if let Some(due) = waiting.pop_front() {
                running.push(batch(ctx.clone(), now, due));
            } else if let Some(cursor) = after.take() {
                running.push(page(ctx.clone(), now, cursor, sizes.page));
            } else {
                break;
            }
        }
        let Some(done) = running.next().await else {
            break;
        };
        match done {
            Done::Batch(Ok((m, i))) => {
                total.0 += m;
                total.1 += i;
            }
            Done::Page(Ok(Some((due, cursor)))) => {
                waiting.extend(due.chunks(sizes.batch.max(1)).map(<[Due]>::to_vec));
                after = Some(cursor);
            }
            Done::Page(Ok(None)) => {}
            Done::Batch(Err(e)) | Done::Page(Err(e)) => {
                if first_error.is_none() {
                    first_error = Some(e);
                } else {
                    tracing::warn!(error = %e, "period close: a further failure in the same sweep");
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// How long after a cancellation late usage of its periods is still billed.
const LATE_AFTER_CANCEL_DAYS: i64 = 90;

/// Late usage of a canceled subscription's periods has no next period invoice to ride on: each
/// such account gets an invoice of its late-usage corrections alone, for the time since its
/// last one (its `period_end` moves to the end of it). Returns the invoices issued.
async fn bill_late_after_cancellation(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<usize, ServiceError> {
    let canceled =
        subs::recently_canceled(conn, now - chrono::Duration::days(LATE_AFTER_CANCEL_DAYS)).await?;
    if canceled.is_empty() {
        return Ok(0);
    }
    let (accounts, befores): (Vec<String>, Vec<DateTime<Utc>>) = canceled.into_iter().unzip();
    let mut late = store::invoices::accounts_with_late_usage(conn, &accounts, &befores).await?;
    // Accounts on a test clock are billed when their clock is advanced.
    let clocked = ctx.clock_times(conn, &accounts).await?;
    late.retain(|a| !clocked.contains_key(a));
    let mut issued = 0;
    for account in late {
        issued += late_invoice_after_cancellation(ctx, conn, &account, now).await?;
    }
    Ok(issued)
}

/// The late-usage invoice of one canceled account, when it has late usage (0 or 1 issued).
pub(crate) async fn late_invoice_after_cancellation(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    account: &str,
    now: DateTime<Utc>,
) -> Result<usize, ServiceError> {
    let account = account.to_owned();
    {
        let _writing = ctx.checks.write_guard(&account);
        let n = conn
            .transaction::<usize, TxError, _>(async |c| {
                let Some(mut row) = subs::lock_by_account_skip_locked(c, &account).await? else {
                    return Ok(0);
                };
                if row.status != "canceled" {
                    return Ok(0);
                }
                let plan = plan_of(ctx, &row.plan, row.plan_version)?;
                let end = crate::domain::period::anchor_at(now)
                    .max(row.period_end + chrono::Duration::hours(1));
                let span = Period {
                    start: row.period_end,
                    end,
                };
                let Some(draft) = billing::late_only_invoice(
                    ctx,
                    c,
                    &account,
                    span,
                    &plan,
                    row.seats as u32,
                    now,
                    &[],
                )
                .await?
                else {
                    return Ok(0);
                };
                row.period_end = end;
                row.updated_at = now;
                subs::save(c, &row).await?;
                billing::issue(ctx, c, &[draft]).await?;
                Ok(1)
            })
            .await?;
        Ok(n)
    }
}

/// One transaction of the sweep: catches up `due` accounts and issues their invoices. When the
/// batch fails, each of its accounts is retried in a transaction of its own, so one account
/// that cannot close (a plan missing from the catalogue, a value out of range) never holds
/// back the others: it is recorded in `billing_errors`, logged, and retried by the next sweep.
async fn close_batch(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    due: &[Due],
) -> Result<(usize, usize), ServiceError> {
    let set: std::collections::HashSet<&str> = due.iter().map(|d| d.0.as_str()).collect();
    ctx.checks.begin_writes(&set);
    let result = match close_accounts(ctx, conn, now, due).await {
        Err(e) if !is_unavailable(&e) => close_one_by_one(ctx, conn, now, due, e).await,
        other => other,
    };
    for a in due {
        ctx.checks.invalidate(&a.0);
    }
    ctx.checks.end_writes(&set);
    result
}

/// After a batch failed with `e`: each account in its own transaction, recording those that
/// fail on their own.
async fn close_one_by_one(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    due: &[Due],
    e: ServiceError,
) -> Result<(usize, usize), ServiceError> {
    if let [one] = due {
        record_failure(ctx, conn, &one.0, &e, now).await?;
        return Ok((0, 0));
    }
    let mut total = (0, 0);
    for one in due {
        match close_accounts(ctx, conn, now, std::slice::from_ref(one)).await {
            Ok((m, i)) => {
                total.0 += m;
                total.1 += i;
            }
            Err(e) if is_unavailable(&e) => return Err(e),
            Err(e) => record_failure(ctx, conn, &one.0, &e, now).await?,
        }
    }
    Ok(total)
}

/// A failure that says nothing about the account (the database is unreachable): the whole
/// sweep stops and its job retries.
fn is_unavailable(e: &ServiceError) -> bool {
    match e {
        ServiceError::Unavailable(_) | ServiceError::RateLimited(_) => true,
        ServiceError::Store(s) => !matches!(s, StoreError::Query(_)) || s.is_retryable(),
        _ => false,
    }
}

async fn record_failure(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    account: &str,
    e: &ServiceError,
    now: DateTime<Utc>,
) -> Result<(), ServiceError> {
    ctx.metrics.record(|| {
        metrics::counter!("accrue_period_close_accounts_total", "outcome" => "failed").increment(1)
    });
    let code = match e {
        ServiceError::Invalid { code, .. } | ServiceError::Conflict { code, .. } => *code,
        ServiceError::NotFound(_) => "not_found",
        ServiceError::Store(_) => "database_error",
        ServiceError::Unavailable(_) | ServiceError::RateLimited(_) => "unavailable",
    };
    tracing::error!(account, code, error = %e, "period close failed for this account; the other accounts closed, it is retried by the next sweep");
    store::billing_errors::record(conn, account, code, &e.to_string(), now).await?;
    Ok(())
}

/// Catches up `due` accounts in one transaction; resolves their recorded close errors.
async fn close_accounts(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    due: &[Due],
) -> Result<(usize, usize), ServiceError> {
    conn.transaction::<(usize, usize), TxError, _>(async |c| {
        let pre = Prefetched::load(ctx, c, due).await?;
        let mut fx = Effects::default();
        let mut moved = Vec::new();
        let names: Vec<&str> = due.iter().map(|d| d.0.as_str()).collect();
        let mut locked = subs::lock_many_skip_locked(c, &names).await?;
        for (account, _, _) in due {
            let Some(mut row) = locked.remove(account) else {
                continue; // another instance holds it: it is closing it
            };
            if advance(ctx, c, &mut row, now, &mut fx, &pre).await? {
                moved.push(row);
            }
        }
        subs::save_many(c, &moved).await?;
        let accounts: Vec<String> = moved.iter().map(|r| r.account.clone()).collect();
        store::billing_errors::resolve(c, &accounts, now).await?;
        let issued = fx.drafts.len();
        fx.flush(ctx, c).await?;
        Ok((moved.len(), issued))
    })
    .await
    .map_err(ServiceError::from)
}

/// The invoice the current period (or trial) ends with, as it stands now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UpcomingInvoice {
    pub account: String,
    /// `period`, or `start` when a trial converts (the first period's advance fees).
    pub kind: String,
    /// When it will be issued: the end of the current period or trial.
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub issued_at: DateTime<Utc>,
    /// The period it bills: the ending one's usage in arrears (with the next one's advance
    /// fees), or for `start` the first paid period's advance fees.
    pub period: Period,
    pub plan: String,
    pub version: u32,
    pub seats: u32,
    pub currency: String,
    pub lines: Vec<crate::domain::invoice::InvoiceLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

/// The invoice `account`'s subscription will be issued at the end of its current period (or
/// trial) if no more usage arrives: the very catch-up that will run then ([`advance`]), run
/// now on a copy of the subscription in a read-only transaction, its drafts read and nothing
/// written, with the account's credit balance carried into it as issuing does. None when nothing will be invoiced (a free plan, a cancellation with no usage
/// due, a canceled or suspended subscription).
pub async fn upcoming_invoice(
    ctx: &Ctx,
    account: &str,
) -> Result<Option<UpcomingInvoice>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let row = subs::find_by_account(&mut conn, account)
        .await?
        .ok_or_else(|| {
            ServiceError::NotFound(format!("account `{account}` has no subscription"))
        })?;
    let ends = match row.status.as_str() {
        "trialing" => row.trial_end,
        "active" | "past_due" => Some(row.period_end),
        _ => None,
    };
    let Some(at) = ends else {
        return Ok(None);
    };
    let drafts = conn
        .build_transaction()
        .read_only()
        .run::<_, TxError, _>(async |c| {
            let mut copy = row.clone();
            let mut fx = Effects::default();
            advance(ctx, c, &mut copy, at, &mut fx, &Prefetched::default()).await?;
            // Issuing carries the account's credit balance into the invoice: so does this.
            let mut balances = store::accounts::credit_balances(c, &[account.to_owned()]).await?;
            let mut drafts = fx.drafts;
            crate::domain::invoice::carry_credit(&mut drafts, &mut balances);
            Ok(drafts)
        })
        .await?;
    Ok(drafts.into_iter().next().map(|d| UpcomingInvoice {
        account: d.account.clone(),
        kind: d.kind.as_str().to_owned(),
        issued_at: at,
        period: d.period,
        total: d.total(),
        plan: d.plan,
        version: d.plan_version,
        seats: d.seats,
        currency: d.currency.code().to_owned(),
        lines: d.lines,
    }))
}
