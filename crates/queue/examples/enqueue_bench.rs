//! Accept-rate microbenchmark of the durable queue (run by `bench/queue.py`):
//! accepted enqueues per second at several numbers of concurrent enqueuers,
//! every one committed with `synchronous = FULL`, and in the same run the
//! baselines of plain SQLite with the same settings: one fsync'd
//! transaction per row, and rows in transactions of 100. Then the backlog
//! of the last measurement is drained by `--drain-workers` tasks (64)
//! leasing 4 items at a time and acking each: the queue's own drain rate.
//!
//! ```text
//! cargo run --release -p flick-queue --example enqueue_bench -- \
//!     [--seconds 3] [--concurrency 1,16,256] [--dir /tmp] [--body 128] [--drain-workers 64]
//! ```
//!
//! Prints one JSON object per measurement on stdout (for the harness) and a
//! table on stderr. Measures only: nothing here asserts on a time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flick_core::{Cause, Invocation};
use flick_queue::{EnqueueOptions, Queue, SqliteQueue, WriterStats};

struct Args {
    seconds: f64,
    concurrency: Vec<usize>,
    dir: PathBuf,
    body: usize,
    drain_workers: usize,
}

fn parse_args() -> Args {
    let mut args =
        Args { seconds: 3.0, concurrency: vec![1, 16, 256], dir: std::env::temp_dir(), body: 128, drain_workers: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse().expect("--seconds: a number"),
            "--concurrency" => {
                args.concurrency = value.split(',').map(|c| c.trim().parse().expect("--concurrency: numbers")).collect()
            }
            "--dir" => args.dir = PathBuf::from(value),
            "--body" => args.body = value.parse().expect("--body: bytes"),
            "--drain-workers" => args.drain_workers = value.parse().expect("--drain-workers: a number"),
            other => panic!("unknown flag {other} (--seconds, --concurrency, --dir, --body, --drain-workers)"),
        }
    }
    args
}

