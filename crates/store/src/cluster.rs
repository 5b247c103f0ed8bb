//! What nodes sharing one store coordinate through it: membership
//! (heartbeats), leases (one holder of a trigger at a time), settings made
//! once for the whole cluster (the admin key), code archives every node can
//! fetch, and change notices (another node deployed, rolled back or deleted).
//!
//! The embedded store is a cluster of one: [`Local`] keeps its members and
//! leases in memory (one process owns the SQLite file, see the data-dir
//! lock), and it shares no code because there is no other node to fetch it.

use std::collections::HashMap;
use std::time::Duration;

use flick_core::now_ms;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A member of the cluster as its latest heartbeat described it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Where other nodes reach it (`http://host:port`).
    pub address: String,
    pub started_ms: i64,
    /// When the store received its latest heartbeat (the store's clock).
    pub heartbeat_ms: i64,
    /// Calls running on it at its latest heartbeat.
    pub inflight: u64,
    /// Function instances it kept at its latest heartbeat.
    pub instances: u64,
    pub version: String,
}

/// Something another node changed that this one may have cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The function's current revision changed, or it was deleted.
    Function(String),
    /// A rule trigger or rule changed (their alarm feeds follow).
    Rules,
    /// Notices may have been missed (the listener reconnected): reload all.
    Everything,
}

/// Membership and leases of a store no other node shares.
#[derive(Debug, Default)]
pub(crate) struct Local {
    nodes: Mutex<HashMap<String, NodeRecord>>,
    leases: Mutex<HashMap<String, (String, i64)>>,
    settings: Mutex<HashMap<String, String>>,
}

impl Local {
    pub(crate) fn heartbeat(&self, node: &NodeRecord, expire_after: Duration) -> Vec<NodeRecord> {
        let now = now_ms();
        let mut nodes = self.nodes.lock();
        nodes.insert(node.id.clone(), NodeRecord { heartbeat_ms: now, ..node.clone() });
        let oldest = now - expire_after.as_millis() as i64;
        nodes.retain(|_, n| n.heartbeat_ms >= oldest);
        sorted(nodes.values().cloned().collect())
    }

    pub(crate) fn nodes(&self) -> Vec<NodeRecord> {
        sorted(self.nodes.lock().values().cloned().collect())
    }

    pub(crate) fn leave(&self, id: &str) {
        self.nodes.lock().remove(id);
    }

    pub(crate) fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> bool {
        let now = now_ms();
        let mut leases = self.leases.lock();
        match leases.get(name) {
            Some((h, until)) if h != holder && *until > now => false,
            _ => {
                leases.insert(name.to_string(), (holder.to_string(), now + ttl.as_millis() as i64));
                true
            }
        }
    }

    pub(crate) fn release_lease(&self, name: &str, holder: &str) {
        let mut leases = self.leases.lock();
        if leases.get(name).is_some_and(|(h, _)| h == holder) {
            leases.remove(name);
        }
    }

    pub(crate) fn setting(&self, name: &str, proposed: &str) -> String {
        self.settings.lock().entry(name.to_string()).or_insert_with(|| proposed.to_string()).clone()
    }
}

fn sorted(mut nodes: Vec<NodeRecord>) -> Vec<NodeRecord> {
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}
