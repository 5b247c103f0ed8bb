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

    async fn deploy_staged(&self, archive: &Bytes, staging: &Path) -> Result<DeployOutcome, PlatformError> {
        let limits = self.config.unpack_limits.clone();
        let (bytes, dest) = (archive.clone(), staging.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || flick_package::unpack(&bytes, &dest, &limits))
            .await
            .map_err(|e| PlatformError::Internal(e.to_string()))??;
        let manifest = Manifest::parse(&unpacked.manifest_text)?;
        self.scheduler.admit(&manifest).map_err(PlatformError::BadRequest)?;
        let name = manifest.name.as_str().to_string();

        if let Some(current) = self.store.current_revision(&name).await?
            && current.hash == unpacked.hash
        {
            return Ok(outcome(&current, true));
        }

        if !self.code.has_code(&unpacked.hash) {
            self.install_dependencies(staging).await?;
            self.code.commit_code(staging, &unpacked.hash)?;
        }
        self.code.save_archive(archive)?;
        let code_dir = self.code.code_dir(&unpacked.hash);
        let code_size = tokio::task::spawn_blocking(move || flick_package::dir_size(&code_dir))
            .await
            .map_err(|e| PlatformError::Internal(e.to_string()))?
            .unwrap_or(0);

        let put = self.store.put_revision(NewRevision { manifest, hash: unpacked.hash, code_size }).await?;
        let (rev, unchanged) = match put {
            PutOutcome::Created(rev) => (rev, false),
            PutOutcome::Unchanged(rev) => (rev, true),
        };
        if !unchanged {
            self.set_route(rev.clone());
            tracing::info!(function = %name, revision = rev.number, hash = %rev.hash, "deployed");
        }
        Ok(outcome(&rev, unchanged))
    }

    /// Installs `requirements.txt` / `package.json` dependencies into the
    /// package at deploy time, so no invocation ever waits for an installer;
    /// each installer runs in a sandbox of its own (`install.rs`).
    async fn install_dependencies(&self, dir: &Path) -> Result<(), PlatformError> {
        crate::install::install_dependencies(&self.sandbox, &self.config.install, dir).await
    }
}

fn outcome(rev: &Revision, unchanged: bool) -> DeployOutcome {
    DeployOutcome { function: rev.function.clone(), revision: rev.number, hash: rev.hash.clone(), unchanged }
}
