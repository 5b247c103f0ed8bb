//! `flick up`'s settings: one typed struct, resolved once at start-up from
//! flags, then `FLICK_*` environment variables (clap reads both), then the
//! config file, then defaults. Nothing after start-up reads env or files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use flick_core::units::{parse_duration, parse_size};
use serde::Deserialize;

use crate::cli::UpArgs;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub max_archive_bytes: usize,
    pub max_unpacked_bytes: u64,
    pub max_response_bytes: usize,
    pub response_capture_bytes: usize,
    /// Log bytes an activation record keeps (the tail).
    pub log_capture_bytes: usize,
    pub activation_max_age: Duration,
    pub activations_per_function: u32,
    /// Size budget of `flick.db`: the oldest records go to stay under it.
    pub activations_max_size: u64,
    /// Revisions kept per function (besides the current one and the
    /// rollback target); 0 keeps all.
    pub revisions_per_function: u32,
    pub shutdown_grace: Duration,
    pub install_timeout: Duration,
    /// Memory (and `/tmp` size) of a dependency install's sandbox.
    pub install_memory: u64,
    /// The only variables installers get besides `PATH`, `HOME`, `TMPDIR`
    /// and `LANG` (e.g. `PIP_INDEX_URL`, `npm_config_registry`, proxies).
    pub install_env: Vec<(String, String)>,
    /// `None`: find the real interpreter behind `python3` on PATH.
    pub python: Option<PathBuf>,
    pub node: PathBuf,
    pub npm: PathBuf,
    pub log: String,
    /// How log lines are written (`--log-format`).
    pub log_format: LogFormat,
    /// Run functions without any isolation (hosts without namespaces).
    pub insecure_no_sandbox: bool,
    pub instance_uid: u32,
    pub instance_gid: u32,
    /// Each function's instances run as their own uid (and gid) from here.
    pub uid_range: std::ops::RangeInclusive<u32>,
    pub instance_pids: u32,
    /// The per-instance CPU cap under `cpu_limit = "hard"`.
    pub instance_cpus: f64,
    /// Weights only (default) or a hard CFS quota per instance.
    pub cpu_limit: CpuLimit,
    /// Set the kernel's cgroup2 `favordynmods` at start (host-wide): moving
    /// a process into a cgroup then costs ~0.25 ms instead of 10-25 ms.
    pub cgroup_favordynmods: bool,
    pub instance_nofile: u64,
    /// Longest a request waits for a busy function before a 429.
    pub queue_timeout: Duration,
    /// Requests that may wait per function before new ones get a 429 at
    /// once: a memory bound, not the usual limit (`queue_timeout` is).
    pub max_queue: u32,
    /// Host-wide bound on running instances.
    pub max_instances_total: u32,
    /// Host-wide bound on the sum of instances' `memory`.
    pub max_instance_memory: u64,
    /// Prewarmed stem cells per runtime (python3, node, exec) and network
    /// kind in use by a deployed function (a burst grows it for a while).
    pub stem_cells: u32,
    /// A python3 cold start at least this slow leaves a fork template of
    /// its revision behind, from which later instances are forked (`None`:
    /// `fork_templates = "off"`).
    pub fork_templates: Option<Duration>,
    /// Whether `http` functions may declare `network = "host"` (their
    /// server's port is then open to the host's network, without flick's auth).
    pub allow_host_network_http: bool,
    /// Open client connections at once (one more gets a 503).
    pub max_connections: u32,
    /// Time a client has to send a request's headers (then: closed).
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body (then: 408).
    pub body_read_timeout: Duration,
    /// Async calls: share of instances, backlog bound, retry backoff,
    /// idempotency window, callbacks.
    pub asynchronous: flick_platform::AsyncConfig,
    /// Reply hops a CloudEvent may travel before routing stops (loop guard).
    pub event_max_hops: u32,
    /// Size cap of `queue.db`: beyond it async accepts answer 507 (nothing
    /// of them stored) until the backlog drains.
    pub queue_max_size: u64,
    /// Dead letters kept per function (the oldest go first beyond it).
    pub dead_letters_per_function: u64,
    /// Region and account of functions' ARNs (`[lambda]`).
    pub lambda: flick_core::LambdaIdentity,
    /// Prices of usage (`[pricing]`): `flick usage` and `GET /v1/usage`.
    pub pricing: flick_platform::Pricing,
    /// Live log streams and statistics (`[live]`).
    pub live: flick_platform::LiveConfig,
    /// `GET /metrics` (`[metrics]`).
    pub metrics: MetricsConfig,
    /// The web dashboard (`[ui]`).
    pub ui: UiConfig,
    /// Where state and async work live, and this node's name among others.
    pub cluster: ClusterConfig,
}