/// An async call as the API would store it: a JSON body and a few headers.
fn invocation(body: usize, n: u64) -> Invocation {
    let mut payload = format!("{{\"n\":{n},\"pad\":\"");
    payload.extend(std::iter::repeat_n('x', body.saturating_sub(payload.len() + 2)));
    payload.push_str("\"}");
    let mut inv = Invocation::post("bench", Cause::Async, payload.into_bytes());
    inv.headers.extend([
        ("user-agent".into(), "enqueue-bench/1".into()),
        ("accept".into(), "*/*".into()),
        ("x-request-id".into(), format!("{n:016x}")),
    ]);
    inv
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(
    what: &str,
    concurrency: usize,
    accepted: u64,
    elapsed: Duration,
    mut latencies_us: Vec<u64>,
    stats: WriterStats,
) {
    latencies_us.sort_unstable();
    let rate = accepted as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (percentile(&latencies_us, 0.5), percentile(&latencies_us, 0.99));
    let batches = stats.batches.max(1) as f64;
    let (group, busy, commit) =
        (stats.requests as f64 / batches, stats.busy_us as f64 / batches, stats.commit_us as f64 / batches);
    println!(
        "{{\"what\":\"{what}\",\"concurrency\":{concurrency},\"accepted\":{accepted},\"seconds\":{:.3},\"per_s\":{rate:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"commits\":{},\"group\":{group:.1},\"batch_us\":{busy:.0},\"commit_us\":{commit:.0}}}",
        elapsed.as_secs_f64(),
        stats.batches
    );
    eprintln!(
        "{what:<28} {concurrency:>5} {rate:>9.0}/s  p50 {p50:>6} µs  p99 {p99:>6} µs  {group:>6.1}/commit  batch {busy:>6.0} µs (commit {commit:>6.0})"
    );
}

/// Plain SQLite, same journal and sync settings as the queue: `batch` rows
/// per transaction, one connection, for `seconds`.
fn baseline(dir: &Path, batch: usize, seconds: f64, body: usize) {
    let path = dir.join(format!("baseline-{batch}.db"));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(())).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE items (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, function TEXT NOT NULL,
                             due_ms INTEGER NOT NULL, invocation TEXT NOT NULL, body BLOB NOT NULL)",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let (mut rows, mut latencies, mut commit_us) = (0u64, Vec::new(), 0u64);
    while Instant::now() < deadline {
        let t = Instant::now();
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..batch {
            let mut inv = invocation(body, rows);
            let body = std::mem::take(&mut inv.body);
            let json = serde_json::to_string(&inv).unwrap();
            tx.prepare_cached("INSERT INTO items (id, function, due_ms, invocation, body) VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap()
                .execute(rusqlite::params![inv.id.as_str(), inv.function, inv.accepted_ms, json, body])
                .unwrap();
            rows += 1;
        }
        let committing = Instant::now();
        tx.commit().unwrap();
        latencies.push(t.elapsed().as_micros() as u64);
        commit_us += committing.elapsed().as_micros() as u64;
    }
    let what = if batch == 1 { "sqlite, 1 row per commit" } else { "sqlite, 100 rows per commit" };
    let commits = latencies.len() as u64;
    let busy_us = latencies.iter().sum();
    let stats = WriterStats { batches: commits, requests: rows, busy_us, commit_us };
    report(what, 1, rows, start.elapsed(), latencies, stats);
}

/// `concurrency` tasks enqueueing into a fresh queue for `seconds`.
async fn queue(dir: &Path, run: usize, concurrency: usize, seconds: f64, body: usize) {
    let q = SqliteQueue::open(&dir.join(format!("queue-{run}-{concurrency}.db"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let q = q.clone();
            tokio::spawn(async move {
                let (mut n, mut latencies) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let inv = invocation(body, (t as u64) << 32 | n);
                    let started = Instant::now();
                    q.enqueue(inv, EnqueueOptions::default()).await.unwrap();
                    latencies.push(started.elapsed().as_micros() as u64);
                    n += 1;
                }
                (n, latencies)
            })
        })
        .collect();
    let (mut accepted, mut latencies) = (0, Vec::new());
    for t in tasks {
        let (n, l) = t.await.unwrap();
        accepted += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed();
    // Everything counted is in the file (it was acknowledged).
    assert_eq!(q.depth("bench").await.unwrap().ready, accepted);
    report("flick-queue enqueue", concurrency, accepted, elapsed, latencies, q.writer_stats());
}

/// `workers` tasks each leasing 4 items at a time and acking each, on the
/// backlog `queue` left in `file`, for `seconds` or until it is empty: the
/// queue's own ceiling for draining (no function runs).
async fn drain(file: &Path, workers: usize, seconds: f64) {
    let q = SqliteQueue::open(file).unwrap();
    let backlog = q.depth("bench").await.unwrap().ready;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let (mut n, mut latencies) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let items = q.lease("bench", 4, Duration::from_secs(600)).await.unwrap();
                    if items.is_empty() {
                        break;
                    }
                    for item in items {
                        assert!(q.ack(item.id()).await.unwrap());
                        n += 1;
                    }
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                (n, latencies)
            })
        })
        .collect();
    let (mut acked, mut latencies) = (0, Vec::new());
    for t in tasks {
        let (n, l) = t.await.unwrap();
        acked += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed();
    eprintln!("drain: {acked} of a backlog of {backlog} leased and acked");
    report("flick-queue lease 4 + 4 acks", workers, acked, elapsed, latencies, q.writer_stats());
}

fn main() {
    let args = parse_args();
    let scratch = tempfile::Builder::new().prefix("queue-bench-").tempdir_in(&args.dir).unwrap();
    eprintln!("scratch {} (synchronous = FULL, WAL), {} s per measurement", scratch.path().display(), args.seconds);
    baseline(scratch.path(), 1, args.seconds, args.body);
    baseline(scratch.path(), 100, args.seconds, args.body);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for (run, &c) in args.concurrency.iter().enumerate() {
        rt.block_on(queue(scratch.path(), run, c, args.seconds, args.body));
    }
    if args.drain_workers > 0
        && let Some((run, &c)) = args.concurrency.iter().enumerate().next_back()
    {
        let file = scratch.path().join(format!("queue-{run}-{c}.db"));
        rt.block_on(drain(&file, args.drain_workers, args.seconds));
    }
}
