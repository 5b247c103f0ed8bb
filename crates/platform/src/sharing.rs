//! A platform whose store other nodes share: every revision's runnable
//! code goes into the store at deploy, a node that lacks it fetches,
//! checks and unpacks it before routing to it, and the route table follows
//! the deploys, rollbacks and deletes other nodes make (the store's change
//! notices).
//!
//! With the embedded store none of this runs: `Store::is_shared` is false.

use std::sync::Arc;

use flick_core::Revision;
use flick_package::UnpackLimits;
use flick_store::Change;
use sha2::{Digest, Sha256};

use crate::{Platform, PlatformError};

/// Installed code can be far larger than an upload (dependencies): what a
/// node accepts from the store when unpacking another node's revision.
const INSTALLED_LIMITS: UnpackLimits =
    UnpackLimits { max_archive_bytes: 2 << 30, max_unpacked_bytes: 8 << 30, max_entries: 1_000_000 };

/// Store lookups of route misses that may run at once (see
/// [`Platform::resolve`]), of the store's pool of 8 connections.
pub(crate) const MISS_LOOKUPS: usize = 2;
/// How long a route miss waits for its turn to look in the store.
const MISS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Platform {
    /// Puts a deployed revision's code (as installed) into a shared store,
    /// before the revision itself is recorded: a node that learns of the
    /// revision can always fetch its code.
    pub(crate) async fn share_code(&self, hash: &str) -> Result<(), PlatformError> {
        if !self.store.is_shared() {
            return Ok(());
        }
        let dir = self.code.code_dir(hash);
        let archive = tokio::task::spawn_blocking(move || flick_package::pack_installed(&dir))
            .await
            .map_err(|e| PlatformError::Internal(format!("packing code to share: {e}")))??;
        self.store.put_code(hash, &archive).await?;
        tracing::debug!(hash, bytes = archive.len(), "code shared through the store");
        Ok(())
    }

    /// Makes sure `revision`'s code is on this node: fetched from the store,
    /// its digest checked, and unpacked with the package rules (no path
    /// outside the code directory, no links out) when it is missing.
    pub(crate) async fn ensure_code(&self, revision: &Revision) -> Result<(), PlatformError> {
        if self.code.has_code(&revision.hash) || !self.store.is_shared() {
            return Ok(());
        }
        let Some((digest, archive)) = self.store.code(&revision.hash).await? else {
            return Err(PlatformError::Internal(format!(
                "the code of `{}` revision {} ({}) is in neither this node's code store nor the shared store",
                revision.function, revision.number, revision.hash
            )));
        };
        let actual = hex::encode(Sha256::digest(&archive));
        if actual != digest {
            return Err(PlatformError::Internal(format!(
                "the shared code of `{}` revision {} is damaged: its sha256 is {actual}, the store recorded {digest}",
                revision.function, revision.number
            )));
        }
        let staging = self.code.staging_dir()?;
        let dest = staging.clone();
        let unpacked = tokio::task::spawn_blocking(move || flick_package::unpack(&archive, &dest, &INSTALLED_LIMITS))
            .await
            .map_err(|e| PlatformError::Internal(e.to_string()))?;
        let committed = match unpacked {
            Ok(_) => {
                // Under the collector's lock, as a deploy's commit is.
                let _shared = self.gc.read().await;
                self.code.commit_code(&staging, &revision.hash).map(|_| ()).map_err(PlatformError::from)
            }
            Err(e) => Err(PlatformError::from(e)),
        };
        let _ = std::fs::remove_dir_all(&staging);
        committed?;
        tracing::info!(function = %revision.function, revision = revision.number, hash = %revision.hash, "fetched code from the shared store");
        Ok(())
    }

    /// Follows the store's change notices until `shutdown`: another node's
    /// deploy, rollback or delete reaches this node's route table (and so
    /// its triggers) as soon as the notice arrives.
    pub async fn follow_store(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let Some(mut changes) = self.store.changes() else {
            return;
        };
        tokio::pin!(shutdown);
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = &mut shutdown => return,
            };
            match change {
                Ok(Change::Function(name)) => self.reload(&name).await,
                Ok(Change::Rules) => self.rules_changed(),
                Ok(Change::Everything) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.rules_changed();
                    self.reload_all().await
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// The current route of a function, like [`Platform::route`]; with a
    /// shared store, a function this node has not heard of yet (deployed
    /// through another node a moment ago) is looked up in the store, so a
    /// deploy is callable through every node at once.
    pub async fn resolve(&self, name: &str) -> Option<Arc<crate::Route>> {
        if let Some(route) = self.route(name) {
            return Some(route);
        }
        if !self.store.is_shared() || flick_core::FunctionName::new(name).is_err() {
            return None;
        }
        // Every unknown name costs a query of the shared database: a
        // caller spraying names must not be able to turn that into load on
        // it (or take the pool's connections from the node's record
        // writes). At most `MISS_LOOKUPS` run at once; a miss that waits
        // longer than `MISS_WAIT` for its turn is answered as not found.
        // (Caching misses would save the queries, but a name cached as
        // absent would stay absent until its deploy's notice arrived, and a
        // deploy through another node must be callable here at once.)
        let Ok(Ok(_turn)) = tokio::time::timeout(MISS_WAIT, self.miss_lookups.acquire()).await else {
            tracing::debug!(function = name, "route miss not looked up: too many lookups waiting");
            return None;
        };
        if let Some(route) = self.route(name) {
            return Some(route);
        }
        self.reload(name).await;
        self.route(name)
    }

    /// Every function's route as the store has it now.
    async fn reload_all(&self) {
        let mut names: std::collections::BTreeSet<String> =
            self.routes_snapshot().iter().map(|r| r.revision.function.clone()).collect();
        match self.store.functions().await {
            Ok(all) => names.extend(all.into_iter().map(|f| f.name)),
            Err(e) => tracing::warn!(error = %e, "reloading routes: listing functions"),
        }
        for name in names {
            self.reload(&name).await;
        }
    }

    /// Points `name`'s route at the store's current revision (fetching its
    /// code first), or removes it when the function is gone.
    pub(crate) async fn reload(&self, name: &str) {
        let _changing = self.lock_function(name).await;
        match self.store.current_revision(name).await {
            Ok(Some(rev)) => {
                if self.route(name).is_some_and(|r| r.revision.id == rev.id) {
                    return;
                }
                if let Err(e) = self.ensure_code(&rev).await {
                    tracing::error!(function = name, revision = rev.number, error = %e, "cannot serve another node's revision");
                    return;
                }
                tracing::info!(function = name, revision = rev.number, "route follows another node's change");
                self.set_route(rev);
            }
            Ok(None) => {
                if self.route(name).is_some() {
                    tracing::info!(function = name, "deleted on another node");
                    self.forget_route(name);
                }
            }
            Err(e) => tracing::warn!(function = name, error = %e, "reloading a route"),
        }
    }
}
