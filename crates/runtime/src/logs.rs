//! Capture of what instances write to stdout and stderr, attributed to the
//! invocations that were in flight when it was written.
//!
//! Bootstraps end each invocation's output with a marker line on both
//! streams, so once both markers are read every line of that invocation has
//! been read too (a pipe keeps order). Lines written while nothing is in
//! flight (module import, server start-up) are kept and handed to the next
//! invocation, as Lambda shows INIT output with the first call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flick_core::{LogLine, LogStream, now_ms};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Notify;

/// The marker a bootstrap writes after an invocation's output: RS, then `flick-end <id>`.
pub const END_MARKER: &str = "\u{1e}flick-end ";

/// Caps of what one activation keeps: the tail, like Lambda's log tail.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
    /// Longer lines are cut (a process printing without newlines cannot
    /// make flick buffer without bound).
    pub max_line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self { max_lines: 1000, max_bytes: 64 << 10, max_line_bytes: 8 << 10 }
    }
}

/// The log lines of one invocation.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub lines: Vec<LogLine>,
    pub truncated: bool,
}

#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<LogLine>,
    bytes: usize,
    truncated: bool,
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

    fn into_captured(self) -> Captured {
        Captured { lines: self.lines.into(), truncated: self.truncated }
    }
}

#[derive(Debug, Default)]
struct State {
    inflight: HashMap<String, (Tail, u8)>,
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
}

impl LogCollector {
    pub fn new(limits: LogLimits) -> Self {
        Self { state: Arc::default(), notify: Arc::new(Notify::new()), limits }
    }

    /// Starts attributing lines to `id`, handing it what was written while idle.
    pub fn begin(&self, id: &str) {
        let mut st = self.state.lock().unwrap();
        let idle = std::mem::take(&mut st.idle);
        st.inflight.insert(id.to_string(), (idle, 0));
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
                    let st = self.state.lock().unwrap();
                    st.closed >= st.open || st.inflight.get(id).is_none_or(|(_, ends)| *ends >= 2)
                };
                if done || tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        let mut st = self.state.lock().unwrap();
        st.inflight.remove(id).map(|(t, _)| t.into_captured()).unwrap_or_default()
    }

    /// Everything not attributed to an invocation (e.g. output of an
    /// instance that failed to start).
    pub fn take_idle(&self) -> Captured {
        std::mem::take(&mut self.state.lock().unwrap().idle).into_captured()
    }

    fn on_line(&self, stream: LogStream, mut text: String) {
        // Output without a final newline runs into the marker: split it off.
        if let Some(at) = text.find(END_MARKER).filter(|at| *at > 0) {
            let marker = text.split_off(at);
            self.on_line(stream, text);
            return self.on_line(stream, marker);
        }
        let mut st = self.state.lock().unwrap();
        if let Some(id) = text.strip_prefix(END_MARKER) {
            if let Some((_, ends)) = st.inflight.get_mut(id.trim_end()) {
                *ends += 1;
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
            if let Some((tail, _)) = st.inflight.values_mut().next() {
                tail.push(line, &limits);
            }
        } else {
            // Concurrent invocations in one instance share its streams; the
            // line may belong to any of them, so each keeps it.
            for (tail, _) in st.inflight.values_mut() {
                tail.push(line.clone(), &limits);
            }
        }
    }

    fn on_close(&self) {
        self.state.lock().unwrap().closed += 1;
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

    /// Reads `reader` line by line until EOF, feeding the collector.
    pub fn spawn_reader<R>(&self, stream: LogStream, reader: R)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        self.state.lock().unwrap().open += 1;
        let this = self.clone();
        tokio::spawn(async move {
            let max = this.limits.max_line_bytes;
            let mut reader = BufReader::with_capacity(16 << 10, reader);
            let mut line: Vec<u8> = Vec::new();
            loop {
                let buf = match reader.fill_buf().await {
                    Ok([]) | Err(_) => break,
                    Ok(buf) => buf,
                };
                let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (&buf[..i], Some(i + 1)),
                    None => (buf, None),
                };
                // Past the cap the rest of the line is dropped, not buffered.
                let room = max.saturating_sub(line.len());
                line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                let used = newline.unwrap_or(buf.len());
                reader.consume(used);
                if newline.is_some() {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    line.clear();
                    this.on_line(stream, text);
                }
            }
            if !line.is_empty() {
                this.on_line(stream, String::from_utf8_lossy(&line).into_owned());
            }
            this.on_close();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LogLimits {
        LogLimits { max_lines: 3, max_bytes: 1000, max_line_bytes: 10 }
    }

    #[tokio::test]
    async fn lines_go_to_the_invocation_in_flight_and_markers_end_it() {
        let logs = LogCollector::new(limits());
        logs.on_line(LogStream::Stdout, "init".into());
        logs.begin("a");
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
        logs.begin("a");
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
        logs.begin("a");
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
        logs.begin("a");
        let data: &[u8] = b"0123456789abcdef\nshort\nno-newline";
        logs.spawn_reader(LogStream::Stderr, data);
        logs.spawn_reader(LogStream::Stdout, &b""[..]);
        // Both streams close, so finish does not wait for markers.
        let got = logs.finish("a", true, Duration::from_secs(5)).await;
        let texts: Vec<_> = got.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["0123456789", "short", "no-newline"]);
        assert_eq!(got.lines[0].stream, LogStream::Stderr);
    }
}
