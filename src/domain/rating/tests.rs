//! Worked examples (derived by hand in the comments) and properties of the rating engine.

use super::*;
use crate::domain::plan::*;
use proptest::prelude::*;
use std::str::FromStr;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn tier(up_to: Option<&str>, unit: &str, flat: &str) -> Tier {
    Tier {
        up_to: up_to.map(d),
        unit_amount: d(unit),
        flat_amount: d(flat),
    }
}

fn plan(currency: &str, charges: Vec<Charge>) -> PlanVersion {
    PlanVersion {
        plan: "test".into(),
        version: 1,
        name: "Test".into(),
        currency: Currency::from_code(currency).unwrap(),
        interval: Interval::Month,
        trial_days: 0,
        self_serve: true,
        base_fee: Decimal::ZERO,
        seats: None,
        charges,
        limits: Default::default(),
        features: Default::default(),
        minimum: None,
        downgrade: DowngradePolicy::PeriodEnd,
        fallback: None,
    }
}

fn api_tiers() -> ChargeModel {
    ChargeModel::Graduated {
        tiers: vec![
            tier(Some("10000"), "0", "0"),
            tier(Some("100000"), "0.002", "0"),
            tier(None, "0.001", "0"),
        ],
    }
}

fn usd_line(model: ChargeModel, q: &str) -> String {
    let p = plan(
        "USD",
        vec![Charge {
            meter: "m".into(),
            model,
        }],
    );
    let rated = rate_period(&p, &BTreeMap::from([("m".to_owned(), d(q))]), 0);
    rated.lines[0].amount.to_string()
}

#[test]
fn graduated_prices_each_tier_and_treats_up_to_as_inclusive() {
    // 0..=10000 free; 10001..=100000 at 0.002; above at 0.001.
    assert_eq!(usd_line(api_tiers(), "0"), "0.00");
    assert_eq!(usd_line(api_tiers(), "10000"), "0.00"); // exactly on the bound: still free
    assert_eq!(usd_line(api_tiers(), "10001"), "0.00"); // 1 × 0.002 = 0.002 → 0.00
    assert_eq!(usd_line(api_tiers(), "10003"), "0.01"); // 3 × 0.002 = 0.006 → 0.01
    assert_eq!(usd_line(api_tiers(), "100000"), "180.00"); // 90,000 × 0.002
    assert_eq!(usd_line(api_tiers(), "123456"), "203.46"); // 180 + 23,456 × 0.001 = 203.456
                                                           // Very large: 180 + (10^12 − 100,000) × 0.001 = 1,000,000,080
    assert_eq!(usd_line(api_tiers(), "1000000000000"), "1000000080.00");
}

#[test]
fn graduated_flat_amounts_are_added_once_when_a_tier_is_reached() {
    let m = ChargeModel::Graduated {
        tiers: vec![tier(Some("100"), "0", "5"), tier(None, "1", "50")],
    };
    assert_eq!(usd_line(m.clone(), "0"), "5.00"); // 0 lies in the first tier
    assert_eq!(usd_line(m.clone(), "100"), "5.00");
    assert_eq!(usd_line(m.clone(), "100.5"), "55.50"); // 5 + 0.5 × 1 + 50
    assert_eq!(usd_line(m, "102"), "57.00");
}

#[test]
fn volume_prices_all_units_at_the_tier_that_contains_the_quantity() {
    let m = ChargeModel::Volume {
        tiers: vec![
            tier(Some("100"), "1.00", "0"),
            tier(Some("1000"), "0.80", "10"),
            tier(None, "0.50", "20"),
        ],
    };
    assert_eq!(usd_line(m.clone(), "0"), "0.00");
    assert_eq!(usd_line(m.clone(), "100"), "100.00");
    assert_eq!(usd_line(m.clone(), "101"), "90.80"); // 101 × 0.8 + 10
    assert_eq!(usd_line(m.clone(), "1000"), "810.00");
    assert_eq!(usd_line(m, "1000.5"), "520.25"); // 1000.5 × 0.5 + 20
}

