//! Product-qualified leads and sales-assist routing: the RevOps configuration (rubric, tiers,
//! activation milestone, segments, zone raises, free-mail domains), scoring an account from
//! its signals, and routing it to a zone. Pure: the service gathers the inputs.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The RevOps configuration (`config/revops.toml`); every number is configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevOps {
    pub tiers: Tiers,
    pub activation: Activation,
    pub segments: Segments,
    #[serde(default)]
    pub icp: Icp,
    #[serde(default, rename = "signal")]
    pub signals: Vec<Signal>,
    #[serde(default, rename = "zone_raise")]
    pub zone_raises: Vec<ZoneRaise>,
    #[serde(default)]
    pub free_mail_domains: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    pub hot: u32,
    pub warm: u32,
    pub watching: u32,
}

/// The activation milestone: `meter` reached `min` since sign-up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub min: Decimal,
}

/// Routing zones by employee count: up to `self_serve_max` self-serve, up to
/// `sales_available_max` sales-available, above sales-required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segments {
    pub self_serve_max: i32,
    pub sales_available_max: i32,
}

/// The ideal customer profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Icp {
    pub employees_min: Option<i32>,
    pub employees_max: Option<i32>,
    #[serde(default)]
    pub industries: Vec<String>,
    #[serde(default)]
    pub countries: Vec<String>,
}

/// A rubric signal (unknown keys are refused by its rule: `flatten` cannot deny them here).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Signal {
    pub name: String,
    pub points: u32,
    #[serde(flatten)]
    pub rule: Rule,
}

/// How a signal is computed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// A meter's value over the last `window_days` reaches `min`.
    Meter {
        meter: String,
        #[serde(with = "rust_decimal::serde::str")]
        min: Decimal,
        window_days: u32,
    },
    /// Events on at least `min` distinct days of the last `window_days`.
    ActiveDays { min: u32, window_days: u32 },
    /// The current period's usage of `meter` is above `min` (a fraction) of the plan's limit.
    QuotaFraction {
        meter: String,
        #[serde(with = "rust_decimal::serde::str")]
        min: Decimal,
    },
    /// The firmographics match the ideal customer profile.
    Icp,
    /// The account's email domain is not a free-mail domain.
    BusinessEmail,
}

/// A signal that raises the zone: `meter` over the last `window_days` reaching `min`
/// (on a free plan only, when `free_plan_only`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneRaise {
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub min: Decimal,
    pub window_days: u32,
    #[serde(default)]
    pub free_plan_only: bool,
    pub zone: Zone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    SelfServe,
    SalesAvailable,
    SalesRequired,
}

