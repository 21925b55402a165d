//! Money: currencies with their minor-unit exponent (as data), and the one rounding rule.
//!
//! Amounts are `Decimal` throughout and are rounded exactly once, where an invoice or quote line
//! is written: to the currency's minor unit, half away from zero.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Serialize, Serializer};
use std::fmt;

/// ISO 4217 currencies accrue bills in, with their minor-unit exponents.
const CURRENCIES: &[(&str, u32)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// A known currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

impl Currency {
    /// Looks up an ISO 4217 code (upper case).
    pub fn from_code(code: &str) -> Option<Currency> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, exponent)| Currency { code, exponent })
    }

    pub fn code(self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point of the minor unit (USD 2, JPY 0, KWD 3).
    pub fn exponent(self) -> u32 {
        self.exponent
    }

    /// Rounds to the minor unit, half away from zero. The only rounding of money in accrue.
    pub fn round(self, amount: Decimal) -> Decimal {
        let mut r =
            amount.round_dp_with_strategy(self.exponent, RoundingStrategy::MidpointAwayFromZero);
        r.rescale(self.exponent);
        r
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Currency::from_code(&code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown currency `{code}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn rounding_is_half_away_from_zero_at_the_minor_unit() {
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(usd.round(d("0.125")).to_string(), "0.13");
        assert_eq!(usd.round(d("-0.125")).to_string(), "-0.13");
        assert_eq!(usd.round(d("0.124999")).to_string(), "0.12");
        assert_eq!(usd.round(d("7")).to_string(), "7.00");
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(jpy.round(d("2.5")).to_string(), "3");
        assert_eq!(jpy.round(d("-2.5")).to_string(), "-3");
        let kwd = Currency::from_code("KWD").unwrap();
        assert_eq!(kwd.round(d("1.2345")).to_string(), "1.235");
    }

    #[test]
    fn unknown_and_lower_case_codes_are_not_currencies() {
        assert!(Currency::from_code("XXX").is_none());
        assert!(Currency::from_code("usd").is_none());
    }
}
