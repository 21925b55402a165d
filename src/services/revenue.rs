//! MRR and its movements, written in the transaction of whatever moved it (a subscription
//! change, a closed period's invoice, a dunning step), each with an outbox event; and the
//! retention report (NRR, GRR) over the ledger.

use super::{outbox, Ctx, ServiceError};
use crate::domain::money::Currency;
use crate::domain::plan::PlanRef;
use crate::domain::revenue::{classify, retention, Movement, MovementKind, Retention};
use crate::store::revenue::{self as rev_store, MovementRow, MrrRow, NewMovement};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

/// Why an account's MRR may have moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    PlanUpgrade,
    PlanDowngrade,
    SeatsAdded,
    SeatsRemoved,
    /// A period closed: `usage_growth` or `usage_decline` by the sign of the change.
    Usage,
    TrialConverted,
    DunningSuspension,
    Cancellation,
    Recovered,
}

impl Cause {
    /// The cause of a plan or seat change named like a subscription change kind.
    pub fn of_change(kind: &str, before: Decimal, after: Decimal) -> Cause {
        match kind.trim_end_matches("_scheduled") {
            "upgrade" => Cause::PlanUpgrade,
            "downgrade" => Cause::PlanDowngrade,
            "seats_added" => Cause::SeatsAdded,
            "seats_removed" => Cause::SeatsRemoved,
            _ if after >= before => Cause::PlanUpgrade,
            _ => Cause::PlanDowngrade,
        }
    }

    fn name(self, before: Decimal, after: Decimal) -> &'static str {
        match self {
            Cause::PlanUpgrade => "plan_upgrade",
            Cause::PlanDowngrade => "plan_downgrade",
            Cause::SeatsAdded => "seats_added",
            Cause::SeatsRemoved => "seats_removed",
            Cause::Usage if after >= before => "usage_growth",
            Cause::Usage => "usage_decline",
            Cause::TrialConverted => "trial_converted",
            Cause::DunningSuspension => "dunning_suspension",
            Cause::Cancellation => "cancellation",
            Cause::Recovered => "recovered",
        }
    }
}

/// What an account pays for after an event, and what caused it.
#[derive(Debug, Clone)]
pub struct MrrInput<R = (&'static str, i64)> {
    pub account: String,
    pub at: DateTime<Utc>,
    pub cause: Cause,
    /// The plan version and seats paid for from now on; None: nothing (canceled).
    pub plan: Option<(PlanRef, u32)>,
    /// A period that just closed: its usage revenue (not normalized) replaces the usage part.
    pub usage: Option<Decimal>,
    /// (`subscription_change` | `invoice` | `dunning_step`, id), or what resolves to it
    /// ([`write_movements`]).
    pub reference: R,
}

/// Recomputes the MRR of each input's account (in order) and writes a movement, with its
/// outbox event, for every change. Callers hold the accounts' subscription locks. A caller
/// that issued invoices before (and so holds the invoice counter) records only accounts it
/// invoiced: a conversion takes the account's scorer lock, and only those accounts' locks
/// were taken before the counter ([`apply`] says why).
pub async fn record(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    inputs: &[MrrInput],
) -> Result<usize, StoreError> {
    let moved = apply(ctx, c, inputs).await?;
    write_movements(c, moved, |i| Some(inputs[i].reference)).await
}

/// MRR movements computed and not written yet ([`apply`], then [`write_movements`]).
#[derive(Debug, Default)]
pub struct Moved {
    /// Each with the index of the input that made it.
    movements: Vec<(usize, PendingMovement)>,
    /// Accounts that started paying: (account, when, self-serve).
    conversions: Vec<(String, DateTime<Utc>, bool)>,
}

impl Moved {
    /// The accounts whose conversions are still to be recorded.
    pub fn converting(&self) -> impl Iterator<Item = &str> {
        self.conversions.iter().map(|c| c.0.as_str())
    }

    /// Records the PQL conversions now (they need no reference): a period close writes them
    /// before it takes the invoice counter, whose lock every other batch waits on.
    pub async fn write_conversions(&mut self, c: &mut AsyncPgConnection) -> Result<(), StoreError> {
        let conversions = std::mem::take(&mut self.conversions);
        super::pql::on_conversions(c, &conversions).await
    }
}

/// A movement before its reference is known.
#[derive(Debug)]
struct PendingMovement {
    account: String,
    at: DateTime<Utc>,
    kind: &'static str,
    cause: &'static str,
    before: Decimal,
    after: Decimal,
    currency: String,
}