impl Zone {
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::SelfServe => "self_serve",
            Zone::SalesAvailable => "sales_available",
            Zone::SalesRequired => "sales_required",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    None,
    Watching,
    Warm,
    Hot,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::None => "none",
            Tier::Watching => "watching",
            Tier::Warm => "warm",
            Tier::Hot => "hot",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "none" => Some(Tier::None),
            "watching" => Some(Tier::Watching),
            "warm" => Some(Tier::Warm),
            "hot" => Some(Tier::Hot),
            _ => None,
        }
    }

    /// A product-qualified lead: warm or hot.
    pub fn is_pql(self) -> bool {
        self >= Tier::Warm
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl RevOps {
    /// Parses and validates a configuration; `meters` are the catalogue's meter names.
    pub fn parse(text: &str, meters: &BTreeSet<String>) -> Result<Self, Vec<ConfigError>> {
        let cfg: RevOps = toml::from_str(text).map_err(|e| {
            vec![ConfigError {
                field: "(file)".into(),
                message: e.to_string(),
            }]
        })?;
        let errors = cfg.validate(meters);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    fn validate(&self, meters: &BTreeSet<String>) -> Vec<ConfigError> {
        let mut e = Vec::new();
        let mut err = |field: String, message: String| e.push(ConfigError { field, message });
        let t = self.tiers;
        if !(t.hot > t.warm && t.warm > t.watching && t.watching > 0) {
            err(
                "tiers".into(),
                format!(
                    "need hot > warm > watching > 0, got {} / {} / {}",
                    t.hot, t.warm, t.watching
                ),
            );
        }
        if !meters.contains(&self.activation.meter) {
            err(
                "activation.meter".into(),
                format!("unknown meter `{}`", self.activation.meter),
            );
        }
        if self.segments.self_serve_max < 1
            || self.segments.sales_available_max <= self.segments.self_serve_max
        {
            err(
                "segments".into(),
                "need 1 <= self_serve_max < sales_available_max".into(),
            );
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.signals.iter().enumerate() {
            let at = format!("signal[{i}] ({})", s.name);
            if s.name.trim().is_empty() || !names.insert(s.name.clone()) {
                err(
                    format!("{at}.name"),
                    "names must be present and unique".into(),
                );
            }
            if s.points == 0 {
                err(format!("{at}.points"), "must be positive".into());
            }
            match &s.rule {
                Rule::Meter {
                    meter, window_days, ..
                } => {
                    if !meters.contains(meter) {
                        err(format!("{at}.meter"), format!("unknown meter `{meter}`"));
                    }
                    if !(1..=365).contains(window_days) {
                        err(format!("{at}.window_days"), "must be 1 to 365".into());
                    }
                }
                Rule::ActiveDays { min, window_days } => {
                    if !(1..=365).contains(window_days) || *min == 0 || min > window_days {
                        err(
                            format!("{at}.window_days"),
                            "need 1 <= min <= window_days <= 365".into(),
                        );
                    }
                }
                Rule::QuotaFraction { meter, min } => {
                    if !meters.contains(meter) {
                        err(format!("{at}.meter"), format!("unknown meter `{meter}`"));
                    }
                    if *min <= Decimal::ZERO || *min > Decimal::ONE {
                        err(format!("{at}.min"), "must be a fraction in (0, 1]".into());
                    }
                }
                Rule::Icp | Rule::BusinessEmail => {}
            }
        }
        for (i, z) in self.zone_raises.iter().enumerate() {
            if !meters.contains(&z.meter) {
                err(
                    format!("zone_raise[{i}].meter"),
                    format!("unknown meter `{}`", z.meter),
                );
            }
            if !(1..=365).contains(&z.window_days) {
                err(
                    format!("zone_raise[{i}].window_days"),
                    "must be 1 to 365".into(),
                );
            }
        }
        e
    }

    /// Tiers and segments of the standard rubric, no signals (a meter catalogue that lacks the
    /// rubric's meters).
    pub fn without_signals() -> Self {
        Self {
            tiers: Tiers {
                hot: 80,
                warm: 50,
                watching: 30,
            },
            activation: Activation {
                meter: String::new(),
                min: Decimal::ONE,
            },
            segments: Segments {
                self_serve_max: 50,
                sales_available_max: 500,
            },
            icp: Icp::default(),
            signals: Vec::new(),
            zone_raises: Vec::new(),
            free_mail_domains: Vec::new(),
        }
    }

    pub fn tier(&self, points: u32) -> Tier {
        match points {
            p if p >= self.tiers.hot => Tier::Hot,
            p if p >= self.tiers.warm => Tier::Warm,
            p if p >= self.tiers.watching => Tier::Watching,
            _ => Tier::None,
        }
    }

    /// The windows (days) any signal or zone raise reads a meter over.
    pub fn windows(&self) -> BTreeSet<u32> {
        let mut w: BTreeSet<u32> = self
            .signals
            .iter()
            .filter_map(|s| match &s.rule {
                Rule::Meter { window_days, .. } | Rule::ActiveDays { window_days, .. } => {
                    Some(*window_days)
                }
                // No meter read over a window (listed, so a new rule must say what it reads).
                Rule::QuotaFraction { .. } | Rule::Icp | Rule::BusinessEmail => None,
            })
            .collect();
        w.extend(self.zone_raises.iter().map(|z| z.window_days));
        w
    }

    /// The meters read over the last `window_days`: those of the meter signals and zone
    /// raises with that window.
    pub fn meters_over(&self, window_days: u32) -> Vec<String> {
        let mut m: BTreeSet<&str> = self
            .signals
            .iter()
            .filter_map(|s| match &s.rule {
                Rule::Meter {
                    meter,
                    window_days: w,
                    ..
                } if *w == window_days => Some(meter.as_str()),
                Rule::Meter { .. }
                | Rule::ActiveDays { .. }
                | Rule::QuotaFraction { .. }
                | Rule::Icp
                | Rule::BusinessEmail => None,
            })
            .collect();
        m.extend(
            self.zone_raises
                .iter()
                .filter(|z| z.window_days == window_days)
                .map(|z| z.meter.as_str()),
        );
        m.into_iter().map(str::to_owned).collect()
    }

    /// The meters whose use of the plan's quota over the current period is a signal.
    pub fn quota_meters(&self) -> Vec<String> {
        let m: BTreeSet<&str> = self
            .signals
            .iter()
            .filter_map(|s| match &s.rule {
                Rule::QuotaFraction { meter, .. } => Some(meter.as_str()),
                Rule::Meter { .. } | Rule::ActiveDays { .. } | Rule::Icp | Rule::BusinessEmail => {
                    None
                }
            })
            .collect();
        m.into_iter().map(str::to_owned).collect()
    }
}

/// What the service knows about an account when scoring it.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// (meter, window days) → value over that window.
    pub meters: BTreeMap<(String, u32), Decimal>,
    /// window days → distinct active days.
    pub active_days: BTreeMap<u32, u32>,
    /// meter → (current period usage, the plan's limit).
    pub quota: BTreeMap<String, (Decimal, Decimal)>,
    pub employees: Option<i32>,
    pub industry: Option<String>,
    pub country: Option<String>,
    pub email: Option<String>,
    pub crm_owner: Option<String>,
    pub on_free_plan: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalScore {
    pub signal: String,
    /// The measured value (a number, a fraction, or yes/no).
    pub value: String,
    pub met: bool,
    pub points: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub score: u32,
    pub tier: Tier,
    pub breakdown: Vec<SignalScore>,
}

pub fn score(cfg: &RevOps, i: &Inputs) -> Scored {
    let mut breakdown = Vec::with_capacity(cfg.signals.len());
    for s in &cfg.signals {
        let (value, met) = match &s.rule {
            Rule::Meter {
                meter,
                min,
                window_days,
            } => {
                let v = i
                    .meters
                    .get(&(meter.clone(), *window_days))
                    .copied()
                    .unwrap_or_default();
                (v.normalize().to_string(), v >= *min)
            }
            Rule::ActiveDays { min, window_days } => {
                let d = i.active_days.get(window_days).copied().unwrap_or(0);
                (d.to_string(), d >= *min)
            }
            Rule::QuotaFraction { meter, min } => match i.quota.get(meter) {
                Some((used, limit)) if *limit > Decimal::ZERO => {
                    let f = (*used / *limit).round_dp(4);
                    (f.normalize().to_string(), f > *min)
                }
                _ => ("no quota".into(), false),
            },
            Rule::Icp => {
                let m = matches_icp(&cfg.icp, i);
                (if m { "yes" } else { "no" }.into(), m)
            }
            Rule::BusinessEmail => {
                let b = business_email(cfg, i.email.as_deref());
                (if b { "yes" } else { "no" }.into(), b)
            }
        };
        breakdown.push(SignalScore {
            signal: s.name.clone(),
            value,
            met,
            points: if met { s.points } else { 0 },
        });
    }
    let total = breakdown.iter().map(|b| b.points).sum();
    Scored {
        score: total,
        tier: cfg.tier(total),
        breakdown,
    }
}

fn matches_icp(icp: &Icp, i: &Inputs) -> bool {
    let size = match (icp.employees_min, icp.employees_max, i.employees) {
        (None, None, _) => true,
        (_, _, None) => false,
        (lo, hi, Some(n)) => lo.is_none_or(|l| n >= l) && hi.is_none_or(|h| n <= h),
    };
    let within = |list: &[String], v: &Option<String>| {
        list.is_empty()
            || v.as_ref()
                .is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
    };
    size && within(&icp.industries, &i.industry) && within(&icp.countries, &i.country)
}

fn business_email(cfg: &RevOps, email: Option<&str>) -> bool {
    let Some(domain) = email
        .and_then(|e| e.rsplit_once('@'))
        .map(|(_, d)| d.trim())
    else {
        return false;
    };
    !domain.is_empty()
        && !cfg
            .free_mail_domains
            .iter()
            .any(|f| f.eq_ignore_ascii_case(domain))
}

/// Where an account is routed, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routing {
    pub zone: Zone,
    pub reasons: Vec<String>,
    /// The CRM owner the account goes to instead of the queue.
    pub owner: Option<String>,
}

pub fn route(cfg: &RevOps, i: &Inputs) -> Routing {
    let mut reasons = Vec::new();
    let mut zone = match i.employees {
        None => {
            reasons.push("employee count unknown: self-serve segment".to_owned());
            Zone::SelfServe
        }
        Some(n) if n <= cfg.segments.self_serve_max => {
            reasons.push(format!(
                "{n} employees: self-serve segment (1-{})",
                cfg.segments.self_serve_max
            ));
            Zone::SelfServe
        }
        Some(n) if n <= cfg.segments.sales_available_max => {
            reasons.push(format!(
                "{n} employees: sales-available segment ({}-{})",
                cfg.segments.self_serve_max + 1,
                cfg.segments.sales_available_max
            ));
            Zone::SalesAvailable
        }
        Some(n) => {
            reasons.push(format!(
                "{n} employees: sales-required segment ({}+)",
                cfg.segments.sales_available_max + 1
            ));
            Zone::SalesRequired
        }
    };
    for z in &cfg.zone_raises {
        if z.free_plan_only && !i.on_free_plan {
            continue;
        }
        let v = i
            .meters
            .get(&(z.meter.clone(), z.window_days))
            .copied()
            .unwrap_or_default();
        if v >= z.min && z.zone > zone {
            reasons.push(format!(
                "{} {} in the last {} days{} raises the zone to {}",
                v.normalize(),
                z.meter,
                z.window_days,
                if z.free_plan_only {
                    " on a free plan"
                } else {
                    ""
                },
                z.zone.as_str()
            ));
            zone = z.zone;
        }
    }
    let owner = i.crm_owner.clone().filter(|o| !o.trim().is_empty());
    if let Some(o) = &owner {
        reasons.push(format!("CRM owner {o}: routed to the owner"));
    }
    Routing {
        zone,
        reasons,
        owner,
    }
}

/// The field's standard starting configuration (`config/revops.toml` ships the same).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/revops.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn meters() -> BTreeSet<String> {
        [
            "projects_created",
            "teammates_invited",
            "active_users",
            "api_calls",
            "pricing_page_views",
            "support_contacts",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn cfg() -> RevOps {
        RevOps::parse(DEFAULT_CONFIG, &meters()).unwrap()
    }

    #[test]
    fn tier_boundaries_are_29_30_49_50_79_80() {
        let c = cfg();
        assert_eq!(c.tier(29), Tier::None);
        assert_eq!(c.tier(30), Tier::Watching);
        assert_eq!(c.tier(49), Tier::Watching);
        assert_eq!(c.tier(50), Tier::Warm);
        assert_eq!(c.tier(79), Tier::Warm);
        assert_eq!(c.tier(80), Tier::Hot);
    }

    #[test]
    fn the_standard_rubric_sums_to_150_points() {
        let c = cfg();
        assert_eq!(c.signals.iter().map(|s| s.points).sum::<u32>(), 150);
    }

    fn with_users(users: i64, free: bool, employees: Option<i32>) -> Inputs {
        let mut i = Inputs {
            employees,
            on_free_plan: free,
            ..Inputs::default()
        };
        i.meters
            .insert(("active_users".into(), 14), Decimal::from(users));
        i
    }

    #[test]
    fn zones_follow_segments_and_signals_raise_them() {
        let c = cfg();
        assert_eq!(
            route(&c, &with_users(1, true, Some(50))).zone,
            Zone::SelfServe
        );
        assert_eq!(
            route(&c, &with_users(1, true, Some(51))).zone,
            Zone::SalesAvailable
        );
        assert_eq!(
            route(&c, &with_users(1, true, Some(500))).zone,
            Zone::SalesAvailable
        );
        assert_eq!(
            route(&c, &with_users(1, true, Some(501))).zone,
            Zone::SalesRequired
        );
        // 15 active users on a free plan: sales-available; not on a paid plan.
        assert_eq!(
            route(&c, &with_users(15, true, Some(10))).zone,
            Zone::SalesAvailable
        );
        assert_eq!(
            route(&c, &with_users(15, false, Some(10))).zone,
            Zone::SelfServe
        );
        assert_eq!(
            route(&c, &with_users(14, true, Some(10))).zone,
            Zone::SelfServe
        );
        // 50 users: sales-required on any plan.
        let r = route(&c, &with_users(50, false, Some(10)));
        assert_eq!(r.zone, Zone::SalesRequired);
        assert!(
            r.reasons.iter().any(|x| x.contains("50 active_users")),
            "{:?}",
            r.reasons
        );
        // A raise never lowers a zone.
        assert_eq!(
            route(&c, &with_users(15, true, Some(900))).zone,
            Zone::SalesRequired
        );
    }

    #[test]
    fn a_crm_owner_takes_the_account_whatever_the_zone() {
        let c = cfg();
        let mut i = with_users(1, true, Some(5));
        i.crm_owner = Some("dana@vendor.test".into());
        let r = route(&c, &i);
        assert_eq!(r.owner.as_deref(), Some("dana@vendor.test"));
        assert_eq!(r.zone, Zone::SelfServe);
        assert!(r.reasons.last().unwrap().contains("CRM owner"));
    }

    #[test]
    fn business_email_and_icp_signals() {
        let c = cfg();
        let mut i = Inputs {
            email: Some("ana@gmail.com".into()),
            employees: Some(120),
            industry: Some("software".into()),
            ..Inputs::default()
        };
        let s = score(&c, &i);
        let get = |s: &Scored, n: &str| s.breakdown.iter().find(|b| b.signal == n).unwrap().points;
        assert_eq!(get(&s, "business_email"), 0);
        assert_eq!(get(&s, "icp_match"), 15);
        i.email = Some("ana@acme.io".into());
        i.employees = Some(5);
        let s = score(&c, &i);
        assert_eq!(get(&s, "business_email"), 5);
        assert_eq!(get(&s, "icp_match"), 0);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let bad = DEFAULT_CONFIG.replace("hot = 80", "hot = 40");
        let e = RevOps::parse(&bad, &meters()).unwrap_err();
        assert_eq!(e[0].field, "tiers");
        let bad = DEFAULT_CONFIG.replace("meter = \"teammates_invited\"", "meter = \"nope\"");
        let e = RevOps::parse(&bad, &meters()).unwrap_err();
        assert!(
            e.iter()
                .any(|x| x.field.ends_with(".meter") && x.message.contains("nope")),
            "{e:?}"
        );
    }

    /// Scoring reads only the meters `meters_over` and `quota_meters` name (the service reads
    /// no others): with every meter of every window at a high value, the score and the routing
    /// are the same whether the inputs hold every meter or only those.
    #[test]
    fn the_meters_a_score_reads_are_exactly_those_it_selects() {
        let c = cfg();
        let windows: Vec<u32> = c.windows().into_iter().collect();
        let mut every = Inputs {
            employees: Some(40),
            on_free_plan: true,
            ..Inputs::default()
        };
        for m in meters() {
            for w in &windows {
                every
                    .meters
                    .insert((m.clone(), *w), Decimal::from(1_000_000));
            }
            every
                .quota
                .insert(m, (Decimal::from(99), Decimal::from(100)));
        }
        let mut selected = every.clone();
        selected
            .meters
            .retain(|(m, w), _| c.meters_over(*w).contains(m));
        let quota = c.quota_meters();
        selected.quota.retain(|m, _| quota.contains(m));
        assert!(
            selected.meters.len() < every.meters.len(),
            "the selection narrows"
        );
        assert_eq!(score(&c, &selected), score(&c, &every));
        assert_eq!(route(&c, &selected), route(&c, &every));
        // And it can tell: a rubric whose signals all read meters scores some of them.
        assert!(score(&c, &every).breakdown.iter().any(|b| b.met));
    }
}
