//! Prometheus metrics: one registry per [`crate::Platform`] (no globals),
//! rendered by `GET /metrics` in the OpenMetrics text format through the
//! `prometheus-client` crate (never formatted by hand).
//!
//! Two kinds of series:
//! - **observed** as things happen: every finished activation at the
//!   record point ([`Metrics::observe`]: invocations, duration, init and
//!   queue-wait histograms, sandbox kills) and every HTTP response
//!   ([`Metrics::http_response`], from the API's layer);
//! - **read at scrape time** by collectors, so they can never drift from
//!   the truth: instances by state from the scheduler, stem cells, the
//!   host budget, the async queue ([`QueueRow`], fetched by the platform
//!   just before encoding) and the triggers' own counts
//!   ([`Metrics::set_trigger_source`]).
//!
//! The hot path costs one read-locked map lookup by function name (no
//! allocation: the name is interned once, with the function's histogram
//! handles) and one label-set lookup per counter. With metrics disabled
//! ([`Metrics::disabled`]) every call is a branch on `None`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use flick_core::{Activation, ActivationStatus};
use flick_scheduler::Scheduler;
use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The two text formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, what `prometheus-client` writes (and Prometheus
    /// asks for first).
    OpenMetrics,
    /// Prometheus' classic text format 0.0.4 (curl, `promtool check
    /// metrics`, older scrapers): the same series, see [`to_classic`].
    Classic,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Bucket bounds (seconds) of the duration, init and queue-wait
/// histograms: from half a millisecond (a warm call) to the 15-minute
/// timeout ceiling.
const BUCKETS: [f64; 18] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type HistogramFamily = Family<FunctionLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    function: Arc<str>,
    status: &'static str,
    cause: &'static str,
    /// cold, warm or prewarmed (a cold start that took a stem cell).
    start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    surface: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// A function's interned name and its histograms, resolved once.
#[derive(Debug)]
struct FunctionHandles {
    name: Arc<str>,
    duration: Histogram,
    init: Histogram,
    wait: Histogram,
}

/// One trigger's counts as its source keeps them (`flick triggers`' FIRED
/// and FAILED), read at every scrape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerCount {
    pub function: String,
    pub trigger: String,
    /// cron, mqtt, nats, cloudevents.
    pub kind: String,
    pub delivered: u64,
    pub failed: u64,
}

/// One function's async backlog at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueRow {
    pub function: String,
    pub ready: u64,
    pub leased: u64,
    pub dead: u64,
    /// How long the oldest ready item has been due, in seconds (0 when none).
    pub lag_seconds: f64,
}

/// The platform's metrics; [`Metrics::disabled`] records nothing.
#[derive(Debug)]
pub struct Metrics {
    inner: Option<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Behind a lock only because collectors may be added after start-up
    /// (the triggers' source); the hot path never takes it.
    registry: Mutex<Registry>,
    functions: RwLock<HashMap<String, Arc<FunctionHandles>>>,
    invocations: Family<InvocationLabels, Counter>,
    duration: HistogramFamily,
    init: HistogramFamily,
    wait: HistogramFamily,
    kills: Family<KillLabels, Counter>,
    http: Family<HttpLabels, Counter>,
}

