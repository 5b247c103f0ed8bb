//! The AWS identity flick presents to Lambda-style clients and code: the
//! region and account its fake ARNs carry (`[lambda]` in flick's config),
//! and the names Lambda gives a function's log group and streams.

use serde::{Deserialize, Serialize};

/// Region and account of every function's ARN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LambdaIdentity {
    pub region: String,
    pub account: String,
}

impl Default for LambdaIdentity {
    fn default() -> Self {
        Self { region: Self::DEFAULT_REGION.into(), account: Self::DEFAULT_ACCOUNT.into() }
    }
}

impl LambdaIdentity {
    pub const DEFAULT_REGION: &str = "us-east-1";
    /// All zeros: plainly not a real account.
    pub const DEFAULT_ACCOUNT: &str = "000000000000";

    /// Checks both parts, so an ARN built from them parses in every SDK:
    /// a region is lowercase words joined by `-` ending in a number
    /// (`us-east-1`, `eu-central-2`, `local-1`), an account 12 digits.
    pub fn new(region: &str, account: &str) -> Result<Self, String> {
        let words: Vec<&str> = region.split('-').collect();
        let region_ok = words.len() >= 2
            && region.len() <= 32
            && words.iter().all(|w| !w.is_empty())
            && words[..words.len() - 1].iter().all(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
            && words[words.len() - 1].bytes().all(|b| b.is_ascii_digit());
        if !region_ok {
            return Err(format!("`{region}` is not a region (lowercase words and a number, e.g. `us-east-1`)"));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{account}` is not an account id (12 digits, e.g. `000000000000`)"));
        }
        Ok(Self { region: region.into(), account: account.into() })
    }

    /// `arn:aws:lambda:{region}:{account}:function:{name}`.
    pub fn function_arn(&self, function: &str) -> String {
        format!("arn:aws:lambda:{}:{}:function:{function}", self.region, self.account)
    }
}

/// Lambda's log group of a function.
pub fn log_group(function: &str) -> String {
    format!("/aws/lambda/{function}")
}

/// Lambda's log stream name for an instance started at `epoch_ms`:
/// `YYYY/MM/DD/[{version}]{instance}`.
pub fn log_stream(epoch_ms: i64, version: &str, instance: &str) -> String {
    let (y, m, d) = crate::timefmt::civil_from_days(epoch_ms.div_euclid(86_400_000));
    format!("{y:04}/{m:02}/{d:02}/[{version}]{instance}")
}

/// A new instance's id in its log stream name: 32 random hex digits, as Lambda's.
pub fn instance_id() -> String {
    let mut rnd = [0u8; 16];
    // A failing OS RNG is not recoverable and not worth an error path.
    getrandom::fill(&mut rnd).expect("operating system random source");
    hex::encode(rnd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_and_checked_parts() {
        let id = LambdaIdentity::default();
        assert_eq!(id.function_arn("hello"), "arn:aws:lambda:us-east-1:000000000000:function:hello");
        let id = LambdaIdentity::new("eu-central-2", "123456789012").unwrap();
        assert_eq!(id.function_arn("a_b-c"), "arn:aws:lambda:eu-central-2:123456789012:function:a_b-c");
        for bad in ["", "us", "US-east-1", "us-east-", "us-east-x", "us:east-1", "-1", "us--1"] {
            assert!(LambdaIdentity::new(bad, "123456789012").is_err(), "{bad}");
        }
        for bad in ["", "12345678901", "1234567890123", "12345678901a"] {
            assert!(LambdaIdentity::new("us-east-1", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_names_as_lambda_writes_them() {
        assert_eq!(log_group("hello"), "/aws/lambda/hello");
        // 2026-12-02T10:00:00Z
        assert_eq!(log_stream(1_796_205_600_000, "$LATEST", "abc"), "2026/12/02/[$LATEST]abc");
        assert_eq!(log_stream(0, "1", "x"), "1970/01/01/[1]x");
        assert_eq!(crate::timefmt::civil_from_days(11_016), (2000, 2, 29));
    }
}
