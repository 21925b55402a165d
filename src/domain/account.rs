//! The account identifier: the key every account-owned row is distributed by.

use std::fmt;

/// Longest account id we accept; keeps index keys small and rejects garbage early.
pub const MAX_ACCOUNT_LEN: usize = 128;

/// An account id as the customer's product names it (`acme`, `org_123`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Validates an account id: non-empty, at most [`MAX_ACCOUNT_LEN`] bytes, no control or
    /// invisible format characters, no space at either end, and in Unicode NFC form, so two
    /// ids that look the same are the same id. Ids are compared exactly (case-sensitive).
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::check(raw).map(|()| Self(raw.to_owned()))
    }

    /// [`AccountId::parse`] of a string the caller owns: kept, not copied.
    pub fn parse_owned(raw: String) -> Result<Self, String> {
        Self::check(&raw).map(|()| Self(raw))
    }

    fn check(raw: &str) -> Result<(), String> {
        if raw.trim().is_empty() {
            return Err("account must be a non-empty string".into());
        }
        if raw.len() > MAX_ACCOUNT_LEN {
            return Err(format!("account is longer than {MAX_ACCOUNT_LEN} bytes"));
        }
        if raw.chars().any(char::is_control) {
            return Err("account contains control characters".into());
        }
        if let Some(c) = raw.chars().find(|c| is_format(*c)) {
            return Err(format!(
                "account contains the invisible character U+{:04X}",
                u32::from(c)
            ));
        }
        if raw.trim() != raw {
            return Err("account must not start or end with a space".into());
        }
        if !unicode_normalization::is_nfc(raw) {
            use unicode_normalization::UnicodeNormalization;
            return Err(format!(
                "account must be in Unicode NFC form (`{}`)",
                raw.nfc().collect::<String>()
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unicode's format characters (general category Cf): invisible, they make look-alike ids
/// (zero-width spaces and joiners, bidirectional overrides, the byte order mark, tags).
fn is_format(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
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

    #[test]
    fn look_alike_account_ids_are_refused() {
        // A zero-width space, a right-to-left override, a byte order mark.
        for id in [
            "ac\u{200B}me",
            "\u{202E}emca",
            "\u{FEFF}acme",
            " acme",
            "acme ",
        ] {
            assert!(AccountId::parse(id).is_err(), "{id:?}");
        }
        // "é" as e + combining acute (NFD) is refused and the NFC form named; NFC is kept.
        let nfd = AccountId::parse("caf\u{65}\u{301}").unwrap_err();
        assert!(nfd.contains("café"), "{nfd}");
        assert_eq!(AccountId::parse("café").unwrap().as_str(), "café");
        assert_eq!(AccountId::parse("Acme Corp").unwrap().as_str(), "Acme Corp");
    }
}