impl Metrics {
    /// Metrics that record nothing and render nothing (`[metrics] enabled = false`).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// A registry with every family, and the scheduler read at each scrape.
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<InvocationLabels, Counter>::default();
        registry.register(
            "flick_invocations",
            "Finished invocations (one per activation record) by function, status, cause and start (cold, warm, prewarmed)",
            invocations.clone(),
        );
        let family = || HistogramFamily::new_with_constructor(histogram as fn() -> Histogram);
        let (duration, init, wait) = (family(), family(), family());
        registry.register_with_unit(
            "flick_invocation_duration",
            "Time from accepting a call to its end, by function",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register_with_unit(
            "flick_invocation_init",
            "Time cold starts spent starting an instance, by function (cold starts only)",
            Unit::Seconds,
            init.clone(),
        );
        registry.register_with_unit(
            "flick_invocation_queue",
            "Time calls waited for a free instance slot, by function",
            Unit::Seconds,
            wait.clone(),
        );
        let kills = Family::<KillLabels, Counter>::default();
        // Every reason shows from the start, so a rate over it is never absent.
        for reason in ["timeout", "oom"] {
            kills.get_or_create(&KillLabels { reason }).inc_by(0);
        }
        registry.register(
            "flick_sandbox_kills",
            "Instances stopped by flick for a limit: timeout (past the function's timeout), oom (memory limit)",
            kills.clone(),
        );
        let http = Family::<HttpLabels, Counter>::default();
        registry.register(
            "flick_http_responses",
            "HTTP responses by API surface (native, lambda, openwhisk, openfaas, events, metrics, ui, other) and status code",
            http.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("flick_build_info", "The running flick's version (always 1)", build);
        registry.register_collector(Box::new(SchedulerCollector { scheduler }));
        Self {
            inner: Some(Inner {
                registry: Mutex::new(registry),
                functions: RwLock::default(),
                invocations,
                duration,
                init,
                wait,
                kills,
                http,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Counts one finished activation (called where its record is handed to
    /// the writer, so counters match the records).
    pub fn observe(&self, a: &Activation) {
        let Some(inner) = &self.inner else { return };
        let f = inner.function(&a.function);
        let start = match (a.cold, a.prewarmed) {
            (true, true) => "prewarmed",
            (true, false) => "cold",
            (false, _) => "warm",
        };
        let labels =
            InvocationLabels { function: f.name.clone(), status: a.status.as_str(), cause: a.cause.as_str(), start };
        inner.invocations.get_or_create(&labels).inc();
        f.duration.observe(a.duration_ms / 1000.0);
        f.wait.observe(a.wait_ms / 1000.0);
        if a.cold {
            f.init.observe(a.init_ms / 1000.0);
        }
        let killed = match a.status {
            ActivationStatus::Timeout => Some("timeout"),
            ActivationStatus::OutOfMemory => Some("oom"),
            _ => None,
        };
        if let Some(reason) = killed {
            inner.kills.get_or_create(&KillLabels { reason }).inc();
        }
    }

    /// Drops a deleted function's series (a function created again under
    /// its name starts from zero, as its records do).
    pub fn forget(&self, function: &str) {
        let Some(inner) = &self.inner else { return };
        let Some(f) = inner.functions.write().remove(function) else { return };
        let labels = FunctionLabels { function: f.name.clone() };
        for family in [&inner.duration, &inner.init, &inner.wait] {
            family.remove(&labels);
        }
        use flick_core::ActivationStatus as S;
        let statuses = [S::Success, S::Error, S::Timeout, S::OutOfMemory, S::PlatformError, S::Queued, S::Running];
        for status in statuses {
            for cause in flick_core::Cause::ALL {
                for start in ["cold", "warm", "prewarmed"] {
                    inner.invocations.remove(&InvocationLabels {
                        function: f.name.clone(),
                        status: status.as_str(),
                        cause: cause.as_str(),
                        start,
                    });
                }
            }
        }
    }

    /// Counts one HTTP response of `surface` (a fixed name chosen by the API).
    pub fn http_response(&self, surface: &'static str, code: u16) {
        if let Some(inner) = &self.inner {
            inner.http.get_or_create(&HttpLabels { surface, code }).inc();
        }
    }

    /// Reads the triggers' counts at every scrape from `source` (the
    /// triggers manager lives above the platform, so it hands this in).
    pub fn set_trigger_source(&self, source: impl Fn() -> Vec<TriggerCount> + Send + Sync + 'static) {
        if let Some(inner) = &self.inner {
            inner.registry.lock().register_collector(Box::new(TriggerCollector { source: Box::new(source) }));
        }
    }

    /// The exposition: every registered series, then the queue rows read
    /// for this scrape. `None` when metrics are disabled.
    pub fn render(&self, queue: Vec<QueueRow>, format: Format) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(QueueCollector { rows: queue }));
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail; a collector's error would be
        // a bug, and the scrape then says so rather than serve half.
        let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &inner.registry.lock())
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &scrape))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding the metrics failed\n# EOF");
        }
        Some(match format {
            Format::OpenMetrics => out,
            Format::Classic => to_classic(&out),
        })
    }
}

/// OpenMetrics text as written by `prometheus-client` → the classic
/// format. They differ, for what flick writes, only in metadata: a
/// counter's `# HELP`/`# TYPE` name its samples' name (with `_total`) in
/// the classic format but the family's (without) in OpenMetrics, and the
/// classic format has no `# UNIT` or `# EOF`. Samples pass unchanged (flick
/// registers no info, stateset or unknown-typed metric, which would differ).
pub fn to_classic(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open_metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open_metrics.len() + counters.len() * 16);
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let _ = write!(out, "{prefix}{name}");
                if counters.contains(name) {
                    out.push_str("_total");
                }
                let _ = writeln!(out, " {tail}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl Inner {
    /// The function's handles, created on its first call.
    fn function(&self, name: &str) -> Arc<FunctionHandles> {
        if let Some(f) = self.functions.read().get(name) {
            return f.clone();
        }
        let mut functions = self.functions.write();
        functions
            .entry(name.to_string())
            .or_insert_with(|| {
                let labels = FunctionLabels { function: Arc::from(name) };
                Arc::new(FunctionHandles {
                    duration: self.duration.get_or_create_owned(&labels),
                    init: self.init.get_or_create_owned(&labels),
                    wait: self.wait.get_or_create_owned(&labels),
                    name: labels.function,
                })
            })
            .clone()
    }
}