/// Where the store and the async queue are, and who this node is. The
/// embedded default (SQLite files in the data dir) is a cluster of one;
/// `store = "postgres://…"` with `queue = "nats://…"` lets several nodes
/// share functions, records and async work.
#[derive(Clone)]
pub struct ClusterConfig {
    pub store: StoreUrl,
    pub queue: QueueUrl,
    /// This node's stable name (`None`: the one kept in `node.id`, made at
    /// the first start).
    pub node_id: Option<String>,
    /// How other nodes reach this one (`None`: `http://<listen>`).
    pub advertise: Option<url::Url>,
}

impl ClusterConfig {
    /// Several nodes may share this store: routes follow other nodes' deploys.
    pub fn is_shared(&self) -> bool {
        matches!(self.store, StoreUrl::Postgres(_))
    }
}

impl std::fmt::Debug for ClusterConfig {
    /// URLs may carry passwords: only their scheme and host are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("store", &self.store.to_string())
            .field("queue", &self.queue.to_string())
            .field("node_id", &self.node_id)
            .field("advertise", &self.advertise.as_ref().map(url::Url::as_str))
            .finish()
    }
}

/// `store`: the embedded SQLite file or a PostgreSQL server.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite,
    Postgres(String),
}

/// `queue`: the embedded SQLite file or a NATS JetStream server.
#[derive(Clone, PartialEq, Eq)]
pub enum QueueUrl {
    Sqlite,
    Nats(String),
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("sqlite"),
            Self::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

impl std::fmt::Display for QueueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("sqlite"),
            Self::Nats(url) => f.write_str(&redacted(url)),
        }
    }
}

/// A URL without its password, for logs and errors.
pub fn redacted(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

impl StoreUrl {
    fn parse(text: &str) -> anyhow::Result<Self> {
        if text == "sqlite" {
            return Ok(Self::Sqlite);
        }
        match url::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.host_str().is_some() => {
                Ok(Self::Postgres(text.to_string()))
            }
            _ => bail!(
                "`store` must be `sqlite` or a PostgreSQL URL such as postgres://user@host:5432/flick, not `{}`",
                redacted(text)
            ),
        }
    }
}

impl QueueUrl {
    fn parse(text: &str) -> anyhow::Result<Self> {
        if text == "sqlite" {
            return Ok(Self::Sqlite);
        }
        match url::Url::parse(text) {
            Ok(u) if u.scheme() == "nats" && u.host_str().is_some() => Ok(Self::Nats(text.to_string())),
            _ => {
                bail!("`queue` must be `sqlite` or a NATS URL such as nats://127.0.0.1:4222, not `{}`", redacted(text))
            }
        }
    }
}

/// A node id: the characters of a function name (it appears in subjects,
/// URLs and logs), at most 64.
pub fn check_node_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        bail!("node id `{id}` must be 1-64 letters, digits, `-` or `_`");
    }
    Ok(())
}

/// `[ui]`: the web dashboard, on a listener of its own.
///
/// Its own address is its own browser origin: a function's page (served
/// under `/fn` on the main listener) cannot read the dashboard's pages or
/// call `/v1` with its session, and the dashboard's session is refused
/// everywhere but there.
#[derive(Clone, Debug)]
pub struct UiConfig {
    /// Off: no dashboard, no sessions.
    pub enabled: bool,
    /// Where the dashboard listens. Unset: `listen`'s address with the
    /// next port (8080 → 8081), or any free port when that one is taken.
    pub listen: Option<SocketAddr>,
}

impl UiConfig {
    /// The address to try first, and whether another may be taken when it
    /// is in use (only when nobody chose it).
    pub fn address(&self, main: SocketAddr) -> (SocketAddr, bool) {
        match self.listen {
            Some(at) => (at, false),
            None => {
                let port = if main.port() == 0 { 0 } else { main.port().checked_add(1).unwrap_or(0) };
                (SocketAddr::new(main.ip(), port), true)
            }
        }
    }
}

/// How flick writes its own log lines (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colour at a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message`,
    /// the other fields, and the call's `span` (`activation_id`, `function`).
    Json,
}

/// How instances' CPU is limited (`cpu_limit`, `--cpu-limit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CpuLimit {
    /// Proportional weights (by memory), no quota: an instance may use idle
    /// cores and is never throttled mid-burst; under contention CPU is
    /// shared by weight.
    #[default]
    Shares,
    /// The weights plus a CFS quota of `instance_cpus` per instance: a hard
    /// cap even on an idle host, at the price of throttling stalls (tail
    /// latency) when an instance bursts past it.
    Hard,
}

impl From<CpuLimit> for flick_sandbox::CpuLimit {
    fn from(c: CpuLimit) -> Self {
        match c {
            CpuLimit::Shares => Self::Shares,
            CpuLimit::Hard => Self::Hard,
        }
    }
}

