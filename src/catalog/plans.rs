//! `pricing-plans/<plan>/v<N>.toml`: reading and validating plan versions.
//!
//! Validation collects every problem in a file, each naming the file, the field and the rule
//! broken. Decimal values must be TOML strings (`unit_amount = "0.002"`) or integers, never
//! floats, so no price ever passes through binary floating point.

use super::meters::MeterCatalog;
use crate::domain::money::Currency;
use crate::domain::plan::*;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::{Table, Value};

/// One problem in one plan file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub file: PathBuf,
    pub field: String,
    pub rule: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.field, self.rule)
    }
}

/// All versions of all plans in a catalogue directory, or as a server runs them: the plan
/// files overlaid with the published versions from the database, which are marked published.
/// Versions are held shared: a catalogue reloaded after a publish, and every check-cache entry
/// on a version, point at one copy of it.
#[derive(Debug, Clone, Default)]
pub struct PlanCatalog {
    versions: BTreeMap<(String, u32), Arc<PlanVersion>>,
    published: BTreeSet<(String, u32)>,
}

impl PlanCatalog {
    pub fn from_versions(list: Vec<PlanVersion>) -> Self {
        Self {
            versions: list
                .into_iter()
                .map(|v| ((v.plan.clone(), v.version), Arc::new(v)))
                .collect(),
            published: BTreeSet::new(),
        }
    }

    /// These versions (the plan files) overlaid with `published` (the database's published
    /// definitions, which win where both hold a version).
    pub fn overlaid(files: &PlanCatalog, published: Vec<PlanVersion>) -> Self {
        let mut versions = files.versions.clone();
        let mut marked = BTreeSet::new();
        for v in published {
            let key = (v.plan.clone(), v.version);
            marked.insert(key.clone());
            versions.insert(key, Arc::new(v));
        }
        Self {
            versions,
            published: marked,
        }
    }

    /// Whether this version is published (always false for a catalogue read from files).
    pub fn is_published(&self, r: &PlanRef) -> bool {
        self.published.contains(&(r.plan.clone(), r.version))
    }

    /// The highest published version of `plan`: what a subscription without a version gets
    /// and what the check suggests as an upgrade.
    pub fn latest_published(&self, plan: &str) -> Option<&PlanVersion> {
        self.latest_published_shared(plan).map(|v| &**v)
    }

    fn latest_published_shared(&self, plan: &str) -> Option<&Arc<PlanVersion>> {
        self.published
            .range((plan.to_owned(), 0)..=(plan.to_owned(), u32::MAX))
            .next_back()
            .and_then(|k| self.versions.get(k))
    }

    pub fn get(&self, r: &PlanRef) -> Option<&PlanVersion> {
        self.get_shared(r).map(|v| &**v)
    }

    /// [`Self::get`], as a handle on the catalogue's own copy.
    pub fn get_shared(&self, r: &PlanRef) -> Option<&Arc<PlanVersion>> {
        self.versions.get(&(r.plan.clone(), r.version))
    }

    /// The highest published version of `plan`, or, when none of it is published (a
    /// catalogue read from files), its highest version.
    pub fn latest(&self, plan: &str) -> Option<&PlanVersion> {
        self.latest_shared(plan).map(|v| &**v)
    }

