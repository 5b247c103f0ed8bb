//! The deploy pipeline: an uploaded archive becomes an immutable revision.
//!
//! unpack safely into staging → hash → parse the manifest → (same hash as
//! the current revision: done, nothing changes) → install dependencies →
//! move into the content-addressed code store → record the revision →
//! route new requests to it. Requests in flight keep the instance (and so
//! the revision) they started on.

use std::path::Path;

use bytes::Bytes;
use flick_core::{Manifest, Revision};
use flick_store::{NewRevision, PutOutcome};
use serde::Serialize;

use crate::{Platform, PlatformError};

#[derive(Debug, Serialize)]
pub struct DeployOutcome {
    pub function: String,
    pub revision: u32,
    pub hash: String,
    /// The content equals the current revision's, so nothing changed.
    pub unchanged: bool,
}

impl Platform {
    pub async fn deploy(&self, archive: Bytes) -> Result<DeployOutcome, PlatformError> {
        let staging = self.code.staging_dir()?;
        let result = self.deploy_staged(&archive, &staging).await;
        // Staging is gone after a successful commit; after a failure it is
        // removed here, so a bad deploy leaves nothing behind.
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// The current revision of `name` and the archive it was deployed from:
    /// the base of a redeploy that changes only its configuration
    /// ([`Platform::deploy_with_manifest`]).
    pub async fn package(&self, name: &str) -> Result<(Revision, Bytes), PlatformError> {
        let route = self.route(name).ok_or_else(|| PlatformError::FunctionNotFound(name.into()))?;
        let revision = route.revision.clone();
        let missing = || {
            PlatformError::BadRequest(format!(
                "the package of `{name}` revision {} is not stored; deploy its code again",
                revision.number
            ))
        };
        let hex = self.store.revision_archive(revision.id).await?.ok_or_else(missing)?;
        // Shared with deploys, exclusive with the collector: the archive of
        // a revision pruned meanwhile is not swept while it is read.
        let _shared = self.gc.read().await;
        let code = self.code.clone();
        let bytes = tokio::task::spawn_blocking(move || code.read_archive(&hex))
            .await
            .map_err(|e| PlatformError::Internal(e.to_string()))??
            .ok_or_else(missing)?;
        Ok((revision, Bytes::from(bytes)))
    }

    /// Deploys `manifest` as `flick.toml` with the files of `base` (an
    /// archive from [`Platform::package`]; `None`: no other files), e.g. a
    /// configuration change that comes without code, or a function made from
    /// a command line alone. Goes through [`Platform::deploy`], the one path.
    pub async fn deploy_with_manifest(
        &self,
        base: Option<Bytes>,
        manifest: &Manifest,
    ) -> Result<DeployOutcome, PlatformError> {
        let staging = self.code.staging_dir()?;
        let (limits, dir, text) = (self.config.unpack_limits.clone(), staging.clone(), manifest.to_toml());
        let packed = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, PlatformError> {
            if let Some(base) = base {
                flick_package::unpack(&base, &dir, &limits)?;
            }
            let path = dir.join(flick_core::MANIFEST_FILE);
            std::fs::write(&path, text).map_err(|e| PlatformError::Internal(format!("{}: {e}", path.display())))?;
            Ok(flick_package::pack_dir(&dir)?)
        })
        .await
        .map_err(|e| PlatformError::Internal(e.to_string()));
        let _ = std::fs::remove_dir_all(&staging);
        self.deploy(Bytes::from(packed??)).await
    }

