//! Usage accounting as a bill: the store's daily sums per function
//! (`usage_daily`, kept apart from the records so pruning them never loses
//! the bill) turned into GB-seconds, CPU-seconds and a cost at the
//! configured prices.

use flick_core::FunctionName;
use flick_store::UsageDay;
use serde::{Deserialize, Serialize};

use crate::{Platform, PlatformError};

/// What a call costs (`[pricing]` in flick's config). Lambda's x86 list
/// prices by default; nothing is charged anywhere, it is a price tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    /// Per GB-second billed (configured memory × billed duration).
    pub gb_second: f64,
    /// Per million invocations.
    pub per_million_requests: f64,
    /// An ISO 4217 code, shown beside the figures.
    #[serde(skip, default)]
    pub currency: String,
}

impl Default for Pricing {
    fn default() -> Self {
        Self { gb_second: 0.0000166667, per_million_requests: 0.20, currency: "USD".into() }
    }
}

impl Pricing {
    /// Why these prices cannot be used, if they cannot: a price is a finite
    /// number, zero or more; a currency three capital letters.
    pub fn check(&self) -> Result<(), String> {
        for (key, price) in [("gb_second", self.gb_second), ("per_million_requests", self.per_million_requests)] {
            if !price.is_finite() || price < 0.0 {
                return Err(format!("`[pricing] {key}` must be a number of at least 0, not {price}"));
            }
        }
        let c = &self.currency;
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("`[pricing] currency` must be an ISO 4217 code such as USD or EUR, not `{c}`"));
        }
        Ok(())
    }

    /// Billed GB-s at the GB-s price plus invocations at the request price.
    pub fn cost(&self, billed_gb_s: f64, invocations: u64) -> f64 {
        billed_gb_s * self.gb_second + invocations as f64 * self.per_million_requests / 1e6
    }
}

/// Sums over some days of some functions. GB are GiB (MiB / 1024, as
/// Lambda bills).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSums {
    pub invocations: u64,
    pub errors: u64,
    pub cold_starts: u64,
    /// Configured memory × billed duration (each call rounded up to 1 ms).
    pub billed_gb_s: f64,
    /// Measured memory peak × the same duration.
    pub measured_gb_s: f64,
    /// CPU time, user + system.
    pub cpu_s: f64,
    pub cost: f64,
}

/// The exact integer and byte sums, converted once at the end so totals
/// are not sums of rounded figures.
#[derive(Default)]
struct Acc {
    invocations: u64,
    errors: u64,
    cold_starts: u64,
    billed_mib_ms: u64,
    measured_byte_ms: f64,
    cpu_ms: f64,
}

impl Acc {
    fn add(&mut self, d: &UsageDay) {
        self.invocations += d.invocations;
        self.errors += d.errors;
        self.cold_starts += d.cold_starts;
        self.billed_mib_ms = self.billed_mib_ms.saturating_add(d.billed_mib_ms);
        self.measured_byte_ms += d.measured_byte_ms;
        self.cpu_ms += d.cpu_ms;
    }

