//! The rating engine: prices a period of one plan version for given usage and seats.
//!
//! Pure and deterministic. Each charge is computed exactly (unrounded) and rounded once, when
//! its line is written, by [`Currency::round`]; a total is the sum of its rounded lines.
//! Tier semantics follow Stripe: `up_to` is inclusive, the next tier starts just above it.

use crate::domain::money::Currency;
use crate::domain::plan::{ChargeModel, PlanVersion, Tier};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a line is for. New kinds (proration, late usage, credits) are added as the billing
/// cycle grows; consumers must not assume this list is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    BaseFee,
    Seats,
    Usage,
    MinimumTopUp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub kind: LineKind,
    pub meter: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Rounded to the currency's minor unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub description: String,
}

/// A rated period: its lines and their sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rated {
    pub currency: Currency,
    pub lines: Vec<Line>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

impl Rated {
    pub fn new(currency: Currency, lines: Vec<Line>) -> Self {
        let total = currency.round(lines.iter().map(|l| l.amount).sum());
        Self {
            currency,
            lines,
            total,
        }
    }
}

/// The exact (unrounded) amount of a charge for `quantity`. Negative quantities price as zero.
pub fn charge_amount(model: &ChargeModel, quantity: Decimal) -> Decimal {
    let q = quantity.max(Decimal::ZERO);
    match model {
        ChargeModel::PerUnit { unit_amount } => q * unit_amount,
        ChargeModel::Graduated { tiers } => graduated(tiers, q),
        ChargeModel::Volume { tiers } => {
            let tier = tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|u| q <= u))
                .or(tiers.last());
            tier.map_or(Decimal::ZERO, |t| q * t.unit_amount + t.flat_amount)
        }
        ChargeModel::Package {
            package_size,
            package_amount,
            free_units,
        } => {
            if package_size.is_zero() {
                return Decimal::ZERO;
            }
            let billable = (q - free_units).max(Decimal::ZERO);
            (billable / package_size).ceil() * package_amount
        }
    }
}

/// Each tier prices the units that fall in it; its flat amount is added once when the quantity
/// reaches into it (quantity 0 lies in the first tier).
fn graduated(tiers: &[Tier], q: Decimal) -> Decimal {
    let mut total = Decimal::ZERO;
    let mut lower = Decimal::ZERO;
    for (i, tier) in tiers.iter().enumerate() {
        if i > 0 && q <= lower {
            break;
        }
        let top = tier.up_to.map_or(q, |u| q.min(u));
        total += (top - lower).max(Decimal::ZERO) * tier.unit_amount + tier.flat_amount;
        match tier.up_to {
            Some(u) => lower = u,
            None => break,
        }
    }
    total
}

fn model_name(model: &ChargeModel) -> &'static str {
    match model {
        ChargeModel::PerUnit { .. } => "per unit",
        ChargeModel::Graduated { .. } => "graduated tiers",
        ChargeModel::Volume { .. } => "volume tiers",
        ChargeModel::Package { .. } => "packages",
    }
}

/// `1 seat`, `5 seats`: how customer-facing text counts seats.
pub fn seats_text(n: u32) -> String {
    if n == 1 {
        "1 seat".to_owned()
    } else {
        format!("{n} seats")
    }
}

/// Rates one full period: base fee and seats (in advance), each metered charge (in arrears) for
/// the usage given (a missing meter is zero usage), and a minimum-commitment top-up when the
/// period falls short of the plan's minimum.
pub fn rate_period(plan: &PlanVersion, usage: &BTreeMap<String, Decimal>, seats: u32) -> Rated {
    let cur = plan.currency;
    let mut lines = Vec::new();
    if !plan.base_fee.is_zero() {
        lines.push(Line {
            kind: LineKind::BaseFee,
            meter: None,
            quantity: Decimal::ONE,
            amount: cur.round(plan.base_fee),
            description: format!("{} base fee", plan.name),
        });
    }
    if let Some(s) = &plan.seats {
        let billed = seats.max(s.min);
        lines.push(Line {
            kind: LineKind::Seats,
            meter: None,
            quantity: Decimal::from(billed),
            amount: cur.round(plan.seat_amount(seats)),
            description: format!(
                "{} ({} included) at {} {cur} per seat",
                seats_text(billed),
                s.included,
                s.unit_amount
            ),
        });
    }
    for charge in &plan.charges {
        let q = usage.get(&charge.meter).copied().unwrap_or_default();
        lines.push(Line {
            kind: LineKind::Usage,
            meter: Some(charge.meter.clone()),
            quantity: q.normalize(),
            amount: cur.round(charge_amount(&charge.model, q)),
            description: format!(
                "{}: {} ({})",
                charge.meter,
                q.normalize(),
                model_name(&charge.model)
            ),
        });
    }
    let subtotal: Decimal = lines.iter().map(|l| l.amount).sum();
    lines.extend(minimum_top_up(plan, subtotal));
    Rated::new(cur, lines)
}

/// The top-up that brings `counted`, what a period billed, to the plan's minimum commitment;
/// `None` without a minimum or when the period reached it.
pub fn minimum_top_up(plan: &PlanVersion, counted: Decimal) -> Option<Line> {
    let cur = plan.currency;
    let minimum = cur.round(plan.minimum?);
    (counted < minimum).then(|| Line {
        kind: LineKind::MinimumTopUp,
        meter: None,
        quantity: Decimal::ONE,
        amount: minimum - counted,
        description: format!("top-up to the {minimum} {cur} period minimum"),
    })
}

#[cfg(test)]
mod tests;
