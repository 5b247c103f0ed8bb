//! `flick up`: builds every part from the config and runs them until a
//! signal. This is the only place that picks concrete types.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use flick_api::{AdminKey, ApiLimits, ConnectionLimits};
use flick_package::UnpackLimits;
use flick_platform::{InstallConfig, Platform, PlatformConfig, Retention};
use flick_runtime::{Launcher, LogLimits, RuntimeConfig};
use flick_sandbox::{Sandbox, SandboxConfig};
use flick_scheduler::{BudgetLimits, QueuePolicy, Scheduler, SchedulerConfig};
use flick_store::{CodeStore, SqliteStore};
use tokio::sync::watch;

use crate::client::{ADDR_FILE, SECRET_FILE, UI_ADDR_FILE};
use crate::config::Config;

pub async fn up(config: Config, with_examples: bool) -> anyhow::Result<()> {
    init_logging(&config.log, config.log_format)?;
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating data dir {}", data.display()))?;
    let data = data.canonicalize().with_context(|| format!("resolving {}", data.display()))?;
    // Owner-only: the key, the database and every function's code are inside.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", data.display()))?;
    // Before anything touches the data dir: a second flick on it would
    // sweep the first one's cgroups and staging and delete its flick.addr.
    let _lock = lock_data_dir(&data)?;

    let node_id = node_id(&config, &data)?;
    let store = open_store(&config, &data).await?;
    let (key, new_key) = admin_key(&store, &data).await?;
    // Tells this flick's broker clients and queue streams from another's:
    // with a shared store, one id for the whole cluster (made by the first
    // node), so the node that takes a trigger over resumes the same broker
    // session, and every node uses the same JetStream streams.
    let cluster_id = if store.is_shared() {
        store.setting("cluster_id", &random_key()[4..16]).await.context("reading the cluster's id")?
    } else {
        instance_id(&data)
    };
    let queue = open_queue(&config, &data, &cluster_id).await?;
    let code = CodeStore::open(&data).context("opening the code store").map_err(|e| full(e, &data))?;
    let interpreters = Interpreters::resolve(&config).await?;
    let runtime_dir = data.join("runtime");
    let sandbox = build_sandbox(&config, &data, &interpreters).await?;
    let sandbox_for_cleanup = sandbox.clone();
    let sandbox_for_installs = sandbox.clone();
    let launcher = Launcher::new(
        RuntimeConfig {
            python: interpreters.python.clone(),
            node: interpreters.node.clone(),
            bootstrap_dir: runtime_dir,
            log_limits: log_limits(config.log_capture_bytes),
            max_response_bytes: config.max_response_bytes,
            stem_cells: config.stem_cells,
            template_after: config.fork_templates,
            allow_host_network_http: config.allow_host_network_http,
            lambda: config.lambda.clone(),
        },
        sandbox,
    )
    .context("installing the language bootstraps")?;
    // No stem cells yet: each kind starts when the first function using it
    // is loaded or deployed (the scheduler tells the launcher).
    let python = interpreters.python.clone();
    let scheduler = Scheduler::new(
        launcher,
        SchedulerConfig {
            budget: BudgetLimits { max_instances: config.max_instances_total, max_memory: config.max_instance_memory },
            queue: QueuePolicy { timeout: config.queue_timeout, max_waiting: config.max_queue },
        },
    );
    let platform = Platform::new(
        store.clone(),
        queue,
        code,
        scheduler,
        sandbox_for_installs,
        PlatformConfig {
            unpack_limits: UnpackLimits {
                max_archive_bytes: config.max_archive_bytes as u64,
                max_unpacked_bytes: config.max_unpacked_bytes,
                ..UnpackLimits::default()
            },
            retention: Retention {
                max_age: config.activation_max_age,
                per_function: config.activations_per_function,
                max_bytes: config.activations_max_size,
            },
            response_capture_bytes: config.response_capture_bytes,
            install: InstallConfig {
                python,
                npm: interpreters.npm.clone(),
                node: interpreters.node.clone(),
                timeout: config.install_timeout,
                memory: config.install_memory,
                env: config.install_env.clone(),
            },
            revisions_kept: config.revisions_per_function,
            asynchronous: flick_platform::AsyncConfig {
                shutdown_grace: config.shutdown_grace,
                ..config.asynchronous.clone()
            },
            event_max_hops: config.event_max_hops,
            lambda: config.lambda.clone(),
            pricing: config.pricing.clone(),
            live: config.live.clone(),
            metrics: config.metrics.enabled,
        },
    )
    .await
    .context("loading functions")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (in use? try --listen 127.0.0.1:0)", config.listen))?;
    let addr = listener.local_addr()?;
    // The secret first: a CLI that finds flick.addr must find its secret too.
    let secret = write_handshake_secret(&data)?;
    write_private(&data.join(ADDR_FILE), addr.to_string().as_bytes())?;
    // The dashboard is its own origin: its listener is bound before the
    // main router is built, which points `/ui` there.
    let ui_listener = if config.ui.enabled { Some(bind_dashboard(&config, addr).await?) } else { None };
    let ui_addr = ui_listener.as_ref().map(tokio::net::TcpListener::local_addr).transpose()?;
    match ui_addr {
        Some(at) => write_private(&data.join(UI_ADDR_FILE), at.to_string().as_bytes())?,
        None => {
            let _ = std::fs::remove_file(data.join(UI_ADDR_FILE));
        }
    }
    let limits = ApiLimits {
        max_body_bytes: config.max_body_bytes,
        max_archive_bytes: config.max_archive_bytes,
        body_read_timeout: config.body_read_timeout,
    };
    let router = flick_api::router(platform.clone(), key.clone(), limits.clone(), ui_addr)
        .merge(flick_api::handshake::router(secret, addr));
    // Triggers follow deploys: sources start, restart and stop with the
    // revisions that declare them; a broker that is down only shows in
    // their state.
    let triggers = flick_triggers::Manager::new(
        flick_triggers::PlatformSink::new(platform.clone()),
        flick_triggers::ManagerConfig { instance: cluster_id.clone(), stop_grace: TRIGGER_STOP_GRACE },
    );
    let keys = flick_api::Keys::new(&key);
    let router = router.merge(flick_api::triggers::router(triggers.clone(), platform.clone(), keys.clone()));
    let ui_router = ui_listener.is_some().then(|| {
        let router = flick_api::dashboard_router(platform.clone(), key.clone(), limits)
            .merge(flick_api::triggers::router(triggers.clone(), platform.clone(), keys.with_sessions()));
        flick_api::metrics::count_responses(router, platform.clone())
    });
    // Metrics: the triggers' counts are read at each scrape; /metrics is
    // on the main listener unless it has one of its own.
    let metrics_listener =
        match (config.metrics.enabled, config.metrics.listen) {
            (true, Some(at)) => Some(tokio::net::TcpListener::bind(at).await.with_context(|| {
                format!("cannot listen on {at} for metrics (`[metrics] listen`, --metrics-listen)")
            })?),
            _ => None,
        };
    let metrics_router = config.metrics.enabled.then(|| {
        let t = triggers.clone();
        platform.metrics().set_trigger_source(move || {
            t.statuses(None)
                .into_iter()
                .map(|s| flick_platform::metrics::TriggerCount {
                    function: s.function,
                    trigger: s.name,
                    kind: s.kind,
                    delivered: s.fired,
                    failed: s.failed,
                })
                .collect()
        });
        let access = flick_api::metrics::MetricsAccess::new(config.metrics.token.clone(), &key);
        flick_api::metrics::router(platform.clone(), access)
    });
    let (router, metrics_router) = match (metrics_router, &metrics_listener) {
        (Some(m), None) => (router.merge(m), None),
        (m, _) => (router, m),
    };
    let router = flick_api::metrics::count_responses(router, platform.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let background = tokio::spawn(platform.clone().run_background(wait_for(stop_rx.clone())));
    let connections = ConnectionLimits {
        max_connections: config.max_connections as usize,
        header_read_timeout: config.header_read_timeout,
    };
    let server = tokio::spawn(flick_api::serve(listener, router, connections.clone(), wait_for(stop_rx.clone())));
    let metrics_server = match (metrics_listener, metrics_router) {
        (Some(listener), Some(router)) => {
            say!("metrics on http://{}/metrics", listener.local_addr()?);
            let router = flick_api::metrics::count_responses(router, platform.clone());
            Some(tokio::spawn(flick_api::serve(listener, router, connections.clone(), wait_for(stop_rx.clone()))))
        }
        _ => None,
    };
    let ui_server = match (ui_listener, ui_router) {
        (Some(listener), Some(router)) => {
            Some(tokio::spawn(flick_api::serve(listener, router, connections, wait_for(stop_rx.clone()))))
        }
        _ => None,
    };
    // Membership: this node's heartbeat, and the members every node ranks
    // functions over.
    let advertise = match &config.cluster.advertise {
        Some(url) => url.as_str().trim_end_matches('/').to_string(),
        None => format!("http://{addr}"),
    };
    let me = flick_store::NodeRecord {
        id: node_id.clone(),
        address: advertise,
        started_ms: flick_core::now_ms(),
        heartbeat_ms: 0,
        inflight: 0,
        instances: 0,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let membership = flick_cluster::Membership::join(store.clone(), flick_cluster::MembershipConfig::new(me))
        .await
        .context("joining the cluster (the first heartbeat)")?;
    if store.is_shared() {
        // Sync calls go to their function's home node (`forward.rs`).
        let secret = store.setting("cluster_secret", &random_key()).await.context("reading the cluster's secret")?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the client that forwards calls to other nodes")?;
        platform.join_cluster(flick_platform::forward::Placement { membership: membership.clone(), secret, client });
    }
    let membership_task = {
        let s = platform.scheduler().clone();
        let load = move || {
            let pools = s.status();
            flick_cluster::Load {
                inflight: pools.iter().map(|p| u64::from(p.inflight)).sum(),
                instances: pools.iter().map(|p| p.instances as u64).sum(),
            }
        };
        tokio::spawn(membership.clone().run(load, wait_for(stop_rx.clone())))
    };
    let follow_task = tokio::spawn(platform.clone().follow_store(wait_for(stop_rx.clone())));
    let shares_task = tokio::spawn(platform.clone().follow_members(wait_for(stop_rx.clone())));
    // With a shared store, one node at a time runs each trigger and the
    // alarm feeds: the one holding its lease. One lease loop keeps them all.
    let leases = store.is_shared().then(|| {
        let leases = flick_cluster::Leases::new(store.clone(), flick_cluster::LeaseConfig::new(node_id.clone()));
        let p = platform.clone();
        let wanted = move || {
            let mut names = trigger_leases(&flick_triggers::wanted_from_routes(&p));
            names.insert(ALARMS_LEASE.to_string());
            names
        };
        tokio::spawn(leases.clone().run(wanted, platform.route_changes(), wait_for(stop_rx.clone())));
        leases
    });
    let trigger_task = if let Some(leases) = &leases {
        let changes = merged_changes(platform.route_changes(), leases.held());
        let (p, held) = (platform.clone(), leases.held());
        let snapshot = move || held_triggers(flick_triggers::wanted_from_routes(&p), &held.borrow());
        tokio::spawn(triggers.run(changes, snapshot, wait_for(stop_rx.clone())))
    } else {
        let p = platform.clone();
        tokio::spawn(triggers.run(
            platform.route_changes(),
            move || flick_triggers::wanted_from_routes(&p),
            wait_for(stop_rx.clone()),
        ))
    };
    // Alarm feeds of rule triggers (the OpenWhisk API's) follow their changes.
    let alarm_task = if let Some(leases) = &leases {
        tokio::spawn(run_alarms_while_held(platform.clone(), leases.held(), stop_rx.clone()))
    } else {
        tokio::spawn(flick_triggers::alarms::run(platform.clone(), wait_for(stop_rx.clone())))
    };

    say!("flick is up on http://{addr}  (data: {})", data.display());
    match ui_addr {
        Some(at) => say!("dashboard: http://{at}/ui  (log in with the admin key)"),
        None => say!("dashboard: off (--no-ui)"),
    }
    if new_key {
        say!("admin API key (saved to {}): {}", data.join("admin.key").display(), key.as_str());
    }
    if with_examples {
        deploy_examples(&platform, &data, addr).await?;
    }

    shutdown_signal().await;
    say!("shutting down: finishing calls in flight (at most {}s)", config.shutdown_grace.as_secs());
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
        Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("calls still in flight after the grace period; stopping them"),
    }
    for extra in [metrics_server, ui_server].into_iter().flatten() {
        let _ = extra.await;
    }
    // Sources stop before the platform: the events in hand are queued (and
    // acked to their brokers) first; broker sessions stay for the restart.
    let _ = trigger_task.await;
    let _ = alarm_task.await;
    let _ = follow_task.await;
    let _ = shares_task.await;
    // Leaves the cluster: other nodes stop ranking this one at once.
    let _ = membership_task.await;
    let _ = background.await;
    platform.shutdown().await;
    // Instances are stopped; remove their cgroups now rather than leave
    // them for the next start on this data dir (which may never come).
    let _ = tokio::task::spawn_blocking(move || sandbox_for_cleanup.remove_scope()).await;
    let _ = std::fs::remove_file(data.join(ADDR_FILE));
    let _ = std::fs::remove_file(data.join(UI_ADDR_FILE));
    let _ = std::fs::remove_file(data.join(SECRET_FILE));
    say!("flick stopped");
    Ok(())
}

/// The lease that lets one node of a cluster run the alarm feeds of rule
/// triggers (OpenWhisk's `/whisk.system/alarms`).
const ALARMS_LEASE: &str = "feeds/alarms";

/// Runs the alarm feeds whenever this node holds their lease, until stopped.
async fn run_alarms_while_held(
    platform: Arc<Platform>,
    mut held: watch::Receiver<Arc<std::collections::BTreeSet<String>>>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let mut stopped = stop.clone();
        tokio::select! {
            r = held.wait_for(|h| h.contains(ALARMS_LEASE)) => if r.is_err() { return },
            _ = stopped.wait_for(|s| *s) => return,
        }
        let mut lost = held.clone();
        let mut stopped = stop.clone();
        let until = async move {
            tokio::select! {
                _ = lost.wait_for(|h| !h.contains(ALARMS_LEASE)) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        };
        flick_triggers::alarms::run(platform.clone(), until).await;
        if *stop.borrow() {
            return;
        }
    }
}

/// The lease that lets one node of a cluster run a trigger.
fn trigger_lease(function: &str, trigger: &str) -> String {
    format!("trigger/{function}/{trigger}")
}

/// The leases the deployed triggers need: every kind but CloudEvents,
/// which is matched by whichever node the event is posted to.
fn trigger_leases(wanted: &[flick_triggers::Wanted]) -> std::collections::BTreeSet<String> {
    wanted
        .iter()
        .flat_map(|w| {
            w.triggers
                .iter()
                .filter(|t| !matches!(t.kind, flick_core::trigger::TriggerKind::CloudEvents { .. }))
                .map(|t| trigger_lease(&w.function, &t.name))
        })
        .collect()
}

/// The triggers this node runs: those whose lease it holds, and the
/// passive ones.
fn held_triggers(
    wanted: Vec<flick_triggers::Wanted>,
    held: &std::collections::BTreeSet<String>,
) -> Vec<flick_triggers::Wanted> {
    wanted
        .into_iter()
        .map(|mut w| {
            w.triggers.retain(|t| {
                matches!(t.kind, flick_core::trigger::TriggerKind::CloudEvents { .. })
                    || held.contains(&trigger_lease(&w.function, &t.name))
            });
            w
        })
        .collect()
}

/// One watch that moves when either of two does.
fn merged_changes(
    mut a: watch::Receiver<u64>,
    mut b: watch::Receiver<Arc<std::collections::BTreeSet<String>>>,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = a.changed() => if r.is_err() { break },
                r = b.changed() => if r.is_err() { break },
                _ = tx.closed() => break,
            }
            tx.send_modify(|v| *v += 1);
        }
    });
    rx
}

