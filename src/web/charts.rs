//! The console's charts, drawn on the server as SVG (no script): MRR by month as bars, NRR and
//! GRR by month as lines, and one month's MRR waterfall. Coordinates are computed in `Decimal`
//! and written with one decimal place; every chart has a text alternative and sits beside the
//! table of its numbers.

use super::format::{money, month};
use crate::services::revenue::Waterfall;
use maud::{html, Markup};
use rust_decimal::Decimal;

const W: i64 = 640;
const H: i64 = 220;
const PAD_L: i64 = 8;
const PAD_B: i64 = 28;
const PAD_T: i64 = 16;

pub const ACCENT: &str = "#2b48c8";
pub const GOOD: &str = "#17703d";
pub const BAD: &str = "#b3261e";
pub const WARN: &str = "#b86e00";
pub const NEUTRAL: &str = "#5d6472";

fn px(v: Decimal) -> String {
    v.round_dp(1).normalize().to_string()
}

/// Scales `v` of `max` into the plot's height (0 at the bottom).
fn height(v: Decimal, max: Decimal) -> Decimal {
    if max <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    v.max(Decimal::ZERO) / max * Decimal::from(H - PAD_B - PAD_T)
}

/// MRR at each month's end, as bars.
pub fn mrr_bars(months: &[&Waterfall], currency: &str) -> Markup {
    let max = months
        .iter()
        .map(|w| w.ending_mrr)
        .max()
        .unwrap_or_default();
    let n = Decimal::from(months.len().max(1) as i64);
    let slot = Decimal::from(W - 2 * PAD_L) / n;
    let bar = slot * Decimal::new(6, 1);
    let summary = months
        .iter()
        .map(|w| format!("{}: {}", month(&w.from), money(w.ending_mrr, currency)))
        .collect::<Vec<_>>()
        .join(", ");
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-label={ "MRR at each month's end: " (summary) } {
            line x1=(PAD_L) x2=(W - PAD_L) y1=(H - PAD_B) y2=(H - PAD_B) stroke="#c9ced8" {}
            @for (i, w) in months.iter().enumerate() {
                @let h = height(w.ending_mrr, max);
                @let x = Decimal::from(PAD_L) + slot * Decimal::from(i as i64) + (slot - bar) / Decimal::TWO;
                rect x=(px(x)) y=(px(Decimal::from(H - PAD_B) - h)) width=(px(bar)) height=(px(h)) rx="3" fill=(ACCENT) {
                    title { (month(&w.from)) ": " (money(w.ending_mrr, currency)) }
                }
                text x=(px(x + bar / Decimal::TWO)) y=(H - 10) text-anchor="middle" { (w.from.format("%b")) }
            }
        }
    }
}

/// A month's label, its NRR and its GRR (None: no cohort).
pub type RetentionPoint = (String, Option<Decimal>, Option<Decimal>);

