//! Revenue movements and retention: how a change of an account's MRR is classified, what MRR
//! is, and NRR/GRR over a cohort. Pure; `services::revenue` records a movement with each change
//! that causes one.
//!
//! MRR of an account = its recurring fees normalized to a month (yearly ÷ 12) plus the usage
//! revenue of its last closed period normalized to a month.

use crate::domain::plan::PlanVersion;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    New,
    Expansion,
    Contraction,
    Churn,
    Reactivation,
}

/// The movement from `before` to `after`; `None` when MRR did not change. `had_mrr_before`
/// tells a returning account (reactivation) from a first one (new).
pub fn classify(before: Decimal, after: Decimal, had_mrr_before: bool) -> Option<MovementKind> {
    use std::cmp::Ordering::*;
    match (before.is_zero(), after.is_zero(), after.cmp(&before)) {
        (_, _, Equal) => None,
        (true, false, _) if had_mrr_before => Some(MovementKind::Reactivation),
        (true, false, _) => Some(MovementKind::New),
        (false, true, _) => Some(MovementKind::Churn),
        (false, false, Greater) => Some(MovementKind::Expansion),
        (false, false, Less) => Some(MovementKind::Contraction),
        // Both zero but different cannot happen; negative MRR is not a thing.
        (true, true, _) => None,
    }
}

/// Monthly-normalized MRR of a plan at a seat count, plus the last closed period's usage
/// revenue (also normalized).
pub fn mrr(plan: &PlanVersion, seats: u32, last_period_usage: Decimal) -> Decimal {
    let months = Decimal::from(plan.interval.months());
    plan.monthly_recurring(seats) + last_period_usage / months
}

/// NRR and GRR of a cohort over a window, with the movements behind them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Retention {
    #[serde(with = "rust_decimal::serde::str")]
    pub starting_mrr: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub expansion: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub contraction: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub churn: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub ending_mrr: Decimal,
    /// Σ over the cohort of each account's ending MRR capped at its starting MRR: what gross
    /// retention keeps (an account that grew and then shrank loses only below its start).
    #[serde(with = "rust_decimal::serde::str")]
    pub retained_mrr: Decimal,
    /// Net revenue retention as a fraction (1.07 = 107 %); `None` for an empty cohort.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub nrr: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub grr: Option<Decimal>,
    pub accounts: usize,
}

/// A movement of one account inside the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    pub account: String,
    pub kind: MovementKind,
    pub before: Decimal,
    pub after: Decimal,
}