/// `[metrics]`: whether flick keeps Prometheus metrics, who may scrape
/// them and where.
#[derive(Clone)]
pub struct MetricsConfig {
    /// Off: nothing is counted and `/metrics` does not exist.
    pub enabled: bool,
    /// A Bearer token that may scrape (and do nothing else); the admin key
    /// always may.
    pub token: Option<String>,
    /// Serve `/metrics` on this address alone (and not on `listen`).
    pub listen: Option<SocketAddr>,
}

impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("enabled", &self.enabled)
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .field("listen", &self.listen)
            .finish()
    }
}

/// Default `max_queue`: above any burst `max_connections` (1024) lets in
/// at once, so by default `queue_timeout` decides who gets a 429.
const DEFAULT_MAX_QUEUE: u32 = 2048;

/// The shortest metrics token accepted: guessing one must be hopeless.
const MIN_METRICS_TOKEN: usize = 16;

/// The config file: the same settings, human units as strings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    max_body: Option<String>,
    max_archive: Option<String>,
    max_unpacked: Option<String>,
    max_response: Option<String>,
    response_capture: Option<String>,
    log_capture: Option<String>,
    activation_max_age: Option<String>,
    activations_per_function: Option<u32>,
    activations_max_size: Option<String>,
    revisions_per_function: Option<u32>,
    shutdown_grace: Option<String>,
    install_timeout: Option<String>,
    install_memory: Option<String>,
    install_env: Option<std::collections::BTreeMap<String, String>>,
    python: Option<PathBuf>,
    node: Option<PathBuf>,
    npm: Option<PathBuf>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    instance_uid: Option<u32>,
    instance_gid: Option<u32>,
    uid_range: Option<[u32; 2]>,
    instance_pids: Option<u32>,
    instance_cpus: Option<f64>,
    cpu_limit: Option<CpuLimit>,
    cgroup_favordynmods: Option<bool>,
    instance_nofile: Option<u64>,
    queue_timeout: Option<String>,
    max_queue: Option<u32>,
    max_instances_total: Option<u32>,
    max_instance_memory: Option<String>,
    stem_cells: Option<u32>,
    fork_templates: Option<String>,
    allow_host_network_http: Option<bool>,
    max_connections: Option<u32>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    async_share: Option<f64>,
    max_queued: Option<u64>,
    retry_base: Option<String>,
    retry_cap: Option<String>,
    idempotency_window: Option<String>,
    callback_timeout: Option<String>,
    callback_attempts: Option<u32>,
    event_max_hops: Option<u32>,
    queue_max_size: Option<String>,
    dead_letters_per_function: Option<u64>,
    #[serde(default)]
    lambda: FileLambda,
    #[serde(default)]
    pricing: FilePricing,
    #[serde(default)]
    live: FileLive,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    ui: FileUi,
    store: Option<String>,
    queue: Option<String>,
    node_id: Option<String>,
    advertise: Option<String>,
}

/// `[ui]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUi {
    enabled: Option<bool>,
    listen: Option<SocketAddr>,
}

/// `[pricing]`: what usage costs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePricing {
    gb_second: Option<f64>,
    per_million_requests: Option<f64>,
    currency: Option<String>,
}

/// `[live]`: log streams (`GET /v1/logs`) and in-memory statistics.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLive {
    /// Log streams open at once (one more: 503).
    max_streams: Option<u32>,
    /// Lines buffered per follower before it skips some.
    buffer: Option<usize>,
}

/// `[metrics]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    enabled: Option<bool>,
    token: Option<String>,
    listen: Option<SocketAddr>,
}

/// `[lambda]`: the identity Lambda-style clients and code see.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLambda {
    region: Option<String>,
    account: Option<String>,
}

