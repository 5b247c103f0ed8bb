//! Live views of what runs, kept in memory only: log lines broadcast the
//! moment instances write them (`GET /v1/logs`, `flick logs -f`), and small
//! rings of statistics per function and for the host (`GET /v1/stats`,
//! `GET /v1/stats/series`, `flick top`, the dashboard's charts).
//!
//! Nothing here may slow a call down: a line is one `broadcast` send (which
//! never waits for a reader: a follower that falls behind loses lines and
//! is told how many), and a finished call is one short lock to add it to
//! two buckets. Statistics are bucketed per second (the last
//! [`SECONDS_KEPT`]) and per minute (the last [`MINUTES_KEPT`], 24 h);
//! durations go to a sparse log-scale histogram per bucket, so p50/p99 of
//! any window are read from at most a few thousand counters. Instance counts
//! come from the scheduler, sampled every [`SAMPLE_EVERY`] by
//! [`Live::run_sampler`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flick_core::{Activation, ActivationStatus, LogLine, LogStream, now_ms};
use flick_runtime::LogSink;
use flick_scheduler::Scheduler;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

/// Per-second buckets kept: windows up to 10 minutes are exact to the second.
pub const SECONDS_KEPT: i64 = 600;
/// Per-minute buckets kept: 24 hours.
pub const MINUTES_KEPT: i64 = 24 * 60;
/// How often instance counts are read from the scheduler.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Most points one series answer holds.
pub const MAX_POINTS: i64 = 2000;

/// `[live]` in flick's config.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Log streams (`GET /v1/logs`) open at once; one more is refused (503).
    pub max_streams: u32,
    /// Lines buffered for each follower; one that falls further behind
    /// skips the oldest and is told how many.
    pub buffer: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self { max_streams: 64, buffer: 1024 }
    }
}

/// One log line as followers see it.
#[derive(Clone, Debug, Serialize)]
pub struct LiveLine {
    pub activation_id: String,
    pub function: String,
    pub stream: LogStream,
    pub ts_ms: i64,
    pub text: String,
}

/// Why a log stream was not opened.
#[derive(Debug, thiserror::Error)]
#[error("{0} log streams are open, the most this flick serves (`[live] max_streams`)")]
pub struct TooManyStreams(pub u32);

/// An open log stream: its receiver and its place among `max_streams`,
/// given back when it is dropped (the client went away).
#[derive(Debug)]
pub struct Follower {
    pub lines: broadcast::Receiver<Arc<LiveLine>>,
    /// Becomes true when flick stops: streams end, so they do not hold
    /// the server's graceful shutdown for its whole grace period.
    closing: tokio::sync::watch::Receiver<bool>,
    _slot: StreamSlot,
}

/// What a follower reads next.
#[derive(Debug)]
pub enum Next {
    Line(Arc<LiveLine>),
    /// This many lines were skipped: the follower fell behind.
    Lagged(u64),
}