/// Retention of the accounts that had MRR at the window's start (`starting`), from their
/// movements within the window in time order. New accounts are outside the cohort; a cohort
/// account that churns and comes back counts its return as expansion. NRR = ending / starting
/// MRR; GRR = Σ min(ending, starting) per account / starting MRR, so it lies in [0, 1].
pub fn retention(starting: &BTreeMap<String, Decimal>, movements: &[Movement]) -> Retention {
    let cohort: BTreeMap<&str, Decimal> = starting
        .iter()
        .filter(|(_, m)| !m.is_zero())
        .map(|(a, m)| (a.as_str(), *m))
        .collect();
    let starting_mrr: Decimal = cohort.values().sum();
    let (mut expansion, mut contraction, mut churn) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    let mut ending: BTreeMap<&str, Decimal> = cohort.clone();
    for m in movements
        .iter()
        .filter(|m| cohort.contains_key(m.account.as_str()))
    {
        let delta = m.after - m.before;
        if let Some(e) = ending.get_mut(m.account.as_str()) {
            *e += delta;
        }
        match m.kind {
            MovementKind::Expansion | MovementKind::Reactivation | MovementKind::New => {
                expansion += delta
            }
            MovementKind::Contraction => contraction -= delta,
            MovementKind::Churn => churn -= delta,
        }
    }
    let ending_mrr = starting_mrr + expansion - contraction - churn;
    let retained_mrr: Decimal = cohort
        .iter()
        .map(|(a, start)| ending[a].clamp(Decimal::ZERO, *start))
        .sum();
    let ratio = |x: Decimal| (!starting_mrr.is_zero()).then(|| (x / starting_mrr).round_dp(6));
    Retention {
        starting_mrr,
        expansion,
        contraction,
        churn,
        ending_mrr,
        retained_mrr,
        nrr: ratio(ending_mrr),
        grr: ratio(retained_mrr),
        accounts: cohort.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(n: i64) -> Decimal {
        Decimal::from(n)
    }

    fn mv(account: &str, before: i64, after: i64) -> Movement {
        Movement {
            account: account.into(),
            kind: classify(d(before), d(after), true).unwrap(),
            before: d(before),
            after: d(after),
        }
    }

    #[test]
    fn the_fields_worked_example_is_107_percent() {
        // (100,000 + 15,000 − 3,000 − 5,000) / 100,000 = 107 %; GRR (100,000 − 8,000) = 92 %.
        let starting = BTreeMap::from([
            ("a".to_owned(), d(50_000)),
            ("b".to_owned(), d(30_000)),
            ("c".to_owned(), d(15_000)),
            ("d".to_owned(), d(5_000)),
        ]);
        let movements = vec![
            mv("a", 50_000, 65_000),
            mv("b", 30_000, 27_000),
            mv("d", 5_000, 0),
            // A new account is outside the cohort.
            Movement {
                account: "n".into(),
                kind: MovementKind::New,
                before: d(0),
                after: d(9_000),
            },
        ];
        let r = retention(&starting, &movements);
        assert_eq!(
            (r.starting_mrr, r.expansion, r.contraction, r.churn),
            (d(100_000), d(15_000), d(3_000), d(5_000))
        );
        assert_eq!(r.ending_mrr, d(107_000));
        assert_eq!(r.nrr.unwrap().to_string(), "1.07");
        assert_eq!(r.grr.unwrap().to_string(), "0.92");
        assert_eq!(r.accounts, 4);
    }

    #[test]
    fn movements_are_classified_by_mrr_before_and_after() {
        assert_eq!(classify(d(0), d(10), false), Some(MovementKind::New));
        assert_eq!(
            classify(d(0), d(10), true),
            Some(MovementKind::Reactivation)
        );
        assert_eq!(classify(d(10), d(0), true), Some(MovementKind::Churn));
        assert_eq!(classify(d(10), d(12), true), Some(MovementKind::Expansion));
        assert_eq!(
            classify(d(12), d(10), true),
            Some(MovementKind::Contraction)
        );
        assert_eq!(classify(d(10), d(10), true), None);
    }

    proptest! {
        /// Ending MRR of the cohort equals its start plus its movements; GRR lies in [0, 1],
        /// never above NRR, and is each account's ending MRR capped at its start.
        #[test]
        fn retention_adds_up(steps in prop::collection::vec((0usize..5, 0i64..20_000), 0..40),
                             start in prop::collection::vec(1i64..20_000, 1..5)) {
            let starting: BTreeMap<String, Decimal> =
                start.iter().enumerate().map(|(i, m)| (format!("a{i}"), d(*m))).collect();
            let mut current = starting.clone();
            let mut movements = Vec::new();
            for (who, to) in steps {
                let account = format!("a{}", who % start.len());
                let before = current[&account];
                if let Some(kind) = classify(before, d(to), true) {
                    movements.push(Movement { account: account.clone(), kind, before, after: d(to) });
                    current.insert(account, d(to));
                }
            }
            let r = retention(&starting, &movements);
            prop_assert_eq!(r.ending_mrr, current.values().sum::<Decimal>());
            let (nrr, grr) = (r.nrr.unwrap(), r.grr.unwrap());
            prop_assert!(grr >= Decimal::ZERO && grr <= Decimal::ONE);
            prop_assert!(grr <= nrr);
            // The standard definition: each account keeps at most what it started with.
            let kept: Decimal = starting.iter().map(|(a, s)| current[a].min(*s)).sum();
            let total: Decimal = starting.values().sum();
            prop_assert_eq!(grr, (kept / total).round_dp(6));
        }
    }

    #[test]
    fn grr_caps_each_accounts_loss_at_its_start() {
        // 100 → 150 → 100 keeps 100 of 100 (GRR 1, not 0.5); 100 → 150 → 0 keeps 0 (GRR 0,
        // not −0.5). Together: 100 of 200 = 0.5.
        let starting = BTreeMap::from([("a".to_owned(), d(100)), ("b".to_owned(), d(100))]);
        let movements = vec![
            mv("a", 100, 150),
            mv("a", 150, 100),
            mv("b", 100, 150),
            mv("b", 150, 0),
        ];
        let r = retention(&starting, &movements);
        assert_eq!(r.retained_mrr, d(100));
        assert_eq!(r.grr, Some(Decimal::new(5, 1)));
        assert_eq!(r.nrr, Some(Decimal::new(5, 1)));
    }
}