/// NRR and GRR by month as lines over a 0–150 % scale (points above are drawn at the top).
pub fn retention_lines(points: &[RetentionPoint]) -> Markup {
    let top = Decimal::new(15, 1);
    let n = points.len().max(1) as i64;
    let step = if n > 1 {
        Decimal::from(W - 2 * PAD_L - 40) / Decimal::from(n - 1)
    } else {
        Decimal::ZERO
    };
    let x_of = |i: usize| Decimal::from(PAD_L + 20) + step * Decimal::from(i as i64);
    let y_of = |v: Decimal| Decimal::from(H - PAD_B) - height(v.min(top), top);
    let path = |pick: &dyn Fn(&RetentionPoint) -> Option<Decimal>| {
        points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| pick(p).map(|v| format!("{},{}", px(x_of(i)), px(y_of(v)))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let pct = |v: Option<Decimal>| {
        v.map_or("n/a".to_owned(), |v| {
            format!("{} %", (v * Decimal::from(100)).round_dp(1))
        })
    };
    let summary = points
        .iter()
        .map(|(m, nrr, grr)| format!("{m}: NRR {}, GRR {}", pct(*nrr), pct(*grr)))
        .collect::<Vec<_>>()
        .join("; ");
    let hundred = y_of(Decimal::ONE);
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-label={ "Net and gross revenue retention by month: " (summary) } {
            line x1=(PAD_L) x2=(W - PAD_L) y1=(px(hundred)) y2=(px(hundred)) stroke="#c9ced8" stroke-dasharray="4 4" {}
            text x=(W - PAD_L) y=(px(hundred - Decimal::from(4))) text-anchor="end" { "100 %" }
            line x1=(PAD_L) x2=(W - PAD_L) y1=(H - PAD_B) y2=(H - PAD_B) stroke="#c9ced8" {}
            polyline points=(path(&|p| p.1)) fill="none" stroke=(ACCENT) stroke-width="2.5" {}
            polyline points=(path(&|p| p.2)) fill="none" stroke=(GOOD) stroke-width="2.5" stroke-dasharray="6 4" {}
            @for (i, p) in points.iter().enumerate() {
                @if let Some(v) = p.1 {
                    circle cx=(px(x_of(i))) cy=(px(y_of(v))) r="3.5" fill=(ACCENT) { title { (p.0) " NRR " (pct(p.1)) } }
                }
                @if let Some(v) = p.2 {
                    circle cx=(px(x_of(i))) cy=(px(y_of(v))) r="3" fill=(GOOD) { title { (p.0) " GRR " (pct(p.2)) } }
                }
                text x=(px(x_of(i))) y=(H - 10) text-anchor="middle" { (p.0.split(' ').next().unwrap_or_default()) }
            }
        }
        div.legend {
            span { svg width="10" height="10" aria-hidden="true" { rect width="10" height="10" fill=(ACCENT) {} } " NRR (net)" }
            span { svg width="10" height="10" aria-hidden="true" { rect width="10" height="10" fill=(GOOD) {} } " GRR (gross)" }
        }
    }
}

/// One month's waterfall: MRR at its start, each movement as a floating step, MRR at its end.
pub fn waterfall(w: &Waterfall) -> Markup {
    // Drawn full width: a wider canvas keeps its text the size of the other charts'.
    const W: i64 = 960;
    let steps: [(&str, Decimal, &str); 5] = [
        ("New", w.new, GOOD),
        ("Expansion", w.expansion, GOOD),
        ("Reactivation", w.reactivation, GOOD),
        ("Contraction", w.contraction, WARN),
        ("Churn", w.churn, BAD),
    ];
    // The running total's highest point sets the scale.
    let mut level = w.starting_mrr;
    let mut max = level.max(w.ending_mrr);
    for (_, d, _) in &steps {
        level += d;
        max = max.max(level);
    }
    let slot = Decimal::from(W - 2 * PAD_L) / Decimal::from(7);
    let bar = slot * Decimal::new(6, 1);
    let x_of =
        |i: i64| Decimal::from(PAD_L) + slot * Decimal::from(i) + (slot - bar) / Decimal::TWO;
    let base = Decimal::from(H - PAD_B);
    let cur = &w.currency;
    let mut bars: Vec<(String, Decimal, Decimal, &str, String)> = Vec::new();
    bars.push((
        "Start".into(),
        Decimal::ZERO,
        w.starting_mrr,
        NEUTRAL,
        money(w.starting_mrr, cur),
    ));
    let mut level = w.starting_mrr;
    for (name, d, colour) in steps {
        let (lo, hi) = if d >= Decimal::ZERO {
            (level, level + d)
        } else {
            (level + d, level)
        };
        bars.push((name.into(), lo, hi, colour, money(d, cur)));
        level += d;
    }
    bars.push((
        "End".into(),
        Decimal::ZERO,
        w.ending_mrr,
        ACCENT,
        money(w.ending_mrr, cur),
    ));
    let summary = bars
        .iter()
        .map(|b| format!("{} {}", b.0, b.4))
        .collect::<Vec<_>>()
        .join(", ");
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-label={ "MRR waterfall for " (month(&w.from)) ": " (summary) } {
            line x1=(PAD_L) x2=(W - PAD_L) y1=(H - PAD_B) y2=(H - PAD_B) stroke="#c9ced8" {}
            @for (i, b) in bars.iter().enumerate() {
                @let top = base - height(b.2, max);
                @let h = (height(b.2, max) - height(b.1, max)).max(Decimal::ONE);
                rect x=(px(x_of(i as i64))) y=(px(top)) width=(px(bar)) height=(px(h)) rx="2" fill=(b.3) {
                    title { (b.0) ": " (b.4) }
                }
                text x=(px(x_of(i as i64) + bar / Decimal::TWO)) y=(H - 10) text-anchor="middle" { (b.0) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heights_scale_into_the_plot_and_never_go_negative() {
        let plot = Decimal::from(H - PAD_B - PAD_T);
        assert_eq!(
            height(Decimal::from(50), Decimal::from(100)),
            plot / Decimal::TWO
        );
        assert_eq!(height(Decimal::from(-5), Decimal::from(100)), Decimal::ZERO);
        assert_eq!(height(Decimal::from(5), Decimal::ZERO), Decimal::ZERO);
    }
}