    /// [`Self::latest`], as a handle on the catalogue's own copy.
    pub fn latest_shared(&self, plan: &str) -> Option<&Arc<PlanVersion>> {
        self.latest_published_shared(plan).or_else(|| {
            self.versions
                .range((plan.to_owned(), 0)..=(plan.to_owned(), u32::MAX))
                .next_back()
                .map(|(_, v)| v)
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &PlanVersion> {
        self.versions.values().map(|v| &**v)
    }

    pub fn plan_codes(&self) -> BTreeSet<&str> {
        self.versions.keys().map(|(p, _)| p.as_str()).collect()
    }

    /// Loads and validates every `<plan>/v<N>.toml` under `dir`.
    pub fn load(dir: &Path, meters: &MeterCatalog) -> Result<Self, Vec<PlanError>> {
        let mut errors = Vec::new();
        let mut versions = Vec::new();
        let mut plan_dirs: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect(),
            Err(e) => {
                return Err(vec![PlanError {
                    file: dir.to_owned(),
                    field: "(directory)".into(),
                    rule: format!("cannot read: {e}"),
                }])
            }
        };
        plan_dirs.sort();
        for pd in plan_dirs {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&pd)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort();
            for f in files
                .into_iter()
                .filter(|f| f.extension().is_some_and(|e| e == "toml"))
            {
                match std::fs::read_to_string(&f) {
                    Ok(text) => match parse_plan_file(&f, &text, meters) {
                        Ok(v) => versions.push(v),
                        Err(mut e) => errors.append(&mut e),
                    },
                    Err(e) => errors.push(PlanError {
                        file: f.clone(),
                        field: "(file)".into(),
                        rule: format!("cannot read: {e}"),
                    }),
                }
            }
        }
        let catalog = Self::from_versions(versions);
        let codes = catalog.plan_codes();
        for v in catalog.all() {
            if let Some(fb) = &v.fallback {
                if !codes.contains(fb.as_str()) {
                    errors.push(PlanError {
                        file: dir.join(&v.plan).join(format!("v{}.toml", v.version)),
                        field: "fallback".into(),
                        rule: format!("names plan `{fb}`, which is not in the catalogue"),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(errors)
        }
    }
}

/// The content hash of a version: SHA-256 of its canonical JSON. Comments and formatting of
/// the file do not change it; any change of meaning does.
pub fn content_hash(v: &PlanVersion) -> String {
    let json = serde_json::to_vec(v).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// Plan code and version from `.../<plan>/v<N>.toml`.
fn identity(file: &Path) -> Result<(String, u32), String> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let version = stem
        .strip_prefix('v')
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("file name must be v<N>.toml with N ≥ 1, got `{stem}.toml`"))?;
    let plan = file
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_owned();
    let valid = plan.starts_with(|c: char| c.is_ascii_lowercase())
        && plan
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(format!(
            "the plan directory `{plan}` must be a snake_case plan code"
        ));
    }
    Ok((plan, version))
}

/// Collects the problems of one file.
struct Checker<'a> {
    file: &'a Path,
    errors: Vec<PlanError>,
}

impl Checker<'_> {
    fn err(&mut self, field: impl Into<String>, rule: impl Into<String>) {
        self.errors.push(PlanError {
            file: self.file.to_owned(),
            field: field.into(),
            rule: rule.into(),
        });
    }

    fn unknown_keys(&mut self, table: &Table, prefix: &str, known: &[&str]) {
        for k in table.keys() {
            if !known.contains(&k.as_str()) {
                self.err(
                    join(prefix, k),
                    format!("unknown field (known: {})", known.join(", ")),
                );
            }
        }
    }

    fn string(&mut self, t: &Table, key: &str, path: &str, required: bool) -> Option<String> {
        match t.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                self.err(path, "must not be empty");
                None
            }
            Some(_) => {
                self.err(path, "must be a string");
                None
            }
            None if required => {
                self.err(path, "is required");
                None
            }
            None => None,
        }
    }

    fn bool(&mut self, t: &Table, key: &str, path: &str, default: bool) -> bool {
        match t.get(key) {
            Some(Value::Boolean(b)) => *b,
            Some(_) => {
                self.err(path, "must be true or false");
                default
            }
            None => default,
        }
    }

    fn count(&mut self, t: &Table, key: &str, path: &str, default: Option<u32>) -> Option<u32> {
        match t.get(key) {
            Some(Value::Integer(i)) if (0..=i64::from(u32::MAX)).contains(i) => Some(*i as u32),
            Some(Value::Integer(_)) => {
                self.err(path, "must be a non-negative integer");
                None
            }
            Some(_) => {
                self.err(path, "must be an integer");
                None
            }
            None if default.is_none() => {
                self.err(path, "is required");
                None
            }
            None => default,
        }
    }

    /// A non-negative decimal written as a string (or an integer).
    fn money(&mut self, t: &Table, key: &str, path: &str, required: bool) -> Option<Decimal> {
        let v = match t.get(key) {
            Some(Value::String(s)) => match Decimal::from_str_exact(s.trim()) {
                Ok(d) => d,
                Err(_) => {
                    self.err(path, format!("`{s}` is not a decimal number"));
                    return None;
                }
            },
            Some(Value::Integer(i)) => Decimal::from(*i),
            Some(Value::Float(f)) => {
                self.err(
                    path,
                    format!("write decimal values as strings (\"{f}\"): a TOML float is binary and inexact"),
                );
                return None;
            }
            Some(_) => {
                self.err(path, "must be a decimal string like \"0.002\"");
                return None;
            }
            None if required => {
                self.err(path, "is required");
                return None;
            }
            None => return None,
        };
        if v.is_sign_negative() && !v.is_zero() {
            self.err(path, format!("must not be negative, got {v}"));
            return None;
        }
        Some(v)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

const TOP_FIELDS: &[&str] = &[
    "name",
    "currency",
    "interval",
    "trial_days",
    "self_serve",
    "base_fee",
    "seats",
    "charges",
    "limits",
    "features",
    "minimum",
    "downgrade",
    "fallback",
];

/// Parses and validates one plan file. `file` gives the plan code and version.
pub fn parse_plan_file(
    file: &Path,
    text: &str,
    meters: &MeterCatalog,
) -> Result<PlanVersion, Vec<PlanError>> {
    let mut c = Checker {
        file,
        errors: Vec::new(),
    };
    let (plan, version) = match identity(file) {
        Ok(id) => id,
        Err(rule) => {
            c.err("(file name)", rule);
            (String::new(), 0)
        }
    };
    let doc: Table = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            c.err("(syntax)", format!("not valid TOML: {}", e.message()));
            return Err(c.errors);
        }
    };
    c.unknown_keys(&doc, "", TOP_FIELDS);
    let name = c.string(&doc, "name", "name", true).unwrap_or_default();
    let currency = c
        .string(&doc, "currency", "currency", true)
        .and_then(|code| {
            let cur = Currency::from_code(&code);
            if cur.is_none() {
                c.err(
                    "currency",
                    format!("`{code}` is not a known ISO 4217 currency code"),
                );
            }
            cur
        });
    let interval = match c.string(&doc, "interval", "interval", true).as_deref() {
        Some("month") => Some(Interval::Month),
        Some("year") => Some(Interval::Year),
        Some(other) => {
            c.err(
                "interval",
                format!("must be \"month\" or \"year\", got `{other}`"),
            );
            None
        }
        None => None,
    };
    let trial_days = c
        .count(&doc, "trial_days", "trial_days", Some(0))
        .unwrap_or(0);
    if trial_days > 365 {
        c.err("trial_days", "must be at most 365");
    }
    let self_serve = c.bool(&doc, "self_serve", "self_serve", true);
    let base_fee = c
        .money(&doc, "base_fee", "base_fee", false)
        .unwrap_or_default();
    let minimum = c.money(&doc, "minimum", "minimum", false);
    let downgrade = match c.string(&doc, "downgrade", "downgrade", false).as_deref() {
        None | Some("period_end") => DowngradePolicy::PeriodEnd,
        Some("immediate_credit") => DowngradePolicy::ImmediateCredit,
        Some(other) => {
            c.err(
                "downgrade",
                format!("must be \"period_end\" or \"immediate_credit\", got `{other}`"),
            );
            DowngradePolicy::PeriodEnd
        }
    };
    let fallback = c.string(&doc, "fallback", "fallback", false);
    if fallback.as_deref() == Some(plan.as_str()) {
        c.err("fallback", "a plan cannot fall back to itself");
    }
    let seats = match doc.get("seats") {
        None => None,
        Some(Value::Table(t)) => seats(&mut c, t),
        Some(_) => {
            c.err("seats", "must be a table");
            None
        }
    };
    let charges = match doc.get("charges") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("charges[{i}]");
                let Value::Table(t) = item else {
                    c.err(path, "must be a table ([[charges]])");
                    continue;
                };
                if let Some(ch) = charge(&mut c, t, &path, meters) {
                    if !seen.insert(ch.meter.clone()) {
                        c.err(
                            format!("{path}.meter"),
                            format!("meter `{}` is charged twice", ch.meter),
                        );
                    }
                    out.push(ch);
                }
            }
            out
        }
        Some(_) => {
            c.err("charges", "must be an array of tables ([[charges]])");
            Vec::new()
        }
    };
    let mut limits = BTreeMap::new();
    match doc.get("limits") {
        None => {}
        Some(Value::Table(t)) => {
            for (meter, v) in t {
                let path = format!("limits.{meter}");
                if meters.get(meter).is_none() {
                    c.err(
                        &path,
                        format!("unknown meter `{meter}` (not in meters.toml)"),
                    );
                }
                let Value::Table(lt) = v else {
                    c.err(
                        &path,
                        "must be a table like { limit = \"1000\", mode = \"hard\" }",
                    );
                    continue;
                };
                c.unknown_keys(lt, &path, &["limit", "mode"]);
                let limit = c.money(lt, "limit", &format!("{path}.limit"), true);
                let mode = match c
                    .string(lt, "mode", &format!("{path}.mode"), true)
                    .as_deref()
                {
                    Some("hard") => Some(LimitMode::Hard),
                    Some("soft") => Some(LimitMode::Soft),
                    Some(other) => {
                        c.err(
                            format!("{path}.mode"),
                            format!("must be \"hard\" or \"soft\", got `{other}`"),
                        );
                        None
                    }
                    None => None,
                };
                if let (Some(limit), Some(mode)) = (limit, mode) {
                    limits.insert(meter.clone(), Limit { limit, mode });
                }
            }
        }
        Some(_) => c.err("limits", "must be a table"),
    }
    let mut features = BTreeMap::new();
    match doc.get("features") {
        None => {}
        Some(Value::Table(t)) => {
            for (k, v) in t {
                match v {
                    Value::Boolean(b) => {
                        features.insert(k.clone(), *b);
                    }
                    _ => c.err(format!("features.{k}"), "must be true or false"),
                }
            }
        }
        Some(_) => c.err("features", "must be a table of true/false flags"),
    }
    match (c.errors.is_empty(), currency, interval) {
        (true, Some(currency), Some(interval)) => Ok(PlanVersion {
            plan,
            version,
            name,
            currency,
            interval,
            trial_days,
            self_serve,
            base_fee,
            seats,
            charges,
            limits,
            features,
            minimum,
            downgrade,
            fallback,
        }),
        _ => Err(c.errors),
    }
}

