//! How the pages write amounts, quantities and dates: `$1,234.50`, `1,250,000`, `Dec 3, 2026`.
//! Presentation only: amounts arrive rounded by the services and are never recomputed here.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// `amount` in `currency` with its symbol and thousands separators, at the scale it has
/// (`-12.5` USD → `−$12.50` only when the service gave two places; the services do).
pub fn money(amount: Decimal, currency: &str) -> String {
    let symbol = match currency {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        _ => "",
    };
    // Prices from the catalogue may be written without cents (`49`): shown at the currency's
    // scale at least, never rounded (a unit price of 0.0005 keeps its digits).
    let mut amount = amount;
    let exponent = crate::domain::money::Currency::from_code(currency).map_or(2, |c| c.exponent());
    if amount.scale() < exponent {
        amount.rescale(exponent);
    }
    let digits = grouped(amount.abs());
    let sign = if amount.is_sign_negative() && !amount.is_zero() {
        "−"
    } else {
        ""
    };
    if symbol.is_empty() {
        format!("{sign}{digits} {currency}")
    } else {
        format!("{sign}{symbol}{digits}")
    }
}

/// A quantity without trailing zeros, grouped by thousands (`1250000.50` → `1,250,000.5`).
pub fn quantity(q: Decimal) -> String {
    let q = q.normalize();
    let s = grouped(q.abs());
    if q.is_sign_negative() && !q.is_zero() {
        format!("−{s}")
    } else {
        s
    }
}

fn grouped(v: Decimal) -> String {
    let text = v.to_string();
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// `Dec 3, 2026` (UTC: periods are UTC).
pub fn date(t: &DateTime<Utc>) -> String {
    t.format("%b %-d, %Y").to_string()
}

/// `Dec 3, 2026 14:00 UTC`.
pub fn datetime(t: &DateTime<Utc>) -> String {
    t.format("%b %-d, %Y %H:%M UTC").to_string()
}

/// `2026-12`, a month as the reports name it.
pub fn month(t: &DateTime<Utc>) -> String {
    t.format("%b %Y").to_string()
}

/// A code as people read it: `api_calls` → `API calls`, `storage_gb` → `Storage GB`.
pub fn label(code: &str) -> String {
    let words: Vec<String> = code
        .split('_')
        .filter(|w| !w.is_empty())
        .enumerate()
        .map(|(i, w)| match w {
            "api" | "gb" | "sso" | "mrr" | "nrr" | "grr" | "pql" | "crm" | "icp" => {
                w.to_uppercase()
            }
            _ if i == 0 => {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                    .unwrap_or_default()
            }
            _ => w.to_owned(),
        })
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn money_groups_thousands_keeps_the_scale_and_signs_credits() {
        let d = |s| Decimal::from_str(s).unwrap();
        assert_eq!(money(d("1234567.50"), "USD"), "$1,234,567.50");
        assert_eq!(money(d("-12.00"), "EUR"), "−€12.00");
        assert_eq!(money(d("0.00"), "USD"), "$0.00");
        assert_eq!(money(d("999.99"), "CHF"), "999.99 CHF");
        assert_eq!(money(d("100"), "USD"), "$100.00");
        assert_eq!(money(d("0.0005"), "USD"), "$0.0005");
        assert_eq!(money(d("1990"), "JPY"), "¥1,990");
    }

    #[test]
    fn codes_read_as_words() {
        assert_eq!(label("api_calls"), "API calls");
        assert_eq!(label("storage_gb"), "Storage GB");
        assert_eq!(label("audit_log"), "Audit log");
    }

    #[test]
    fn quantities_drop_trailing_zeros_and_group() {
        let d = |s| Decimal::from_str(s).unwrap();
        assert_eq!(quantity(d("1250000.500")), "1,250,000.5");
        assert_eq!(quantity(d("12")), "12");
        assert_eq!(quantity(d("-1000")), "−1,000");
    }
}
