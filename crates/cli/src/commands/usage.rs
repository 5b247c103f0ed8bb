//! `usage`: what functions used per UTC day (invocations, errors, cold
//! starts, billed and measured GB-s, CPU-s) and what it costs at the
//! server's `[pricing]`, over `GET /v1/usage`.

use std::process::ExitCode;

use flick_platform::{UsageReport, UsageSums};

use crate::client::Client;
use crate::out::{escape, escape_json};

const HEADER: [&str; 9] =
    ["DAY", "FUNCTION", "INVOCATIONS", "ERRORS", "COLD", "BILLED GB-S", "MEASURED GB-S", "CPU-S", "COST"];

pub async fn show(client: &Client, function: Option<&str>, since: &str, json: bool) -> anyhow::Result<ExitCode> {
    // Encoded: both are the user's text.
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("since", since);
    if let Some(f) = function {
        query.append_pair("function", f);
    }
    let path = format!("/v1/usage?{}", query.finish());
    if json {
        let value: serde_json::Value = client.get(&path).await?;
        outln!("{}", escape_json(&serde_json::to_string_pretty(&value)?));
        return Ok(ExitCode::SUCCESS);
    }
    let report: UsageReport = client.get(&path).await?;
    let currency = escape(&report.currency, false);
    outln!(
        "since {} (UTC days); prices: {} {} per GB-second, {} {} per million requests",
        escape(&report.since, false),
        currency,
        report.prices.gb_second,
        currency,
        report.prices.per_million_requests
    );
    let [day, function, inv, errors, cold, billed, measured, cpu, cost] = HEADER;
    outln!(
        "{day:<10}  {function:<24} {inv:>11} {errors:>7} {cold:>6} {billed:>12} {measured:>14} {cpu:>10} {:>14}",
        format!("{cost} ({currency})")
    );
    for d in &report.days {
        row(&d.day, &d.function, &d.sums)?;
    }
    // One total per function when the table mixes several.
    if report.functions.len() > 1 {
        for f in &report.functions {
            row("total", &f.function, &f.sums)?;
        }
    }
    row("total", "", &report.total)?;
    Ok(ExitCode::SUCCESS)
}

fn row(day: &str, function: &str, s: &UsageSums) -> anyhow::Result<()> {
    outln!(
        "{:<10}  {:<24} {:>11} {:>7} {:>6} {:>12.4} {:>14.4} {:>10.3} {:>14.8}",
        escape(day, false),
        escape(function, false),
        s.invocations,
        s.errors,
        s.cold_starts,
        s.billed_gb_s,
        s.measured_gb_s,
        s.cpu_s,
        s.cost
    );
    Ok(())
}