fn seats(c: &mut Checker<'_>, t: &Table) -> Option<SeatPrice> {
    c.unknown_keys(t, "seats", &["unit_amount", "included", "min", "max"]);
    let unit_amount = c.money(t, "unit_amount", "seats.unit_amount", true);
    let included = c.count(t, "included", "seats.included", Some(0));
    let min = c.count(t, "min", "seats.min", Some(1));
    let max = match t.get("max") {
        None => None,
        Some(_) => c.count(t, "max", "seats.max", None),
    };
    if let (Some(min), Some(max)) = (min, max) {
        if min > max {
            c.err(
                "seats.min",
                format!("must not exceed seats.max ({min} > {max})"),
            );
        }
    }
    if max == Some(0) {
        c.err("seats.max", "must be at least 1");
    }
    Some(SeatPrice {
        unit_amount: unit_amount?,
        included: included?,
        min: min?,
        max,
    })
}

fn charge(c: &mut Checker<'_>, t: &Table, path: &str, meters: &MeterCatalog) -> Option<Charge> {
    let meter = c.string(t, "meter", &format!("{path}.meter"), true);
    if let Some(m) = &meter {
        if meters.get(m).is_none() {
            c.err(
                format!("{path}.meter"),
                format!("unknown meter `{m}` (not in meters.toml)"),
            );
        }
    }
    let model_name = c.string(t, "model", &format!("{path}.model"), true);
    let model = match model_name.as_deref() {
        Some("per_unit") => {
            c.unknown_keys(t, path, &["meter", "model", "unit_amount"]);
            c.money(t, "unit_amount", &format!("{path}.unit_amount"), true)
                .map(|unit_amount| ChargeModel::PerUnit { unit_amount })
        }
        Some(kind @ ("graduated" | "volume")) => {
            c.unknown_keys(t, path, &["meter", "model", "tiers"]);
            tiers(c, t, path).map(|tiers| {
                if kind == "graduated" {
                    ChargeModel::Graduated { tiers }
                } else {
                    ChargeModel::Volume { tiers }
                }
            })
        }
        Some("package") => {
            c.unknown_keys(
                t,
                path,
                &[
                    "meter",
                    "model",
                    "package_size",
                    "package_amount",
                    "free_units",
                ],
            );
            let size = c.money(t, "package_size", &format!("{path}.package_size"), true);
            if size.is_some_and(|s| s.is_zero()) {
                c.err(format!("{path}.package_size"), "must be greater than zero");
            }
            let amount = c.money(t, "package_amount", &format!("{path}.package_amount"), true);
            let free = c
                .money(t, "free_units", &format!("{path}.free_units"), false)
                .unwrap_or_default();
            match (size, amount) {
                (Some(package_size), Some(package_amount)) => Some(ChargeModel::Package {
                    package_size,
                    package_amount,
                    free_units: free,
                }),
                _ => None,
            }
        }
        Some(other) => {
            c.err(
                format!("{path}.model"),
                format!("unknown model `{other}` (per_unit, graduated, volume, package)"),
            );
            None
        }
        None => None,
    };
    Some(Charge {
        meter: meter?,
        model: model?,
    })
}

