//! Capture of what instances write to stdout and stderr, attributed to the
//! invocations that were in flight when it was written.
//!
//! Bootstraps end each invocation's output with a marker line on both
//! streams, so once both markers are read every line of that invocation has
//! been read too (a pipe keeps order). Lines written while nothing is in
//! flight (module import, server start-up) are kept and handed to the next
//! invocation, as Lambda shows INIT output with the first call.
//!
//! This work happens in flick, outside every cgroup, so it is bounded per
//! instance: output is read in large chunks, and only a budget of lines and
//! bytes per second is split into lines and kept. Beyond it, output is
//! dropped unread except for a scan for end markers, counted on the
//! activation, and drained no faster than `drain_bytes_per_sec` — a
//! function writing faster blocks on its own pipe and slows only itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use flick_core::{LogLine, LogStream, now_ms};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The marker a bootstrap writes after an invocation's output: RS, then `flick-end <id>`.
pub const END_MARKER: &str = "\u{1e}flick-end ";

/// How much output is read at once.
const READ_CHUNK: usize = 64 << 10;
/// Longest end marker line recognised in dropped output (RS, `flick-end `,
/// an activation id, newline); longer is not a marker.
const MARKER_MAX: usize = 128;

/// Caps of what one activation keeps (the tail, like Lambda's log tail),
/// and the budget of output flick processes per instance.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
    /// Longer lines are cut (a process printing without newlines cannot
    /// make flick buffer without bound).
    pub max_line_bytes: usize,
    /// Lines per second of one instance's output (both streams) that are
    /// kept; a burst of `burst_secs` seconds' worth passes at once.
    pub lines_per_sec: u32,
    /// Bytes per second kept, likewise.
    pub bytes_per_sec: u64,
    pub burst_secs: u32,
    /// Output over the budget is read and thrown away at most this fast.
    pub drain_bytes_per_sec: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_lines: 1000,
            max_bytes: 64 << 10,
            max_line_bytes: 8 << 10,
            lines_per_sec: 10_000,
            bytes_per_sec: 1 << 20,
            burst_secs: 5,
            drain_bytes_per_sec: 64 << 20,
        }
    }
}

/// The log lines of one invocation.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub lines: Vec<LogLine>,
    /// Earlier lines were left out (the tail is kept), or output was dropped.
    pub truncated: bool,
    /// Bytes of output dropped over the instance's log budget while this
    /// invocation ran (a line saying so ends `lines`).
    pub dropped_bytes: u64,
}

#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<LogLine>,
    bytes: usize,
    truncated: bool,
    dropped: u64,
}

impl Tail {
    fn push(&mut self, line: LogLine, limits: &LogLimits) {
        self.bytes += line.text.len();
        self.lines.push_back(line);
        while self.lines.len() > limits.max_lines || self.bytes > limits.max_bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.text.len(),
                None => break,
            }
            self.truncated = true;
        }
    }

    fn into_captured(self, limits: &LogLimits) -> Captured {
        let mut lines: Vec<LogLine> = self.lines.into();
        if self.dropped > 0 {
            // Last, after the tail was cut, so it is always kept.
            let text = format!(
                "flick: {} bytes of output dropped: over this instance's log budget ({} lines, {} bytes per second)",
                self.dropped, limits.lines_per_sec, limits.bytes_per_sec
            );
            lines.push(LogLine { ts_ms: now_ms(), stream: LogStream::Stderr, text });
        }
        Captured { lines, truncated: self.truncated || self.dropped > 0, dropped_bytes: self.dropped }
    }
}

/// The per-instance budget of kept output: a token bucket of lines and bytes.
#[derive(Debug)]
struct Budget {
    lines: f64,
    bytes: f64,
    at: Instant,
}

impl Budget {
    fn full(limits: &LogLimits) -> Self {
        let burst = f64::from(limits.burst_secs.max(1));
        Self {
            lines: f64::from(limits.lines_per_sec) * burst,
            bytes: limits.bytes_per_sec as f64 * burst,
            at: Instant::now(),
        }
    }

