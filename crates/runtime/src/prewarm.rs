//! Stem cells: a few started, sandboxed, function-less bootstraps per
//! runtime and network kind, so a cold start of a python3 or node function
//! pays neither interpreter start-up nor sandbox set-up. Each is used once
//! and replaced in the background.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flick_core::{Network, RuntimeKind};

use crate::Launcher;
use crate::process::Stem;

type Key = (RuntimeKind, Network);

#[derive(Default)]
pub(crate) struct StemPool {
    /// Ready stem cells per key.
    ready: Mutex<HashMap<Key, Vec<Stem>>>,
    /// Stem cells being started per key.
    starting: Mutex<HashMap<Key, u32>>,
    /// Set on shutdown: no more refills.
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for StemPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StemPool")
    }
}

fn flavour(network: Network) -> flick_sandbox::Network {
    match network {
        Network::Host => flick_sandbox::Network::Host,
        Network::None => flick_sandbox::Network::None,
    }
}

impl Launcher {
    /// Fills the stem pools of the default network kind for python3 and node.
    pub fn prewarm(&self) {
        for runtime in [RuntimeKind::Python3, RuntimeKind::Node] {
            self.refill((runtime, Network::None));
        }
    }

    /// A ready stem cell for `key`, if there is one; either way the pool is
    /// topped up in the background (a miss is a sign the key is in demand).
    pub(crate) fn take_stem(&self, key: Key) -> Option<Stem> {
        let stem = self.stems.ready.lock().unwrap().get_mut(&key).and_then(Vec::pop);
        self.refill(key);
        stem
    }

    fn refill(&self, key: Key) {
        let want = self.config.stem_cells;
        if want == 0 || self.stems.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let missing = {
            let ready = self.stems.ready.lock().unwrap().get(&key).map_or(0, Vec::len) as u32;
            let mut starting = self.stems.starting.lock().unwrap();
            let now = starting.entry(key).or_default();
            let missing = want.saturating_sub(ready + *now);
            *now += missing;
            missing
        };
        for _ in 0..missing {
            let launcher = self.clone();
            tokio::spawn(async move {
                let result = Stem::start(&launcher, key.0, flavour(key.1)).await;
                *launcher.stems.starting.lock().unwrap().entry(key).or_default() -= 1;
                match result {
                    Ok(stem) if !launcher.stems.closed.load(std::sync::atomic::Ordering::Relaxed) => {
                        launcher.stems.ready.lock().unwrap().entry(key).or_default().push(stem);
                    }
                    Ok(_) => {}
                    // No retry loop: the next start of this kind tries again.
                    Err(e) => tracing::warn!(runtime = %key.0, error = %e, "could not start a stem cell"),
                }
            });
        }
    }

    /// Ready stem cells per `runtime/network`, for status output.
    pub fn stem_counts(&self) -> Vec<(String, usize)> {
        let ready = self.stems.ready.lock().unwrap();
        let mut out: Vec<_> =
            ready.iter().map(|((r, n), cells)| (format!("{}/{}", r.as_str(), n.as_str()), cells.len())).collect();
        out.sort();
        out
    }

    /// Stops every stem cell and refills no more (shutdown).
    pub fn stop_stems(&self) {
        self.stems.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        // Dropping a stem kills its process.
        self.stems.ready.lock().unwrap().clear();
    }
}

pub(crate) fn new_pool() -> Arc<StemPool> {
    Arc::new(StemPool::default())
}
