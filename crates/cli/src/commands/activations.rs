//! `activations`, `activation`, `logs`: reading invocation records.
//!
//! Responses and log lines are the function's output: they are printed
//! escaped (`out::escape`) unless `--raw`, so a function cannot drive the
//! terminal of whoever reads them.

use std::borrow::Cow;
use std::process::ExitCode;
use std::time::Duration;

use flick_core::Activation;
use serde::Deserialize;

use crate::client::Client;
use crate::out::{escape, escape_json};
use crate::timefmt::rfc3339;

#[derive(Deserialize)]
struct ActivationList {
    activations: Vec<Activation>,
}

async fn fetch(
    client: &Client,
    function: Option<&str>,
    limit: u32,
    after_seq: Option<i64>,
) -> anyhow::Result<Vec<Activation>> {
    let mut path = format!("/v1/activations?limit={limit}");
    if let Some(f) = function {
        path.push_str(&format!("&function={f}"));
    }
    if let Some(seq) = after_seq {
        path.push_str(&format!("&after_seq={seq}"));
    }
    Ok(client.get::<ActivationList>(&path).await?.activations)
}

/// Function output for the terminal: escaped unless `raw`.
fn shown(text: &str, multiline: bool, raw: bool) -> Cow<'_, str> {
    if raw { Cow::Borrowed(text) } else { escape(text, multiline) }
}

/// The short form of an activation id used in log lines (its random tail).
fn short_id(id: &str) -> &str {
    id.get(20..).filter(|s| !s.is_empty()).unwrap_or(id)
}

pub async fn list(client: &Client, function: Option<&str>, limit: u32) -> anyhow::Result<ExitCode> {
    let acts = fetch(client, function, limit, None).await?;
    outln!("{:<32} {:<16} {:>4} {:<14} {:<5} {:>10}  START", "ID", "FUNCTION", "REV", "STATUS", "TYPE", "DURATION");
    for a in acts {
        outln!(
            "{:<32} {:<16} {:>4} {:<14} {:<5} {:>8.1}ms  {}",
            escape(a.id.as_str(), false),
            escape(&a.function, false),
            a.revision,
            a.status.as_str(),
            if a.cold { "cold" } else { "warm" },
            a.duration_ms,
            rfc3339(a.start_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(client: &Client, id: &str, json: bool, raw: bool) -> anyhow::Result<ExitCode> {
    let what = format!("GET /v1/activations/{id}");
    let value: serde_json::Value = client.get(&format!("/v1/activations/{id}")).await?;
    if json {
        let text = serde_json::to_string_pretty(&value)?;
        outln!("{}", if raw { Cow::Borrowed(text.as_str()) } else { escape_json(&text) });
        return Ok(ExitCode::SUCCESS);
    }
    let a: Activation = serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("flick at {} sent an unexpected answer to {what}: {e}", client.base))?;
    outln!("activation: {}", escape(a.id.as_str(), false));
    outln!("function:   {} (revision {})", escape(&a.function, false), a.revision);
    outln!("status:     {} (HTTP {})", a.status.as_str(), a.http_status);
    outln!("start:      {} ({})", rfc3339(a.start_ms), if a.cold { "cold" } else { "warm" });
    outln!("duration:   {:.3} ms (init {:.3} ms, waited {:.3} ms)", a.duration_ms, a.init_ms, a.wait_ms);
    outln!("response:{}\n{}", if a.response_truncated { " (truncated)" } else { "" }, shown(&a.response, true, raw));
    outln!("logs:{}", if a.logs_truncated { " (earlier lines dropped)" } else { "" });
    for l in &a.logs {
        outln!("  {} {:?} {}", rfc3339(l.ts_ms), l.stream, shown(&l.text, false, raw));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(client: &Client, function: &str, follow: bool, limit: u32, raw: bool) -> anyhow::Result<ExitCode> {
    // Make sure the function exists, for a clear error instead of silence.
    client.get::<serde_json::Value>(&format!("/v1/functions/{function}")).await?;
    let mut recent = fetch(client, Some(function), limit, None).await?;
    recent.reverse();
    let mut cursor = recent.iter().map(|a| a.seq).max().unwrap_or(0);
    for a in &recent {
        print_lines(a, raw)?;
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Follow until interrupted (or until a fetch fails).
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for a in fetch(client, Some(function), 1000, Some(cursor)).await? {
            cursor = cursor.max(a.seq);
            print_lines(&a, raw)?;
        }
    }
}

fn print_lines(a: &Activation, raw: bool) -> anyhow::Result<()> {
    for l in &a.logs {
        outln!("{} {} {}", rfc3339(l.ts_ms), escape(short_id(a.id.as_str()), false), shown(&l.text, false, raw));
    }
    Ok(())
}