    /// Whether a new line may be kept (refilling first).
    fn allows(&mut self, limits: &LogLimits, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        let burst = f64::from(limits.burst_secs.max(1));
        self.lines = (self.lines + secs * f64::from(limits.lines_per_sec)).min(f64::from(limits.lines_per_sec) * burst);
        self.bytes = (self.bytes + secs * limits.bytes_per_sec as f64).min(limits.bytes_per_sec as f64 * burst);
        self.at = now;
        self.lines >= 1.0 && self.bytes >= 1.0
    }

    fn charge(&mut self, bytes: usize) {
        self.lines -= 1.0;
        self.bytes -= bytes as f64;
    }
}

/// Where a stream reader is in its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// At the start of a line: the budget decides whether it is kept.
    LineStart,
    /// Inside a line that is kept.
    Keep,
    /// Over budget: dropping, looking only for end markers. With `resume`
    /// (the budget has refilled) the next newline returns to `LineStart`.
    Drop { resume: bool },
}

/// Paces the draining of dropped output.
#[derive(Debug)]
struct Drain {
    allowance: f64,
    at: Instant,
}

impl Drain {
    /// How long to pause after dropping `bytes` more, if at all.
    fn take(&mut self, bytes: u64, rate: u64, now: Instant) -> Option<Duration> {
        let rate = rate.max(1) as f64;
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        // At most a tenth of a second's worth banked.
        self.allowance = (self.allowance + secs * rate).min(rate / 10.0) - bytes as f64;
        self.at = now;
        (self.allowance < 0.0).then(|| Duration::from_secs_f64(-self.allowance / rate))
    }
}

/// Where an invocation's lines go the moment they are read (live log
/// followers), besides its record. Called under the collector's lock: it
/// must not block (a broadcast send, which never waits for a reader).
#[derive(Clone)]
pub struct LogSink(Arc<dyn Fn(&LogLine) + Send + Sync>);

