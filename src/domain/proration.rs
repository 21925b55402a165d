//! Proration of recurring fees to the second: the part of a period's price that falls in
//! `[from, to)` is price × (to − from) / (period end − period start), rounded once per line.

use crate::domain::money::Currency;
use crate::domain::period::Period;
use crate::domain::plan::PlanVersion;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Fraction of `period` left after `at` (1 at the start, 0 at the end).
pub fn remaining_factor(period: &Period, at: DateTime<Utc>) -> Decimal {
    let total = period.seconds();
    if total <= 0 {
        return Decimal::ZERO;
    }
    let left = (period.end - at).num_seconds().clamp(0, total);
    Decimal::from(left) / Decimal::from(total)
}

/// The exact share of `price` for `[from, to)` within `period`, rounded to the currency.
pub fn prorate(
    currency: Currency,
    price: Decimal,
    period: &Period,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Decimal {
    let total = period.seconds();
    if total <= 0 {
        return currency.round(Decimal::ZERO);
    }
    let secs = (to - from).num_seconds().clamp(0, total);
    currency.round(price * Decimal::from(secs) / Decimal::from(total))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProrationKind {
    /// The unused part of the old price, credited.
    ProrationCredit,
    /// The new price for the rest of the period, charged.
    ProrationCharge,
    /// A change that was scheduled for the period end and that this change replaces (amount 0;
    /// the line says what will no longer happen).
    ScheduledChangeRevoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProrationLine {
    pub kind: ProrationKind,
    pub plan: String,
    /// `version` beside `plan`, as everywhere (stored lines written as `plan_version` read too).
    #[serde(rename = "version", alias = "plan_version")]
    pub plan_version: u32,
    pub seats: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub description: String,
    /// The part of time the line pays for or credits (absent on a revoked scheduled change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
}

/// Lines for changing from (`old`, `old_seats`) to (`new`, `new_seats`) at `at` inside
/// `period`: a credit for the unused old price and a charge for the new one, each rounded.
/// Zero-amount lines are left out.
pub fn change_lines(
    period: &Period,
    at: DateTime<Utc>,
    old: &PlanVersion,
    old_seats: u32,
    new: &PlanVersion,
    new_seats: u32,
) -> Vec<ProrationLine> {
    let mut lines = Vec::new();
    let credit = -prorate(
        old.currency,
        old.recurring_amount(old_seats),
        period,
        at,
        period.end,
    );
    if !credit.is_zero() {
        lines.push(ProrationLine {
            kind: ProrationKind::ProrationCredit,
            plan: old.plan.clone(),
            plan_version: old.version,
            seats: old_seats,
            amount: credit,
            description: format!(
                "Unused time on {} ({}) from {} to {}",
                old.name,
                crate::domain::rating::seats_text(old_seats),
                crate::domain::ts::date(&at),
                crate::domain::ts::date(&period.end)
            ),
            period: Some(Period {
                start: at,
                end: period.end,
            }),
        });
    }
    let charge = prorate(
        new.currency,
        new.recurring_amount(new_seats),
        period,
        at,
        period.end,
    );
    if !charge.is_zero() {
        lines.push(ProrationLine {
            kind: ProrationKind::ProrationCharge,
            plan: new.plan.clone(),
            plan_version: new.version,
            seats: new_seats,
            amount: charge,
            description: format!(
                "{} ({}) from {} to {}",
                new.name,
                crate::domain::rating::seats_text(new_seats),
                crate::domain::ts::date(&at),
                crate::domain::ts::date(&period.end)
            ),
            period: Some(Period {
                start: at,
                end: period.end,
            }),
        });
    }
    lines
}

/// What an immediate change from (`old`, `old_seats`) to (`new`, `new_seats`) at `at` inside
/// `period` charges now, and the period that follows it.
///
/// Within one billing interval the subscription keeps its period: the unused old price is
/// credited and the new price charged for the rest of it ([`change_lines`]). A change of
/// interval (month ↔ year) ends the current period at the change instead: the unused old
/// price is credited, and the new plan's first full period is charged from the change, which
/// becomes the new anchor (the start of `at`'s hour, as subscribing anchors). The usage of the
/// ended part of the old period is the caller's to invoice in arrears.
pub fn immediate_change(
    period: &Period,
    at: DateTime<Utc>,
    old: &PlanVersion,
    old_seats: u32,
    new: &PlanVersion,
    new_seats: u32,
) -> (Vec<ProrationLine>, Option<Period>) {
    if old.interval == new.interval {
        return (
            change_lines(period, at, old, old_seats, new, new_seats),
            None,
        );
    }
    let start = crate::domain::period::anchor_at(at);
    let next = Period {
        start,
        end: crate::domain::period::boundary(start, new.interval.months(), 1),
    };
    // The old period is credited from the new one's start, so no hour is paid twice. The
    // credit carries no range: it settles the old period (closed at the change), and its
    // range would fall inside the new one.
    let mut lines: Vec<ProrationLine> = change_lines(period, start, old, old_seats, new, 0)
        .into_iter()
        .filter(|l| l.kind == ProrationKind::ProrationCredit)
        .map(|l| ProrationLine { period: None, ..l })
        .collect();
    let charge = new.currency.round(new.recurring_amount(new_seats));
    if !charge.is_zero() {
        lines.push(ProrationLine {
            kind: ProrationKind::ProrationCharge,
            plan: new.plan.clone(),
            plan_version: new.version,
            seats: new_seats,
            amount: charge,
            description: format!(
                "{} ({}) from {} to {}",
                new.name,
                crate::domain::rating::seats_text(new_seats),
                crate::domain::ts::date(&next.start),
                crate::domain::ts::date(&next.end)
            ),
            period: Some(next),
        });
    }
    (lines, Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    #[test]
    fn half_a_thirty_day_period_is_half_the_price() {
        let p = Period {
            start: t("2026-11-01T00:00:00Z"),
            end: t("2026-12-01T00:00:00Z"),
        };
        let d = |s| Decimal::from_str(s).unwrap();
        assert_eq!(
            prorate(usd(), d("100"), &p, t("2026-11-16T00:00:00Z"), p.end),
            d("50.00")
        );
        // One second less than half: 100 × 1,295,999 / 2,592,000 = 49.99996… → 50.00
        assert_eq!(
            prorate(usd(), d("100"), &p, t("2026-11-16T00:00:01Z"), p.end),
            d("50.00")
        );
        assert_eq!(remaining_factor(&p, t("2026-11-16T00:00:00Z")), d("0.5"));
        assert_eq!(remaining_factor(&p, p.end), Decimal::ZERO);
    }

    proptest! {
        /// Prorating one period split at any instants sums to the full price within one
        /// minor unit per line.
        #[test]
        fn a_period_split_anywhere_sums_to_the_full_price(
            cents in 0i64..10_000_000, cuts in prop::collection::vec(1i64..2_591_999, 0..12),
            cur in prop::sample::select(vec!["USD", "JPY", "KWD"]),
        ) {
            let c = Currency::from_code(cur).unwrap();
            let price = Decimal::new(cents, 2);
            let p = Period { start: t("2026-11-01T00:00:00Z"), end: t("2026-12-01T00:00:00Z") };
            let mut points: Vec<DateTime<Utc>> = cuts.iter().map(|s| p.start + chrono::Duration::seconds(*s)).collect();
            points.push(p.start);
            points.push(p.end);
            points.sort();
            points.dedup();
            let parts: Vec<Decimal> = points.windows(2).map(|w| prorate(c, price, &p, w[0], w[1])).collect();
            let sum: Decimal = parts.iter().sum();
            let unit = Decimal::new(1, c.exponent());
            let tolerance = unit * Decimal::from(parts.len() as i64);
            prop_assert!((sum - c.round(price)).abs() <= tolerance, "sum {} vs {}", sum, price);
        }
    }
}
