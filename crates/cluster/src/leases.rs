//! Leases on names through the store: a trigger that must run once per
//! cluster (a cron schedule, an MQTT or NATS subscription) runs on the
//! node that holds its lease. Leases are renewed every `renew_every` and
//! last `ttl` by the store's clock; a node that dies stops renewing, and
//! another takes the name over once its lease has run out.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flick_store::Store;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Who holds them: this node's id.
    pub holder: String,
    pub ttl: Duration,
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// 5 s leases renewed every second: a dead holder's triggers move
    /// within about 6 s.
    pub fn new(holder: String) -> Self {
        Self { holder, ttl: Duration::from_secs(5), renew_every: Duration::from_secs(1) }
    }
}

pub struct Leases {
    store: Arc<dyn Store>,
    config: LeaseConfig,
    held: watch::Sender<Arc<BTreeSet<String>>>,
}

impl Leases {
    pub fn new(store: Arc<dyn Store>, config: LeaseConfig) -> Arc<Self> {
        Arc::new(Self { store, config, held: watch::Sender::new(Arc::default()) })
    }

    /// The names this node holds now; moves whenever the set changes.
    pub fn held(&self) -> watch::Receiver<Arc<BTreeSet<String>>> {
        self.held.subscribe()
    }

    /// Keeps the leases of `wanted()` (read again at each pass and whenever
    /// `changes` moves) until `shutdown`, then gives them up so another
    /// node takes them at once.
    ///
    /// A lease this node could not renew (the store is down) counts as held
    /// until `ttl` after its last renewal, minus one renewal period: by the
    /// time another node could take it, this one has stopped using it.
    pub async fn run(
        self: Arc<Self>,
        wanted: impl Fn() -> BTreeSet<String> + Send,
        mut changes: watch::Receiver<u64>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut renewed: std::collections::BTreeMap<String, Instant> = Default::default();
        let margin = self.config.ttl.saturating_sub(self.config.renew_every);
        loop {
            changes.borrow_and_update();
            let want = wanted();
            for gone in renewed.keys().filter(|n| !want.contains(*n)).cloned().collect::<Vec<_>>() {
                renewed.remove(&gone);
                let _ = self.store.release_lease(&gone, &self.config.holder).await;
            }
            // All in one request. A store that hangs must not keep this
            // pass from giving up leases it can no longer prove it holds.
            let names: Vec<String> = want.iter().cloned().collect();
            let asked = Instant::now();
            let acquired = tokio::time::timeout(
                self.config.renew_every,
                self.store.acquire_leases(&names, &self.config.holder, self.config.ttl),
            )
            .await;
            let failed = match acquired {
                Ok(Ok(held)) => {
                    let held: BTreeSet<String> = held.into_iter().collect();
                    for name in names {
                        if held.contains(&name) {
                            // Held from when it was asked for, not from the answer.
                            renewed.insert(name, asked);
                        } else {
                            renewed.remove(&name);
                        }
                    }
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the store did not answer in time".to_string()),
            };
            if let Some(e) = failed {
                tracing::warn!(error = %e, "renewing trigger leases failed");
            }
            renewed.retain(|_, at| at.elapsed() < margin);
            let now: BTreeSet<String> = renewed.keys().cloned().collect();
            self.held.send_if_modified(|old| {
                let changed = **old != now;
                if changed {
                    tracing::info!(held = ?now, "trigger leases changed");
                    *old = Arc::new(now);
                }
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(self.config.renew_every) => {}
                _ = changes.changed() => {}
                _ = &mut shutdown => break,
            }
        }
        self.held.send_replace(Arc::default());
        for name in renewed.keys() {
            let _ = self.store.release_lease(name, &self.config.holder).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(holder: &str) -> LeaseConfig {
        LeaseConfig { holder: holder.into(), ttl: Duration::from_millis(300), renew_every: Duration::from_millis(50) }
    }

    async fn settled(rx: &mut watch::Receiver<Arc<BTreeSet<String>>>, want: bool) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|h| h.contains("t") == want))
            .await
            .expect("lease state never settled")
            .unwrap();
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_stopped_one_hands_over() {
        let store: Arc<dyn Store> = Arc::new(flick_store::SqliteStore::open_in_memory().unwrap());
        let names = || BTreeSet::from(["t".to_string()]);
        let (_tx, changes) = watch::channel(0u64);
        let (a, b) = (Leases::new(store.clone(), config("a")), Leases::new(store.clone(), config("b")));
        let (mut held_a, mut held_b) = (a.held(), b.held());
        let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
        let task_a = tokio::spawn(a.clone().run(names, changes.clone(), async move {
            let _ = stopped_a.await;
        }));
        settled(&mut held_a, true).await;
        let (_stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(b.clone().run(names, changes, async move {
            let _ = stopped_b.await;
        }));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!held_b.borrow().contains("t"), "b took a lease a holds");
        assert!(held_a.borrow().contains("t"));
        let _ = stop_a.send(());
        task_a.await.unwrap();
        assert!(held_a.borrow().is_empty(), "a stopped: it holds nothing");
        settled(&mut held_b, true).await;
    }
}