impl Follower {
    /// The next line, or a note of lines skipped; `None` once flick stops.
    pub async fn next(&mut self) -> Option<Next> {
        // Closing first: lines still buffered must not keep a stream open.
        tokio::select! {
            biased;
            _ = self.closing.wait_for(|c| *c) => None,
            r = self.lines.recv() => match r {
                Ok(line) => Some(Next::Line(line)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some(Next::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => None,
            },
        }
    }
}

#[derive(Debug)]
struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Instances of one function (or the host) at the last sample.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct InstanceCounts {
    pub starting: u32,
    pub idle: u32,
    pub busy: u32,
}

impl InstanceCounts {
    fn total(&self) -> u32 {
        self.starting + self.idle + self.busy
    }

    fn add(&mut self, other: &InstanceCounts) {
        self.starting += other.starting;
        self.idle += other.idle;
        self.busy += other.busy;
    }
}

/// Durations in a log-scale histogram: bucket `i` holds durations up to
/// `HIST_BASE_MS · 2^(i/8)` (each bucket 9 % wider than the last), from
/// 10 µs to about 7 hours in 256 buckets; sparse, as one bucket's calls
/// cluster in a few.
const HIST_BASE_MS: f64 = 0.01;
const HIST_STEPS_PER_DOUBLING: f64 = 8.0;

fn hist_index(ms: f64) -> u8 {
    if ms.is_nan() || ms <= HIST_BASE_MS {
        return 0;
    }
    ((ms / HIST_BASE_MS).log2() * HIST_STEPS_PER_DOUBLING).ceil().min(255.0) as u8
}

/// The middle (geometric) of histogram bucket `i`.
fn hist_value(i: u8) -> f64 {
    HIST_BASE_MS * 2f64.powf((f64::from(i) - 0.5).max(0.0) / HIST_STEPS_PER_DOUBLING)
}

/// What happened in one second or one minute.
#[derive(Clone, Debug, Default)]
struct Bucket {
    invocations: u64,
    errors: u64,
    cold_starts: u64,
    gb_s: f64,
    /// Largest measured memory peak of a call that ended in it.
    memory_peak: u64,
    /// Most instances sampled in it.
    instances: u32,
    min_ms: f64,
    max_ms: f64,
    /// (histogram index, count), sorted by index.
    hist: Vec<(u8, u32)>,
}

impl Bucket {
    fn add(&mut self, a: &Activation) {
        let ms = a.duration_ms.max(0.0);
        if self.invocations == 0 {
            (self.min_ms, self.max_ms) = (ms, ms);
        } else {
            self.min_ms = self.min_ms.min(ms);
            self.max_ms = self.max_ms.max(ms);
        }
        self.invocations += 1;
        self.errors += u64::from(is_error(a.status));
        self.cold_starts += u64::from(a.cold);
        self.gb_s += a.billed_gb_s();
        self.memory_peak = self.memory_peak.max(a.memory_peak_bytes.unwrap_or(0));
        let i = hist_index(ms);
        match self.hist.binary_search_by_key(&i, |(k, _)| *k) {
            Ok(at) => self.hist[at].1 += 1,
            Err(at) => self.hist.insert(at, (i, 1)),
        }
    }
}

/// A failed call: what the errors column counts.
fn is_error(status: ActivationStatus) -> bool {
    matches!(
        status,
        ActivationStatus::Error
            | ActivationStatus::Timeout
            | ActivationStatus::OutOfMemory
            | ActivationStatus::PlatformError
    )
}

/// Sums of buckets over a range, with the merged histogram.
#[derive(Default)]
struct Sum {
    invocations: u64,
    errors: u64,
    cold_starts: u64,
    gb_s: f64,
    memory_peak: u64,
    instances: u32,
    min_ms: f64,
    max_ms: f64,
    hist: Vec<u64>,
}

impl Sum {
    fn add(&mut self, b: &Bucket) {
        if b.invocations > 0 {
            if self.invocations == 0 {
                (self.min_ms, self.max_ms) = (b.min_ms, b.max_ms);
            } else {
                self.min_ms = self.min_ms.min(b.min_ms);
                self.max_ms = self.max_ms.max(b.max_ms);
            }
        }
        self.invocations += b.invocations;
        self.errors += b.errors;
        self.cold_starts += b.cold_starts;
        self.gb_s += b.gb_s;
        self.memory_peak = self.memory_peak.max(b.memory_peak);
        self.instances = self.instances.max(b.instances);
        if self.hist.is_empty() && !b.hist.is_empty() {
            self.hist = vec![0; 256];
        }
        for (i, n) in &b.hist {
            self.hist[usize::from(*i)] += u64::from(*n);
        }
    }

    /// The `q` quantile of the durations, within the smallest and largest
    /// seen (so one call's p50 is its own duration, not its bucket's middle).
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.invocations == 0 {
            return None;
        }
        let rank = ((self.invocations as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let v = hist_value(i as u8).clamp(self.min_ms, self.max_ms);
                return Some((v * 1000.0).round() / 1000.0);
            }
        }
        Some(self.max_ms)
    }
}

/// Buckets of one unit (a second or a minute), oldest first, only those
/// something happened in.
#[derive(Debug)]
struct Ring {
    unit_ms: i64,
    keep: i64,
    buckets: VecDeque<(i64, Bucket)>,
}

impl Ring {
    fn new(unit_ms: i64, keep: i64) -> Self {
        Self { unit_ms, keep, buckets: VecDeque::new() }
    }

