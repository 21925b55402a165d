//! API key scopes: what a key may do. `admin` includes every other scope.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Ingest,
    Check,
    Billing,
    Finance,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Ingest,
        Scope::Check,
        Scope::Billing,
        Scope::Finance,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Check => "check",
            Scope::Billing => "billing",
            Scope::Finance => "finance",
            Scope::Admin => "admin",
        }
    }

    /// Parses a comma-separated list (`ingest,check`), refusing unknown names.
    pub fn parse_list(raw: &str) -> Result<Vec<Scope>, String> {
        let mut scopes: Vec<Scope> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Scope::from_str)
            .collect::<Result<_, _>>()?;
        if scopes.is_empty() {
            return Err("at least one scope is required".into());
        }
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope `{s}` (known: ingest, check, billing, finance, admin)")
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Does a key holding `held` satisfy a route needing any of `needed`?
pub fn grants(held: &[Scope], needed: &[Scope]) -> bool {
    held.contains(&Scope::Admin) || needed.iter().any(|n| held.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_parse_dedup_and_refuse_unknown_names() {
        assert_eq!(
            Scope::parse_list("check, ingest,check").unwrap(),
            vec![Scope::Ingest, Scope::Check]
        );
        assert!(Scope::parse_list("ingest,root")
            .unwrap_err()
            .contains("root"));
        assert!(Scope::parse_list("").is_err());
    }

    #[test]
    fn admin_grants_everything_and_others_only_themselves() {
        assert!(grants(&[Scope::Admin], &[Scope::Ingest]));
        assert!(grants(&[Scope::Check], &[Scope::Check, Scope::Billing]));
        assert!(!grants(&[Scope::Ingest], &[Scope::Check]));
    }
}
