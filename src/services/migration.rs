//! Governed plan migrations: move every subscriber of one plan version to another, after a
//! dry run that replays each subscriber's last closed period under the new version and shows
//! the revenue impact. The real run moves them at their renewal (a scheduled change, applied
//! by the billing cycle) or now (a prorated change, exactly as an accepted quote), writing the
//! revenue movements and one audit record.

use super::auth::Principal;
use super::lifecycle::Scheduled;
use super::subscriptions::{self as sub_service, Effective, QuoteRequest};
use super::{billing, Ctx, ServiceError};
use crate::catalog::plans::content_hash;
use crate::domain::period::{period_containing, Period};
use crate::domain::plan::{PlanRef, PlanVersion};
use crate::domain::rating::{rate_period, LineKind};
use crate::domain::scope::Scope;
use crate::store::{self, subscriptions as subs, StoreError};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    AtRenewal,
    Now,
}

/// One subscriber's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationLine {
    pub account: String,
    pub seats: u32,
    pub status: String,
    /// The last closed period replayed (None: none has closed yet).
    pub replayed_period: Option<Period>,
    /// That period rated under the current version and under the new one.
    #[serde(with = "rust_decimal::serde::str")]
    pub current_version_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub new_version_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub period_delta: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub mrr_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub mrr_after: Decimal,
    /// Why the account is not moved (seats outside the new version's bounds).
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    pub when: When,
    pub currency: String,
    pub accounts: Vec<MigrationLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_current_version_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_new_version_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_period_delta: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_mrr_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_mrr_after: Decimal,
    pub migrated: usize,
}

fn version_of(ctx: &Ctx, r: &PlanRef) -> Result<PlanVersion, ServiceError> {
    ctx.plans()
        .get(r)
        .cloned()
        .ok_or_else(|| ServiceError::NotFound(format!("plan version {r} is not in the catalogue")))
}