    /// The bucket of time `t_ms` (a late one goes to the newest bucket:
    /// the clock went back, or a sample raced a call).
    fn at(&mut self, t_ms: i64) -> &mut Bucket {
        let idx = t_ms.div_euclid(self.unit_ms);
        let newest = self.buckets.back().map(|(i, _)| *i);
        if newest.is_none_or(|n| idx > n) {
            self.buckets.push_back((idx, Bucket::default()));
            while self.buckets.front().is_some_and(|(i, _)| *i <= idx - self.keep) {
                self.buckets.pop_front();
            }
        }
        &mut self.buckets.back_mut().expect("pushed above").1
    }

    /// Sum of the buckets from `from_idx` to `to_idx`, both included.
    fn sum(&self, from_idx: i64, to_idx: i64) -> Sum {
        let mut sum = Sum::default();
        let start = self.buckets.partition_point(|(i, _)| *i < from_idx);
        for (i, b) in self.buckets.range(start..) {
            if *i > to_idx {
                break;
            }
            sum.add(b);
        }
        sum
    }
}

#[derive(Debug)]
struct Rings {
    seconds: Ring,
    minutes: Ring,
}

impl Default for Rings {
    fn default() -> Self {
        Self { seconds: Ring::new(1000, SECONDS_KEPT), minutes: Ring::new(60_000, MINUTES_KEPT) }
    }
}

impl Rings {
    fn each(&mut self, t_ms: i64, f: impl Fn(&mut Bucket)) {
        f(self.seconds.at(t_ms));
        f(self.minutes.at(t_ms));
    }

    /// The ring for a window or step of `secs` seconds.
    fn ring(&self, fine: bool) -> &Ring {
        if fine { &self.seconds } else { &self.minutes }
    }
}

#[derive(Debug, Default)]
struct Stats {
    functions: HashMap<String, Rings>,
    host: Rings,
    /// The last sample of instances, per function.
    instances: HashMap<String, InstanceCounts>,
    stem_cells: u32,
}

/// A bad window, step or range (the API answers 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRange(pub String);

/// One row of [`StatsReport`]: a function's or the host's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StatsRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub invocations: u64,
    pub rate_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    pub cold_starts: u64,
    pub instances: InstanceCounts,
    /// The largest measured memory peak (the instance cgroup's, recorded on
    /// the activation) of a call that ended in the window.
    pub memory_bytes: u64,
    pub gb_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stem_cells: Option<u32>,
    /// Log streams open now (host only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_streams: Option<u32>,
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, Serialize)]
pub struct StatsReport {
    pub now_ms: i64,
    pub window_s: u64,
    pub functions: Vec<StatsRow>,
    pub host: StatsRow,
}

/// One point of [`Series`].
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub t_ms: i64,
    pub invocations: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Most instances sampled in the step.
    pub instances: u32,
    pub gb_s: f64,
}

/// `GET /v1/stats/series`.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub step_s: u64,
    pub points: Vec<Point>,
}

/// The live hub: owned by the platform, fed at the record point and by
/// the instances' log collectors.
#[derive(Debug)]
pub struct Live {
    lines: broadcast::Sender<Arc<LiveLine>>,
    streams: Arc<AtomicU32>,
    closing: tokio::sync::watch::Sender<bool>,
    config: LiveConfig,
    stats: Mutex<Stats>,
}

impl Live {
    pub fn new(config: LiveConfig) -> Self {
        Self {
            lines: broadcast::channel(config.buffer.max(1)).0,
            streams: Arc::default(),
            closing: tokio::sync::watch::channel(false).0,
            config,
            stats: Mutex::default(),
        }
    }

