//! Invoices: drafts for closed periods (usage in arrears, late usage recomputed whole, minimum
//! top-up, next period's advance fees), first advance fees, prorated changes; issuing them with
//! the credit balance carried; the billing-errors report, invoice reads, lineage and the CSV
//! export. It calls no other service that moves subscriptions: they call it.
//!
//! Invoices are built as drafts by whatever moves a subscription through time (the lifecycle's
//! catch-up, subscribing, accepting a change, a recovery) and issued at the end of the same
//! transaction, with gap-free numbers. They are final when issued: no code path updates their
//! amounts or lines; corrections are later lines (late usage) or new invoices.
//! Without Stripe configured, invoices are issued for manual collection.

use super::TxError;
use super::{Ctx, ServiceError};
use crate::domain::invoice::{
    advance_fee_lines, arrears_lines, carry_credit, late_period_lines, BilledArrears, InvoiceDraft,
    InvoiceKind, MeterUsage,
};
use crate::domain::meter::Aggregation;
use crate::domain::period::Period;
use crate::domain::plan::{PlanRef, PlanVersion};
use crate::store::invoices::{self as store_inv, InvoiceFilter, InvoiceRow, LineRow};
use crate::store::{self, StoreError};
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// Each catalogue meter's usage of `account` over `period`, from the rollups.
pub async fn usage_of(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    account: &str,
    period: &Period,
) -> Result<BTreeMap<String, MeterUsage>, StoreError> {
    let found =
        store::usage::find_by_account_and_range(c, account, period.start, period.end).await?;
    Ok(found
        .into_iter()
        .filter_map(|(meter, agg)| {
            let aggregation = ctx.meters.get(&meter)?.aggregation;
            Some((meter, meter_usage(&agg, aggregation)))
        })
        .collect())
}

/// Reads a close batch needs, done once for the batch instead of once per account. Anything
/// missing here (a period that moved since, a second period rolled) is read per account.
#[derive(Default)]
pub struct Prefetched {
    /// (account, period start) → usage of that period.
    usage: std::collections::HashMap<(String, DateTime<Utc>), BTreeMap<String, MeterUsage>>,
    /// Accounts known to have no late usage before their closing period.
    no_late: std::collections::HashSet<String>,
}

