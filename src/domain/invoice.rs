//! Invoices as the billing cycle writes them: which lines a closed period produces, and how
//! late usage of an already-invoiced period is billed. Pure: usage comes in, lines come out.

use crate::domain::money::Currency;
use crate::domain::period::Period;
use crate::domain::plan::PlanVersion;
use crate::domain::rating::{charge_amount, minimum_top_up, rate_period, LineKind};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// What an invoice is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceKind {
    /// A closed period: its usage in arrears, late usage, the minimum top-up, and the advance
    /// fees of the period that starts.
    Period,
    /// The first advance fees of a subscription (or of a converted trial).
    Start,
    /// A prorated mid-period change, collected at once.
    Change,
}

impl InvoiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceKind::Period => "period",
            InvoiceKind::Start => "start",
            InvoiceKind::Change => "change",
        }
    }
}

/// One meter's usage over a range, as the rollups give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeterUsage {
    pub quantity: Decimal,
    pub event_count: i64,
    pub first_event_at: Option<DateTime<Utc>>,
    pub last_event_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InvoiceLine {
    /// base_fee, seats, usage, late_usage, minimum_top_up, proration_credit, proration_charge
    pub kind: String,
    pub meter: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub description: String,
    pub event_count: Option<i64>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub first_event_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub last_event_at: Option<DateTime<Utc>>,
    /// The range a line prices: the usage of a usage, late-usage or top-up line (its lineage),
    /// the time a fee or proration line pays for.
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub usage_from: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub usage_to: Option<DateTime<Utc>>,
}

impl InvoiceLine {
    fn fee(kind: &str, quantity: Decimal, amount: Decimal, description: String) -> Self {
        Self {
            kind: kind.to_owned(),
            meter: None,
            quantity,
            amount,
            description,
            event_count: None,
            first_event_at: None,
            last_event_at: None,
            usage_from: None,
            usage_to: None,
        }
    }
}

/// An invoice before it gets its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceDraft {
    pub account: String,
    pub kind: InvoiceKind,
    pub period: Period,
    pub plan: String,
    pub plan_version: u32,
    pub seats: u32,
    pub currency: Currency,
    pub lines: Vec<InvoiceLine>,
    pub issued_at: DateTime<Utc>,
    /// The share of the whole period this invoice covers when a change cut it short.
    pub share: Option<Decimal>,
}

impl InvoiceDraft {
    /// The total: the sum of the (already rounded) lines.
    pub fn total(&self) -> Decimal {
        self.currency
            .round(self.lines.iter().map(|l| l.amount).sum())
    }
}

/// Advance fees (base, seats) of a period, one line each, rounded once.
pub fn advance_fee_lines(plan: &PlanVersion, seats: u32, period: &Period) -> Vec<InvoiceLine> {
    rate_period(plan, &BTreeMap::new(), seats)
        .lines
        .into_iter()
        .filter(|l| matches!(l.kind, LineKind::BaseFee | LineKind::Seats) && !l.amount.is_zero())
        .map(|l| {
            let kind = if l.kind == LineKind::BaseFee {
                "base_fee"
            } else {
                "seats"
            };
            InvoiceLine {
                usage_from: Some(period.start),
                usage_to: Some(period.end),
                ..InvoiceLine::fee(
                    kind,
                    l.quantity,
                    l.amount,
                    format!(
                        "{} ({} to {})",
                        l.description,
                        period.start.format("%Y-%m-%d"),
                        period.end.format("%Y-%m-%d")
                    ),
                )
            }
        })
        .collect()
}