    /// Opens a log stream, unless `max_streams` are open.
    pub fn follow(&self) -> Result<Follower, TooManyStreams> {
        let max = self.config.max_streams;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| TooManyStreams(max))?;
        let closing = self.closing.subscribe();
        Ok(Follower { lines: self.lines.subscribe(), closing, _slot: StreamSlot(self.streams.clone()) })
    }

    /// Ends every log stream (flick is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Log streams open now.
    pub fn streams(&self) -> u32 {
        self.streams.load(Ordering::Acquire)
    }

    /// Where one call's lines go as its instance writes them. Costs
    /// nothing per line while nobody follows.
    pub fn sink(&self, function: &str, activation_id: &str) -> LogSink {
        let lines = self.lines.clone();
        let (function, activation_id) = (function.to_string(), activation_id.to_string());
        LogSink::new(move |l: &LogLine| {
            if lines.receiver_count() > 0 {
                let _ = lines.send(Arc::new(LiveLine {
                    activation_id: activation_id.clone(),
                    function: function.clone(),
                    stream: l.stream,
                    ts_ms: l.ts_ms,
                    text: l.text.clone(),
                }));
            }
        })
    }

    /// Counts a finished call (the record point).
    pub fn observe(&self, a: &Activation) {
        let now = now_ms();
        let mut st = self.stats.lock();
        st.host.each(now, |b| b.add(a));
        match st.functions.get_mut(&a.function) {
            Some(rings) => rings.each(now, |b| b.add(a)),
            None => {
                let mut rings = Rings::default();
                rings.each(now, |b| b.add(a));
                st.functions.insert(a.function.clone(), rings);
            }
        }
    }

    /// Forgets a deleted function's figures.
    pub fn forget(&self, function: &str) {
        let mut st = self.stats.lock();
        st.functions.remove(function);
        st.instances.remove(function);
    }

    /// Reads instance counts from the scheduler every [`SAMPLE_EVERY`].
    pub async fn run_sampler(self: Arc<Self>, scheduler: Arc<Scheduler>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample(&scheduler);
        }
    }

    /// One sample of the scheduler's instances (also taken before a report,
    /// so the current counts are never older than the request).
    pub fn sample(&self, scheduler: &Scheduler) {
        let mut counts: HashMap<String, InstanceCounts> = HashMap::new();
        for p in scheduler.status() {
            let c = counts.entry(p.function).or_default();
            let busy = p.busy as u32;
            c.add(&InstanceCounts { starting: p.starting, busy, idle: (p.instances as u32).saturating_sub(busy) });
        }
        let stems = scheduler.stem_cells().iter().map(|c| c.ready as u32).sum();
        let now = now_ms();
        let mut st = self.stats.lock();
        let mut host = InstanceCounts::default();
        for (function, c) in &counts {
            host.add(c);
            if let Some(rings) = st.functions.get_mut(function) {
                rings.each(now, |b| b.instances = b.instances.max(c.total()));
            } else if c.total() > 0 {
                let mut rings = Rings::default();
                rings.each(now, |b| b.instances = b.instances.max(c.total()));
                st.functions.insert(function.clone(), rings);
            }
        }
        st.host.each(now, |b| b.instances = b.instances.max(host.total()));
        st.instances = counts;
        st.stem_cells = stems;
    }

    /// The figures of the last `window` for each of `functions` (every
    /// function deployed, or the one asked for) and the host.
    pub fn report(&self, window: Duration, functions: &[String]) -> Result<StatsReport, BadRange> {
        let window_s = window.as_secs();
        if window_s == 0 || window_s > (MINUTES_KEPT * 60) as u64 {
            return Err(BadRange(format!("window must be between 1s and {}h", MINUTES_KEPT / 60)));
        }
        let now = now_ms();
        let fine = window_s as i64 <= SECONDS_KEPT;
        let st = self.stats.lock();
        let row = |rings: Option<&Rings>, function: Option<String>, instances: InstanceCounts| {
            let sum = rings.map(|r| window_sum(r.ring(fine), now, window_s as i64)).unwrap_or_default();
            StatsRow {
                function,
                invocations: sum.invocations,
                rate_per_s: round3(sum.invocations as f64 / window_s as f64),
                p50_ms: sum.quantile(0.5),
                p99_ms: sum.quantile(0.99),
                errors: sum.errors,
                cold_starts: sum.cold_starts,
                instances,
                memory_bytes: sum.memory_peak,
                gb_s: round6(sum.gb_s),
                stem_cells: None,
                log_streams: None,
            }
        };
        let rows = functions
            .iter()
            .map(|f| {
                let instances = st.instances.get(f).copied().unwrap_or_default();
                row(st.functions.get(f), Some(f.clone()), instances)
            })
            .collect();
        let mut host_instances = InstanceCounts::default();
        st.instances.values().for_each(|c| host_instances.add(c));
        let mut host = row(Some(&st.host), None, host_instances);
        host.stem_cells = Some(st.stem_cells);
        host.log_streams = Some(self.streams());
        Ok(StatsReport { now_ms: now, window_s, functions: rows, host })
    }

    /// Points of `step` over the last `since`, for `function` or the host.
    pub fn series(&self, function: Option<&str>, since: Duration, step: Duration) -> Result<Series, BadRange> {
        let (since_s, step_s) = (since.as_secs() as i64, step.as_secs() as i64);
        if step_s == 0 || since_s == 0 || step.subsec_millis() != 0 {
            return Err(BadRange("step and since must be whole seconds, at least 1s".into()));
        }
        if since_s > MINUTES_KEPT * 60 {
            return Err(BadRange(format!("since reaches back at most {}h", MINUTES_KEPT / 60)));
        }
        let fine = step_s % 60 != 0;
        if fine && since_s > SECONDS_KEPT {
            return Err(BadRange(format!(
                "a step that is not whole minutes reaches back at most {SECONDS_KEPT}s; use a step of 60s or more"
            )));
        }
        if since_s / step_s > MAX_POINTS {
            return Err(BadRange(format!("at most {MAX_POINTS} points: make the step larger or since shorter")));
        }
        let now = now_ms();
        let st = self.stats.lock();
        let rings = match function {
            Some(f) => st.functions.get(f),
            None => Some(&st.host),
        };
        let unit = if fine { 1 } else { 60 };
        let per = step_s / unit;
        // Steps end at the current unit; the first starts `since` before.
        let last = now.div_euclid(unit * 1000);
        let count = (since_s / step_s).max(1);
        let first = last - count * per + 1;
        let points = (0..count)
            .map(|k| {
                let from = first + k * per;
                let sum = rings.map(|r| r.ring(fine).sum(from, from + per - 1)).unwrap_or_default();
                Point {
                    t_ms: from * unit * 1000,
                    invocations: sum.invocations,
                    errors: sum.errors,
                    cold_starts: sum.cold_starts,
                    p50_ms: sum.quantile(0.5),
                    p99_ms: sum.quantile(0.99),
                    instances: sum.instances,
                    gb_s: round6(sum.gb_s),
                }
            })
            .collect();
        Ok(Series { step_s: step_s as u64, points })
    }
}

