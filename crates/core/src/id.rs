//! Activation ids: sortable by time, unguessable, 32 hex characters (the
//! shape OpenWhisk clients expect of an activation id).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActivationId(String);

impl ActivationId {
    /// 12 hex digits of milliseconds, then 20 random hex digits: ids sort by
    /// start time, which is the order every listing wants.
    pub fn generate() -> Self {
        let mut rnd = [0u8; 10];
        // A failing OS RNG is not recoverable and not worth an error path.
        getrandom::fill(&mut rnd).expect("operating system random source");
        let ms = crate::now_ms().max(0) as u64 & 0xffff_ffff_ffff;
        Self(format!("{ms:012x}{}", hex::encode(rnd)))
    }

    /// Accepts an id from a user (URL path, CLI argument) only if it has the
    /// shape of one, so it can be used in a query or file name without escaping.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActivationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_parseable_and_time_ordered() {
        let a = ActivationId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ActivationId::generate();
        assert_ne!(a, b);
        assert!(a.as_str() < b.as_str());
        assert_eq!(ActivationId::parse(a.as_str()), Some(a));
        assert_eq!(ActivationId::parse("../../etc/passwd"), None);
        assert_eq!(ActivationId::parse(&"A".repeat(32)), None);
    }
}
