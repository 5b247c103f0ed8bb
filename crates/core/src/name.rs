//! Function names: the part of every URL and record that users choose.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated function name: `[a-z0-9-]`, 1–63 characters, starting and
/// ending with a letter or digit (a DNS label, so names survive into
/// hostnames, cgroup paths and file names unchanged).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FunctionName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("function name is empty")]
    Empty,
    #[error("function name `{0}` is longer than 63 characters")]
    TooLong(String),
    #[error("function name `{name}` contains `{ch}`: use only lowercase letters, digits and `-`")]
    BadChar { name: String, ch: char },
    #[error("function name `{0}` must start and end with a letter or digit")]
    BadEdge(String),
}

impl FunctionName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > 63 {
            return Err(NameError::TooLong(name.chars().take(80).collect()));
        }
        if let Some(ch) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(NameError::BadChar { name: name.to_string(), ch });
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(NameError::BadEdge(name.to_string()));
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for FunctionName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for FunctionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "hello", "hello-world", "f1", "0", &"x".repeat(63)] {
            assert!(FunctionName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_the_rest_with_a_reason() {
        assert_eq!(FunctionName::new(""), Err(NameError::Empty));
        assert!(matches!(FunctionName::new(&"x".repeat(64)), Err(NameError::TooLong(_))));
        assert_eq!(FunctionName::new("Hello"), Err(NameError::BadChar { name: "Hello".into(), ch: 'H' }));
        assert!(matches!(FunctionName::new("a_b"), Err(NameError::BadChar { ch: '_', .. })));
        assert!(matches!(FunctionName::new("../x"), Err(NameError::BadChar { ch: '.', .. })));
        assert!(matches!(FunctionName::new("-a"), Err(NameError::BadEdge(_))));
        assert!(matches!(FunctionName::new("a-"), Err(NameError::BadEdge(_))));
    }
}