/// The last `window_s` seconds of `ring`, up to now.
fn window_sum(ring: &Ring, now: i64, window_s: i64) -> Sum {
    let last = now.div_euclid(ring.unit_ms);
    let units = ((window_s * 1000 + ring.unit_ms - 1) / ring.unit_ms).max(1);
    ring.sum(last - units + 1, last)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activation(function: &str, ms: f64, status: ActivationStatus, cold: bool) -> Activation {
        let inv = flick_core::Invocation::post(function, flick_core::Cause::Http, Vec::new());
        let mut a = Activation::of(&inv, status, now_ms());
        a.duration_ms = ms;
        a.status = status;
        a.cold = cold;
        a
    }

    #[test]
    fn histogram_indices_grow_with_duration_and_values_fall_inside_their_bucket() {
        let mut last = 0;
        for ms in [0.005, 0.02, 1.0, 1.05, 10.0, 200.0, 60_000.0, 1e9] {
            let i = hist_index(ms);
            assert!(i >= last, "{ms} ms");
            last = i;
        }
        for ms in [0.5, 3.0, 250.0, 9_000.0] {
            let v = hist_value(hist_index(ms));
            assert!((v / ms - 1.0).abs() < 0.1, "{ms} ms reads back as {v}");
        }
    }

    #[test]
    fn counts_quantiles_errors_and_cold_starts_of_a_window() {
        let live = Live::new(LiveConfig::default());
        for i in 1..=100 {
            let status = if i % 10 == 0 { ActivationStatus::Error } else { ActivationStatus::Success };
            live.observe(&activation("f", f64::from(i), status, i <= 3));
        }
        live.observe(&activation("g", 5.0, ActivationStatus::Timeout, false));
        let r = live.report(Duration::from_secs(60), &["f".into(), "g".into(), "h".into()]).unwrap();
        let f = &r.functions[0];
        assert_eq!((f.invocations, f.errors, f.cold_starts), (100, 10, 3));
        let p50 = f.p50_ms.unwrap();
        assert!((46.0..=55.0).contains(&p50), "p50 {p50}");
        let p99 = f.p99_ms.unwrap();
        assert!((92.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(r.functions[1].errors, 1);
        assert_eq!(r.functions[1].p50_ms, Some(5.0), "one call: its own duration");
        assert_eq!((r.functions[2].invocations, r.functions[2].p50_ms), (0, None));
        assert_eq!(r.host.invocations, 101);
        // 24 h reads the minute ring: the same calls.
        let day = live.report(Duration::from_secs(86_400), &["f".into()]).unwrap();
        assert_eq!(day.functions[0].invocations, 100);
        assert!(live.report(Duration::from_secs(0), &[]).is_err());
        assert!(live.report(Duration::from_secs(2 * 86_400), &[]).is_err());
    }

    #[test]
    fn series_have_the_asked_number_of_points_and_the_calls_in_the_last() {
        let live = Live::new(LiveConfig::default());
        for _ in 0..4 {
            live.observe(&activation("f", 2.0, ActivationStatus::Success, false));
        }
        let s = live.series(Some("f"), Duration::from_secs(3600), Duration::from_secs(60)).unwrap();
        assert_eq!(s.points.len(), 60);
        assert_eq!(s.points.iter().map(|p| p.invocations).sum::<u64>(), 4);
        // The last point, or the one before if a minute began meanwhile.
        assert!(s.points.iter().rev().take(2).map(|p| p.invocations).sum::<u64>() == 4);
        assert!(s.points.windows(2).all(|w| w[1].t_ms - w[0].t_ms == 60_000));
        let fine = live.series(None, Duration::from_secs(60), Duration::from_secs(5)).unwrap();
        assert_eq!(fine.points.len(), 12);
        assert_eq!(fine.points.iter().map(|p| p.invocations).sum::<u64>(), 4);
        assert!(live.series(None, Duration::from_secs(3600), Duration::from_secs(5)).is_err());
        assert!(live.series(None, Duration::from_secs(86_400), Duration::from_secs(1)).is_err());
        assert!(live.series(None, Duration::from_secs(60), Duration::from_millis(1500)).is_err());
    }

    #[test]
    fn rings_keep_only_their_span() {
        let mut ring = Ring::new(1000, 10);
        for t in 0..100 {
            ring.at(t * 1000).invocations += 1;
        }
        assert_eq!(ring.buckets.len(), 10);
        assert_eq!(ring.sum(0, 200).invocations, 10);
        // A late call goes to the newest bucket rather than a new old one.
        ring.at(5_000).invocations += 1;
        assert_eq!(ring.buckets.back().unwrap().1.invocations, 2);
    }

    #[tokio::test]
    async fn streams_are_bounded_and_given_back_when_dropped() {
        let live = Live::new(LiveConfig { max_streams: 2, buffer: 4 });
        let a = live.follow().unwrap();
        let mut b = live.follow().unwrap();
        assert!(live.follow().is_err());
        drop(a);
        assert_eq!(live.streams(), 1);
        let _c = live.follow().unwrap();
        // A follower that does not read loses the oldest lines; the sender never waits.
        let sink = live.sink("f", "id1");
        for i in 0..10 {
            sink.send(&LogLine { ts_ms: i, stream: LogStream::Stdout, text: format!("line {i}") });
        }
        assert!(matches!(b.lines.recv().await, Err(broadcast::error::RecvError::Lagged(6))));
        let Some(Next::Line(next)) = b.next().await else { panic!("a line") };
        assert_eq!((next.text.as_str(), next.activation_id.as_str(), next.function.as_str()), ("line 6", "id1", "f"));
        // Stopping ends the streams.
        live.close();
        assert!(b.next().await.is_none());
    }
}