    fn sums(&self, pricing: &Pricing) -> UsageSums {
        let billed_gb_s = self.billed_mib_ms as f64 / 1024.0 / 1000.0;
        UsageSums {
            invocations: self.invocations,
            errors: self.errors,
            cold_starts: self.cold_starts,
            billed_gb_s,
            measured_gb_s: self.measured_byte_ms / (1u64 << 30) as f64 / 1000.0,
            cpu_s: self.cpu_ms / 1000.0,
            cost: pricing.cost(billed_gb_s, self.invocations),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageDayRow {
    pub function: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    #[serde(flatten)]
    pub sums: UsageSums,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageFunctionRow {
    pub function: String,
    #[serde(flatten)]
    pub sums: UsageSums,
}

/// `GET /v1/usage`'s answer (what `flick usage` reads back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageReport {
    /// The first day counted, `YYYY-MM-DD` (UTC).
    pub since: String,
    pub currency: String,
    pub prices: Pricing,
    /// Ordered by day, then function.
    pub days: Vec<UsageDayRow>,
    /// Ordered by function.
    pub functions: Vec<UsageFunctionRow>,
    pub total: UsageSums,
}

impl UsageReport {
    fn of(rows: &[UsageDay], since: String, pricing: &Pricing) -> Self {
        let mut total = Acc::default();
        let mut per_function = std::collections::BTreeMap::<&str, Acc>::new();
        let days = rows
            .iter()
            .map(|d| {
                total.add(d);
                per_function.entry(&d.function).or_default().add(d);
                let mut one = Acc::default();
                one.add(d);
                UsageDayRow { function: d.function.clone(), day: d.day.clone(), sums: one.sums(pricing) }
            })
            .collect();
        let functions = per_function
            .iter()
            .map(|(f, acc)| UsageFunctionRow { function: (*f).to_owned(), sums: acc.sums(pricing) })
            .collect();
        Self {
            since,
            currency: pricing.currency.clone(),
            prices: pricing.clone(),
            days,
            functions,
            total: total.sums(pricing),
        }
    }
}

impl Platform {
    /// Usage per function and UTC day from the day of `since_ms` on (of one
    /// function, or all), priced. A deleted function's history is still
    /// there (the bill was run up); a name that never ran anything and is
    /// not deployed is `FunctionNotFound`, as a typo should be.
    pub async fn usage(&self, function: Option<&str>, since_ms: i64) -> Result<UsageReport, PlatformError> {
        // Records cannot predate 1970; SQLite's dates stop at year 0.
        let since_ms = since_ms.max(0);
        if let Some(name) = function {
            FunctionName::new(name)?;
        }
        // Calls that finished before this read are in it (read-your-writes,
        // as for the records themselves).
        self.records.flush(crate::records::READ_WAIT).await;
        let rows = self.store.usage(function, since_ms).await?;
        if let Some(name) = function
            && rows.is_empty()
            && self.store.function(name).await?.is_none()
            && self.store.usage(Some(name), 0).await?.is_empty()
        {
            return Err(PlatformError::FunctionNotFound(name.into()));
        }
        let pricing = &self.config.pricing;
        Ok(UsageReport::of(&rows, flick_core::timefmt::date(since_ms), pricing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(function: &str, day: &str, invocations: u64, billed_mib_ms: u64) -> UsageDay {
        UsageDay {
            function: function.into(),
            day: day.into(),
            invocations,
            errors: 1,
            cold_starts: 1,
            billed_ms: billed_mib_ms / 256,
            billed_mib_ms,
            measured_byte_ms: (100u64 << 20) as f64 * 200.0 * invocations as f64,
            cpu_ms: 3.0,
        }
    }

    #[test]
    fn a_bill_sums_days_per_function_and_in_total_at_the_prices() {
        let p = Pricing::default();
        // 256 MiB × 200 ms per call: 0.05 GB-s each.
        let rows = [
            day("a", "2026-11-01", 10, 10 * 256 * 200),
            day("b", "2026-11-01", 1, 1024 * 1000),
            day("a", "2026-11-02", 2, 2 * 256 * 200),
        ];
        let r = UsageReport::of(&rows, "2026-11-01".into(), &p);
        assert_eq!(r.days.len(), 3);
        assert!((r.days[0].sums.billed_gb_s - 0.5).abs() < 1e-12);
        let a = &r.functions[0];
        assert_eq!((a.function.as_str(), a.sums.invocations, a.sums.errors, a.sums.cold_starts), ("a", 12, 2, 2));
        assert!((a.sums.billed_gb_s - 0.6).abs() < 1e-12, "{}", a.sums.billed_gb_s);
        assert!((a.sums.measured_gb_s - 12.0 * 100.0 / 1024.0 * 0.2).abs() < 1e-9, "{}", a.sums.measured_gb_s);
        assert!((a.sums.cpu_s - 0.006).abs() < 1e-12);
        assert!((a.sums.cost - (0.6 * 0.0000166667 + 12.0 * 0.2 / 1e6)).abs() < 1e-15, "{}", a.sums.cost);
        assert_eq!(r.total.invocations, 13);
        assert!((r.total.billed_gb_s - 1.6).abs() < 1e-12);
        let sum: f64 = r.functions.iter().map(|f| f.sums.cost).sum();
        assert!((r.total.cost - sum).abs() < 1e-15);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["prices"], serde_json::json!({ "gb_second": 0.0000166667, "per_million_requests": 0.2 }));
        assert_eq!(json["days"][1]["function"], "b");
        assert_eq!(json["days"][1]["cost"], serde_json::json!(p.cost(1.0, 1)));
    }

    #[test]
    fn prices_are_checked() {
        assert_eq!(Pricing::default().check(), Ok(()));
        let bad = [
            Pricing { gb_second: -1.0, ..Pricing::default() },
            Pricing { per_million_requests: f64::NAN, ..Pricing::default() },
            Pricing { gb_second: f64::INFINITY, ..Pricing::default() },
            Pricing { currency: "usd".into(), ..Pricing::default() },
            Pricing { currency: "\u{1b}[2J".into(), ..Pricing::default() },
        ];
        for p in bad {
            assert!(p.check().is_err(), "{p:?}");
        }
        assert_eq!(Pricing { gb_second: 0.0, per_million_requests: 0.0, currency: "EUR".into() }.check(), Ok(()));
    }
}