    async fn deploy_staged(&self, archive: &Bytes, staging: &Path) -> Result<DeployOutcome, PlatformError> {
        let limits = self.config.unpack_limits.clone();
        let (bytes, dest) = (archive.clone(), staging.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || flick_package::unpack(&bytes, &dest, &limits))
            .await
            .map_err(|e| PlatformError::Internal(e.to_string()))??;
        let manifest = Manifest::parse(&unpacked.manifest_text)?;
        self.scheduler.admit(&manifest).map_err(PlatformError::BadRequest)?;
        let name = manifest.name.as_str().to_string();

        // From the comparison with the current revision to the route switch,
        // no other deploy, rollback or delete of this function interleaves.
        let _changing = self.lock_function(&name).await;
        if let Some(current) = self.store.current_revision(&name).await?
            && current.hash == unpacked.hash
        {
            return Ok(outcome(&current, true));
        }

        // Installing may take minutes: not under the collector's lock.
        let mut installed = false;
        if !self.code.has_code(&unpacked.hash) {
            self.install_dependencies(staging, &manifest).await?;
            installed = true;
        }
        let shared = self.gc.read().await;
        if !installed && !self.code.has_code(&unpacked.hash) {
            // Collected since we looked: this copy must be complete too.
            self.install_dependencies(staging, &manifest).await?;
        }
        let recorded = self.record_revision(archive, staging, manifest, &unpacked.hash).await;
        drop(shared);
        let (rev, unchanged) = match recorded {
            Ok(PutOutcome::Created(rev)) => (rev, false),
            Ok(PutOutcome::Unchanged(rev)) => (rev, true),
            Err(e) => {
                // What this deploy wrote (code, archive) is unreferenced now,
                // unless another revision shares it: the collector knows.
                if let Err(gc) = self.collect_garbage().await {
                    tracing::warn!(error = %gc, "could not clean up after a failed deploy");
                }
                return Err(e);
            }
        };
        if !unchanged {
            self.set_route(rev.clone());
            tracing::info!(function = %name, revision = rev.number, revision_id = rev.id, hash = %rev.hash, "deployed");
            self.prune_revisions(&name).await;
        }
        Ok(outcome(&rev, unchanged))
    }

    /// Moves the code and the archive into place and records the revision.
    /// The caller holds the collector's lock shared.
    async fn record_revision(
        &self,
        archive: &Bytes,
        staging: &Path,
        manifest: Manifest,
        hash: &str,
    ) -> Result<PutOutcome, PlatformError> {
        self.code.commit_code(staging, hash)?;
        self.share_code(hash).await?;
        let archive_hex = self.code.save_archive(archive)?;
        let code_dir = self.code.code_dir(hash);
        let code_size = tokio::task::spawn_blocking(move || flick_package::dir_size(&code_dir))
            .await
            .map_err(|e| PlatformError::Internal(e.to_string()))?
            .unwrap_or(0);
        let new = NewRevision { manifest, hash: hash.to_string(), code_size, archive: Some(archive_hex) };
        Ok(self.store.put_revision(new).await?)
    }

    /// Drops the function's revisions beyond `revisions_kept` (the caller
    /// holds its change lock); their code goes with the next collection.
    async fn prune_revisions(&self, name: &str) {
        let keep = self.config.revisions_kept;
        if keep == 0 {
            return;
        }
        match self.store.prune_revisions(name, keep).await {
            Ok(gone) if gone.is_empty() => {}
            Ok(gone) => {
                let numbers: Vec<u32> = gone.iter().map(|r| r.number).collect();
                tracing::info!(function = name, revisions = ?numbers, "pruned old revisions");
                self.gc_wanted.notify_one();
            }
            Err(e) => tracing::warn!(function = name, error = %e, "could not prune old revisions"),
        }
    }

    /// Installs `requirements.txt` / `package.json` dependencies into the
    /// package at deploy time, so no invocation ever waits for an installer;
    /// each installer runs in a sandbox of its own (`install.rs`).
    async fn install_dependencies(&self, dir: &Path, manifest: &Manifest) -> Result<(), PlatformError> {
        crate::install::install_dependencies(&self.sandbox, &self.config.install, dir).await?;
        if manifest.runtime == flick_core::RuntimeKind::Python3 {
            crate::install::compile_python(&self.sandbox, &self.config.install, dir).await;
        }
        Ok(())
    }
}

fn outcome(rev: &Revision, unchanged: bool) -> DeployOutcome {
    DeployOutcome { function: rev.function.clone(), revision: rev.number, hash: rev.hash.clone(), unchanged }
}
