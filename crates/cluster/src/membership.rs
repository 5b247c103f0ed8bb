//! The live members, from heartbeats through the store: each node says it
//! is alive every `interval`, and a member silent for `expire_after` is
//! dropped by whichever node notices first. A node that stops cleanly
//! leaves at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flick_store::{NodeRecord, Store, StoreError};
use tokio::sync::watch;

/// The live members by id, this node always among them.
pub type Members = Arc<Vec<NodeRecord>>;

#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node: id, address, start time and version (heartbeat and load
    /// fields are filled in at each beat).
    pub node: NodeRecord,
    pub interval: Duration,
    pub expire_after: Duration,
}

impl MembershipConfig {
    /// A heartbeat a second; a member silent for 5 s is gone.
    pub fn new(node: NodeRecord) -> Self {
        Self { node, interval: Duration::from_secs(1), expire_after: Duration::from_secs(5) }
    }
}

/// This node's load, read at each heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub inflight: u64,
    pub instances: u64,
}

pub struct Membership {
    store: Arc<dyn Store>,
    config: MembershipConfig,
    members: watch::Sender<Members>,
}

impl Membership {
    /// Joins: the first heartbeat is written before this returns, so other
    /// nodes may rank this one from now on.
    pub async fn join(store: Arc<dyn Store>, config: MembershipConfig) -> Result<Arc<Self>, StoreError> {
        let live = store.heartbeat(&config.node, config.expire_after).await?;
        let (members, _) = watch::channel(with_self(live, &config.node));
        Ok(Arc::new(Self { store, config, members }))
    }

    pub fn id(&self) -> &str {
        &self.config.node.id
    }

    /// The live members now.
    pub fn current(&self) -> Members {
        self.members.borrow().clone()
    }

    /// Follows membership changes.
    pub fn watch(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }

    /// Beats until `shutdown`, then leaves. A store that cannot be reached
    /// keeps the last members known (and this node serving); other nodes
    /// drop this one meanwhile, as they should.
    pub async fn run(self: Arc<Self>, load: impl Fn() -> Load + Send, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = &mut shutdown => break,
            }
            let Load { inflight, instances } = load();
            let me = NodeRecord { inflight, instances, ..self.config.node.clone() };
            match self.store.heartbeat(&me, self.config.expire_after).await {
                Ok(live) => {
                    if failing {
                        tracing::info!("heartbeats reach the store again");
                        failing = false;
                    }
                    let live = with_self(live, &me);
                    self.members.send_if_modified(|old| {
                        let changed = ids(old) != ids(&live);
                        if changed {
                            tracing::info!(members = ?ids(&live), "cluster members changed");
                        }
                        *old = live;
                        changed
                    });
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "heartbeat failed; serving on with the members last seen");
                    failing = true;
                }
                Err(_) => {}
            }
        }
        if let Err(e) = self.store.leave(&self.config.node.id).await {
            tracing::warn!(error = %e, "could not leave the cluster; other nodes drop this one after the heartbeat timeout");
        }
    }
}

fn ids(nodes: &[NodeRecord]) -> Vec<&str> {
    nodes.iter().map(|n| n.id.as_str()).collect()
}

/// This node is a member whatever the store answered (its own row may have
/// been expired by another node while this one was paused).
fn with_self(mut live: Vec<NodeRecord>, me: &NodeRecord) -> Members {
    if !live.iter().any(|n| n.id == me.id) {
        live.push(me.clone());
        live.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Arc::new(live)
}