/// The first half of [`record`]: recomputes and writes the accounts' MRR, and returns the
/// movements (and PQL conversions) to write. Nothing here reads an input's `reference`, so a
/// caller whose references are not known yet (the period close's invoice numbers, taken under
/// the gap-free counter's lock) writes this part before taking them. It takes no lock but the
/// `account_mrr` rows of accounts whose subscription lock the caller holds. The conversions
/// take the scorer's per-account locks, which every path takes before the invoice counter:
/// [`billing::issue`](super::billing::issue) takes those of its invoices' accounts, and a
/// caller that also converts accounts without an invoice takes theirs with them, in one
/// statement ([`Moved::converting`]).
pub async fn apply<R>(
    ctx: &Ctx,
    c: &mut AsyncPgConnection,
    inputs: &[MrrInput<R>],
) -> Result<Moved, StoreError> {
    if inputs.is_empty() {
        return Ok(Moved::default());
    }
    let mut accounts: Vec<String> = inputs.iter().map(|i| i.account.clone()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let mut state: HashMap<String, MrrRow> = rev_store::find_by_accounts(c, &accounts)
        .await?
        .into_iter()
        .map(|r| (r.account.clone(), r))
        .collect();
    let mut touched = Vec::new();
    let mut conversions = Vec::new();
    let mut movements = Vec::new();
    let plans = ctx.plans();
    for (index, inp) in inputs.iter().enumerate() {
        let plan = inp
            .plan
            .as_ref()
            .and_then(|(r, seats)| plans.get(r).map(|p| (p, *seats)));
        let st = state.entry(inp.account.clone()).or_insert_with(|| MrrRow {
            account: inp.account.clone(),
            mrr: Decimal::ZERO,
            usage_mrr: Decimal::ZERO,
            currency: plan.map_or("USD", |(p, _)| p.currency.code()).to_owned(),
            had_mrr: false,
            updated_at: inp.at,
        });
        let (recurring, usage_mrr, currency) = match plan {
            Some((p, seats)) => {
                let months = Decimal::from(p.interval.months());
                let usage = inp.usage.map_or(st.usage_mrr, |u| u / months);
                (
                    p.monthly_recurring(seats),
                    usage,
                    p.currency.code().to_owned(),
                )
            }
            None => (Decimal::ZERO, Decimal::ZERO, st.currency.clone()),
        };
        let before = st.mrr;
        let after = (recurring + usage_mrr).round_dp(9).normalize();
        if let Some(kind) = classify(before, after, st.had_mrr) {
            if kind == MovementKind::New {
                let self_serve = plan.is_none_or(|(p, _)| p.self_serve);
                conversions.push((inp.account.clone(), inp.at, self_serve));
            }
            movements.push((
                index,
                PendingMovement {
                    account: inp.account.clone(),
                    at: inp.at,
                    kind: kind_name(kind),
                    cause: inp.cause.name(before, after),
                    before,
                    after,
                    currency: currency.clone(),
                },
            ));
        }
        st.had_mrr |= !after.is_zero();
        st.mrr = after;
        st.usage_mrr = usage_mrr;
        st.currency = currency;
        st.updated_at = inp.at;
        touched.push(inp.account.clone());
    }
    touched.sort_unstable();
    touched.dedup();
    // The plan moved: quotas and the free-plan signals with it.
    ctx.pql.mark(touched.iter().map(String::as_str));
    let rows: Vec<MrrRow> = touched.iter().filter_map(|a| state.remove(a)).collect();
    // Bulk writes: their foreign-key checks may reuse generic plans (`store::generic_plans`).
    crate::store::generic_plans(c).await?;
    rev_store::upsert_many(c, &rows).await?;
    crate::store::custom_plans(c).await?;
    Ok(Moved {
        movements,
        conversions,
    })
}

/// The second half of [`record`]: writes the movements [`apply`] computed, each with its
/// outbox event, referencing what `reference` says of the input that made it, and the PQL
/// conversions not recorded yet ([`Moved::write_conversions`]). Every MRR change has its
/// movement: an input without a reference is an error, and the caller's transaction (with the
/// MRR [`apply`] wrote) rolls back. Returns how many movements were written.
pub async fn write_movements(
    c: &mut AsyncPgConnection,
    moved: Moved,
    reference: impl Fn(usize) -> Option<(&'static str, i64)>,
) -> Result<usize, StoreError> {
    if moved.movements.is_empty() && moved.conversions.is_empty() {
        return Ok(0);
    }
    let mut movements = Vec::with_capacity(moved.movements.len());
    let mut events = Vec::with_capacity(moved.movements.len());
    for (index, m) in moved.movements {
        let Some((ref_kind, ref_id)) = reference(index) else {
            return Err(StoreError::Message(format!(
                "the MRR movement of account `{}` at {} has no reference",
                m.account, m.at
            )));
        };
        let (before, after) = (
            at_scale(m.before, &m.currency),
            at_scale(m.after, &m.currency),
        );
        events.push(outbox::event(
            &m.account,
            "revenue.movement",
            json!({
                "account": m.account,
                "kind": m.kind,
                "cause": m.cause,
                "mrr_before": before.to_string(),
                "mrr_after": after.to_string(),
                "delta": (after - before).to_string(),
                "currency": m.currency,
                "at": crate::domain::ts::format(&m.at),
                "ref": {"kind": ref_kind, "id": ref_id},
            }),
            m.at,
        ));
        movements.push(NewMovement {
            account: m.account,
            at: m.at,
            kind: m.kind.to_owned(),
            cause: m.cause.to_owned(),
            mrr_before: m.before,
            mrr_after: m.after,
            currency: m.currency,
            ref_kind: ref_kind.to_owned(),
            ref_id,
        });
    }
    // In the order `record` has always written them: movements, conversions, outbox events.
    crate::store::generic_plans(c).await?;
    rev_store::insert_movements(c, &movements).await?;
    crate::store::custom_plans(c).await?;
    super::pql::on_conversions(c, &moved.conversions).await?;
    crate::store::generic_plans(c).await?;
    crate::store::outbox::insert_events(c, &events).await?;
    crate::store::custom_plans(c).await?;
    Ok(movements.len())
}

fn kind_name(k: MovementKind) -> &'static str {
    match k {
        MovementKind::New => "new",
        MovementKind::Expansion => "expansion",
        MovementKind::Contraction => "contraction",
        MovementKind::Churn => "churn",
        MovementKind::Reactivation => "reactivation",
    }
}

fn parse_kind(k: &str) -> MovementKind {
    match k {
        "new" => MovementKind::New,
        "expansion" => MovementKind::Expansion,
        "contraction" => MovementKind::Contraction,
        "churn" => MovementKind::Churn,
        _ => MovementKind::Reactivation,
    }
}

/// `GET /v1/movements`: the ledger in [from, to), oldest first, a page after the movement
/// `after`.
pub async fn movements(
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    account: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<MovementRow>, ServiceError> {
    check_window(from, to)?;
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut rows = rev_store::page_between(&mut conn, from, to, account, after, limit).await?;
    for r in &mut rows {
        r.mrr_before = at_scale(r.mrr_before, &r.currency);
        r.mrr_after = at_scale(r.mrr_after, &r.currency);
    }
    Ok(rows)
}

/// An MRR as shown: at its currency's scale (the ledger keeps nine decimals, so that a yearly
/// fee's twelfths add up; what people read is money).
fn at_scale(mrr: Decimal, currency: &str) -> Decimal {
    match Currency::from_code(currency) {
        Some(c) => c.round(mrr),
        None => mrr.normalize(),
    }
}

fn check_window(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(), ServiceError> {
    if from >= to {
        return Err(ServiceError::invalid_field(
            "invalid_window",
            "from",
            "`from` must be before `to`",
        ));
    }
    Ok(())
}

/// One window of the retention report, per currency (MRR in different currencies is never
/// added together).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RetentionWindow {
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub to: DateTime<Utc>,
    pub currency: String,
    #[serde(flatten)]
    pub retention: Retention,
}

/// Most monthly windows one NRR request computes (each is a pass over the movements).
pub const MAX_NRR_WINDOWS: usize = 120;

/// NRR and GRR of the accounts that had MRR at `from`, over [from, to); with `by_month`, one
/// window per calendar month (UTC) inside it.
pub async fn nrr(
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    by_month: bool,
) -> Result<Vec<RetentionWindow>, ServiceError> {
    check_window(from, to)?;
    let windows = if by_month {
        month_windows(from, to)
    } else {
        vec![(from, to)]
    };
    if windows.len() > MAX_NRR_WINDOWS {
        return Err(ServiceError::invalid(
            "range_too_large",
            format!(
                "by=month over this range makes {} windows; at most {MAX_NRR_WINDOWS} \
                 (ten years) per request",
                windows.len()
            ),
        ));
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut out = Vec::new();
    for (a, b) in windows {
        let starting = rev_store::mrr_before(&mut conn, a).await?;
        let moves = rev_store::between(&mut conn, a, b, None).await?;
        let mut currencies: Vec<String> = starting.iter().map(|s| s.2.clone()).collect();
        currencies.sort_unstable();
        currencies.dedup();
        if currencies.is_empty() {
            currencies.push("USD".into());
        }
        for cur in currencies {
            let start: BTreeMap<String, Decimal> = starting
                .iter()
                .filter(|s| s.2 == cur)
                .map(|s| (s.0.clone(), s.1))
                .collect();
            let ms: Vec<Movement> = moves
                .iter()
                .filter(|m| m.currency == cur)
                .map(|m| Movement {
                    account: m.account.clone(),
                    kind: parse_kind(&m.kind),
                    before: m.mrr_before,
                    after: m.mrr_after,
                })
                .collect();
            let mut r = retention(&start, &ms);
            for v in [
                &mut r.starting_mrr,
                &mut r.expansion,
                &mut r.contraction,
                &mut r.churn,
                &mut r.ending_mrr,
                &mut r.retained_mrr,
            ] {
                *v = at_scale(*v, &cur);
            }
            out.push(RetentionWindow {
                from: a,
                to: b,
                currency: cur,
                retention: r,
            });
        }
    }
    Ok(out)
}

/// How MRR moved in one calendar month, per currency: MRR at its start, the sum of each kind
/// of movement inside it, and MRR at its end (start plus the movements). Unlike the retention
/// cohort, new and reactivated accounts count here.
#[derive(Debug, Clone, Serialize)]
pub struct Waterfall {
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub to: DateTime<Utc>,
    pub currency: String,
    pub starting_mrr: Decimal,
    pub new: Decimal,
    pub expansion: Decimal,
    pub contraction: Decimal,
    pub churn: Decimal,
    pub reactivation: Decimal,
    pub ending_mrr: Decimal,
}

/// The MRR waterfall of each calendar month (UTC) in [from, to), per currency.
pub async fn waterfall(
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Waterfall>, ServiceError> {
    check_window(from, to)?;
    let windows = month_windows(from, to);
    if windows.len() > MAX_NRR_WINDOWS {
        return Err(ServiceError::invalid(
            "range_too_large",
            format!("at most {MAX_NRR_WINDOWS} months per request"),
        ));
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut out = Vec::new();
    for (a, b) in windows {
        let starting = rev_store::mrr_before(&mut conn, a).await?;
        let moves = rev_store::between(&mut conn, a, b, None).await?;
        let mut currencies: Vec<String> = starting
            .iter()
            .map(|s| s.2.clone())
            .chain(moves.iter().map(|m| m.currency.clone()))
            .collect();
        currencies.sort_unstable();
        currencies.dedup();
        for cur in currencies {
            let mut w = Waterfall {
                from: a,
                to: b,
                currency: cur.clone(),
                starting_mrr: starting.iter().filter(|s| s.2 == cur).map(|s| s.1).sum(),
                new: Decimal::ZERO,
                expansion: Decimal::ZERO,
                contraction: Decimal::ZERO,
                churn: Decimal::ZERO,
                reactivation: Decimal::ZERO,
                ending_mrr: Decimal::ZERO,
            };
            for m in moves.iter().filter(|m| m.currency == cur) {
                let delta = m.mrr_after - m.mrr_before;
                match parse_kind(&m.kind) {
                    MovementKind::New => w.new += delta,
                    MovementKind::Expansion => w.expansion += delta,
                    MovementKind::Contraction => w.contraction += delta,
                    MovementKind::Churn => w.churn += delta,
                    MovementKind::Reactivation => w.reactivation += delta,
                }
            }
            w.ending_mrr =
                w.starting_mrr + w.new + w.expansion + w.contraction + w.churn + w.reactivation;
            for v in [
                &mut w.starting_mrr,
                &mut w.new,
                &mut w.expansion,
                &mut w.contraction,
                &mut w.churn,
                &mut w.reactivation,
                &mut w.ending_mrr,
            ] {
                *v = at_scale(*v, &cur);
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn month_windows(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    use chrono::{Datelike, Months, NaiveDate};
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let first = NaiveDate::from_ymd_opt(start.year(), start.month(), 1).unwrap_or_default();
        let next = first
            .checked_add_months(Months::new(1))
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc())
            .unwrap_or(to);
        let end = next.min(to);
        out.push((start, end));
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn month_windows_cut_at_calendar_months_inside_the_range() {
        assert_eq!(
            month_windows(t("2026-11-15T00:00:00Z"), t("2027-01-10T00:00:00Z")),
            vec![
                (t("2026-11-15T00:00:00Z"), t("2026-12-01T00:00:00Z")),
                (t("2026-12-01T00:00:00Z"), t("2027-01-01T00:00:00Z")),
                (t("2027-01-01T00:00:00Z"), t("2027-01-10T00:00:00Z")),
            ]
        );
    }

    #[test]
    fn usage_causes_follow_the_sign_and_lateral_changes_their_delta() {
        let d = Decimal::from;
        assert_eq!(Cause::Usage.name(d(10), d(12)), "usage_growth");
        assert_eq!(Cause::Usage.name(d(12), d(10)), "usage_decline");
        assert_eq!(
            Cause::of_change("lateral", d(10), d(9)),
            Cause::PlanDowngrade
        );
        assert_eq!(
            Cause::of_change("seats_added_scheduled", d(1), d(2)),
            Cause::SeatsAdded
        );
    }
}