impl LogSink {
    pub fn new(f: impl Fn(&LogLine) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn send(&self, line: &LogLine) {
        (self.0)(line)
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

/// An invocation in flight: its lines, end markers seen, its live sink.
#[derive(Debug, Default)]
struct Inflight {
    tail: Tail,
    ends: u8,
    sink: Option<LogSink>,
}

#[derive(Debug, Default)]
struct State {
    inflight: HashMap<String, Inflight>,
    idle: Tail,
    /// Streams being read, and those that reached EOF: once all are closed
    /// the process writes no more markers, so nobody should wait for them.
    open: u8,
    closed: u8,
}

/// Shared between an instance's stream readers and its invocations.
#[derive(Debug, Clone)]
pub struct LogCollector {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    limits: LogLimits,
    budget: Arc<Mutex<Budget>>,
}

impl LogCollector {
    pub fn new(limits: LogLimits) -> Self {
        let budget = Arc::new(Mutex::new(Budget::full(&limits)));
        Self { state: Arc::default(), notify: Arc::new(Notify::new()), limits, budget }
    }

    /// Starts attributing lines to `id`, handing it what was written while
    /// idle; every line of it is also sent to `sink` as it is read.
    pub fn begin(&self, id: &str, sink: Option<LogSink>) {
        let mut st = self.state.lock();
        let idle = std::mem::take(&mut st.idle);
        if let Some(sink) = &sink {
            idle.lines.iter().for_each(|l| sink.send(l));
        }
        st.inflight.insert(id.to_string(), Inflight { tail: idle, ends: 0, sink });
    }

    /// Stops attributing lines to `id` and returns them. With
    /// `wait_markers`, first waits (at most `grace`) for the end marker on
    /// both streams, so no line written before the response is missed.
    pub async fn finish(&self, id: &str, wait_markers: bool, grace: Duration) -> Captured {
        if wait_markers {
            let deadline = tokio::time::Instant::now() + grace;
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let done = {
                    let st = self.state.lock();
                    st.closed >= st.open || st.inflight.get(id).is_none_or(|f| f.ends >= 2)
                };
                if done || tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        let mut st = self.state.lock();
        st.inflight.remove(id).map(|f| f.tail.into_captured(&self.limits)).unwrap_or_default()
    }

    /// Everything not attributed to an invocation (e.g. output of an
    /// instance that failed to start).
    pub fn take_idle(&self) -> Captured {
        std::mem::take(&mut self.state.lock().idle).into_captured(&self.limits)
    }

    fn on_line(&self, stream: LogStream, mut text: String) {
        // Output without a final newline runs into the marker: split it off.
        if let Some(at) = text.find(END_MARKER).filter(|at| *at > 0) {
            let marker = text.split_off(at);
            self.on_line(stream, text);
            return self.on_line(stream, marker);
        }
        let mut st = self.state.lock();
        if let Some(id) = text.strip_prefix(END_MARKER) {
            if let Some(f) = st.inflight.get_mut(id.trim_end()) {
                f.ends += 1;
                drop(st);
                self.notify.notify_waiters();
            }
            return;
        }
        let line = LogLine { ts_ms: now_ms(), stream, text };
        let limits = self.limits;
        if st.inflight.is_empty() {
            st.idle.push(line, &limits);
        } else if st.inflight.len() == 1 {
            if let Some(f) = st.inflight.values_mut().next() {
                if let Some(sink) = &f.sink {
                    sink.send(&line);
                }
                f.tail.push(line, &limits);
            }
        } else {
            // Concurrent invocations in one instance share its streams; the
            // line may belong to any of them, so each keeps it.
            for f in st.inflight.values_mut() {
                if let Some(sink) = &f.sink {
                    sink.send(&line);
                }
                f.tail.push(line.clone(), &limits);
            }
        }
    }

    /// Counts `bytes` dropped over budget against whatever is in flight
    /// (or the idle tail, handed to the next invocation).
    fn on_dropped(&self, bytes: u64) {
        let mut st = self.state.lock();
        if st.inflight.is_empty() {
            st.idle.dropped += bytes;
        } else {
            for f in st.inflight.values_mut() {
                f.tail.dropped += bytes;
            }
        }
    }

    /// A kept line was cut at `max_line_bytes`: whoever keeps it keeps less
    /// than was written, and the record must say so.
    fn mark_cut(&self) {
        let mut st = self.state.lock();
        if st.inflight.is_empty() {
            st.idle.truncated = true;
        }
        for f in st.inflight.values_mut() {
            f.tail.truncated = true;
        }
    }

    fn on_close(&self) {
        self.state.lock().closed += 1;
        self.notify.notify_waiters();
    }

    /// A collector fed by a long-lived child's stdout and stderr.
    pub fn capture(limits: LogLimits, child: &mut tokio::process::Child) -> Self {
        let logs = Self::new(limits);
        if let Some(out) = child.stdout.take() {
            logs.spawn_reader(LogStream::Stdout, out);
        }
        if let Some(err) = child.stderr.take() {
            logs.spawn_reader(LogStream::Stderr, err);
        }
        logs
    }

    /// Reads `reader` in large chunks until EOF, feeding the collector.
    pub fn spawn_reader<R>(&self, stream: LogStream, mut reader: R)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        self.state.lock().open += 1;
        let this = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; READ_CHUNK];
            // Bytes at the front of `buf` carried over from the last read
            // (the start of a possible end marker in dropped output).
            let mut carried = 0;
            let mut reading = Reading { line: Vec::new(), cut: false, mode: Mode::LineStart };
            let mut drain = Drain { allowance: 0.0, at: Instant::now() };
            loop {
                let n = match reader.read(&mut buf[carried..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let end = carried + n;
                let (used, dropped) = this.split(stream, &buf[..end], &mut reading, false);
                buf.copy_within(used..end, 0);
                carried = end - used;
                if dropped > 0 {
                    this.on_dropped(dropped);
                    let pause = drain.take(dropped, this.limits.drain_bytes_per_sec, Instant::now());
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
            let (_, dropped) = this.split(stream, &buf[..carried], &mut reading, true);
            if dropped > 0 {
                this.on_dropped(dropped);
            }
            if !reading.line.is_empty() {
                this.on_line(stream, String::from_utf8_lossy(&reading.line).into_owned());
            }
            if reading.cut {
                this.mark_cut();
            }
            this.on_close();
        });
    }

    /// Splits `data` into kept lines and dropped bytes, as the budget
    /// allows. Returns how much of `data` was used (the rest is the start
    /// of a marker that continues in the next read; none `at_eof`) and how
    /// many bytes were dropped.
    fn split(&self, stream: LogStream, data: &[u8], r: &mut Reading, at_eof: bool) -> (usize, u64) {
        let max_line = self.limits.max_line_bytes;
        let (mut pos, mut dropped) = (0, 0u64);
        if let Mode::Drop { resume } = &mut r.mode {
            *resume = self.budget.lock().allows(&self.limits, Instant::now());
        }
        while pos < data.len() {
            let rest = &data[pos..];
            match r.mode {
                Mode::LineStart => {
                    let keep = self.budget.lock().allows(&self.limits, Instant::now());
                    r.mode = if keep { Mode::Keep } else { Mode::Drop { resume: false } };
                }
                Mode::Keep => {
                    let newline = memchr::memchr(b'\n', rest);
                    let chunk = &rest[..newline.unwrap_or(rest.len())];
                    // Past the cap the rest of the line is cut, not buffered.
                    let room = max_line.saturating_sub(r.line.len());
                    r.cut |= chunk.len() > room;
                    r.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    pos += newline.map_or(rest.len(), |i| i + 1);
                    if newline.is_some() {
                        self.budget.lock().charge(r.line.len() + 1);
                        let text = String::from_utf8_lossy(&r.line).into_owned();
                        r.line.clear();
                        self.on_line(stream, text);
                        if std::mem::take(&mut r.cut) {
                            self.mark_cut();
                        }
                        r.mode = Mode::LineStart;
                    }
                }
                Mode::Drop { resume } => {
                    let newline = if resume { memchr::memchr(b'\n', rest) } else { None };
                    let scope = &rest[..newline.unwrap_or(rest.len())];
                    if let Some(rs) = memchr::memchr(END_MARKER.as_bytes()[0], scope) {
                        dropped += rs as u64;
                        pos += rs;
                        let candidate = &data[pos..];
                        let window = &candidate[..candidate.len().min(MARKER_MAX)];
                        match memchr::memchr(b'\n', window) {
                            Some(nl) => {
                                let line = &candidate[..nl];
                                if line.starts_with(END_MARKER.as_bytes()) {
                                    self.on_line(stream, String::from_utf8_lossy(line).into_owned());
                                } else {
                                    dropped += nl as u64 + 1;
                                }
                                pos += nl + 1;
                                r.mode = Mode::LineStart;
                            }
                            None if candidate.len() < MARKER_MAX && !at_eof => return (pos, dropped),
                            None => {
                                dropped += 1;
                                pos += 1;
                            }
                        }
                    } else if let Some(nl) = newline {
                        dropped += nl as u64 + 1;
                        pos += nl + 1;
                        r.mode = Mode::LineStart;
                    } else {
                        dropped += rest.len() as u64;
                        pos = data.len();
                    }
                }
            }
        }
        (pos, dropped)
    }
}

/// One stream reader's state between reads.
#[derive(Debug)]
struct Reading {
    /// The kept line being read.
    line: Vec<u8>,
    /// Part of it was past `max_line_bytes` and left out.
    cut: bool,
    mode: Mode,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LogLimits {
        LogLimits { max_lines: 3, max_bytes: 1000, max_line_bytes: 10, ..LogLimits::default() }
    }

    /// Keeps 4 lines (a burst of one second's worth), then drops.
    fn tight() -> LogLimits {
        LogLimits { lines_per_sec: 4, burst_secs: 1, max_lines: 100, ..LogLimits::default() }
    }

    fn texts(c: &Captured) -> Vec<&str> {
        c.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[tokio::test]
    async fn a_sink_gets_each_line_as_it_is_read_with_the_idle_ones_first() {
        let logs = LogCollector::new(limits());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let into = seen.clone();
        let sink = LogSink::new(move |l: &LogLine| into.lock().push(format!("{:?} {}", l.stream, l.text)));
        logs.on_line(LogStream::Stdout, "init".into());
        logs.begin("a", Some(sink));
        logs.on_line(LogStream::Stderr, "hello".into());
        assert_eq!(*seen.lock(), ["Stdout init", "Stderr hello"], "sent before the call ends");
        logs.on_line(LogStream::Stdout, format!("{END_MARKER}a"));
        let got = logs.finish("a", false, Duration::ZERO).await;
        assert_eq!(texts(&got), ["init", "hello"], "the record keeps them too");
        logs.on_line(LogStream::Stdout, "after".into());
        assert_eq!(seen.lock().len(), 2, "nothing after the call ended, and no marker");
    }

    #[tokio::test]
    async fn lines_go_to_the_invocation_in_flight_and_markers_end_it() {
        let logs = LogCollector::new(limits());
        logs.on_line(LogStream::Stdout, "init".into());
        logs.begin("a", None);
        logs.on_line(LogStream::Stdout, "hello".into());
        logs.on_line(LogStream::Stdout, format!("{END_MARKER}a"));
        logs.on_line(LogStream::Stderr, format!("{END_MARKER}a"));
        logs.on_line(LogStream::Stdout, "later".into());
        let got = logs.finish("a", true, Duration::from_secs(5)).await;
        let texts: Vec<_> = got.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["init", "hello", "later"]);
        assert!(!got.truncated);
    }

    #[tokio::test]
    async fn a_marker_after_output_without_newline_still_ends_the_invocation() {
        let logs = LogCollector::new(limits());
        logs.begin("a", None);
        logs.on_line(LogStream::Stdout, format!("partial{END_MARKER}a"));
        logs.on_line(LogStream::Stderr, format!("{END_MARKER}a"));
        let started = std::time::Instant::now();
        let got = logs.finish("a", true, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1), "waited for a marker it had already seen");
        let texts: Vec<_> = got.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["partial"]);
    }

    #[tokio::test]
    async fn keeps_the_tail_and_says_so() {
        let logs = LogCollector::new(limits());
        logs.begin("a", None);
        for i in 0..5 {
            logs.on_line(LogStream::Stdout, format!("l{i}"));
        }
        let got = logs.finish("a", false, Duration::ZERO).await;
        let texts: Vec<_> = got.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["l2", "l3", "l4"]);
        assert!(got.truncated);
    }

    #[tokio::test]
    async fn reader_cuts_long_lines_and_reads_to_eof() {
        let logs = LogCollector::new(limits());
        logs.begin("a", None);
        let data: &[u8] = b"0123456789abcdef\nshort\nno-newline";
        logs.spawn_reader(LogStream::Stderr, data);
        logs.spawn_reader(LogStream::Stdout, &b""[..]);
        // Both streams close, so finish does not wait for markers.
        let got = logs.finish("a", true, Duration::from_secs(5)).await;
        let texts: Vec<_> = got.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["0123456789", "short", "no-newline"]);
        assert_eq!(got.lines[0].stream, LogStream::Stderr);
        assert!(got.truncated, "a cut line is a truncated record");

        let logs = LogCollector::new(limits());
        logs.begin("b", None);
        logs.spawn_reader(LogStream::Stdout, &b"0123456789\nfits\n"[..]);
        let got = logs.finish("b", true, Duration::from_secs(5)).await;
        assert_eq!(got.lines.len(), 2);
        assert!(!got.truncated, "a line of exactly the cap is whole");
    }

