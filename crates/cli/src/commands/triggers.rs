//! `triggers`: each trigger's state, last error, last fire and counts.
//!
//! Errors come from brokers (and names from manifests): text flick did not
//! write, so every field is printed escaped (`out::escape`).

use std::process::ExitCode;

use flick_triggers::TriggerStatus;
use serde::Deserialize;

use crate::client::Client;
use crate::out::escape;
use flick_core::timefmt::rfc3339;

#[derive(Deserialize)]
struct TriggerList {
    triggers: Vec<TriggerStatus>,
}

pub async fn list(client: &Client, function: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let path = match function {
        Some(f) => format!("/v1/triggers/{}", url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>()),
        None => "/v1/triggers".to_string(),
    };
    if json {
        let value: serde_json::Value = client.get(&path).await?;
        outln!("{}", crate::out::escape_json(&serde_json::to_string_pretty(&value)?));
        return Ok(ExitCode::SUCCESS);
    }
    let list: TriggerList = client.get(&path).await?;
    outln!(
        "{:<16} {:<16} {:<11} {:<10} {:>7} {:>7}  {:<24} {:<40} LAST ERROR",
        "FUNCTION",
        "TRIGGER",
        "TYPE",
        "STATE",
        "FIRED",
        "FAILED",
        "LAST FIRED",
        "TARGET"
    );
    for t in list.triggers {
        let error = match (&t.last_error, t.next_attempt_ms) {
            (Some(e), Some(next)) => format!("{e} (next attempt {})", rfc3339(next)),
            (Some(e), None) => e.clone(),
            (None, _) => String::new(),
        };
        outln!(
            "{:<16} {:<16} {:<11} {:<10} {:>7} {:>7}  {:<24} {:<40} {}",
            escape(&t.function, false),
            escape(&t.name, false),
            escape(&t.kind, false),
            t.state.as_str(),
            t.fired,
            t.failed,
            t.last_fired_ms.map(rfc3339).unwrap_or_else(|| "-".into()),
            escape(&t.target, false),
            escape(&error, false)
        );
    }
    Ok(ExitCode::SUCCESS)
}