#[test]
fn volume_pricing_can_fall_as_quantity_rises_which_is_why_monotonicity_excludes_it() {
    let m = ChargeModel::Volume {
        tiers: vec![tier(Some("100"), "1", "0"), tier(None, "0.5", "0")],
    };
    assert!(charge_amount(&m, d("101")) < charge_amount(&m, d("100")));
}

#[test]
fn packages_round_up_after_free_units() {
    let m = ChargeModel::Package {
        package_size: d("1000"),
        package_amount: d("5"),
        free_units: d("500"),
    };
    assert_eq!(usd_line(m.clone(), "0"), "0.00");
    assert_eq!(usd_line(m.clone(), "500"), "0.00");
    assert_eq!(usd_line(m.clone(), "500.1"), "5.00");
    assert_eq!(usd_line(m.clone(), "1500"), "5.00");
    assert_eq!(usd_line(m, "1501"), "10.00");
}

#[test]
fn fractional_and_negative_quantities() {
    let m = ChargeModel::PerUnit {
        unit_amount: d("0.25"),
    };
    assert_eq!(usd_line(m.clone(), "12.5"), "3.13"); // 3.125 → half away from zero
    assert_eq!(usd_line(m.clone(), "-40"), "0.00"); // refunds beyond usage price as zero
    assert_eq!(usd_line(api_tiers(), "-1"), "0.00");
}

#[test]
fn jpy_has_no_minor_unit() {
    let p = plan(
        "JPY",
        vec![Charge {
            meter: "m".into(),
            model: ChargeModel::PerUnit {
                unit_amount: d("0.5"),
            },
        }],
    );
    let r = rate_period(&p, &BTreeMap::from([("m".to_owned(), d("3"))]), 0);
    assert_eq!(r.lines[0].amount.to_string(), "2"); // 1.5 → 2
    assert_eq!(r.total.to_string(), "2");
}

#[test]
fn seats_bill_beyond_the_included_and_at_least_the_minimum() {
    let mut p = plan("USD", vec![]);
    p.base_fee = d("49");
    p.seats = Some(SeatPrice {
        unit_amount: d("12"),
        included: 3,
        min: 5,
        max: Some(50),
    });
    let r = rate_period(&p, &BTreeMap::new(), 8);
    assert_eq!(r.lines[0].kind, LineKind::BaseFee);
    assert_eq!(r.lines[0].amount, d("49.00"));
    assert_eq!(r.lines[1].amount, d("60.00")); // (8 − 3) × 12
    assert_eq!(r.total, d("109.00"));
    let r = rate_period(&p, &BTreeMap::new(), 1);
    assert_eq!(r.lines[1].quantity, d("5")); // the minimum is billed
    assert_eq!(r.lines[1].amount, d("24.00")); // (5 − 3) × 12
}

#[test]
fn a_minimum_commitment_adds_a_top_up_only_when_the_period_falls_short() {
    let mut p = plan(
        "USD",
        vec![Charge {
            meter: "m".into(),
            model: ChargeModel::PerUnit {
                unit_amount: d("0.10"),
            },
        }],
    );
    p.base_fee = d("20");
    p.minimum = Some(d("100"));
    let r = rate_period(&p, &BTreeMap::from([("m".to_owned(), d("333"))]), 0);
    // 20 + 33.30 = 53.30 → top-up 46.70
    assert_eq!(r.lines.last().unwrap().kind, LineKind::MinimumTopUp);
    assert_eq!(r.lines.last().unwrap().amount, d("46.70"));
    assert_eq!(r.total, d("100.00"));
    let r = rate_period(&p, &BTreeMap::from([("m".to_owned(), d("1000"))]), 0);
    assert!(r.lines.iter().all(|l| l.kind != LineKind::MinimumTopUp));
    assert_eq!(r.total, d("120.00"));
}

