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
use flick_core::timefmt::rfc3339;

#[derive(Deserialize)]
struct ActivationList {
    activations: Vec<Activation>,
}

/// Which records to list (the API's query parameters).
#[derive(Default)]
pub struct Filter<'a> {
    pub function: Option<&'a str>,
    pub cause: Option<&'a str>,
    pub trigger: Option<&'a str>,
    pub parent: Option<&'a str>,
}

async fn fetch(
    client: &Client,
    filter: &Filter<'_>,
    limit: u32,
    after_seq: Option<i64>,
) -> anyhow::Result<Vec<Activation>> {
    // Encoded: a trigger name is the user's text.
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &limit.to_string());
    for (k, v) in
        [("function", filter.function), ("cause", filter.cause), ("trigger", filter.trigger), ("parent", filter.parent)]
    {
        if let Some(v) = v {
            query.append_pair(k, v);
        }
    }
    if let Some(seq) = after_seq {
        query.append_pair("after_seq", &seq.to_string());
    }
    Ok(client.get::<ActivationList>(&format!("/v1/activations?{}", query.finish())).await?.activations)
}

/// `attempt n of m`, or nothing for a call that had one try.
fn attempt_text(a: &Activation) -> String {
    if a.max_attempts > 1 || a.attempt > 1 {
        format!("{} of {}", a.attempt, a.max_attempts.max(a.attempt))
    } else {
        String::new()
    }
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Function output for the terminal: escaped unless `raw`.
fn shown(text: &str, multiline: bool, raw: bool) -> Cow<'_, str> {
    if raw { Cow::Borrowed(text) } else { escape(text, multiline) }
}

/// The short form of an activation id used in log lines (its random tail).
fn short_id(id: &str) -> &str {
    id.get(20..).filter(|s| !s.is_empty()).unwrap_or(id)
}

pub async fn list(client: &Client, filter: &Filter<'_>, limit: u32) -> anyhow::Result<ExitCode> {
    let acts = fetch(client, filter, limit, None).await?;
    outln!(
        "{:<32} {:<16} {:>4} {:<14} {:<10} {:<8} {:<5} {:>10} {:>9} {:>9}  START",
        "ID",
        "FUNCTION",
        "REV",
        "STATUS",
        "CAUSE",
        "ATTEMPT",
        "TYPE",
        "DURATION",
        "CPU",
        "MEM PEAK"
    );
    for a in acts {
        outln!(
            "{:<32} {:<16} {:>4} {:<14} {:<10} {:<8} {:<5} {:>8.1}ms {:>9} {:>9}  {}",
            escape(a.id.as_str(), false),
            escape(&a.function, false),
            a.revision,
            a.status.as_str(),
            a.cause.as_str(),
            attempt_text(&a),
            if a.cold { "cold" } else { "warm" },
            a.duration_ms,
            a.cpu_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
            a.memory_peak_bytes.map_or("-".into(), mib),
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
    if a.status.is_final() {
        outln!("status:     {} (HTTP {})", a.status.as_str(), a.http_status);
    } else {
        outln!("status:     {}", a.status.as_str());
    }
    match &a.trigger {
        Some(t) => outln!("cause:      {} (trigger {})", a.cause.as_str(), escape(t, false)),
        None => outln!("cause:      {}", a.cause.as_str()),
    }
    if let Some(p) = &a.parent {
        outln!("parent:     {}", escape(p.as_str(), false));
    }
    let attempt = attempt_text(&a);
    if !attempt.is_empty() {
        outln!("attempt:    {attempt}");
    }
    for e in &a.attempts {
        outln!(
            "  attempt {} {} (HTTP {}) at {}: {}",
            e.attempt,
            e.status.as_str(),
            e.http_status,
            rfc3339(e.start_ms),
            shown(&e.message, false, raw)
        );
    }
    outln!("start:      {} ({})", rfc3339(a.start_ms), if a.cold { "cold" } else { "warm" });
    outln!("duration:   {:.3} ms (init {:.3} ms, waited {:.3} ms)", a.duration_ms, a.init_ms, a.wait_ms);
    let cpu = a.cpu_ms.map_or("not measured".into(), |ms| format!("{ms:.3} ms"));
    let peak = a.memory_peak_bytes.map_or("not measured".into(), mib);
    outln!("usage:      cpu {cpu}, memory peak {peak} of {} MiB, billed {} ms", a.memory_mb, a.billed_ms());
    if let Some(ms) = a.caller_gave_up_ms {
        outln!("caller:     gave up after {ms:.3} ms (X-Flick-Deadline) and got HTTP 504; the call ran on");
    }
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
    let only = Filter { function: Some(function), ..Default::default() };
    let mut recent = fetch(client, &only, limit, None).await?;
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
        for a in fetch(client, &only, 1000, Some(cursor)).await? {
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
