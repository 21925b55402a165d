//! `pricing-plans/meters.toml`: the meter catalogue, loaded and validated at start.

use crate::domain::meter::{Aggregation, Meter};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A catalogue problem: which file, which meter, what rule.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: meter `{meter}`: {problem}")]
    Meter {
        file: PathBuf,
        meter: String,
        problem: String,
    },
}

/// The validated meters, indexed by event type for the ingestion hot path.
#[derive(Debug, Clone, Default)]
pub struct MeterCatalog {
    meters: Vec<Meter>,
    by_event_type: HashMap<String, Vec<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    meters: Vec<RawMeter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeter {
    code: Option<String>,
    event_type: Option<String>,
    aggregation: Option<String>,
    property: Option<String>,
    #[serde(default)]
    filter: BTreeMap<String, FilterValue>,
    description: Option<String>,
    owner: Option<String>,
    allow_negative: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FilterValue {
    One(String),
    Many(Vec<String>),
}

impl MeterCatalog {
    /// Loads `<plans_dir>/meters.toml`.
    pub fn load(plans_dir: &Path) -> Result<Self, CatalogError> {
        let file = plans_dir.join("meters.toml");
        let text = std::fs::read_to_string(&file).map_err(|source| CatalogError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates catalogue text; `file` is only used in messages.
    pub fn parse(file: &Path, text: &str) -> Result<Self, CatalogError> {
        let raw: File = toml::from_str(text).map_err(|e| CatalogError::Syntax {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let mut meters = Vec::with_capacity(raw.meters.len());
        for (i, m) in raw.meters.into_iter().enumerate() {
            let name = m.code.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let meter = validate(m).map_err(|problem| CatalogError::Meter {
                file: file.to_owned(),
                meter: name.clone(),
                problem,
            })?;
            if meters.iter().any(|x: &Meter| x.code == meter.code) {
                return Err(CatalogError::Meter {
                    file: file.to_owned(),
                    meter: name,
                    problem: "code is defined twice".into(),
                });
            }
            meters.push(meter);
        }
        Ok(Self::from_meters(meters))
    }

    pub fn from_meters(meters: Vec<Meter>) -> Self {
        let mut by_event_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, m) in meters.iter().enumerate() {
            by_event_type
                .entry(m.event_type.clone())
                .or_default()
                .push(i);
        }
        Self {
            meters,
            by_event_type,
        }
    }

    pub fn all(&self) -> &[Meter] {
        &self.meters
    }

    pub fn get(&self, code: &str) -> Option<&Meter> {
        self.meters.iter().find(|m| m.code == code)
    }

    /// The meters reading events of `event_type`.
    pub fn for_event_type<'a>(&'a self, event_type: &str) -> impl Iterator<Item = &'a Meter> {
        self.by_event_type
            .get(event_type)
            .into_iter()
            .flatten()
            .map(|&i| &self.meters[i])
    }

    pub fn uses_event_type(&self, event_type: &str) -> bool {
        self.by_event_type.contains_key(event_type)
    }
}

fn required(field: &str, v: Option<String>) -> Result<String, String> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(format!("`{field}` is required")),
    }
}

fn validate(m: RawMeter) -> Result<Meter, String> {
    let code = required("code", m.code)?;
    if !code
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || !code.starts_with(|c: char| c.is_ascii_lowercase())
    {
        return Err("`code` must be snake_case (a-z, 0-9, _), starting with a letter".into());
    }
    let event_type = required("event_type", m.event_type)?;
    let aggregation = Aggregation::from_str(&required("aggregation", m.aggregation)?)
        .map_err(|e| format!("`aggregation`: {e}"))?;
    let property = match (aggregation, m.property) {
        (Aggregation::Count, Some(_)) => {
            return Err("`property` must not be set for a count meter".into())
        }
        (Aggregation::Count, None) => None,
        (agg, None) => {
            return Err(format!(
                "`property` is required for a {} meter",
                agg.as_str()
            ))
        }
        (_, Some(p)) if p.trim().is_empty() => return Err("`property` is empty".into()),
        (_, Some(p)) => Some(p),
    };
    if m.allow_negative.is_some() && !aggregation.needs_number() {
        return Err(format!(
            "`allow_negative` applies to meters that read a number, not to a {} meter",
            aggregation.as_str()
        ));
    }
    let description = required("description", m.description)?;
    let owner = required("owner", m.owner)?;
    let filter = m
        .filter
        .into_iter()
        .map(|(k, v)| {
            let values = match v {
                FilterValue::One(s) => vec![s],
                FilterValue::Many(v) => v,
            };
            if values.is_empty() {
                Err(format!("`filter.{k}` lists no values"))
            } else {
                Ok((k, values))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Meter {
        code,
        event_type,
        aggregation,
        property,
        filter,
        description,
        owner,
        allow_negative: m.allow_negative.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        MeterCatalog::parse(Path::new("pricing-plans/meters.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_shipped_catalogue_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing-plans");
        let cat = MeterCatalog::load(&dir).unwrap();
        for code in ["api_calls", "storage_gb", "active_users", "compute_minutes"] {
            assert!(cat.get(code).is_some(), "{code} missing");
        }
    }

    #[test]
    fn errors_name_the_file_the_meter_and_the_rule() {
        let e = err(r#"[[meters]]
code = "storage"
event_type = "storage.snapshot"
aggregation = "max"
description = "d"
owner = "o""#);
        assert_eq!(
            e,
            "pricing-plans/meters.toml: meter `storage`: `property` is required for a max meter"
        );
        let e = err(r#"[[meters]]
code = "x"
event_type = "t"
aggregation = "median"
property = "p"
description = "d"
owner = "o""#);
        assert!(e.contains("meter `x`") && e.contains("median"), "{e}");
        let e = err(r#"[[meters]]
code = "x"
event_type = "t"
aggregation = "count"
description = "d""#);
        assert!(e.contains("`owner` is required"), "{e}");
        assert!(err("meters = 3").contains("not valid TOML"));
    }

    #[test]
    fn duplicate_codes_are_refused() {
        let one = "[[meters]]\ncode = \"x\"\nevent_type = \"t\"\naggregation = \"count\"\ndescription = \"d\"\nowner = \"o\"\n";
        assert!(err(&format!("{one}{one}")).contains("defined twice"));
    }
}