/// Increasing tier bounds with non-negative prices, the last open-ended.
fn tiers_strategy() -> impl Strategy<Value = Vec<Tier>> {
    prop::collection::vec((1u64..5_000, 0u32..5_000, 0u32..3_000), 1..5).prop_map(|v| {
        let mut bound = Decimal::ZERO;
        let n = v.len();
        v.into_iter()
            .enumerate()
            .map(|(i, (step, unit, flat))| {
                bound += Decimal::from(step);
                Tier {
                    up_to: (i + 1 < n).then_some(bound),
                    unit_amount: Decimal::new(unit as i64, 4),
                    flat_amount: Decimal::new(flat as i64, 2),
                }
            })
            .collect()
    })
}

fn quantity() -> impl Strategy<Value = Decimal> {
    (0u64..50_000_000, 0u32..4).prop_map(|(n, scale)| Decimal::new(n as i64, scale))
}

proptest! {
    #[test]
    fn a_graduated_charge_is_the_sum_of_its_tiers_parts(tiers in tiers_strategy(), q in quantity()) {
        // Independent closed form: Σ unit_i × clamp(q − lo_i, 0, hi_i − lo_i) + flat_i × [tier reached].
        let mut expected = Decimal::ZERO;
        let mut lo = Decimal::ZERO;
        for (i, t) in tiers.iter().enumerate() {
            let width = t.up_to.map(|u| u - lo);
            let mut units = (q - lo).max(Decimal::ZERO);
            if let Some(w) = width { units = units.min(w); }
            let reached = i == 0 || q > lo;
            expected += units * t.unit_amount + if reached { t.flat_amount } else { Decimal::ZERO };
            if let Some(u) = t.up_to { lo = u; }
        }
        prop_assert_eq!(charge_amount(&ChargeModel::Graduated { tiers }, q), expected);
    }

    #[test]
    fn charges_never_fall_when_quantity_rises(
        tiers in tiers_strategy(), a in quantity(), b in quantity(),
        unit in 0u32..10_000, size in 1u32..1000, free in 0u32..1000,
    ) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let models = [
            ChargeModel::Graduated { tiers },
            ChargeModel::PerUnit { unit_amount: Decimal::new(unit as i64, 3) },
            ChargeModel::Package { package_size: Decimal::from(size), package_amount: Decimal::new(unit as i64, 2), free_units: Decimal::from(free) },
        ];
        for m in &models {
            prop_assert!(charge_amount(m, lo) <= charge_amount(m, hi), "{:?} at {} > at {}", m, lo, hi);
        }
    }

    #[test]
    fn each_line_is_rounded_once_and_the_total_is_the_sum_of_lines(
        tiers in tiers_strategy(), q1 in quantity(), q2 in quantity(), seats in 0u32..200,
        cur in prop::sample::select(vec!["USD", "JPY", "KWD"]),
    ) {
        let mut p = plan(cur, vec![
            Charge { meter: "a".into(), model: ChargeModel::Graduated { tiers: tiers.clone() } },
            Charge { meter: "b".into(), model: ChargeModel::Volume { tiers } },
        ]);
        p.base_fee = d("19.995");
        p.seats = Some(SeatPrice { unit_amount: d("7.125"), included: 2, min: 1, max: None });
        p.minimum = Some(d("250"));
        let usage = BTreeMap::from([("a".to_owned(), q1), ("b".to_owned(), q2)]);
        let r = rate_period(&p, &usage, seats);
        let c = p.currency;
        // Each line equals the exact amount rounded once (never a sum of rounded parts).
        prop_assert_eq!(r.lines[0].amount, c.round(p.base_fee));
        prop_assert_eq!(r.lines[1].amount, c.round(p.seat_amount(seats)));
        prop_assert_eq!(r.lines[2].amount, c.round(charge_amount(&p.charges[0].model, q1)));
        prop_assert_eq!(r.lines[3].amount, c.round(charge_amount(&p.charges[1].model, q2)));
        for l in &r.lines {
            prop_assert_eq!(l.amount, c.round(l.amount));
        }
        prop_assert_eq!(r.total, r.lines.iter().map(|l| l.amount).sum::<Decimal>());
        prop_assert!(r.total >= c.round(d("250")));
    }
}