/// Lines of a closed period: each charge's usage in arrears (zero usage still shows), then the
/// minimum top-up of the closed period. What counts toward the minimum is what the period
/// billed: its usage and `fees`, the recurring fees charged for it (advance fees net of the
/// credits and charges of changes made during it); `None` counts the plan's full fees for
/// `seats`.
pub fn arrears_lines(
    plan: &PlanVersion,
    seats: u32,
    period: &Period,
    usage: &BTreeMap<String, MeterUsage>,
    fees: Option<Decimal>,
) -> Vec<InvoiceLine> {
    let mut lines = Vec::new();
    let quantities: BTreeMap<String, Decimal> =
        usage.iter().map(|(m, u)| (m.clone(), u.quantity)).collect();
    let mut rated = rate_period(plan, &quantities, seats);
    if let Some(fees) = fees {
        rated.lines.retain(|l| l.kind == LineKind::Usage);
        let counted = fees + rated.lines.iter().map(|l| l.amount).sum::<Decimal>();
        rated.lines.extend(minimum_top_up(plan, counted));
    }
    for l in &rated.lines {
        match l.kind {
            LineKind::Usage => {
                let meter = l.meter.clone().unwrap_or_default();
                let u = usage.get(&meter).cloned().unwrap_or_default();
                lines.push(InvoiceLine {
                    kind: "usage".into(),
                    meter: Some(meter),
                    quantity: l.quantity,
                    amount: l.amount,
                    description: l.description.clone(),
                    event_count: Some(u.event_count),
                    first_event_at: u.first_event_at,
                    last_event_at: u.last_event_at,
                    usage_from: Some(period.start),
                    usage_to: Some(period.end),
                });
            }
            LineKind::MinimumTopUp => lines.push(InvoiceLine {
                usage_from: Some(period.start),
                usage_to: Some(period.end),
                ..InvoiceLine::fee(
                    "minimum_top_up",
                    Decimal::ONE,
                    l.amount,
                    l.description.clone(),
                )
            }),
            LineKind::BaseFee | LineKind::Seats => {}
        }
    }
    lines
}

/// A late-usage line for one meter of an invoiced period: what the period's usage is worth now
/// minus what was already billed for it. `None` when nothing changed.
pub fn late_usage_line(
    plan: &PlanVersion,
    meter: &str,
    period: &Period,
    now: &MeterUsage,
    billed_quantity: Decimal,
    billed_amount: Decimal,
) -> Option<InvoiceLine> {
    let charge = plan.charges.iter().find(|c| c.meter == meter)?;
    let currency = plan.currency;
    let worth = currency.round(charge_amount(&charge.model, now.quantity));
    let amount = worth - billed_amount;
    let quantity = now.quantity - billed_quantity;
    if amount.is_zero() && quantity.is_zero() {
        return None;
    }
    Some(InvoiceLine {
        kind: "late_usage".into(),
        meter: Some(meter.to_owned()),
        quantity: quantity.normalize(),
        amount,
        description: format!(
            "{meter}: late usage for {} to {} (now {}, billed {})",
            period.start.format("%Y-%m-%d"),
            period.end.format("%Y-%m-%d"),
            now.quantity.normalize(),
            billed_quantity.normalize()
        ),
        event_count: Some(now.event_count),
        first_event_at: now.first_event_at,
        last_event_at: now.last_event_at,
        usage_from: Some(period.start),
        usage_to: Some(period.end),
    })
}

/// What has been billed so far for one period's arrears: per meter (quantity, amount), and the
/// minimum top-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BilledArrears {
    pub meters: BTreeMap<String, (Decimal, Decimal)>,
    pub top_up: Decimal,
}

/// The corrections a period's late usage calls for: its whole arrears (usage and minimum
/// top-up together) recomputed from `usage` as it stands now, less what was billed, as a
/// `late_usage` line per meter that moved and a `minimum_top_up` line when the top-up moved.
/// Late usage first fills the shortfall under the minimum, so a period never costs more than
/// `max(minimum, actual)`. `fees` are the period's recurring fees as [`arrears_lines`] counts them.
pub fn late_period_lines(
    plan: &PlanVersion,
    seats: u32,
    period: &Period,
    usage: &BTreeMap<String, MeterUsage>,
    billed: &BilledArrears,
    fees: Option<Decimal>,
) -> Vec<InvoiceLine> {
    let mut lines: Vec<InvoiceLine> = plan
        .charges
        .iter()
        .filter_map(|c| {
            let now = usage.get(&c.meter).cloned().unwrap_or_default();
            let (bq, ba) = billed.meters.get(&c.meter).copied().unwrap_or_default();
            late_usage_line(plan, &c.meter, period, &now, bq, ba)
        })
        .collect();
    let top_up: Decimal = arrears_lines(plan, seats, period, usage, fees)
        .iter()
        .filter(|l| l.kind == "minimum_top_up")
        .map(|l| l.amount)
        .sum();
    let moved = top_up - billed.top_up;
    if !moved.is_zero() {
        lines.push(InvoiceLine {
            usage_from: Some(period.start),
            usage_to: Some(period.end),
            ..InvoiceLine::fee(
                "minimum_top_up",
                Decimal::ONE,
                moved,
                format!(
                    "top-up to the period minimum for {} to {} after late usage (now {}, billed {})",
                    period.start.format("%Y-%m-%d"),
                    period.end.format("%Y-%m-%d"),
                    top_up,
                    billed.top_up
                ),
            )
        });
    }
    lines
}