impl Prefetched {
    /// Prefetches usage and late-usage presence for `due` = (account, period start, end).
    pub async fn load(
        ctx: &Ctx,
        c: &mut AsyncPgConnection,
        due: &[(String, DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<Self, StoreError> {
        let every_meter = store::usage::MeterSelection::new(ctx.meters.all(), None);
        let found = store::usage::find_by_accounts_and_ranges(c, due, &every_meter).await?;
        let mut usage = std::collections::HashMap::new();
        for (account, start, _) in due {
            let meters = found
                .get(account)
                .map(|m| {
                    m.iter()
                        .filter_map(|(meter, st)| {
                            let agg = ctx.meters.get(meter)?.aggregation;
                            Some((meter.clone(), meter_usage(st, agg)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            usage.insert((account.clone(), *start), meters);
        }
        let accounts: Vec<String> = due.iter().map(|d| d.0.clone()).collect();
        let befores: Vec<DateTime<Utc>> = due.iter().map(|d| d.1).collect();
        let late = store_inv::accounts_with_late_usage(c, &accounts, &befores).await?;
        let no_late = accounts.into_iter().filter(|a| !late.contains(a)).collect();
        Ok(Self { usage, no_late })
    }
}

fn meter_usage(agg: &store::usage::RangeAggregate, aggregation: Aggregation) -> MeterUsage {
    MeterUsage {
        quantity: agg.value(aggregation),
        event_count: agg.state.event_count,
        first_event_at: agg.state.first_at,
        last_event_at: agg.state.last_at,
    }
}

/// The invoice closing `closed` (billed on `closed_plan` with `closed_seats`), with the advance
/// fees of `next` when the subscription goes on. `None` when it would hold nothing (free plans).
#[expect(
    clippy::too_many_arguments,
    reason = "the closed and the next period each need their plan, seats and range, and the \
              close its prefetched reads and the drafts not yet issued"
)]
pub(crate) async fn period_invoice(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    account: &str,
    closed: Period,
    closed_plan: &PlanVersion,
    closed_seats: u32,
    next: Option<(&PlanVersion, u32, Period)>,
    now: DateTime<Utc>,
    pre: &Prefetched,
    pending: &[InvoiceDraft],
) -> Result<Option<InvoiceDraft>, TxError> {
    let mut lines = if pre.no_late.contains(account) {
        Vec::new()
    } else {
        late_lines(ctx, c, account, closed.start, pending).await?
    };
    let usage = match pre.usage.get(&(account.to_owned(), closed.start)) {
        Some(u) => u.clone(),
        None => usage_of(ctx, c, account, &closed).await?,
    };
    let fees = fees_counted(c, account, closed_plan, &closed).await?;
    lines.extend(arrears_lines(
        closed_plan,
        closed_seats,
        &closed,
        &usage,
        fees,
    ));
    if let Some((plan, seats, period)) = next {
        lines.extend(advance_fee_lines(plan, seats, &period));
    }
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(InvoiceDraft {
        account: account.to_owned(),
        kind: InvoiceKind::Period,
        period: closed,
        plan: closed_plan.plan.clone(),
        plan_version: closed_plan.version,
        seats: closed_seats,
        currency: closed_plan.currency,
        lines,
        issued_at: now,
        share: None,
    }))
}

/// The invoice ending `period` when nothing of it is billed (a trial canceled at its end): only
/// the late-usage corrections of earlier periods, when there are any, which would otherwise
/// wait for a next period invoice that never comes.
#[expect(
    clippy::too_many_arguments,
    reason = "the period, the plan it was on, and the drafts not yet issued"
)]
pub(crate) async fn late_only_invoice(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    account: &str,
    period: Period,
    plan: &PlanVersion,
    seats: u32,
    now: DateTime<Utc>,
    pending: &[InvoiceDraft],
) -> Result<Option<InvoiceDraft>, TxError> {
    let lines = late_lines(ctx, c, account, period.start, pending).await?;
    Ok((!lines.is_empty()).then(|| InvoiceDraft {
        account: account.to_owned(),
        kind: InvoiceKind::Period,
        period,
        plan: plan.plan.clone(),
        plan_version: plan.version,
        seats,
        currency: plan.currency,
        lines,
        issued_at: now,
        share: None,
    }))
}

/// The arrears invoice of `ended`, the first part of the period `full` that a change of billing
/// interval cut short: its usage, and the minimum commitment in proportion to the time used.
#[expect(
    clippy::too_many_arguments,
    reason = "the ended part, the whole period, and the plan it was billed on"
)]
pub(crate) async fn partial_period_invoice(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    account: &str,
    ended: Period,
    full: &Period,
    plan: &PlanVersion,
    seats: u32,
    now: DateTime<Utc>,
) -> Result<Option<InvoiceDraft>, TxError> {
    let used = Decimal::from(ended.seconds()) / Decimal::from(full.seconds().max(1));
    let plan = scaled(ctx, plan, used);
    let mut lines = late_lines(ctx, c, account, ended.start, &[]).await?;
    let usage = usage_of(ctx, c, account, &ended).await?;
    // The scaled plan's fees are the share of the fees kept once the change credits the rest.
    lines.extend(arrears_lines(&plan, seats, &ended, &usage, None));
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(InvoiceDraft {
        account: account.to_owned(),
        kind: InvoiceKind::Period,
        period: ended,
        plan: plan.plan.clone(),
        plan_version: plan.version,
        seats,
        currency: plan.currency,
        lines,
        issued_at: now,
        share: Some(used),
    }))
}

/// The recurring fees that count toward `plan`'s minimum for `period`: those billed for it
/// ([`store_inv::fees_billed_for_period`]). Read only when the plan has a minimum.
async fn fees_counted(
    c: &mut AsyncPgConnection,
    account: &str,
    plan: &PlanVersion,
    period: &Period,
) -> Result<Option<Decimal>, StoreError> {
    if plan.minimum.is_none() {
        return Ok(None);
    }
    store_inv::fees_billed_for_period(c, account, period.start, period.end).await
}

/// Late-usage corrections for invoiced periods before `before` whose usage changed since
/// billed: each such period's arrears recomputed whole ([`late_period_lines`]). `pending` are
/// the invoices this transaction drafted and has not issued yet: what they bill counts as
/// billed, so a catch-up that closes several periods corrects each late period once.
async fn late_lines(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    account: &str,
    before: DateTime<Utc>,
    pending: &[InvoiceDraft],
) -> Result<Vec<crate::domain::invoice::InvoiceLine>, TxError> {
    let mut lines = Vec::new();
    let plans = ctx.plans();
    for p in store_inv::periods_with_late_usage(c, account, before).await? {
        let Some(plan) = plans.get(&PlanRef {
            plan: p.plan.clone(),
            version: p.plan_version as u32,
        }) else {
            continue;
        };
        let period = Period {
            start: p.start,
            end: p.end,
        };
        let usage = usage_of(ctx, c, account, &period).await?;
        let mut billed = BilledArrears::default();
        for b in store_inv::billed_for_period(c, account, p.start).await? {
            add_billed(&mut billed, &b.meter, b.quantity, b.amount);
        }
        for l in pending
            .iter()
            .filter(|d| d.account == account)
            .flat_map(|d| &d.lines)
            .filter(|l| l.usage_from == Some(p.start))
        {
            let meter = l.meter.as_deref().unwrap_or_default();
            if !meter.is_empty() || l.kind == "minimum_top_up" {
                add_billed(&mut billed, meter, l.quantity, l.amount);
            }
        }
        // A cut-short period is recomputed at the share it was billed at.
        let (plan, fees) = match p.period_share {
            Some(share) => (scaled(ctx, plan, share), None),
            None => (plan.clone(), fees_counted(c, account, plan, &period).await?),
        };
        lines.extend(late_period_lines(
            &plan,
            p.seats as u32,
            &period,
            &usage,
            &billed,
            fees,
        ));
    }
    Ok(lines)
}

fn add_billed(billed: &mut BilledArrears, meter: &str, quantity: Decimal, amount: Decimal) {
    if meter.is_empty() {
        billed.top_up += amount;
    } else {
        let e = billed.meters.entry(meter.to_owned()).or_default();
        e.0 += quantity;
        e.1 += amount;
    }
}

/// `plan` priced for `used`, the share of a whole period that a cut-short period covers: its
/// recurring fees, its minimum, and the prices of its peak meters (`max`, `latest`,
/// `unique_count`: a period charges their peak once, whatever its length) in proportion.
/// Charges on meters that add up over time (`sum`, `count`) keep their prices: the usage itself
/// is what the shorter period had.
fn scaled(ctx: &Ctx, plan: &PlanVersion, used: Decimal) -> PlanVersion {
    use crate::domain::plan::ChargeModel;
    let mut s = plan.clone();
    s.minimum = plan.minimum.map(|m| m * used);
    s.base_fee = plan.base_fee * used;
    if let Some(seats) = s.seats.as_mut() {
        seats.unit_amount *= used;
    }
    for charge in &mut s.charges {
        let peak = ctx.meters.get(&charge.meter).is_some_and(|m| {
            matches!(
                m.aggregation,
                Aggregation::Max | Aggregation::Latest | Aggregation::UniqueCount
            )
        });
        if !peak {
            continue;
        }
        match &mut charge.model {
            ChargeModel::PerUnit { unit_amount } => *unit_amount *= used,
            ChargeModel::Graduated { tiers } | ChargeModel::Volume { tiers } => {
                for t in tiers {
                    t.unit_amount *= used;
                    t.flat_amount *= used;
                }
            }
            ChargeModel::Package { package_amount, .. } => *package_amount *= used,
        }
    }
    s
}

/// The first advance fees of a subscription period, when there are any.
pub fn start_invoice(
    account: &str,
    plan: &PlanVersion,
    seats: u32,
    period: Period,
    now: DateTime<Utc>,
) -> Option<InvoiceDraft> {
    let lines = advance_fee_lines(plan, seats, &period);
    (!lines.is_empty()).then(|| InvoiceDraft {
        account: account.to_owned(),
        kind: InvoiceKind::Start,
        period,
        plan: plan.plan.clone(),
        plan_version: plan.version,
        seats,
        currency: plan.currency,
        lines,
        issued_at: now,
        share: None,
    })
}

/// Issues drafts inside the caller's transaction, carrying credit between each account's
/// invoices (a negative total becomes the account's credit balance, which later invoices use:
/// [`carry_credit`]); with a payment rail, each invoice with something to collect gets its
/// collection row, due at once.
///
/// It takes the scorer's locks of the drafts' accounts before the gap-free counter: a
/// conversion recorded later in the transaction (a signup's) then finds its lock held, and no
/// path waits for a scorer's lock while it holds the counter, which every batch of a period
/// close waits on (after its own scorer's locks: a cycle through the scorer otherwise).
pub async fn issue(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    drafts: &[InvoiceDraft],
) -> Result<Vec<i64>, StoreError> {
    let collection = ctx.collection();
    let mut drafts = drafts.to_vec();
    let accounts: Vec<String> = {
        let mut a: Vec<String> = drafts.iter().map(|d| d.account.clone()).collect();
        a.sort();
        a.dedup();
        a
    };
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    store::pql::lock_accounts(c, &accounts).await?;
    let mut balances = store::accounts::credit_balances(c, &accounts).await?;
    let before = balances.clone();
    carry_credit(&mut drafts, &mut balances);
    // What changed, applied as increments (the issuing account's subscription lock is held;
    // a concurrent void can only add credit, and an increment keeps it).
    let deltas: std::collections::BTreeMap<String, Decimal> = balances
        .iter()
        .map(|(a, b)| (a.clone(), *b - before.get(a).copied().unwrap_or_default()))
        .filter(|(_, d)| !d.is_zero())
        .collect();
    store::accounts::add_to_credit_balances(c, &deltas).await?;
    let drafts = &drafts[..];
    let numbers = store_inv::issue(c, drafts, collection).await?;
    if collection != super::MANUAL {
        let rows: Vec<_> = drafts
            .iter()
            .zip(&numbers)
            .filter(|(d, _)| d.total() > Decimal::ZERO)
            .map(|(d, n)| store::payments::PaymentRow::pending(&d.account, *n, d.issued_at))
            .collect();
        store::payments::insert_many(c, &rows).await?;
    }
    Ok(numbers)
}

/// `GET /v1/reports/billing-errors`: accounts whose period close failed and has not succeeded
/// since, by account, after the cursor.
pub async fn billing_errors(
    ctx: &Ctx,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<store::billing_errors::BillingErrorRow>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(store::billing_errors::open(&mut conn, after, limit).await?)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Invoice {
    #[serde(flatten)]
    pub invoice: InvoiceRow,
    pub lines: Vec<LineRow>,
    /// Its collection through the payment rail (None: manual or nothing to collect).
    pub payment: Option<store::payments::PaymentRow>,
    /// How finance settled it outside the rail (paid, void with its credit note, written off).
    pub settlement: Option<store::settlements::SettlementRow>,
}

/// Amounts at the currency's minor unit and quantities without trailing zeros, as the API and
/// the export show them (the columns keep 9 decimal places).
pub(crate) fn present(inv: &mut InvoiceRow, lines: &mut [LineRow]) {
    let exp = crate::domain::money::Currency::from_code(&inv.currency).map_or(2, |c| c.exponent());
    inv.total.rescale(exp);
    for l in lines {
        l.amount.rescale(exp);
        l.quantity = l.quantity.normalize();
    }
}

pub async fn get_invoice(
    ctx: &Ctx,
    number: i64,
    only_account: Option<&str>,
) -> Result<Invoice, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let not_found = || ServiceError::NotFound(format!("invoice {number} not found"));
    let account = store_inv::account_of_number(&mut conn, number)
        .await?
        .ok_or_else(not_found)?;
    if only_account.is_some_and(|a| a != account) {
        return Err(not_found());
    }
    // The invoice and its payment are read in one snapshot: collection commits both together,
    // and two separate reads could show a paid payment on an open invoice.
    let (found, mut payment, mut settlement) = conn
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run::<_, StoreError, _>(async |c| {
            let found = store_inv::find_by_account_and_number(c, &account, number).await?;
            let payment = store::payments::find_by_account_and_numbers(c, &account, &[number])
                .await?
                .pop();
            let settlement = store::settlements::find(c, &account, number).await?;
            Ok((found, payment, settlement))
        })
        .await?;
    let (mut invoice, mut lines) = found.ok_or_else(not_found)?;
    present(&mut invoice, &mut lines);
    if let Some(p) = payment.as_mut() {
        p.amount_paid.rescale(invoice.total.scale());
    }
    if let Some(s) = settlement.as_mut() {
        s.amount.rescale(invoice.total.scale());
        s.credit_restored.rescale(invoice.total.scale());
        if only_account.is_some() {
            // The customer's own view: not finance's notes or who wrote them.
            s.settled_by.clear();
            s.reason = None;
        }
    }
    Ok(Invoice {
        invoice,
        lines,
        payment,
        settlement,
    })
}

pub async fn list_invoices(
    ctx: &Ctx,
    filter: &InvoiceFilter,
) -> Result<Vec<InvoiceRow>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut rows = store_inv::list(&mut conn, filter).await?;
    for r in &mut rows {
        present(r, &mut []);
    }
    Ok(rows)
}

