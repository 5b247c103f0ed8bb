//! Function names: the part of every URL and record that users choose.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated function name, by AWS Lambda's rule so that every surface
/// takes the same names: `[A-Za-z0-9_-]`, 1–64 characters. Names are case
/// sensitive (`Hello` and `hello` are two functions) and nothing in flick
/// folds their case. They appear in URL paths (one segment: no `/`, `.`,
/// `%`), record and queue columns (compared byte for byte), log group names
/// and ARNs; never in host paths (code lives under its hash, cgroups and
/// scratch dirs under instance numbers).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FunctionName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("function name is empty")]
    Empty,
    #[error("function name `{0}` is longer than 64 characters")]
    TooLong(String),
    #[error("function name `{name}` contains `{ch}`: use only letters, digits, `-` and `_`")]
    BadChar { name: String, ch: char },
}

/// Longest function name (Lambda's limit).
pub const MAX_NAME_LEN: usize = 64;

impl FunctionName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        // Characters first: a long name of bad characters is told what is wrong with it.
        if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            let shown: String = name.chars().take(80).collect();
            return Err(NameError::BadChar { name: shown, ch });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.chars().take(80).collect()));
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
    fn accepts_lambdas_names() {
        for ok in
            ["a", "hello", "hello-world", "f1", "0", "Hello", "My_Function-2", "_", "-", "-a", "a-", &"x".repeat(64)]
        {
            assert_eq!(FunctionName::new(ok).map(|n| n.to_string()), Ok(ok.to_string()), "{ok}");
        }
        // Case is kept, not folded: two names.
        assert_ne!(FunctionName::new("Hello").unwrap(), FunctionName::new("hello").unwrap());
    }

    #[test]
    fn rejects_the_rest_with_a_reason() {
        assert_eq!(FunctionName::new(""), Err(NameError::Empty));
        assert!(matches!(FunctionName::new(&"x".repeat(65)), Err(NameError::TooLong(_))));
        // Whatever could split a path, a URL, a query or a shell word.
        for (bad, ch) in [
            ("../x", '.'),
            ("a/b", '/'),
            ("a%2Fb", '%'),
            ("a b", ' '),
            ("a:b", ':'),
            ("é", 'é'),
            ("a\0", '\0'),
            ("a\nb", '\n'),
        ] {
            assert_eq!(FunctionName::new(bad), Err(NameError::BadChar { name: bad.into(), ch }), "{bad:?}");
        }
    }
}