impl Config {
    pub fn load(args: &UpArgs, data_dir: &Path) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => {
                let default = data_dir.join("config.toml");
                if default.is_file() { read_file(&default)? } else { FileConfig::default() }
            }
        };
        let size = |key: &str, flag: Option<&String>, file: &Option<String>, default: u64| -> anyhow::Result<u64> {
            match flag.or(file.as_ref()) {
                Some(text) => parse_size(text).map_err(|e| anyhow::anyhow!("`{key}`: {e}")),
                None => Ok(default),
            }
        };
        let duration = |key: &str, file: &Option<String>, default: Duration| -> anyhow::Result<Duration> {
            match file {
                Some(text) => parse_duration(text).map_err(|e| anyhow::anyhow!("`{key}`: {e}")),
                None => Ok(default),
            }
        };
        let config = Config {
            listen: args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir: data_dir.to_path_buf(),
            // Lambda's synchronous payload limit.
            max_body_bytes: size("max_body", args.max_body.as_ref(), &file.max_body, 6 << 20)? as usize,
            max_archive_bytes: size("max_archive", None, &file.max_archive, 50 << 20)? as usize,
            max_unpacked_bytes: size("max_unpacked", None, &file.max_unpacked, 250 << 20)?,
            max_response_bytes: size("max_response", None, &file.max_response, 6 << 20)? as usize,
            response_capture_bytes: size("response_capture", None, &file.response_capture, 64 << 10)? as usize,
            activation_max_age: duration(
                "activation_max_age",
                &file.activation_max_age,
                Duration::from_secs(7 * 86_400),
            )?,
            activations_per_function: file.activations_per_function.unwrap_or(1000),
            log_capture_bytes: size("log_capture", None, &file.log_capture, 64 << 10)? as usize,
            activations_max_size: size("activations_max_size", None, &file.activations_max_size, 1 << 30)?,
            revisions_per_function: file.revisions_per_function.unwrap_or(10),
            shutdown_grace: duration("shutdown_grace", &file.shutdown_grace, Duration::from_secs(30))?,
            install_timeout: duration("install_timeout", &file.install_timeout, Duration::from_secs(300))?,
            install_memory: size("install_memory", None, &file.install_memory, 1 << 30)?,
            install_env: file.install_env.unwrap_or_default().into_iter().collect(),
            python: file.python,
            node: file.node.unwrap_or_else(|| "node".into()),
            npm: file.npm.unwrap_or_else(|| "npm".into()),
            log: args.log.clone().or(file.log).unwrap_or_else(|| "info".into()),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            insecure_no_sandbox: args.insecure_no_sandbox,
            // 65534 is `nobody`: owns nothing on the host.
            instance_uid: file.instance_uid.unwrap_or(65534),
            instance_gid: file.instance_gid.unwrap_or(65534),
            // Above the ids of host users and the 16-bit ones; 65536 uids.
            uid_range: file.uid_range.map_or(200_000..=265_535, |[first, last]| first..=last),
            instance_pids: file.instance_pids.unwrap_or(256),
            instance_cpus: file.instance_cpus.unwrap_or(1.0),
            cpu_limit: args.cpu_limit.or(file.cpu_limit).unwrap_or_default(),
            cgroup_favordynmods: file.cgroup_favordynmods.unwrap_or(true),
            instance_nofile: file.instance_nofile.unwrap_or(1024),
            queue_timeout: duration("queue_timeout", &file.queue_timeout, Duration::from_secs(10))?,
            // Time, not a count, is what should turn a burst away: a
            // function that can serve every waiter within `queue_timeout`
            // serves them all. The count only bounds memory (each waiter is
            // a parked task holding its request); a sync waiter is also an
            // open connection, so `max_connections` (1024) bounds the sum
            // over all functions, and this stays a per-function bound when
            // that is raised. A hostile flood meets both, never unbounded.
            max_queue: file.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
            max_instances_total: file.max_instances_total.unwrap_or(1000),
            // Most of the machine: instances rarely use their whole limit.
            max_instance_memory: size("max_instance_memory", None, &file.max_instance_memory, host_memory() / 10 * 9)?,
            stem_cells: file.stem_cells.unwrap_or(1),
            fork_templates: match file.fork_templates.as_deref() {
                Some("off") => None,
                _ => Some(duration("fork_templates", &file.fork_templates, Duration::from_millis(20))?),
            },
            allow_host_network_http: file.allow_host_network_http.unwrap_or(false),
            max_connections: file.max_connections.unwrap_or(1024),
            header_read_timeout: duration("header_read_timeout", &file.header_read_timeout, Duration::from_secs(10))?,
            body_read_timeout: duration("body_read_timeout", &file.body_read_timeout, Duration::from_secs(30))?,
            asynchronous: {
                let d = flick_platform::AsyncConfig::default();
                flick_platform::AsyncConfig {
                    async_share: file.async_share.unwrap_or(d.async_share),
                    max_queued: file.max_queued.unwrap_or(d.max_queued),
                    retry_base: duration("retry_base", &file.retry_base, d.retry_base)?,
                    retry_cap: duration("retry_cap", &file.retry_cap, d.retry_cap)?,
                    idempotency_window: duration("idempotency_window", &file.idempotency_window, d.idempotency_window)?,
                    callback_timeout: duration("callback_timeout", &file.callback_timeout, d.callback_timeout)?,
                    callback_attempts: file.callback_attempts.unwrap_or(d.callback_attempts),
                    shutdown_grace: d.shutdown_grace,
                }
            },
            event_max_hops: file.event_max_hops.unwrap_or(flick_platform::DEFAULT_MAX_HOPS),
            queue_max_size: size("queue_max_size", None, &file.queue_max_size, 4 << 30)?,
            dead_letters_per_function: file.dead_letters_per_function.unwrap_or(10_000),
            lambda: {
                use flick_core::LambdaIdentity as Id;
                let region =
                    args.lambda_region.as_deref().or(file.lambda.region.as_deref()).unwrap_or(Id::DEFAULT_REGION);
                let account =
                    args.lambda_account.as_deref().or(file.lambda.account.as_deref()).unwrap_or(Id::DEFAULT_ACCOUNT);
                Id::new(region, account).map_err(|e| anyhow::anyhow!("`[lambda]`: {e}"))?
            },
            pricing: {
                let d = flick_platform::Pricing::default();
                let p = flick_platform::Pricing {
                    gb_second: args.price_gb_second.or(file.pricing.gb_second).unwrap_or(d.gb_second),
                    per_million_requests: args
                        .price_per_million_requests
                        .or(file.pricing.per_million_requests)
                        .unwrap_or(d.per_million_requests),
                    currency: args.currency.clone().or(file.pricing.currency).unwrap_or(d.currency),
                };
                p.check().map_err(anyhow::Error::msg)?;
                p
            },
            live: {
                let d = flick_platform::LiveConfig::default();
                let buffer = file.live.buffer.unwrap_or(d.buffer);
                if !(1..=1 << 20).contains(&buffer) {
                    bail!("`[live] buffer` must be between 1 and 1048576 lines, not {buffer}");
                }
                flick_platform::LiveConfig { max_streams: file.live.max_streams.unwrap_or(d.max_streams), buffer }
            },
            metrics: MetricsConfig {
                enabled: !args.no_metrics && file.metrics.enabled.unwrap_or(true),
                token: args.metrics_token.clone().or(file.metrics.token),
                listen: args.metrics_listen.or(file.metrics.listen),
            },
            ui: UiConfig {
                enabled: !args.no_ui && file.ui.enabled.unwrap_or(true),
                listen: args.ui_listen.or(file.ui.listen),
            },
            cluster: ClusterConfig {
                store: StoreUrl::parse(args.store.as_deref().or(file.store.as_deref()).unwrap_or("sqlite"))?,
                queue: QueueUrl::parse(args.queue.as_deref().or(file.queue.as_deref()).unwrap_or("sqlite"))?,
                node_id: args.node_id.clone().or(file.node_id),
                advertise: match args.advertise.as_deref().or(file.advertise.as_deref()) {
                    None => None,
                    Some(text) => Some(
                        url::Url::parse(text)
                            .ok()
                            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                            .ok_or_else(|| {
                                anyhow::anyhow!(
                                    "`advertise` must be an http:// URL such as http://10.0.0.5:8080, not `{text}`"
                                )
                            })?,
                    ),
                },
            },
        };
        if let Some(id) = &config.cluster.node_id {
            check_node_id(id).context("`node_id` (--node-id)")?;
        }
        if matches!(config.cluster.queue, QueueUrl::Nats(_)) && !config.cluster.is_shared() {
            bail!(
                "`queue = \"nats://…\"` needs `store = \"postgres://…\"`: queued calls name functions that every \
                 node must find in one shared store"
            );
        }
        if config.cluster.is_shared() && config.cluster.advertise.is_none() && config.listen.ip().is_unspecified() {
            bail!(
                "with a shared store, other nodes must be able to reach this one: --listen {} is every address, so \
                 give --advertise http://<this host's address>:{}",
                config.listen,
                config.listen.port()
            );
        }
        if config.ui.enabled && config.ui.listen.is_some_and(|u| u == config.listen || Some(u) == config.metrics.listen)
        {
            bail!(
                "`[ui] listen` must differ from `listen` and `[metrics] listen`: the dashboard needs an address \
                 (a browser origin) of its own"
            );
        }
        if let Some(token) = &config.metrics.token
            && (token.len() < MIN_METRICS_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!(
                "`[metrics] token` (--metrics-token, FLICK_METRICS_TOKEN) must be at least {MIN_METRICS_TOKEN} \
                 visible ASCII characters, without spaces (e.g. `openssl rand -hex 24`)"
            );
        }
        if config.metrics.listen.is_some_and(|m| m == config.listen) {
            bail!(
                "`[metrics] listen` must differ from `listen` ({}): leave it out to serve /metrics there",
                config.listen
            );
        }
        if *config.uid_range.start() == 0 || config.uid_range.is_empty() {
            bail!(
                "`uid_range` must be [first, last] with 0 < first <= last, not [{}, {}]",
                config.uid_range.start(),
                config.uid_range.end()
            );
        }
        if config.instance_uid == 0 || config.instance_gid == 0 {
            bail!("`instance_uid` and `instance_gid` must not be 0 (root)");
        }
        if !(config.instance_cpus > 0.0 && config.instance_cpus <= 1024.0) {
            bail!("`instance_cpus` must be above 0");
        }
        if config.instance_pids < 8 {
            bail!("`instance_pids` must be at least 8");
        }
        if config.install_memory < 64 << 20 {
            bail!("`install_memory` must be at least 64MiB");
        }
        for (name, value) in &config.install_env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                bail!("`install_env`: `{name}` is not a valid environment variable");
            }
        }
        if config.max_connections == 0 {
            bail!("`max_connections` must be at least 1");
        }
        if config.header_read_timeout.is_zero() || config.body_read_timeout.is_zero() {
            bail!("`header_read_timeout` and `body_read_timeout` must be above zero");
        }
        let a = &config.asynchronous;
        if !(a.async_share > 0.0 && a.async_share <= 1.0) {
            bail!("`async_share` must be above 0 and at most 1, not {}", a.async_share);
        }
        if a.max_queued == 0 {
            bail!("`max_queued` must be at least 1");
        }
        if a.retry_base.is_zero() || a.retry_cap < a.retry_base {
            bail!("`retry_base` must be above zero and `retry_cap` at least `retry_base`");
        }
        if a.idempotency_window.is_zero() {
            bail!("`idempotency_window` must be above zero");
        }
        if a.callback_timeout.is_zero() || !(1..=10).contains(&a.callback_attempts) {
            bail!("`callback_timeout` must be above zero and `callback_attempts` between 1 and 10");
        }
        if config.activations_per_function == 0 {
            bail!("`activations_per_function` must be at least 1");
        }
        if config.activations_max_size < MIN_ACTIVATIONS_MAX_SIZE {
            bail!(
                "`activations_max_size` must be at least {} (the records of one write batch and the schema must fit)",
                flick_core::units::format_size(MIN_ACTIVATIONS_MAX_SIZE)
            );
        }
        if config.queue_max_size < MIN_QUEUE_MAX_SIZE {
            bail!(
                "`queue_max_size` must be at least {} (the queue's schema and one large call must fit)",
                flick_core::units::format_size(MIN_QUEUE_MAX_SIZE)
            );
        }
        if config.dead_letters_per_function == 0 {
            bail!("`dead_letters_per_function` must be at least 1");
        }
        Ok(config)
    }
}