/// The newest `limit` invoices of `account`, newest first (the portal's list).
pub async fn recent_invoices(
    ctx: &Ctx,
    account: &str,
    limit: i64,
) -> Result<Vec<InvoiceRow>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut rows = store_inv::latest_by_account(&mut conn, account, limit).await?;
    for r in &mut rows {
        present(r, &mut []);
    }
    Ok(rows)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LineLineage {
    pub line_no: i32,
    pub meter: String,
    pub event_type: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub usage_from: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub usage_to: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub event_count: Option<i64>,
    /// The hourly aggregates of the range as they are now (they include usage that arrived
    /// after the invoice, which later invoices bill as late usage).
    pub rollups: Vec<store_inv::LineageRollup>,
    /// The events the line priced: the meter's type and filter, in the range, received before
    /// the invoice was issued; oldest first, at most `limit`.
    pub events: Vec<store_inv::LineageEvent>,
    /// Whether events were left out to keep the answer under [`MAX_LINEAGE_BYTES`].
    pub events_truncated: bool,
}

/// Most bytes of event properties one lineage answer carries (all lines together).
pub const MAX_LINEAGE_BYTES: usize = 4 * 1024 * 1024;

/// For each usage line of an invoice: the rollups and the events behind it.
pub async fn lineage(
    ctx: &Ctx,
    number: i64,
    only_account: Option<&str>,
    limit: i64,
) -> Result<Vec<LineLineage>, ServiceError> {
    let inv = get_invoice(ctx, number, only_account).await?;
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let account = inv.invoice.account.clone();
    let mut out = Vec::new();
    let mut budget = MAX_LINEAGE_BYTES;
    for l in inv.lines {
        let (Some(meter_code), Some(from), Some(to)) = (l.meter.clone(), l.usage_from, l.usage_to)
        else {
            continue;
        };
        let Some(meter) = ctx.meters.get(&meter_code) else {
            continue;
        };
        let rollups =
            store_inv::rollups_for_line(&mut conn, &account, &meter_code, from, to).await?;
        let filter = serde_json::to_value(&meter.filter).unwrap_or_default();
        let mut events = store_inv::events_for_line(
            &mut conn,
            &account,
            &meter.event_type,
            &filter,
            from,
            to,
            inv.invoice.issued_at,
            limit,
        )
        .await?;
        // The answer is bounded in bytes too, not only in events.
        let mut events_truncated = false;
        let mut kept = 0;
        for e in &events {
            let size = serde_json::to_vec(&e.properties).map_or(0, |v| v.len()) + 128;
            if budget < size {
                events_truncated = true;
                break;
            }
            budget -= size;
            kept += 1;
        }
        events.truncate(kept);
        out.push(LineLineage {
            line_no: l.line_no,
            meter: meter_code,
            event_type: meter.event_type.clone(),
            usage_from: from,
            usage_to: to,
            quantity: l.quantity,
            event_count: l.event_count,
            rollups,
            events,
            events_truncated,
        });
    }
    Ok(out)
}