fn tiers(c: &mut Checker<'_>, t: &Table, path: &str) -> Option<Vec<Tier>> {
    let Some(Value::Array(items)) = t.get("tiers") else {
        c.err(
            format!("{path}.tiers"),
            "is required: an array of { up_to, unit_amount, flat_amount }",
        );
        return None;
    };
    if items.is_empty() {
        c.err(format!("{path}.tiers"), "must hold at least one tier");
        return None;
    }
    let before = c.errors.len();
    let mut out = Vec::new();
    let mut previous: Option<Decimal> = None;
    for (i, item) in items.iter().enumerate() {
        let tp = format!("{path}.tiers[{i}]");
        let Value::Table(tt) = item else {
            c.err(&tp, "must be a table { up_to, unit_amount, flat_amount }");
            continue;
        };
        c.unknown_keys(tt, &tp, &["up_to", "unit_amount", "flat_amount"]);
        let last = i + 1 == items.len();
        let up_to = match tt.get("up_to") {
            Some(Value::String(s)) if s == "inf" => {
                if !last {
                    c.err(
                        format!("{tp}.up_to"),
                        "only the last tier may be open-ended (\"inf\")",
                    );
                }
                None
            }
            Some(_) => {
                let v = c.money(tt, "up_to", &format!("{tp}.up_to"), true);
                if last {
                    c.err(
                        format!("{tp}.up_to"),
                        "the last tier must be open-ended: up_to = \"inf\"",
                    );
                }
                if let (Some(v), Some(p)) = (v, previous) {
                    if v <= p {
                        c.err(
                            format!("{tp}.up_to"),
                            format!(
                                "tiers must increase: {v} does not exceed the previous bound {p}"
                            ),
                        );
                    }
                }
                if v.is_some() {
                    previous = v;
                }
                v
            }
            None => {
                c.err(
                    format!("{tp}.up_to"),
                    "is required (a bound, or \"inf\" on the last tier)",
                );
                None
            }
        };
        let unit = c.money(tt, "unit_amount", &format!("{tp}.unit_amount"), true);
        let flat = c
            .money(tt, "flat_amount", &format!("{tp}.flat_amount"), false)
            .unwrap_or_default();
        if let Some(unit_amount) = unit {
            out.push(Tier {
                up_to,
                unit_amount,
                flat_amount: flat,
            });
        }
    }
    (c.errors.len() == before).then_some(out)
}

#[cfg(test)]
mod tests;
