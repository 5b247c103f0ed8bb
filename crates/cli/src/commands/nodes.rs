//! `nodes`: the members of the cluster, their address, load and how long
//! ago each was heard from.
//!
//! Ids and addresses come from other nodes' heartbeats: printed escaped.

use std::process::ExitCode;

use serde::Deserialize;

use crate::client::Client;
use crate::out::escape;

#[derive(Deserialize)]
struct NodeList {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
    address: String,
    heartbeat_age_ms: i64,
    started_ms: i64,
    inflight: u64,
    instances: u64,
    version: String,
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let value: serde_json::Value = client.get("/v1/nodes").await?;
        outln!("{}", crate::out::escape_json(&serde_json::to_string_pretty(&value)?));
        return Ok(ExitCode::SUCCESS);
    }
    let list: NodeList = client.get("/v1/nodes").await?;
    outln!(
        "{:<24} {:<28} {:>9} {:>9} {:>14}  {:<24} VERSION",
        "NODE",
        "ADDRESS",
        "INFLIGHT",
        "INSTANCES",
        "LAST HEARTBEAT",
        "STARTED"
    );
    for n in list.nodes {
        outln!(
            "{:<24} {:<28} {:>9} {:>9} {:>14}  {:<24} {}",
            escape(&n.id, false),
            escape(&n.address, false),
            n.inflight,
            n.instances,
            format!("{:.1}s ago", n.heartbeat_age_ms as f64 / 1000.0),
            flick_core::timefmt::rfc3339(n.started_ms),
            escape(&n.version, false)
        );
    }
    Ok(ExitCode::SUCCESS)
}