/// The smallest `queue.db` cap: the schema plus a call with a body of the
/// default `max_body`, so the cap never refuses every call.
const MIN_QUEUE_MAX_SIZE: u64 = 8 << 20;

/// The smallest database budget that holds a batch of records beside the
/// functions and revisions.
const MIN_ACTIVATIONS_MAX_SIZE: u64 = 4 << 20;

/// Bytes of RAM on this host (MemTotal), or 4 GiB if unknown.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix(" kB")?.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib << 10)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> UpArgs {
        UpArgs {
            listen: None,
            config: None,
            max_body: None,
            log: None,
            log_format: None,
            cpu_limit: None,
            examples: false,
            insecure_no_sandbox: false,
            lambda_region: None,
            lambda_account: None,
            price_gb_second: None,
            price_per_million_requests: None,
            currency: None,
            metrics_token: None,
            metrics_listen: None,
            no_metrics: false,
            ui_listen: None,
            no_ui: false,
            store: None,
            queue: None,
            node_id: None,
            advertise: None,
        }
    }

    #[test]
    fn cluster_keys_layer_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert!(c.cluster.store == StoreUrl::Sqlite && c.cluster.queue == QueueUrl::Sqlite && !c.cluster.is_shared());
        std::fs::write(
            dir.path().join("config.toml"),
            "store = \"postgres://flick:secret@db:5432/flick\"\nqueue = \"nats://127.0.0.1:4222\"\nnode_id = \"a-1\"\n",
        )
        .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert!(c.cluster.is_shared());
        assert_eq!(c.cluster.node_id.as_deref(), Some("a-1"));
        let shown = format!("{:?}", c.cluster);
        assert!(!shown.contains("secret") && shown.contains("db:5432"), "{shown}");
        let mut a = args();
        a.node_id = Some("b_2".into());
        assert_eq!(Config::load(&a, dir.path()).unwrap().cluster.node_id.as_deref(), Some("b_2"), "a flag wins");
        for (text, key) in [
            ("store = \"mysql://db/flick\"\n", "store"),
            ("queue = \"amqp://127.0.0.1\"\n", "queue"),
            ("queue = \"nats://127.0.0.1:4222\"\n", "needs `store"),
            ("node_id = \"a.b\"\n", "node id"),
            ("store = \"postgres://db/f\"\nlisten = \"0.0.0.0:8080\"\n", "--advertise"),
            ("advertise = \"db:80\"\n", "advertise"),
        ] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            let err = format!("{:#}", Config::load(&args(), dir.path()).unwrap_err());
            assert!(err.contains(key), "{text}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn defaults_file_and_flags_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.max_body_bytes, 6 << 20);

        std::fs::write(
            dir.path().join("config.toml"),
            "max_body = \"1MiB\"\nlisten = \"127.0.0.1:9999\"\nactivation_max_age = \"1d\"\n",
        )
        .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.activation_max_age, Duration::from_secs(86_400));

        let mut a = args();
        a.max_body = Some("2MiB".into());
        let c = Config::load(&a, dir.path()).unwrap();
        assert_eq!(c.max_body_bytes, 2 << 20, "a flag beats the file");
    }

    #[test]
    fn record_budget_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.log_capture_bytes, c.activations_max_size), (64 << 10, 1 << 30));
        std::fs::write(dir.path().join("config.toml"), "log_capture = \"4KiB\"\nactivations_max_size = \"16MiB\"\n")
            .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.log_capture_bytes, c.activations_max_size), (4 << 10, 16 << 20));
        std::fs::write(dir.path().join("config.toml"), "activations_max_size = \"1MiB\"\n").unwrap();
        let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("activations_max_size") && err.contains("at least"), "{err}");
    }

    #[test]
    fn the_queue_bound_is_above_what_connections_let_in() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!(c.queue_timeout, Duration::from_secs(10));
        assert!(c.max_queue > c.max_connections, "by default time, not the count, rejects: {c:?}");
        std::fs::write(dir.path().join("config.toml"), "max_queue = 3\n").unwrap();
        assert_eq!(Config::load(&args(), dir.path()).unwrap().max_queue, 3);
    }

    #[test]
    fn cpu_limit_defaults_to_shares_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(&args(), dir.path()).unwrap().cpu_limit, CpuLimit::Shares);
        std::fs::write(dir.path().join("config.toml"), "cpu_limit = \"hard\"\ninstance_cpus = 0.5\n").unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.cpu_limit, c.instance_cpus), (CpuLimit::Hard, 0.5));
        let mut a = args();
        a.cpu_limit = Some(CpuLimit::Shares);
        assert_eq!(Config::load(&a, dir.path()).unwrap().cpu_limit, CpuLimit::Shares, "a flag beats the file");
        std::fs::write(dir.path().join("config.toml"), "cpu_limit = \"soft\"\n").unwrap();
        let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("soft"), "{err}");
    }

    #[test]
    fn queue_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.queue_max_size, c.dead_letters_per_function), (4 << 30, 10_000));
        std::fs::write(dir.path().join("config.toml"), "queue_max_size = \"64MiB\"\ndead_letters_per_function = 5\n")
            .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.queue_max_size, c.dead_letters_per_function), (64 << 20, 5));
        for (text, key) in [
            ("queue_max_size = \"1MiB\"\n", "queue_max_size"),
            ("queue_max_size = \"lots\"\n", "queue_max_size"),
            ("dead_letters_per_function = 0\n", "dead_letters_per_function"),
        ] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn async_keys_default_parse_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.asynchronous.async_share, c.asynchronous.max_queued), (0.5, 100_000));
        std::fs::write(
            dir.path().join("config.toml"),
            "async_share = 0.25\nmax_queued = 7\nretry_base = \"50ms\"\nretry_cap = \"2s\"\nidempotency_window = \"1h\"\n",
        )
        .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.asynchronous.async_share, c.asynchronous.max_queued), (0.25, 7));
        assert_eq!(c.asynchronous.retry_base, Duration::from_millis(50));
        assert_eq!(c.asynchronous.idempotency_window, Duration::from_secs(3600));
        for (text, key) in [
            ("async_share = 0.0\n", "async_share"),
            ("async_share = 1.5\n", "async_share"),
            ("max_queued = 0\n", "max_queued"),
            ("retry_base = \"1s\"\nretry_cap = \"10ms\"\n", "retry_cap"),
            ("callback_attempts = 0\n", "callback_attempts"),
            ("retry_base = \"soon\"\n", "retry_base"),
        ] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn lambda_identity_layers_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!(c.lambda, flick_core::LambdaIdentity::default());
        std::fs::write(
            dir.path().join("config.toml"),
            "[lambda]\nregion = \"eu-west-3\"\naccount = \"123456789012\"\n",
        )
        .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.lambda.region.as_str(), c.lambda.account.as_str()), ("eu-west-3", "123456789012"));
        let mut a = args();
        a.lambda_region = Some("ap-south-1".into());
        let c = Config::load(&a, dir.path()).unwrap();
        assert_eq!((c.lambda.region.as_str(), c.lambda.account.as_str()), ("ap-south-1", "123456789012"));
        for text in ["[lambda]\nregion = \"Mars\"\n", "[lambda]\naccount = \"12\"\n", "[lambda]\nzone = \"x\"\n"] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
            assert!(err.contains("lambda") || err.contains("zone"), "{text}: {err}");
        }
    }

    #[test]
    fn pricing_layers_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!(c.pricing, flick_platform::Pricing::default());
        assert_eq!((c.pricing.gb_second, c.pricing.per_million_requests), (0.0000166667, 0.2));
        std::fs::write(
            dir.path().join("config.toml"),
            "[pricing]\ngb_second = 0.00001\nper_million_requests = 0\ncurrency = \"EUR\"\n",
        )
        .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!((c.pricing.gb_second, c.pricing.per_million_requests), (0.00001, 0.0));
        assert_eq!(c.pricing.currency, "EUR");
        let mut a = args();
        a.price_gb_second = Some(0.5);
        a.currency = Some("CHF".into());
        let c = Config::load(&a, dir.path()).unwrap();
        assert_eq!((c.pricing.gb_second, c.pricing.per_million_requests), (0.5, 0.0), "a flag beats the file");
        assert_eq!(c.pricing.currency, "CHF");
        for (text, key) in [
            ("[pricing]\ngb_second = -0.1\n", "gb_second"),
            ("[pricing]\nper_million_requests = -1\n", "per_million_requests"),
            ("[pricing]\ngb_second = nan\n", "gb_second"),
            ("[pricing]\ngb_second = \"cheap\"\n", "gb_second"),
            ("[pricing]\ncurrency = \"dollars\"\n", "currency"),
            ("[pricing]\nper_gb_second = 1\n", "per_gb_second"),
        ] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_dashboard_has_an_address_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert!(c.ui.enabled && c.ui.listen.is_none());
        // Unchosen: the next port, and it may move when that one is taken.
        assert_eq!(c.ui.address(c.listen), ("127.0.0.1:8081".parse().unwrap(), true));
        assert_eq!(c.ui.address("127.0.0.1:0".parse().unwrap()), ("127.0.0.1:0".parse().unwrap(), true));
        assert_eq!(c.ui.address("[::1]:65535".parse().unwrap()), ("[::1]:0".parse().unwrap(), true));
        std::fs::write(
            dir.path().join("config.toml"),
            "[ui]
listen = \"127.0.0.1:9001\"\n",
        )
        .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!(c.ui.address(c.listen), ("127.0.0.1:9001".parse().unwrap(), false), "chosen: it stays");
        let mut a = args();
        a.no_ui = true;
        assert!(!Config::load(&a, dir.path()).unwrap().ui.enabled, "a flag beats the file");
        for (text, key) in [
            ("[ui]\nlisten = \"127.0.0.1:8080\"\n", "[ui] listen"),
            ("[metrics]\nlisten = \"127.0.0.1:9100\"\n[ui]\nlisten = \"127.0.0.1:9100\"\n", "[ui] listen"),
            ("[ui]\nport = 1\n", "port"),
        ] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            let err = format!("{:#}", Config::load(&args(), dir.path()).unwrap_err());
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn metrics_keys_layer_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert!(c.metrics.enabled && c.metrics.token.is_none() && c.metrics.listen.is_none());
        std::fs::write(
            dir.path().join("config.toml"),
            "[metrics]\nenabled = true\ntoken = \"file-token-0123456789\"\nlisten = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        let c = Config::load(&args(), dir.path()).unwrap();
        assert_eq!(c.metrics.token.as_deref(), Some("file-token-0123456789"));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(!format!("{c:?}").contains("file-token"), "Debug hides the token");
        let mut a = args();
        a.metrics_token = Some("flag-token-0123456789".into());
        a.no_metrics = true;
        let c = Config::load(&a, dir.path()).unwrap();
        assert_eq!(c.metrics.token.as_deref(), Some("flag-token-0123456789"), "a flag beats the file");
        assert!(!c.metrics.enabled);
        std::fs::write(dir.path().join("config.toml"), "[metrics]\nenabled = false\n").unwrap();
        assert!(!Config::load(&args(), dir.path()).unwrap().metrics.enabled);
        for (text, key) in [
            ("[metrics]\ntoken = \"short\"\n", "token"),
            ("[metrics]\ntoken = \"has a space in it, long enough\"\n", "token"),
            ("[metrics]\nlisten = \"127.0.0.1:8080\"\n", "listen"),
            ("[metrics]\nport = 9100\n", "port"),
            ("[metrics]\nenabled = \"yes\"\n", "enabled"),
        ] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "max_bodee = \"1MiB\"\n").unwrap();
        let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("max_bodee"), "{err}");
        std::fs::write(dir.path().join("config.toml"), "max_body = \"lots\"\n").unwrap();
        let err = Config::load(&args(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("max_body"), "{err}");
    }
}
