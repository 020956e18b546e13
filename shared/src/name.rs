//! Worker-name rules (SPEC §1): `[a-z0-9][a-z0-9-]{0,62}`.
//!
//! A worker's name is a Prometheus label value, a URL path segment (`/readyz/{worker}`)
//! and, when injected, a Kubernetes container name; the rule keeps it valid in all three.

use std::fmt;

/// The longest name allowed, in bytes (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Why a proposed worker name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("worker name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("worker name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// The first character is not a lowercase letter or digit.
    #[error("worker name must start with a lowercase letter or digit, not {0:?}")]
    BadStart(char),
    /// A later character is not a lowercase letter, digit or `-`.
    #[error("worker name may hold only lowercase letters, digits and '-', not {0:?}")]
    BadChar(char),
}

/// A validated worker name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct WorkerName(String);

impl WorkerName {
    /// Validates `name` against the SPEC §1 rule.
    pub fn parse(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        validate(&name)?;
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for WorkerName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for WorkerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn validate(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadStart(first));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar(bad));
    }
    // All characters are ASCII here, so bytes == characters.
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in ["model", "m", "0", "embedder-2", "a-", &"x".repeat(63)] {
            assert_eq!(
                WorkerName::parse(ok).map(|n| n.to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn refuses_each_kind_of_bad_name() {
        assert_eq!(WorkerName::parse(""), Err(NameError::Empty));
        assert_eq!(WorkerName::parse("-a"), Err(NameError::BadStart('-')));
        assert_eq!(WorkerName::parse("Model"), Err(NameError::BadStart('M')));
        assert_eq!(WorkerName::parse("mo_del"), Err(NameError::BadChar('_')));
        assert_eq!(WorkerName::parse("mödel"), Err(NameError::BadChar('ö')));
        assert_eq!(WorkerName::parse("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(
            WorkerName::parse("x".repeat(64)),
            Err(NameError::TooLong(64))
        );
    }
}
