//! `dlq ls|show|redrive|purge`: the dead letters of async calls (calls
//! that failed every attempt), over `/v1/dlq`.
//!
//! Error messages and requests are the function's and the caller's text:
//! printed escaped, so neither can drive the terminal.

use std::process::ExitCode;

use serde_json::Value;

use crate::cli::DlqCommand;
use crate::client::Client;
use crate::out::{escape, escape_json};
use flick_core::timefmt::rfc3339;

fn query(function: Option<&str>, limit: Option<u32>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(f) = function {
        q.append_pair("function", f);
    }
    if let Some(n) = limit {
        q.append_pair("limit", &n.to_string());
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn num(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

pub async fn run(client: &Client, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::Ls { name, limit } => {
            let v: Value = client.get(&format!("/v1/dlq{}", query(name.as_deref(), Some(limit)))).await?;
            let dead = v.get("dead_letters").and_then(Value::as_array).cloned().unwrap_or_default();
            outln!("{:<32} {:<16} {:<9} {:<8} {:<24}  LAST ERROR", "ID", "FUNCTION", "CAUSE", "ATTEMPTS", "DIED");
            for d in &dead {
                let err = d.get("last_error").cloned().unwrap_or(Value::Null);
                let message: String = text(&err, "message").chars().take(80).collect();
                outln!(
                    "{:<32} {:<16} {:<9} {:<8} {:<24}  {}",
                    escape(text(d, "id"), false),
                    escape(text(d, "function"), false),
                    escape(text(d, "cause"), false),
                    format!("{}/{}", num(d, "attempts"), num(d, "max_attempts")),
                    d.get("dead_ms").and_then(Value::as_i64).map(rfc3339).unwrap_or_default(),
                    escape(&message, false)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, json } => {
            let v: Value = client
                .get(&format!("/v1/dlq/{}", url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()))
                .await?;
            if json {
                outln!("{}", escape_json(&serde_json::to_string_pretty(&v)?));
                return Ok(ExitCode::SUCCESS);
            }
            outln!("dead letter: {}", escape(text(&v, "id"), false));
            outln!("function:    {}", escape(text(&v, "function"), false));
            outln!("cause:       {}", escape(text(&v, "cause"), false));
            outln!("accepted:    {}", rfc3339(num(&v, "enqueued_ms")));
            if let Some(ms) = v.get("dead_ms").and_then(Value::as_i64) {
                outln!("died:        {}", rfc3339(ms));
            }
            let req = v.get("request").cloned().unwrap_or(Value::Null);
            outln!(
                "request:     {} {}{}{} ({} bytes of body)",
                escape(text(&req, "method"), false),
                escape(text(&req, "path"), false),
                if text(&req, "query").is_empty() { "" } else { "?" },
                escape(text(&req, "query"), false),
                num(&req, "body_bytes")
            );
            outln!("attempts:    {} of {}", num(&v, "attempts"), num(&v, "max_attempts"));
            for e in v.get("errors").and_then(Value::as_array).cloned().unwrap_or_default() {
                outln!(
                    "  attempt {} {} at {}: {}",
                    num(&e, "attempt"),
                    escape(text(&e, "status"), false),
                    rfc3339(num(&e, "start_ms")),
                    escape(text(&e, "message"), false)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive { id: Some(id), .. } => {
            let path =
                format!("/v1/dlq/{}/redrive", url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>());
            client.json(client.request(reqwest::Method::POST, &path)).await?;
            outln!("redriven: {}", escape(&id, false));
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive { id: None, function, .. } => {
            let path = format!("/v1/dlq/redrive{}", query(function.as_deref(), None));
            let v = client.json(client.request(reqwest::Method::POST, &path)).await?;
            outln!("redriven: {}", num(&v, "redriven"));
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Purge { name } => {
            let path = format!("/v1/dlq{}", query(name.as_deref(), None));
            let v = client.json(client.request(reqwest::Method::DELETE, &path)).await?;
            outln!("purged: {}", num(&v, "purged"));
            Ok(ExitCode::SUCCESS)
        }
    }
}