/// Writes the invoices whose period starts in `[from, to)` and their lines as CSV, one row per
/// line with the invoice's fields repeated.
pub async fn export_csv<W: std::io::Write>(
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    out: W,
) -> Result<usize, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let rows = store_inv::lines_of_period(&mut conn, from, to).await?;
    let mut w = csv::Writer::from_writer(out);
    let io = |e: csv::Error| {
        ServiceError::invalid("export_failed", format!("cannot write the CSV: {e}"))
    };
    w.write_record([
        "invoice",
        "account",
        "kind",
        "period_start",
        "period_end",
        "plan",
        "version",
        "currency",
        "invoice_total",
        "status",
        "collection",
        "issued_at",
        "line_no",
        "line_kind",
        "meter",
        "quantity",
        "amount",
        "event_count",
        "first_event_at",
        "last_event_at",
        "description",
    ])
    .map_err(io)?;
    let t = |d: Option<DateTime<Utc>>| d.map(|d| crate::domain::ts::format(&d)).unwrap_or_default();
    for (i, l) in &rows {
        let (mut i, mut l) = (i.clone(), l.clone());
        present(&mut i, std::slice::from_mut(&mut l));
        w.write_record([
            i.number.to_string(),
            i.account.clone(),
            i.kind.clone(),
            crate::domain::ts::format(&i.period_start),
            crate::domain::ts::format(&i.period_end),
            i.plan.clone(),
            i.plan_version.to_string(),
            i.currency.clone(),
            i.total.to_string(),
            i.status.clone(),
            i.collection.clone(),
            crate::domain::ts::format(&i.issued_at),
            l.line_no.to_string(),
            l.kind.clone(),
            l.meter.clone().unwrap_or_default(),
            l.quantity.to_string(),
            l.amount.to_string(),
            l.event_count.map(|n| n.to_string()).unwrap_or_default(),
            t(l.first_event_at),
            t(l.last_event_at),
            l.description.clone(),
        ])
        .map_err(io)?;
    }
    w.flush().map_err(|e| {
        ServiceError::invalid("export_failed", format!("cannot write the CSV: {e}"))
    })?;
    Ok(rows.len())
}
