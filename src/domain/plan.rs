//! The plan model: one immutable version of a pricing plan, already validated.
//! Reading and validating plan files lives in `catalog::plans`.

use crate::domain::money::Currency;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A reference to one version of a plan: `team@2`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct PlanRef {
    pub plan: String,
    pub version: u32,
}

impl FromStr for PlanRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (plan, version) = s
            .split_once('@')
            .ok_or_else(|| format!("`{s}` is not a plan reference like `team@2`"))?;
        let version = version
            .trim_start_matches('v')
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("`{s}`: the version after @ must be a positive integer"))?;
        if plan.is_empty() {
            return Err(format!("`{s}`: the plan code before @ is empty"));
        }
        Ok(PlanRef {
            plan: plan.to_owned(),
            version,
        })
    }
}

impl fmt::Display for PlanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.plan, self.version)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Month,
    Year,
}

impl Interval {
    /// Months in one billing period.
    pub fn months(self) -> u32 {
        match self {
            Interval::Month => 1,
            Interval::Year => 12,
        }
    }
}

/// When a downgrade or seat decrease takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DowngradePolicy {
    /// At the end of the current period (the default).
    PeriodEnd,
    /// At once, with a credit for the unused part of the old price.
    ImmediateCredit,
}

/// Seat pricing: billed in advance per seat beyond `included`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatPrice {
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_amount: Decimal,
    pub included: u32,
    pub min: u32,
    /// Hard limit; `None` means unlimited.
    pub max: Option<u32>,
}

/// One tier of a graduated or volume charge. `up_to` is inclusive; `None` is infinity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    #[serde(serialize_with = "ser_up_to", deserialize_with = "de_up_to")]
    pub up_to: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub flat_amount: Decimal,
}

fn ser_up_to<S: serde::Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_str(&d.to_string()),
        None => s.serialize_str("inf"),
    }
}

fn de_up_to<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "inf" {
        return Ok(None);
    }
    s.parse::<Decimal>()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("up_to `{s}`: {e}")))
}

/// How a metered quantity becomes money (billed in arrears).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ChargeModel {
    PerUnit {
        #[serde(with = "rust_decimal::serde::str")]
        unit_amount: Decimal,
    },
    Graduated {
        tiers: Vec<Tier>,
    },
    Volume {
        tiers: Vec<Tier>,
    },
    Package {
        #[serde(with = "rust_decimal::serde::str")]
        package_size: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        package_amount: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        free_units: Decimal,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub meter: String,
    #[serde(flatten)]
    pub model: ChargeModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Refused beyond the limit.
    Hard,
    /// Allowed beyond the limit; the overage is billed.
    Soft,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    pub mode: LimitMode,
}

/// One published, immutable version of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanVersion {
    pub plan: String,
    pub version: u32,
    pub name: String,
    pub currency: Currency,
    pub interval: Interval,
    pub trial_days: u32,
    /// False for sales-only plans (enterprise): customers cannot pick them themselves.
    pub self_serve: bool,
    #[serde(with = "rust_decimal::serde::str")]
    pub base_fee: Decimal,
    pub seats: Option<SeatPrice>,
    pub charges: Vec<Charge>,
    pub limits: BTreeMap<String, Limit>,
    pub features: BTreeMap<String, bool>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub minimum: Option<Decimal>,
    pub downgrade: DowngradePolicy,
    /// The plan an account falls to when a trial lapses unpaid or it is suspended.
    pub fallback: Option<String>,
}

impl PlanVersion {
    pub fn plan_ref(&self) -> PlanRef {
        PlanRef {
            plan: self.plan.clone(),
            version: self.version,
        }
    }

    /// Recurring fees of one period (base fee plus seats beyond those included), unrounded.
    pub fn recurring_amount(&self, seats: u32) -> Decimal {
        self.base_fee + self.seat_amount(seats)
    }

    /// The seat fee for `seats` seats in one period.
    pub fn seat_amount(&self, seats: u32) -> Decimal {
        match &self.seats {
            Some(s) => Decimal::from(seats.max(s.min).saturating_sub(s.included)) * s.unit_amount,
            None => Decimal::ZERO,
        }
    }

    /// The recurring amount normalized to one month (yearly ÷ 12): how upgrades are decided.
    pub fn monthly_recurring(&self, seats: u32) -> Decimal {
        self.recurring_amount(seats) / Decimal::from(self.interval.months())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_references_parse_and_refuse_nonsense() {
        assert_eq!(
            "team@2".parse::<PlanRef>().unwrap(),
            PlanRef {
                plan: "team".into(),
                version: 2
            }
        );
        assert_eq!("team@v3".parse::<PlanRef>().unwrap().version, 3);
        assert!("team".parse::<PlanRef>().is_err());
        assert!("team@0".parse::<PlanRef>().is_err());
        assert!("@1".parse::<PlanRef>().is_err());
    }
}
