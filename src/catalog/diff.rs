//! `accrue plans diff team@1 team@2`: what changed between two plan versions, field by field.
//! Charges are matched by meter, so reordering them is not a change.

use crate::domain::plan::PlanVersion;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Dotted path of the field (`charges.api_calls.tiers[2].unit_amount`).
    pub field: String,
    /// `None` when the field was added.
    pub before: Option<Value>,
    /// `None` when the field was removed.
    pub after: Option<Value>,
}

/// The changes from `a` to `b` (identity fields `plan` and `version` are not compared).
pub fn diff(a: &PlanVersion, b: &PlanVersion) -> Vec<Change> {
    let (fa, fb) = (flatten_version(a), flatten_version(b));
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (fa.get(k), fb.get(k));
            (x != y).then(|| Change {
                field: k.clone(),
                before: x.cloned(),
                after: y.cloned(),
            })
        })
        .collect()
}

/// One line per change: `~ base_fee: "49.00" → "59.00"`, `+ features.scim: true`, `- …`.
pub fn render(a: &PlanVersion, b: &PlanVersion, changes: &[Change]) -> String {
    let mut out = format!(
        "{}@{} → {}@{}: {} change{}\n",
        a.plan,
        a.version,
        b.plan,
        b.version,
        changes.len(),
        if changes.len() == 1 { "" } else { "s" }
    );
    for c in changes {
        let line = match (&c.before, &c.after) {
            (Some(x), Some(y)) => format!("~ {}: {x} → {y}", c.field),
            (None, Some(y)) => format!("+ {}: {y}", c.field),
            (Some(x), None) => format!("- {}: {x}", c.field),
            (None, None) => continue,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn flatten_version(v: &PlanVersion) -> BTreeMap<String, Value> {
    let mut json = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Value::Object(obj) = &mut json {
        obj.remove("plan");
        obj.remove("version");
        // Key charges by meter.
        if let Some(Value::Array(charges)) = obj.remove("charges") {
            let by_meter: serde_json::Map<String, Value> = charges
                .into_iter()
                .map(|mut c| {
                    let meter = c
                        .as_object_mut()
                        .and_then(|o| o.remove("meter"))
                        .and_then(|m| m.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    (meter, c)
                })
                .collect();
            obj.insert("charges".into(), Value::Object(by_meter));
        }
    }
    let mut out = BTreeMap::new();
    flatten("", &json, &mut out);
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::meters::MeterCatalog;
    use crate::catalog::plans::PlanCatalog;
    use std::path::Path;

    #[test]
    fn team_v1_to_v2_lists_exactly_what_the_files_changed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing-plans");
        let cat = PlanCatalog::load(&dir, &MeterCatalog::load(&dir).unwrap()).unwrap();
        let a = cat.get(&"team@1".parse().unwrap()).unwrap();
        let b = cat.get(&"team@2".parse().unwrap()).unwrap();
        let changes = diff(a, b);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "base_fee",
                "charges.api_calls.tiers[2].unit_amount",
                "features.audit_log"
            ]
        );
        let text = render(a, b, &changes);
        assert!(text.contains("~ base_fee: \"49.00\" → \"59.00\""), "{text}");
        assert!(
            text.contains("~ features.audit_log: false → true"),
            "{text}"
        );
        assert!(diff(a, a).is_empty());
    }
}