/// Instances by function and state, stem cells and the host budget, read
/// from the scheduler at scrape time.
#[derive(Debug)]
struct SchedulerCollector {
    scheduler: Arc<Scheduler>,
}

impl Collector for SchedulerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Pools of one function (the current one, draining ones) add up.
        let mut by_function: std::collections::BTreeMap<String, [u64; 4]> = Default::default();
        for p in self.scheduler.status() {
            let row = by_function.entry(p.function).or_default();
            let instances = p.instances as u64;
            let busy = (p.busy as u64).min(instances);
            row[0] += u64::from(p.starting);
            row[1] += instances - busy;
            row[2] += busy;
            row[3] += u64::from(p.waiting);
        }
        let stems: u64 = self.scheduler.stem_cells().iter().map(|s| s.ready as u64).sum();
        let mut family = encoder.encode_descriptor(
            "flick_instances",
            "Instances by function and state (starting, idle, busy); ready stem cells belong to no function yet (state stem_cell, function \"\").",
            None,
            MetricType::Gauge,
        )?;
        for (function, row) in &by_function {
            for (state, value) in [("starting", row[0]), ("idle", row[1]), ("busy", row[2])] {
                let labels = [("function", function.as_str()), ("state", state)];
                ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let labels = [("function", ""), ("state", "stem_cell")];
        ConstGauge::new(stems as i64).encode(family.encode_family(&labels)?)?;

        let mut family = encoder.encode_descriptor(
            "flick_requests_waiting",
            "Calls waiting for a free instance slot now (the function's own queue), by function.",
            None,
            MetricType::Gauge,
        )?;
        for (function, row) in &by_function {
            ConstGauge::new(row[3] as i64).encode(family.encode_family(&[("function", function.as_str())])?)?;
        }

        let ((instances, memory), limits) = self.scheduler.budget();
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: u64| {
            ConstGauge::new(v as i64).encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
        };
        gauge(
            &mut encoder,
            "flick_host_instances",
            "Instances running on this host (all functions).",
            None,
            instances.into(),
        )?;
        gauge(
            &mut encoder,
            "flick_host_instances_limit",
            "The host's instance budget (max_instances_total).",
            None,
            limits.max_instances.into(),
        )?;
        gauge(
            &mut encoder,
            "flick_host_memory_reserved",
            "Memory reserved by running instances (their functions' memory).",
            Some(&Unit::Bytes),
            memory,
        )?;
        gauge(
            &mut encoder,
            "flick_host_memory_limit",
            "The host's memory budget for instances (max_instance_memory).",
            Some(&Unit::Bytes),
            limits.max_memory,
        )?;
        Ok(())
    }
}

/// The async queue as fetched for one scrape.
#[derive(Debug)]
struct QueueCollector {
    rows: Vec<QueueRow>,
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "flick_async_queue_items",
            "Accepted async calls by function and state: ready (waiting to run or to retry), leased (running), dead (dead letters).",
            None,
            MetricType::Gauge,
        )?;
        for row in &self.rows {
            for (state, value) in [("ready", row.ready), ("leased", row.leased), ("dead", row.dead)] {
                let labels = [("function", row.function.as_str()), ("state", state)];
                ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "flick_async_queue_lag",
            "How long the oldest ready async call of each function has been due.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for row in &self.rows {
            ConstGauge::new(row.lag_seconds).encode(family.encode_family(&[("function", row.function.as_str())])?)?;
        }
        Ok(())
    }
}

/// The triggers' counts, read from their sources at scrape time.
struct TriggerCollector {
    source: Box<dyn Fn() -> Vec<TriggerCount> + Send + Sync>,
}

impl std::fmt::Debug for TriggerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TriggerCollector")
    }
}

