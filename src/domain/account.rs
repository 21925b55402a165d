//! The account identifier: the key every account-owned row is distributed by.

use std::fmt;

/// Longest account id we accept; keeps index keys small and rejects garbage early.
pub const MAX_ACCOUNT_LEN: usize = 128;

/// An account id as the customer's product names it (`acme`, `org_123`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Validates an account id: non-empty, at most [`MAX_ACCOUNT_LEN`] bytes, no control chars.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Err("account must be a non-empty string".into());
        }
        if raw.len() > MAX_ACCOUNT_LEN {
            return Err(format!("account is longer than {MAX_ACCOUNT_LEN} bytes"));
        }
        if raw.chars().any(char::is_control) {
            return Err("account contains control characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_blank_long_and_control_account_ids_are_refused() {
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse("   ").is_err());
        assert!(AccountId::parse(&"a".repeat(MAX_ACCOUNT_LEN + 1)).is_err());
        assert!(AccountId::parse("ac\nme").is_err());
        assert_eq!(AccountId::parse("acme").unwrap().as_str(), "acme");
    }
}
