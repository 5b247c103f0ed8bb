//! `activations`, `activation`, `logs`: reading invocation records.

use std::process::ExitCode;
use std::time::Duration;

use flick_core::Activation;

use crate::client::Client;
use crate::timefmt::rfc3339;

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
    let out = client.get(&path).await?;
    Ok(serde_json::from_value(out["activations"].clone())?)
}

pub async fn list(client: &Client, function: Option<&str>, limit: u32) -> anyhow::Result<ExitCode> {
    let acts = fetch(client, function, limit, None).await?;
    println!("{:<32} {:<16} {:>4} {:<14} {:<5} {:>10}  START", "ID", "FUNCTION", "REV", "STATUS", "TYPE", "DURATION");
    for a in acts {
        println!(
            "{:<32} {:<16} {:>4} {:<14} {:<5} {:>8.1}ms  {}",
            a.id,
            a.function,
            a.revision,
            a.status.as_str(),
            if a.cold { "cold" } else { "warm" },
            a.duration_ms,
            rfc3339(a.start_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let value = client.get(&format!("/v1/activations/{id}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let a: Activation = serde_json::from_value(value)?;
    println!("activation: {}", a.id);
    println!("function:   {} (revision {})", a.function, a.revision);
    println!("status:     {} (HTTP {})", a.status.as_str(), a.http_status);
    println!("start:      {} ({})", rfc3339(a.start_ms), if a.cold { "cold" } else { "warm" });
    println!("duration:   {:.3} ms (init {:.3} ms, waited {:.3} ms)", a.duration_ms, a.init_ms, a.wait_ms);
    println!("response:{}\n{}", if a.response_truncated { " (truncated)" } else { "" }, a.response);
    println!("logs:{}", if a.logs_truncated { " (earlier lines dropped)" } else { "" });
    for l in &a.logs {
        println!("  {} {:?} {}", rfc3339(l.ts_ms), l.stream, l.text);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(client: &Client, function: &str, follow: bool, limit: u32) -> anyhow::Result<ExitCode> {
    // Make sure the function exists, for a clear error instead of silence.
    client.get(&format!("/v1/functions/{function}")).await?;
    let mut recent = fetch(client, Some(function), limit, None).await?;
    recent.reverse();
    let mut cursor = recent.iter().map(|a| a.seq).max().unwrap_or(0);
    for a in &recent {
        print_lines(a);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Follow until interrupted (or until a fetch fails).
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for a in fetch(client, Some(function), 1000, Some(cursor)).await? {
            cursor = cursor.max(a.seq);
            print_lines(&a);
        }
    }
}

fn print_lines(a: &Activation) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for l in &a.logs {
        let _ = writeln!(out, "{} {} {}", rfc3339(l.ts_ms), &a.id.as_str()[20..], l.text);
    }
    let _ = out.flush();
}