/// Carries credit between an account's invoices, in order: an invoice whose lines sum below
/// zero gets a `credit_carried_forward` line bringing it to zero, and the amount joins the
/// account's balance; an invoice with something to pay gets a `credit_applied` line using as
/// much of the balance as it can. No invoice total is ever below zero. `balances` holds the
/// accounts' balances before and after.
pub fn carry_credit(drafts: &mut [InvoiceDraft], balances: &mut BTreeMap<String, Decimal>) {
    for d in drafts.iter_mut() {
        let total = d.total();
        let cur = d.currency;
        let balance = balances.entry(d.account.clone()).or_default();
        if total < Decimal::ZERO {
            let carried = -total;
            *balance += carried;
            d.lines.push(InvoiceLine::fee(
                "credit_carried_forward",
                Decimal::ONE,
                carried,
                format!("{carried} {cur} of credit carried to the account's balance"),
            ));
        } else if total > Decimal::ZERO && *balance > Decimal::ZERO {
            let applied = cur.round((*balance).min(total));
            *balance -= applied;
            d.lines.push(InvoiceLine::fee(
                "credit_applied",
                Decimal::ONE,
                -applied,
                format!("{applied} {cur} of the account's credit balance applied"),
            ));
        }
    }
}

/// Proration lines of an accepted change, as invoice lines.
pub fn change_lines(lines: &[crate::domain::proration::ProrationLine]) -> Vec<InvoiceLine> {
    lines
        .iter()
        .filter_map(|l| {
            let kind = match l.kind {
                crate::domain::proration::ProrationKind::ProrationCredit => "proration_credit",
                crate::domain::proration::ProrationKind::ProrationCharge => "proration_charge",
                crate::domain::proration::ProrationKind::ScheduledChangeRevoked => return None,
            };
            Some(InvoiceLine {
                usage_from: l.period.map(|p| p.start),
                usage_to: l.period.map(|p| p.end),
                ..InvoiceLine::fee(
                    kind,
                    Decimal::from(l.seats),
                    l.amount,
                    l.description.clone(),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn plan() -> PlanVersion {
        PlanVersion {
            plan: "p".into(),
            version: 1,
            name: "P".into(),
            currency: Currency::from_code("USD").unwrap(),
            interval: Interval::Month,
            trial_days: 0,
            self_serve: true,
            base_fee: d("10"),
            seats: Some(SeatPrice {
                unit_amount: d("3.333"),
                included: 1,
                min: 1,
                max: None,
            }),
            charges: vec![
                Charge {
                    meter: "a".into(),
                    model: ChargeModel::PerUnit {
                        unit_amount: d("0.0015"),
                    },
                },
                Charge {
                    meter: "b".into(),
                    model: ChargeModel::Graduated {
                        tiers: vec![
                            Tier {
                                up_to: Some(d("100")),
                                unit_amount: d("0"),
                                flat_amount: d("0"),
                            },
                            Tier {
                                up_to: None,
                                unit_amount: d("0.07"),
                                flat_amount: d("1"),
                            },
                        ],
                    },
                },
            ],
            limits: Default::default(),
            features: Default::default(),
            minimum: Some(d("50")),
            downgrade: DowngradePolicy::PeriodEnd,
            fallback: None,
        }
    }

    fn period() -> Period {
        Period {
            start: DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            end: DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn late_usage_bills_the_difference_from_what_was_billed() {
        let p = plan();
        let now = MeterUsage {
            quantity: d("1003"),
            ..Default::default()
        };
        // Billed 1,000 × 0.0015 = 1.50; now 1,003 × 0.0015 = 1.5045 → 1.50: nothing to add.
        assert_eq!(
            late_usage_line(&p, "a", &period(), &now, d("1000"), d("1.50"))
                .unwrap()
                .amount,
            d("0.00")
        );
        let now = MeterUsage {
            quantity: d("2000"),
            ..Default::default()
        };
        let l = late_usage_line(&p, "a", &period(), &now, d("1000"), d("1.50")).unwrap();
        assert_eq!((l.quantity, l.amount), (d("1000"), d("1.50")));
        let same = MeterUsage {
            quantity: d("1000"),
            ..Default::default()
        };
        assert!(late_usage_line(&p, "a", &period(), &same, d("1000"), d("1.50")).is_none());
    }

    proptest! {
        /// An invoice's total is the sum of its lines.
        #[test]
        fn an_invoice_total_is_the_sum_of_its_lines(a in 0u64..10_000_000, b in 0u64..100_000, seats in 0u32..40) {
            let p = plan();
            let usage = BTreeMap::from([
                ("a".to_owned(), MeterUsage { quantity: Decimal::from(a), ..Default::default() }),
                ("b".to_owned(), MeterUsage { quantity: Decimal::new(b as i64, 1), ..Default::default() }),
            ]);
            let mut lines = arrears_lines(&p, seats, &period(), &usage, None);
            lines.extend(advance_fee_lines(&p, seats, &period()));
            let draft = InvoiceDraft {
                account: "x".into(), kind: InvoiceKind::Period, period: period(), plan: "p".into(),
                plan_version: 1, seats, currency: p.currency, lines, issued_at: period().end, share: None,
            };
            let sum: Decimal = draft.lines.iter().map(|l| l.amount).sum();
            prop_assert_eq!(draft.total(), sum);
            for l in &draft.lines {
                prop_assert_eq!(l.amount, p.currency.round(l.amount));
            }
            // The minimum covers the closed period: base, seats and usage reach at least 50.
            let closed: Decimal = rate_period(&p, &usage.iter().map(|(m, u)| (m.clone(), u.quantity)).collect(), seats)
                .lines.iter().filter(|l| l.kind != LineKind::MinimumTopUp).map(|l| l.amount).sum();
            let top_up: Decimal = draft.lines.iter().filter(|l| l.kind == "minimum_top_up").map(|l| l.amount).sum();
            prop_assert!(closed + top_up >= d("50"));
        }

        /// Credit carried between invoices: no total below zero, nothing created or lost
        /// (what the invoices' totals moved is exactly what the balance moved), and the
        /// balance never negative.
        #[test]
        fn carried_credit_never_leaves_a_negative_total_and_conserves_money(
            cents in prop::collection::vec(-50_000i64..50_000, 1..12), start in 0i64..20_000,
        ) {
            let usd = Currency::from_code("USD").unwrap();
            let mut drafts: Vec<InvoiceDraft> = cents.iter().map(|c| InvoiceDraft {
                account: "x".into(), kind: InvoiceKind::Change, period: period(), plan: "p".into(),
                plan_version: 1, seats: 0, currency: usd,
                lines: vec![InvoiceLine::fee("proration_charge", Decimal::ONE, Decimal::new(*c, 2), String::new())],
                issued_at: period().end, share: None,
            }).collect();
            let before: Decimal = drafts.iter().map(|d| d.total()).sum();
            let mut balances = BTreeMap::from([("x".to_owned(), Decimal::new(start, 2))]);
            carry_credit(&mut drafts, &mut balances);
            let after: Decimal = drafts.iter().map(|d| d.total()).sum();
            let end = balances["x"];
            prop_assert!(end >= Decimal::ZERO);
            prop_assert!(drafts.iter().all(|d| d.total() >= Decimal::ZERO));
            prop_assert_eq!(after - before, end - Decimal::new(start, 2));
            // The model: a running balance, used first-come.
            let mut b = start;
            for (c, d) in cents.iter().zip(&drafts) {
                let expect = if *c < 0 { b -= c; 0 } else { let used = b.min(*c); b -= used; c - used };
                prop_assert_eq!(d.total(), Decimal::new(expect, 2));
            }
            prop_assert_eq!(end, Decimal::new(b, 2));
        }
    }
}