    #[tokio::test]
    async fn output_over_the_budget_is_dropped_counted_and_markers_still_end_it() {
        let logs = LogCollector::new(tight());
        logs.begin("a", None);
        let mut flood = String::new();
        for i in 0..1000 {
            flood.push_str(&format!("line{i}\n"));
        }
        flood.push_str(&format!("no newline before the marker{END_MARKER}a\n"));
        let marker = format!("{END_MARKER}a\n");
        logs.spawn_reader(LogStream::Stdout, std::io::Cursor::new(flood.clone().into_bytes()));
        // stderr stays open (a live process): only its marker ends the wait.
        let (mut err_w, err_r) = tokio::io::duplex(1024);
        logs.spawn_reader(LogStream::Stderr, err_r);
        tokio::io::AsyncWriteExt::write_all(&mut err_w, marker.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let got = logs.finish("a", true, Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(20), "both markers were found in dropped output");
        let t = texts(&got);
        assert_eq!(t[..4], ["line0", "line1", "line2", "line3"]);
        let kept: usize = t[..4].iter().map(|l| l.len() + 1).sum();
        let dropped = flood.find(END_MARKER).unwrap() - kept;
        assert_eq!(got.dropped_bytes, dropped as u64, "every byte before the marker is kept or counted");
        assert!(got.truncated);
        assert!(t.last().unwrap().contains(&format!("{dropped} bytes of output dropped")), "{t:?}");
        drop(err_w);
    }

    #[test]
    fn a_marker_split_across_reads_is_still_found_while_dropping() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _inside = rt.enter();
        let logs = LogCollector::new(tight());
        logs.begin("a", None);
        let mut r = Reading { line: Vec::new(), cut: false, mode: Mode::Drop { resume: false } };
        let whole = format!("xxxx{END_MARKER}a\nyy");
        let cut = whole.find("end").unwrap();
        let (used, dropped) = logs.split(LogStream::Stdout, &whole.as_bytes()[..cut], &mut r, false);
        assert_eq!((used, dropped), (4, 4), "the marker's start is carried to the next read");
        let rest = &whole.as_bytes()[used..];
        let (used, _) = logs.split(LogStream::Stdout, rest, &mut r, false);
        assert_eq!(used, rest.len());
        assert_eq!(logs.state.lock().inflight["a"].ends, 1, "the marker was seen");
        // Not a marker: an RS in dropped output is just dropped.
        let mut r = Reading { line: Vec::new(), cut: false, mode: Mode::Drop { resume: false } };
        let (used, dropped) = logs.split(LogStream::Stdout, b"ab\x1enot-a-marker\ncd", &mut r, true);
        assert_eq!((used, dropped), (18, 16), "the rest is a kept line once the budget allows");
    }

    #[test]
    fn the_budget_refills_over_time_and_draining_is_paced() {
        let limits = tight();
        let t0 = Instant::now();
        let mut b = Budget::full(&limits);
        b.at = t0;
        for _ in 0..4 {
            assert!(b.allows(&limits, t0));
            b.charge(10);
        }
        assert!(!b.allows(&limits, t0), "the burst is spent");
        assert!(b.allows(&limits, t0 + Duration::from_millis(250)), "a quarter second buys one line");
        let mut d = Drain { allowance: 0.0, at: t0 };
        let rate = 1000;
        assert_eq!(d.take(500, rate, t0), Some(Duration::from_millis(500)));
        assert_eq!(d.take(0, rate, t0 + Duration::from_secs(10)), None, "caught up, with a small reserve");
    }
}