/// This node's id: the configured one, else the one kept in `node.id`
/// (made at the first start, so restarts keep it).
fn node_id(config: &Config, data: &Path) -> anyhow::Result<String> {
    if let Some(id) = &config.cluster.node_id {
        return Ok(id.clone());
    }
    let path = data.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(text) if crate::config::check_node_id(text.trim()).is_ok() => return Ok(text.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "{} does not hold a node id (1-64 letters, digits, `-`, `_`): fix or remove it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("node-{}", &random_key()[4..16]);
    write_private(&path, id.as_bytes())?;
    Ok(id)
}

/// The store `store` names: the embedded SQLite file, or PostgreSQL.
async fn open_store(config: &Config, data: &Path) -> anyhow::Result<Arc<dyn flick_store::Store>> {
    Ok(match &config.cluster.store {
        crate::config::StoreUrl::Sqlite => {
            Arc::new(SqliteStore::open(&data.join("flick.db")).context("opening the store").map_err(|e| full(e, data))?)
        }
        crate::config::StoreUrl::Postgres(url) => Arc::new(
            flick_store::PgStore::connect(url)
                .await
                .with_context(|| format!("opening the store at {}", crate::config::redacted(url)))?,
        ),
    })
}

/// The async queue `queue` names: its own SQLite file (so a flood of
/// accepts never competes with records for flick.db's writer; opening it
/// makes the leases a killed flick held ready again), or NATS JetStream.
async fn open_queue(config: &Config, data: &Path, cluster_id: &str) -> anyhow::Result<Arc<dyn flick_queue::Queue>> {
    Ok(match &config.cluster.queue {
        crate::config::QueueUrl::Sqlite => {
            let queue_config = flick_queue::QueueConfig {
                max_bytes: Some(config.queue_max_size),
                max_dead_per_function: config.dead_letters_per_function,
                ..flick_queue::QueueConfig::default()
            };
            Arc::new(
                flick_queue::SqliteQueue::open_with(&data.join("queue.db"), queue_config)
                    .context("opening the async queue")
                    .map_err(|e| full(e, data))?,
            )
        }
        crate::config::QueueUrl::Nats(url) => {
            let js = flick_queue::JetStreamConfig {
                prefix: format!("flick_{cluster_id}"),
                max_dead_per_function: config.dead_letters_per_function,
                ..flick_queue::JetStreamConfig::default()
            };
            Arc::new(
                flick_queue::JetStreamQueue::connect(url, js)
                    .await
                    .with_context(|| format!("opening the async queue at {}", crate::config::redacted(url)))?,
            )
        }
    })
}

/// The admin key: `admin.key` in the data dir; with a shared store, the
/// one key of the whole cluster (the first node's, kept in the store), so
/// every node takes the same key. Returns it and whether it is new.
async fn admin_key(store: &Arc<dyn flick_store::Store>, data: &Path) -> anyhow::Result<(AdminKey, bool)> {
    if !store.is_shared() {
        return AdminKey::load_or_create(data, random_key).context("creating the admin key").map_err(|e| full(e, data));
    }
    let path = data.join("admin.key");
    let local = std::fs::read_to_string(&path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    let proposed = local.clone().unwrap_or_else(random_key);
    let key = store.setting("admin_key", &proposed).await.context("reading the cluster's admin key")?;
    if local.as_deref() != Some(key.as_str()) {
        if local.is_some() {
            tracing::warn!("{} differs from the cluster's admin key; replacing it with the cluster's", path.display());
        }
        write_private(&path, format!("{key}\n").as_bytes())?;
    }
    let new = local.is_none() && key == proposed;
    Ok((AdminKey::new(key), new))
}

/// How long stopping waits for a trigger source to hand over the event in hand.
const TRIGGER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The dashboard's listener: where `[ui] listen` says, or beside the main
/// one (the next port, else any free port: an unchosen default must not
/// stop flick from starting).
async fn bind_dashboard(config: &Config, main: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let (at, may_move) = config.ui.address(main);
    match tokio::net::TcpListener::bind(at).await {
        Ok(listener) => Ok(listener),
        Err(e) if may_move => {
            tracing::info!(%at, error = %e, "the dashboard's default port is taken; it takes a free one");
            let any = std::net::SocketAddr::new(at.ip(), 0);
            Ok(tokio::net::TcpListener::bind(any)
                .await
                .with_context(|| format!("cannot listen on {any} for the dashboard"))?)
        }
        Err(e) => Err(e).with_context(|| {
            format!("cannot listen on {at} for the dashboard (`[ui] listen`, --ui-listen; --no-ui turns it off)")
        }),
    }
}

/// Tells this data dir's broker clients from another flick's on the same
/// broker (part of every MQTT client id) when there is no shared store (and
/// so no cluster id): FNV-1a of the data dir's path, stable across restarts
/// and builds.
fn instance_id(data: &Path) -> String {
    let hash = data
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{:08x}", hash >> 32)
}

/// What an invocation's log capture keeps: the configured tail, and no line
/// longer than that tail.
fn log_limits(capture_bytes: usize) -> LogLimits {
    let default = LogLimits::default();
    LogLimits { max_bytes: capture_bytes, max_line_bytes: default.max_line_bytes.min(capture_bytes), ..default }
}

/// Name of the lock file in the data dir; it holds the pid of the flick
/// that holds the lock.
const LOCK_FILE: &str = "flick.lock";

/// How long start-up waits for a lock whose holder has exited but whose
/// not-yet-exec'd children still share it.
const ORPHANED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the data dir's exclusive lock for the life of this process (the
/// kernel releases it however the process ends) or says who holds it.
fn lock_data_dir(data: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = data.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| disk_full_or(e, data))
        .with_context(|| format!("opening {}", path.display()))?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.rewind().and_then(|()| file.read_to_string(&mut pid));
                let pid = pid.trim();
                // A flick that was SIGKILLed is gone at once, but a child it
                // forked and had not yet exec'd (a stem cell waiting for its
                // code) shares the lock until its parent-death signal lands:
                // wait for that, briefly, instead of refusing to start.
                let holder_gone = pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
                if holder_gone && started.elapsed() < ORPHANED_LOCK_WAIT {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                let holder = match pid {
                    "" => "another flick".to_string(),
                    pid if holder_gone => format!("the children of a flick that has exited (pid {pid})"),
                    pid => format!("another flick (pid {pid})"),
                };
                anyhow::bail!(
                    "data dir {} is in use by {holder}; stop it first, or start this one with another --data-dir",
                    data.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| disk_full_or(e, data))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// SQLite reports a full disk at start-up as an I/O error of its shared
/// memory file (`xShmMap`): when a start-up step fails, a small probe write
/// tells whether the disk is full, and the error then says so first.
fn full(e: anyhow::Error, data: &Path) -> anyhow::Error {
    let probe = data.join(".flick-space-probe");
    let written = std::fs::write(&probe, vec![0u8; 64 << 10]);
    let _ = std::fs::remove_file(&probe);
    match written {
        Err(io) if flick_store::is_disk_full(&io) => {
            e.context(format!("the disk holding {} is full (no space left on device): free some space", data.display()))
        }
        _ => e,
    }
}

/// An I/O error, or, when it is one, the plain news that the disk is full.
fn disk_full_or(e: std::io::Error, data: &Path) -> anyhow::Error {
    if flick_store::is_disk_full(&e) {
        anyhow::anyhow!("the disk holding {} is full (no space left on device): free some space", data.display())
    } else {
        e.into()
    }
}

async fn deploy_examples(platform: &Arc<Platform>, data: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let dir = data.join("examples");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    say!("examples:");
    for example in crate::templates::EXAMPLES {
        let path = crate::templates::write(example, example.0, &dir)?;
        let archive = flick_package::pack_dir(&path)?;
        let outcome =
            platform.deploy(archive.into()).await.with_context(|| format!("deploying example {}", example.0))?;
        say!("  {:<14} {:<8} http://{addr}/fn/{}", outcome.function, example.1, outcome.function);
    }
    say!("try:  curl -d '{{\"name\":\"Ada\"}}' http://{addr}/fn/hello-python");
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

/// The interpreters instances run, resolved once to real paths, and the
/// host directories they need inside a sandbox.
pub struct Interpreters {
    pub python: PathBuf,
    pub node: PathBuf,
    /// The real `npm` (for deploy-time installs).
    pub npm: PathBuf,
    pub extra_ro: Vec<PathBuf>,
}

impl Interpreters {
    pub async fn resolve(config: &Config) -> anyhow::Result<Self> {
        // A pyenv shim on PATH costs ~200 ms per start; the real binary a
        // tenth of that. Its prefix must be visible inside the sandbox.
        let python_cmd = config.python.clone().unwrap_or_else(|| "python3".into());
        let out = tokio::process::Command::new(&python_cmd)
            .args(["-c", "import sys; print(sys.executable); print(sys.prefix); print(sys.base_prefix)"])
            .output()
            .await
            .with_context(|| format!("{} not found (set `python` in config.toml)", python_cmd.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        anyhow::ensure!(
            out.status.success() && lines.len() == 3,
            "{} did not report its executable",
            python_cmd.display()
        );
        let python = PathBuf::from(lines[0]);
        let mut extra_ro: Vec<PathBuf> = lines[1..].iter().map(PathBuf::from).collect();
        let node = which(&config.node).unwrap_or_else(|| config.node.clone());
        // Node is one self-contained binary: share that file (resolved, so
        // instances run the same path they can see), never a directory
        // around it (its grandparent was mounted once, which for ~/bin/node
        // is the whole home directory, data dir included).
        let node = node.canonicalize().unwrap_or(node);
        extra_ro.push(node.clone());
        // npm is a script in its own package (`…/node_modules/npm/bin/npm-cli.js`):
        // installs run that file, so share that package — no wider — too.
        let npm = which(&config.npm).unwrap_or_else(|| config.npm.clone());
        let npm = npm.canonicalize().unwrap_or(npm);
        if let Some(package) = npm.parent().and_then(Path::parent)
            && package.ends_with("node_modules/npm")
        {
            extra_ro.push(package.to_path_buf());
        }
        // Only what the sandbox's fixed set (/usr, /bin, /lib…) lacks.
        extra_ro.retain(|p| {
            !["/usr", "/bin", "/lib", "/lib64", "/sbin", "/"]
                .iter()
                .any(|sys| p == Path::new(sys) || p.starts_with(sys) && *sys != "/")
        });
        extra_ro.sort();
        extra_ro.dedup();
        Ok(Self { python, node, npm, extra_ro })
    }
}

fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// The sandbox of this data dir, checked by a real probe: `flick up`
/// refuses to run functions unisolated unless told so loudly.
pub async fn build_sandbox(config: &Config, data: &Path, interpreters: &Interpreters) -> anyhow::Result<Sandbox> {
    let runtime_dir = data.join("runtime");
    std::fs::create_dir_all(&runtime_dir)?;
    if config.insecure_no_sandbox {
        eprintln!(
            "WARNING: --insecure-no-sandbox: functions run WITHOUT isolation, as {}; run only code you trust",
            whoami()
        );
        return Sandbox::unisolated(runtime_dir).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let sandbox_config = SandboxConfig {
        scope: flick_sandbox::scope_for(data),
        runtime_dir: runtime_dir.clone(),
        rootfs_dir: data.join("rootfs"),
        extra_ro: interpreters.extra_ro.clone(),
        uid: config.instance_uid,
        gid: config.instance_gid,
        uid_range: config.uid_range.clone(),
        pids_max: config.instance_pids,
        nofile: config.instance_nofile,
        cpus: config.instance_cpus,
        cpu_limit: config.cpu_limit.into(),
        favor_dynmods: config.cgroup_favordynmods,
    };
    let hint = "run `flick doctor` for details, or start with --insecure-no-sandbox to run functions unisolated";
    let sandbox = Sandbox::new(sandbox_config).map_err(|e| anyhow::anyhow!("{e}\n{hint}"))?;
    let checks = flick_sandbox::doctor::probe(&sandbox, &runtime_dir).await;
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    anyhow::ensure!(failed.is_empty(), "the sandbox is incomplete on this host: {}\n{hint}", failed.join("; "));
    Ok(sandbox)
}

/// Writes a file only its owner can read (replacing any earlier one).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode on open: restrict it too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn whoami() -> String {
    format!("uid {}", std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0))
}

/// A fresh handshake secret for this run, written beside `flick.addr`
/// (0600) for the CLI to check who it talks to.
fn write_handshake_secret(data: &Path) -> anyhow::Result<flick_api::handshake::HandshakeSecret> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("operating system random source: {e}"))?;
    let secret = flick_api::handshake::HandshakeSecret::new(bytes);
    write_private(&data.join(SECRET_FILE), format!("{}\n", secret.to_hex()).as_bytes())?;
    Ok(secret)
}

fn random_key() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("operating system random source");
    format!("flk_{}", hex::encode(bytes))
}

fn init_logging(filter: &str, format: crate::config::LogFormat) -> anyhow::Result<()> {
    let targets: tracing_subscriber::filter::Targets =
        filter.parse().map_err(|e| anyhow::anyhow!("log filter `{filter}`: {e}"))?;
    use tracing_subscriber::prelude::*;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    // Either way a line logged inside a call names the call: text prefixes
    // it with `call{activation_id=… function=…}`, JSON has it in `span`.
    let layer = match format {
        // Colour codes only for a person at a terminal, not in log files.
        crate::config::LogFormat::Text => layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).boxed(),
        // The innermost span (the call) and its parents (a sequence step's
        // sequence) are both there; `current_span` alone would drop the parent.
        crate::config::LogFormat::Json => layer.json().with_current_span(true).with_span_list(true).boxed(),
    };
    tracing_subscriber::registry().with(layer).with(targets).try_init().map_err(|e| anyhow::anyhow!("logging: {e}"))
}