/// Plans (`dry_run`) or runs a migration of every active, past-due or trialing subscriber of
/// `from` to `to`.
pub async fn migrate(
    ctx: &Ctx,
    from: &PlanRef,
    to: &PlanRef,
    dry_run: bool,
    when: When,
    actor: &str,
) -> Result<MigrationReport, ServiceError> {
    let (old, new) = (&version_of(ctx, from)?, &version_of(ctx, to)?);
    if from == to {
        return Err(ServiceError::invalid(
            "no_change",
            "the two versions are the same",
        ));
    }
    if old.currency != new.currency {
        return Err(ServiceError::invalid(
            "currency_mismatch",
            format!("{from} bills in {}, {to} in {}", old.currency, new.currency),
        ));
    }
    if old.interval != new.interval {
        return Err(ServiceError::invalid(
            "interval_mismatch",
            format!("{from} and {to} have different billing intervals: migrate through quotes"),
        ));
    }
    let now = ctx.clock.now();
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    for r in [from, to] {
        if store::plans::find_by_plan_and_version(&mut conn, &r.plan, r.version as i32)
            .await?
            .is_none()
        {
            return Err(ServiceError::invalid(
                "not_published",
                format!("{r} is not published: run `accrue plans publish` first"),
            ));
        }
    }
    let rows = subs::by_plan_version(&mut conn, &from.plan, from.version as i32).await?;
    let accounts: Vec<String> = rows.iter().map(|r| r.account.clone()).collect();
    let mrr: BTreeMap<String, (Decimal, Decimal)> =
        store::revenue::find_by_accounts(&mut conn, &accounts)
            .await?
            .into_iter()
            .map(|m| (m.account, (m.mrr, m.usage_mrr)))
            .collect();
    let months = old.interval.months();
    let mut report = MigrationReport {
        from: from.to_string(),
        to: to.to_string(),
        dry_run,
        when,
        currency: old.currency.code().to_owned(),
        accounts: Vec::with_capacity(rows.len()),
        total_current_version_amount: Decimal::ZERO,
        total_new_version_amount: Decimal::ZERO,
        total_period_delta: Decimal::ZERO,
        total_mrr_before: Decimal::ZERO,
        total_mrr_after: Decimal::ZERO,
        migrated: 0,
    };
    for row in &rows {
        let seats = row.seats as u32;
        // The last closed period: the one before the current, if the subscription had it.
        let last = period_containing(row.anchor, months, row.period_start - Duration::seconds(1));
        let replayed = (last.start >= row.created_at - Duration::hours(1)
            && row.status != "trialing")
            .then_some(last);
        let (current_amount, new_amount, new_usage_mrr) = match replayed {
            Some(p) => {
                let usage: BTreeMap<String, Decimal> =
                    billing::usage_of(ctx, &mut conn, &row.account, &p)
                        .await?
                        .into_iter()
                        .map(|(m, u)| (m, u.quantity))
                        .collect();
                // Replayed with the seats that period was billed with, not today's.
                let then = store::invoices::seats_of_period(&mut conn, &row.account, p.start)
                    .await?
                    .map_or(seats, |s| s as u32);
                let rated = rate_period(new, &usage, then);
                // Usage MRR as the ledger counts it: the period's usage lines, per month, here
                // at the new version's prices.
                let usage_lines: Decimal = rated
                    .lines
                    .iter()
                    .filter(|l| l.kind == LineKind::Usage)
                    .map(|l| l.amount)
                    .sum();
                (
                    rate_period(old, &usage, then).total,
                    rated.total,
                    Some(usage_lines / Decimal::from(new.interval.months())),
                )
            }
            None => (Decimal::ZERO, Decimal::ZERO, None),
        };
        let (mrr_before, usage_mrr) = mrr.get(&row.account).copied().unwrap_or_default();
        let paying = row.status != "trialing";
        let mrr_after = if paying {
            (new.monthly_recurring(seats) + new_usage_mrr.unwrap_or(usage_mrr)).normalize()
        } else {
            Decimal::ZERO
        };
        let pending: Option<Scheduled> = row
            .scheduled
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        let skipped = match (&pending, when) {
            // The customer's own scheduled change wins over a migration at renewal.
            (Some(p), When::AtRenewal) if p.cancel => Some(format!(
                "a cancellation is scheduled for {}",
                crate::domain::ts::format(&p.at)
            )),
            (Some(p), When::AtRenewal) if p.plan != from.plan => Some(format!(
                "a change to {}@{} is scheduled for {}",
                p.plan,
                p.version,
                crate::domain::ts::format(&p.at)
            )),
            _ => None,
        }
        .or_else(|| {
            new.seats.as_ref().and_then(|s| {
                (seats < s.min || s.max.is_some_and(|m| seats > m))
                    .then(|| format!("{seats} seats are outside {to}'s bounds"))
            })
        });
        let line = MigrationLine {
            account: row.account.clone(),
            seats,
            status: row.status.clone(),
            replayed_period: replayed,
            current_version_amount: current_amount,
            new_version_amount: new_amount,
            period_delta: new_amount - current_amount,
            mrr_before: mrr_before.normalize(),
            mrr_after: if skipped.is_some() {
                mrr_before.normalize()
            } else {
                mrr_after
            },
            skipped,
        };
        report.total_current_version_amount += line.current_version_amount;
        report.total_new_version_amount += line.new_version_amount;
        report.total_period_delta += line.period_delta;
        report.total_mrr_before += line.mrr_before;
        report.total_mrr_after += line.mrr_after;
        report.accounts.push(line);
    }
    drop(conn);
    if dry_run {
        return Ok(report);
    }
    for line in report.accounts.iter().filter(|l| l.skipped.is_none()) {
        let moved = match when {
            When::Now => {
                move_now(ctx, &line.account, from, to).await?;
                true
            }
            When::AtRenewal => schedule(ctx, &line.account, from, to, line.seats, now).await?,
        };
        report.migrated += usize::from(moved);
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let detail = format!(
        "migrated {} subscribers from {from} ({}), MRR {} -> {} {}",
        report.migrated,
        match when {
            When::Now => "now",
            When::AtRenewal => "at renewal",
        },
        report.total_mrr_before,
        report.total_mrr_after,
        report.currency
    );
    store::plans::append_audit(
        &mut conn,
        store::plans::NewAuditEntry {
            action: "migrated",
            plan: &to.plan,
            version: to.version as i32,
            content_hash: &content_hash(new),
            actor,
            detail: &detail,
            at: now,
        },
    )
    .await?;
    Ok(report)
}

/// A prorated change now: a quote (the operator may move a decrease now) and its acceptance,
/// keyed so a repeated migration does not apply twice.
async fn move_now(
    ctx: &Ctx,
    account: &str,
    from: &PlanRef,
    to: &PlanRef,
) -> Result<(), ServiceError> {
    let operator = Principal {
        key_id: 0,
        name: "plan migration".into(),
        scopes: vec![Scope::Admin, Scope::Billing],
        account: None,
    };
    let req = QuoteRequest {
        plan: Some(to.plan.clone()),
        version: Some(to.version),
        seats: None,
        cancel: false,
        trial: false,
        effective: Some(Effective::Now),
        operator_override: true,
    };
    let q = sub_service::quote(ctx, &operator, account, req).await?;
    sub_service::accept(
        ctx,
        account,
        &q.id,
        &format!("migration:{from}->{to}:{account}"),
    )
    .await?;
    Ok(())
}

/// A change scheduled for the period end, applied by the billing cycle.
async fn schedule(
    ctx: &Ctx,
    account: &str,
    from: &PlanRef,
    to: &PlanRef,
    seats: u32,
    now: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    let scheduled = Scheduled {
        plan: to.plan.clone(),
        version: to.version,
        seats,
        cancel: false,
        at: now,
    };
    sub_service::schedule_migration(ctx, account, from, scheduled).await
}
