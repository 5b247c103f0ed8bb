//! What nodes sharing a PostgreSQL store coordinate through it (see
//! `crate::cluster`): heartbeats, leases and settings in small tables read
//! and written against the database's own clock (nodes' clocks need not
//! agree), installed code by content hash, and the change notices that
//! `functions`' trigger sends at each commit, received on one LISTEN
//! connection per node that reconnects by itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::PgStore;
use crate::{Change, NodeRecord, StoreError};

/// The database's clock, in ms since the epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The channel `functions`' trigger notifies (schema migration 2).
const CHANNEL: &str = "flick_changes";

/// The notice of a change of rule triggers or rules.
const RULES: &str = "#rules";

/// Shared code stays at least this long unreferenced before a sweep takes
/// it: a deploy puts its code first and records its revision after.
const CODE_GRACE_MS: i64 = 10 * 60 * 1000;

/// Notices buffered per follower; one that falls further behind reloads
/// everything (`Lagged`).
const NOTICE_BUFFER: usize = 1024;

fn node_row(r: &tokio_postgres::Row) -> Result<NodeRecord, StoreError> {
    Ok(NodeRecord {
        id: r.try_get(0)?,
        address: r.try_get(1)?,
        started_ms: r.try_get(2)?,
        heartbeat_ms: r.try_get(3)?,
        inflight: r.try_get::<_, i64>(4)?.max(0) as u64,
        instances: r.try_get::<_, i64>(5)?.max(0) as u64,
        version: r.try_get(6)?,
    })
}

const NODE_COLUMNS: &str = "id, address, started_ms, heartbeat_ms, inflight, instances, version";

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl PgStore {
    pub(super) async fn pg_heartbeat(
        &self,
        node: &NodeRecord,
        expire_after: Duration,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let client = self.client().await?;
        let inflight = node.inflight.min(i64::MAX as u64) as i64;
        let instances = node.instances.min(i64::MAX as u64) as i64;
        client
            .execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, {NOW_MS}, $4, $5, $6)
                     ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, started_ms = EXCLUDED.started_ms,
                       heartbeat_ms = EXCLUDED.heartbeat_ms, inflight = EXCLUDED.inflight,
                       instances = EXCLUDED.instances, version = EXCLUDED.version"
                ),
                &[&node.id, &node.address, &node.started_ms, &inflight, &instances, &node.version],
            )
            .await?;
        client.execute(&format!("DELETE FROM nodes WHERE heartbeat_ms < {NOW_MS} - $1"), &[&ms(expire_after)]).await?;
        self.pg_nodes_on(&client).await
    }

    async fn pg_nodes_on(&self, client: &deadpool_postgres::Object) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = client.query(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"), &[]).await?;
        rows.iter().map(node_row).collect()
    }

    pub(super) async fn pg_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let client = self.client().await?;
        self.pg_nodes_on(&client).await
    }

    pub(super) async fn pg_leave(&self, node_id: &str) -> Result<(), StoreError> {
        self.client().await?.execute("DELETE FROM nodes WHERE id = $1", &[&node_id]).await?;
        Ok(())
    }

    pub(super) async fn pg_acquire_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // Sorted, so that nodes renewing overlapping sets lock the rows in
        // one order and never deadlock.
        let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "INSERT INTO leases (name, holder, until_ms)
                     SELECT name, $2, {NOW_MS} + $3 FROM UNNEST($1::text[]) WITH ORDINALITY AS u(name, i) ORDER BY i
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
                     WHERE leases.holder = EXCLUDED.holder OR leases.until_ms < {NOW_MS}
                     RETURNING name"
                ),
                &[&sorted, &holder, &ms(ttl)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    pub(super) async fn pg_release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.client().await?.execute("DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder]).await?;
        Ok(())
    }

    pub(super) async fn pg_setting(&self, name: &str, proposed: &str) -> Result<String, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &proposed],
            )
            .await?;
        Ok(client.query_one("SELECT value FROM settings WHERE name = $1", &[&name]).await?.try_get(0)?)
    }

    pub(super) async fn pg_put_code(&self, hash: &str, archive: &[u8]) -> Result<(), StoreError> {
        let digest = hex::encode(Sha256::digest(archive));
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO code (hash, sha256, archive, created_ms) VALUES ($1, $2, $3, {NOW_MS})
                     ON CONFLICT (hash) DO UPDATE SET created_ms = EXCLUDED.created_ms"
                ),
                &[&hash, &digest, &archive],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn pg_code(&self, hash: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let row = self.client().await?.query_opt("SELECT sha256, archive FROM code WHERE hash = $1", &[&hash]).await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    pub(super) async fn pg_sweep_code(&self) -> Result<u64, StoreError> {
        Ok(self
            .client()
            .await?
            .execute(
                &format!(
                    "DELETE FROM code WHERE created_ms < {NOW_MS} - $1
                       AND NOT EXISTS (SELECT 1 FROM revisions r WHERE r.hash = code.hash)"
                ),
                &[&CODE_GRACE_MS],
            )
            .await?)
    }
}

/// The sender of a store's change notices, and the task that fills it.
#[derive(Debug)]
pub(super) struct Notices {
    sender: Arc<broadcast::Sender<Change>>,
}

impl Notices {
    /// Starts listening on `config`'s database. The listener stops when the
    /// last clone of the store is dropped.
    pub(super) fn start(config: tokio_postgres::Config, target: Arc<str>) -> Self {
        let sender = Arc::new(broadcast::Sender::new(NOTICE_BUFFER));
        tokio::spawn(listen(config, target, Arc::downgrade(&sender)));
        Self { sender }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }
}

/// LISTENs for change notices, reconnecting after a second whenever the
/// connection ends (the server restarted): notices sent meanwhile are lost,
/// so each reconnect tells followers to reload everything.
async fn listen(config: tokio_postgres::Config, target: Arc<str>, sender: Weak<broadcast::Sender<Change>>) {
    let mut first = true;
    let mut failing = false;
    loop {
        if sender.strong_count() == 0 {
            return;
        }
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = message
                            && tx.send(n.payload().to_string()).is_err()
                        {
                            return;
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    tracing::warn!(target = %target, error = %e, "cannot LISTEN for other nodes' changes");
                } else {
                    if failing {
                        tracing::info!(target = %target, "following other nodes' changes again");
                        failing = false;
                    }
                    if !first && let Some(s) = sender.upgrade() {
                        let _ = s.send(Change::Everything);
                    }
                    first = false;
                    loop {
                        let name = tokio::select! {
                            n = rx.recv() => n,
                            // The store may be gone while nothing changes.
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                                if sender.strong_count() == 0 { break; }
                                continue;
                            }
                        };
                        let (Some(name), Some(s)) = (name, sender.upgrade()) else { break };
                        let _ = s.send(if name == RULES { Change::Rules } else { Change::Function(name) });
                    }
                }
                driver.abort();
            }
            Err(e) if !failing => {
                tracing::warn!(target = %target, error = %e, "lost the connection that follows other nodes' changes; retrying every second");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