impl Collector for TriggerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = (self.source)();
        let mut family = encoder.encode_descriptor(
            "flick_trigger_deliveries",
            "Events a trigger handed to its function (queued, or called for request-reply), since it started.",
            None,
            MetricType::Counter,
        )?;
        for c in &counts {
            let labels = [("function", c.function.as_str()), ("trigger", &c.trigger), ("type", &c.kind)];
            ConstCounter::new(c.delivered).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "flick_trigger_failures",
            "Events a trigger could not hand over (each failed attempt), since it started.",
            None,
            MetricType::Counter,
        )?;
        for c in &counts {
            let labels = [("function", c.function.as_str()), ("trigger", &c.trigger), ("type", &c.kind)];
            ConstCounter::new(c.failed).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_metrics() -> String {
        let mut registry = Registry::default();
        let calls = Family::<InvocationLabels, Counter>::default();
        let labels = InvocationLabels { function: Arc::from("hello"), status: "success", cause: "http", start: "warm" };
        calls.get_or_create(&labels).inc_by(3);
        registry.register("flick_invocations", "Calls", calls);
        let durations = HistogramFamily::new_with_constructor(histogram as fn() -> Histogram);
        durations.get_or_create(&FunctionLabels { function: Arc::from("he\"llo") }).observe(0.002);
        registry.register_with_unit("flick_invocation_duration", "Durations", Unit::Seconds, durations);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn classic_text_names_counters_by_their_samples_and_drops_open_metrics_lines() {
        let om = open_metrics();
        assert!(om.contains("# TYPE flick_invocations counter\n"), "{om}");
        assert!(om.contains("# UNIT flick_invocation_duration_seconds seconds\n") && om.ends_with("# EOF\n"), "{om}");
        let classic = to_classic(&om);
        assert!(classic.contains("# HELP flick_invocations_total Calls.\n"), "{classic}");
        assert!(classic.contains("# TYPE flick_invocations_total counter\n"), "{classic}");
        assert!(
            classic.contains(
                "flick_invocations_total{function=\"hello\",status=\"success\",cause=\"http\",start=\"warm\"} 3\n"
            ),
            "{classic}"
        );
        assert!(classic.contains("# TYPE flick_invocation_duration_seconds histogram\n"), "{classic}");
        assert!(classic.contains("flick_invocation_duration_seconds_bucket{le=\"0.0025\",function=\"he\\\"llo\"} 1\n"));
        assert!(!classic.contains("# UNIT") && !classic.contains("# EOF"), "{classic}");
        // Every sample line is kept as it was.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(String::from).collect::<Vec<_>>();
        assert_eq!(samples(&om), samples(&classic));
    }

    #[test]
    fn a_forgotten_function_loses_its_series() {
        let inner = Inner {
            registry: Mutex::new(Registry::default()),
            functions: RwLock::default(),
            invocations: Family::default(),
            duration: HistogramFamily::new_with_constructor(histogram as fn() -> Histogram),
            init: HistogramFamily::new_with_constructor(histogram as fn() -> Histogram),
            wait: HistogramFamily::new_with_constructor(histogram as fn() -> Histogram),
            kills: Family::default(),
            http: Family::default(),
        };
        let m = Metrics { inner: Some(inner) };
        let mut a: Activation = serde_json::from_value(serde_json::json!({
            "id": "0123456789abcdef0123456789abcdef", "function": "gone", "revision": 1, "start_ms": 0, "end_ms": 5,
            "duration_ms": 5.0, "init_ms": 3.0, "wait_ms": 0.0, "cold": true, "status": "timeout",
            "http_status": 504, "response": "", "response_truncated": false, "logs": [], "logs_truncated": false,
            "cause": "async"
        }))
        .unwrap();
        m.observe(&a);
        a.function = "kept".into();
        m.observe(&a);
        let inner = m.inner.as_ref().unwrap();
        let has = |function: &str| {
            let f = FunctionLabels { function: Arc::from(function) };
            let calls =
                InvocationLabels { function: f.function.clone(), status: "timeout", cause: "async", start: "cold" };
            [
                inner.invocations.get(&calls).is_some(),
                inner.duration.get(&f).is_some(),
                inner.init.get(&f).is_some(),
                inner.wait.get(&f).is_some(),
                inner.functions.read().contains_key(function),
            ]
        };
        assert_eq!((has("gone"), has("kept")), ([true; 5], [true; 5]));
        m.forget("gone");
        assert_eq!((has("gone"), has("kept")), ([false; 5], [true; 5]));
        m.forget("never-seen");
        // Kills are not per function: both timeouts stay counted.
        assert_eq!(inner.kills.get_or_create(&KillLabels { reason: "timeout" }).get(), 2);
    }

    #[test]
    fn disabled_metrics_count_and_render_nothing() {
        let m = Metrics::disabled();
        assert!(!m.enabled());
        m.http_response("native", 200);
        assert_eq!(m.render(Vec::new(), Format::Classic), None);
    }
}
