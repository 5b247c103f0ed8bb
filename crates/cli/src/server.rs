//! `flick up`: builds every part from the config and runs them until a
//! signal. This is the only place that picks concrete types.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use flick_api::{AdminKey, ApiLimits};
use flick_package::UnpackLimits;
use flick_platform::{Platform, PlatformConfig, Retention};
use flick_runtime::{Launcher, LogLimits, RuntimeConfig};
use flick_scheduler::Scheduler;
use flick_store::{CodeStore, SqliteStore};
use tokio::sync::watch;

use crate::client::ADDR_FILE;
use crate::config::Config;

pub async fn up(config: Config, with_examples: bool) -> anyhow::Result<()> {
    init_logging(&config.log)?;
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating data dir {}", data.display()))?;
    let data = data.canonicalize().with_context(|| format!("resolving {}", data.display()))?;

    let (key, new_key) = AdminKey::load_or_create(&data, random_key).context("creating the admin key")?;
    let store = SqliteStore::open(&data.join("flick.db")).context("opening the store")?;
    let code = CodeStore::open(&data).context("opening the code store")?;
    let python = match &config.python {
        Some(p) => p.clone(),
        None => find_python().await?,
    };
    let launcher = Launcher::new(
        RuntimeConfig {
            python: python.clone(),
            node: config.node.clone(),
            bootstrap_dir: data.join("runtime"),
            log_limits: LogLimits::default(),
            max_response_bytes: config.max_response_bytes,
        },
        flick_sandbox::Sandbox::new(),
    )
    .context("installing the language bootstraps")?;
    let scheduler = Scheduler::new(launcher);
    let platform = Platform::new(
        Arc::new(store),
        code,
        scheduler,
        PlatformConfig {
            unpack_limits: UnpackLimits {
                max_archive_bytes: config.max_archive_bytes as u64,
                max_unpacked_bytes: config.max_unpacked_bytes,
                ..UnpackLimits::default()
            },
            retention: Retention { max_age: config.activation_max_age, per_function: config.activations_per_function },
            response_capture_bytes: config.response_capture_bytes,
            python,
            npm: config.npm.clone(),
            install_timeout: config.install_timeout,
        },
    )
    .await
    .context("loading functions")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (in use? try --listen 127.0.0.1:0)", config.listen))?;
    let addr = listener.local_addr()?;
    std::fs::write(data.join(ADDR_FILE), addr.to_string())?;
    let router = flick_api::router(
        platform.clone(),
        key.clone(),
        ApiLimits { max_body_bytes: config.max_body_bytes, max_archive_bytes: config.max_archive_bytes },
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let background = tokio::spawn(platform.clone().run_background(wait_for(stop_rx.clone())));
    let server = tokio::spawn(flick_api::serve(listener, router, wait_for(stop_rx.clone())));

    println!("flick is up on http://{addr}  (data: {})", data.display());
    if new_key {
        println!("admin API key (saved to {}): {}", data.join("admin.key").display(), key.as_str());
    }
    if with_examples {
        deploy_examples(&platform, &data, addr).await?;
    }

    shutdown_signal().await;
    println!("shutting down: finishing calls in flight (at most {}s)", config.shutdown_grace.as_secs());
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
        Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("calls still in flight after the grace period; stopping them"),
    }
    let _ = background.await;
    platform.shutdown();
    let _ = std::fs::remove_file(data.join(ADDR_FILE));
    println!("flick stopped");
    Ok(())
}

async fn deploy_examples(platform: &Arc<Platform>, data: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let dir = data.join("examples");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    println!("examples:");
    for example in crate::templates::EXAMPLES {
        let path = crate::templates::write(example, example.0, &dir)?;
        let archive = flick_package::pack_dir(&path)?;
        let outcome =
            platform.deploy(archive.into()).await.with_context(|| format!("deploying example {}", example.0))?;
        println!("  {:<14} {:<8} http://{addr}/fn/{}", outcome.function, example.1, outcome.function);
    }
    println!("try:  curl -d '{{\"name\":\"Ada\"}}' http://{addr}/fn/hello-python");
    Ok(())
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The interpreter behind `python3`, resolved once: a pyenv shim on PATH
/// costs ~200 ms per start, the real binary a tenth of that.
async fn find_python() -> anyhow::Result<PathBuf> {
    let out = tokio::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .await
        .context("python3 not found on PATH (set `python` in config.toml to run python3 functions)")?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(out.status.success() && !path.is_empty(), "python3 did not report its executable");
    Ok(PathBuf::from(path))
}

fn random_key() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("operating system random source");
    format!("flk_{}", hex::encode(bytes))
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let targets: tracing_subscriber::filter::Targets =
        filter.parse().map_err(|e| anyhow::anyhow!("log filter `{filter}`: {e}"))?;
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .with(targets)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))
}
