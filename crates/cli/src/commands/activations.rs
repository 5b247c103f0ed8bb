//! `activations`, `activation`, `logs`: reading invocation records, and
//! `logs -f`: following log lines live over `GET /v1/logs` (server-sent events).
//!
//! Responses and log lines are the function's output: they are printed
//! escaped (`out::escape`) unless `--raw`, so a function cannot drive the
//! terminal of whoever reads them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use flick_core::{Activation, LogStream};
use serde::Deserialize;

use crate::cli::Global;
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

pub async fn logs(
    g: &Global,
    client: &Client,
    function: &str,
    follow: bool,
    limit: u32,
    raw: bool,
) -> anyhow::Result<ExitCode> {
    // Make sure the function exists, for a clear error instead of silence.
    client.get::<serde_json::Value>(&format!("/v1/functions/{function}")).await?;
    let only = Filter { function: Some(function), ..Default::default() };
    if !follow {
        let mut recent = fetch(client, &only, limit, None).await?;
        recent.reverse();
        for a in &recent {
            print_lines(a, raw)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Following: the stream is opened first, so no line falls between the
    // recent records and the live ones; lines of a record already printed
    // are not printed again.
    let mut stream = open_stream(client, function).await?;
    let mut recent = fetch(client, &only, limit, None).await?;
    recent.reverse();
    let printed: HashSet<String> = recent.iter().map(|a| a.id.as_str().to_string()).collect();
    for a in &recent {
        for l in &a.logs {
            print_live(l.ts_ms, a.id.as_str(), l.stream, &l.text, raw)?;
        }
    }
    loop {
        let mut parser = sse::Parser::default();
        let ended = loop {
            let chunk = match stream.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break "flick closed the stream".to_string(),
                Err(e) => break format!("the stream broke: {e}"),
            };
            for (event, data) in parser.push(&chunk)? {
                match event.as_str() {
                    "log" => {
                        let line: LiveLine = serde_json::from_str(&data)
                            .map_err(|e| anyhow::anyhow!("flick sent a log event that is not a line ({e})"))?;
                        if !printed.contains(&line.activation_id) {
                            print_live(line.ts_ms, &line.activation_id, line.stream, &line.text, raw)?;
                        }
                    }
                    "lagged" => {
                        let skipped = serde_json::from_str::<serde_json::Value>(&data)
                            .ok()
                            .and_then(|v| v["skipped"].as_u64())
                            .unwrap_or(0);
                        eprintln!("flick: {skipped} lines skipped: this terminal fell behind the stream");
                    }
                    _ => {}
                }
            }
        };
        // flick restarted or the network broke: keep trying, as `tail -F` does.
        eprintln!("flick: {ended}; reconnecting…");
        stream = loop {
            tokio::time::sleep(RECONNECT_EVERY).await;
            let reconnected = match Client::connect(g).await {
                Ok(c) => open_stream(&c, function).await,
                Err(e) => Err(e),
            };
            match reconnected {
                Ok(s) => break s,
                // Gone, or the key no longer opens it: trying again will not help.
                Err(e) if ["(HTTP 404)", "(HTTP 401)"].iter().any(|c| e.to_string().contains(c)) => return Err(e),
                Err(_) => continue,
            }
        };
        eprintln!("flick: following again (lines written while it was away are in `flick logs {function}`)");
    }
}

/// How often `flick logs -f` tries to reach a flick that went away.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// One line of `GET /v1/logs`.
#[derive(Deserialize)]
struct LiveLine {
    activation_id: String,
    stream: LogStream,
    ts_ms: i64,
    text: String,
}

/// `GET /v1/logs?function=NAME`, answered with a stream (or the API's error).
async fn open_stream(client: &Client, function: &str) -> anyhow::Result<reqwest::Response> {
    let query = url::form_urlencoded::Serializer::new(String::new()).append_pair("function", function).finish();
    let resp = client.send(client.request(reqwest::Method::GET, &format!("/v1/logs?{query}"))).await?;
    if !resp.status().is_success() {
        // Reads the error body and turns it into the API's message.
        client.json_of(resp).await?;
        anyhow::bail!("flick refused the log stream");
    }
    Ok(resp)
}

/// A followed line: time, activation id, stream, text.
fn print_live(ts_ms: i64, id: &str, stream: LogStream, text: &str, raw: bool) -> anyhow::Result<()> {
    let stream = match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    };
    outln!("{} {} {stream} {}", rfc3339(ts_ms), escape(id, false), shown(text, false, raw));
    Ok(())
}

/// The server-sent events `GET /v1/logs` writes: `event:` and `data:`
/// lines, comments (`:`), a blank line ending each event. This is all of
/// the format flick uses; reqwest hands over the body in chunks.
mod sse {
    /// Longest event flick's lines can make (a line is capped far below).
    const MAX_EVENT: usize = 1 << 20;

    #[derive(Default)]
    pub struct Parser {
        buf: Vec<u8>,
        after_cr: bool,
    }

    impl Parser {
        /// Feeds a chunk; returns the (event, data) of each event it completed.
        pub fn push(&mut self, chunk: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
            // CR LF, LF and CR all end a line (CR never appears inside one);
            // a CR LF split across chunks is still one line end.
            for &b in chunk {
                match b {
                    b'\n' if self.after_cr => {}
                    b'\r' => self.buf.push(b'\n'),
                    b => self.buf.push(b),
                }
                self.after_cr = b == b'\r';
            }
            let mut events = Vec::new();
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let (mut event, mut data, mut any) = (String::from("message"), String::new(), false);
                for line in text.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event = value.to_string(),
                        "data" => {
                            if any {
                                data.push('\n');
                            }
                            data.push_str(value);
                            any = true;
                        }
                        _ => {}
                    }
                }
                if any {
                    events.push((event, data));
                }
            }
            if self.buf.len() > MAX_EVENT {
                anyhow::bail!("flick sent an event over {MAX_EVENT} bytes on the log stream");
            }
            Ok(events)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Parser;

        #[test]
        fn events_split_across_chunks_comments_and_crlf() {
            let mut p = Parser::default();
            assert!(p.push(b": following\n\nevent: log\ndata: {\"a\"").unwrap().is_empty());
            let got = p.push(b":1}\n\n:ping\r\n\r\nevent: lagged\r\ndata: x\r").unwrap();
            assert_eq!(got, [("log".into(), "{\"a\":1}".into())]);
            let got = p.push(b"\ndata: y\r\n\r\n").unwrap();
            assert_eq!(got, [("lagged".into(), "x\ny".into())]);
        }
    }
}

fn print_lines(a: &Activation, raw: bool) -> anyhow::Result<()> {
    for l in &a.logs {
        outln!("{} {} {}", rfc3339(l.ts_ms), escape(short_id(a.id.as_str()), false), shown(&l.text, false, raw));
    }
    Ok(())
}
