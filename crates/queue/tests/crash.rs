//! SIGKILL at a random moment loses no acknowledged item.
//!
//! The child is this test binary run again (`crash_child`, selected by the
//! `FLICK_QUEUE_CRASH_CHILD` environment variable naming the queue file):
//! it enqueues from many tasks as fast as it can and prints each id whose
//! enqueue returned `Ok` (`E id`), while a dispatcher leases items (`L id`)
//! and acks some (`a id` before asking, `A id` once acknowledged), nacks
//! others to an hour later (`n`/`N`) and leaves the rest leased. The parent
//! kills it with SIGKILL at a random moment, several rounds on one file, and
//! after each reopens the queue and checks: every id printed `E`, `L` or `N`
//! is there unless it was being acked; every `A` id is gone; every `N` id
//! kept its counted attempt; nothing is left leased (the dead process's
//! leases are ready again).

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flick_core::{ActivationId, Cause, Invocation, now_ms};
use flick_queue::{AttemptError, EnqueueOptions, ItemState, Queue, SqliteQueue};

const CHILD_ENV: &str = "FLICK_QUEUE_CRASH_CHILD";
const FUNCTION: &str = "crash";
const ROUNDS: u64 = 5;

/// The child's role: runs only when the parent asks for it.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let q = SqliteQueue::open(Path::new(&path)).unwrap();
        for _ in 0..32 {
            let q = q.clone();
            tokio::spawn(async move {
                loop {
                    let inv = Invocation::post(FUNCTION, Cause::Async, b"{\"crash\":true}".to_vec());
                    let id = inv.id.clone();
                    q.enqueue(inv, EnqueueOptions::default()).await.unwrap();
                    println!("E {id}");
                }
            });
        }
        let mut n = 0u64;
        // Bounded: the parent kills it long before.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < give_up {
            for item in q.lease(FUNCTION, 16, Duration::from_secs(3600)).await.unwrap() {
                let id = item.id().clone();
                println!("L {id}");
                n += 1;
                match n % 3 {
                    0 => {
                        println!("a {id}");
                        assert!(q.ack(&id).await.unwrap());
                        println!("A {id}");
                    }
                    1 => {
                        println!("n {id}");
                        let error = AttemptError { message: "crash test".into(), ..AttemptError::default() };
                        assert!(q.nack(&id, now_ms() + 3_600_000, error).await.unwrap());
                        println!("N {id}");
                    }
                    _ => {} // left leased
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

#[derive(Default)]
struct Seen {
    present: HashSet<String>,
    acking: HashSet<String>,
    acked: HashSet<String>,
    nacked: HashSet<String>,
}

impl Seen {
    fn line(&mut self, line: &str) {
        let Some((tag, id)) = line.split_once(' ') else { return };
        if ActivationId::parse(id).is_none() {
            return;
        }
        let id = id.to_string();
        match tag {
            "E" | "L" | "n" => {
                self.present.insert(id);
            }
            "N" => {
                self.present.insert(id.clone());
                self.nacked.insert(id);
            }
            "a" => {
                self.acking.insert(id);
            }
            "A" => {
                self.acked.insert(id);
            }
            _ => {}
        }
    }
}

/// Runs the child until its first acknowledged enqueue, lets it run a
/// random while longer, kills it, and feeds every complete line to `seen`.
fn run_and_kill(path: &Path, round: u64, seen: &mut Seen) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match out.read_until(b'\n', &mut buf) {
                // A line cut by the kill (no newline) was never fully printed: not counted.
                Ok(0) | Err(_) => break,
                Ok(_) if buf.last() == Some(&b'\n') => {
                    if tx.send(String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line =
            rx.recv_timeout(Duration::from_secs(120)).expect("the child acknowledged no enqueue within 2 minutes");
        let first = line.starts_with("E ");
        lines.push(line);
        if first {
            break;
        }
    }
    let delay_ms = 20 + std::collections::hash_map::RandomState::new().hash_one(round) % 400;
    std::thread::sleep(Duration::from_millis(delay_ms));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    for line in &lines {
        seen.line(line);
    }
    eprintln!("round {round}: killed after {delay_ms} ms, {} lines", lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_a_random_moment_loses_no_acknowledged_item() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let mut seen = Seen::default();
    let mut leased_at_kill = 0;
    for round in 0..ROUNDS {
        let p = path.clone();
        let mut s = std::mem::take(&mut seen);
        seen = tokio::task::spawn_blocking(move || {
            run_and_kill(&p, round, &mut s);
            s
        })
        .await
        .unwrap();
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            leased_at_kill +=
                conn.query_row("SELECT count(*) FROM items WHERE state = 1", [], |r| r.get::<_, i64>(0)).unwrap();
        }
        let q = SqliteQueue::open(&path).unwrap();
        let depth = q.depth(FUNCTION).await.unwrap();
        assert_eq!(depth.leased, 0, "round {round}: leases of the killed process are ready again");
        let mut lost = Vec::new();
        for id in seen.present.difference(&seen.acking) {
            let item = q.item(&ActivationId::parse(id).unwrap()).await.unwrap();
            match item {
                None => lost.push(id.clone()),
                Some(item) => {
                    assert_eq!(item.state, ItemState::Ready, "round {round}: {id}");
                    if seen.nacked.contains(id) {
                        assert!(item.invocation.attempt >= 2, "round {round}: nack of {id} was acknowledged but lost");
                    }
                }
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged items lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        for id in &seen.acked {
            assert!(
                q.item(&ActivationId::parse(id).unwrap()).await.unwrap().is_none(),
                "round {round}: acked {id} is back"
            );
        }
        // What the file holds is exactly what was never acked.
        let stored = q.depth(FUNCTION).await.unwrap().queued();
        assert!(stored >= (seen.present.len() - seen.present.intersection(&seen.acking).count()) as u64);
    }
    assert!(!seen.present.is_empty());
    assert!(leased_at_kill > 0, "no round killed the child while it held leases: the test proved less than it says");
    eprintln!(
        "{} acknowledged enqueues, {} acks, {} nacks, {} leases held at the kills: none lost",
        seen.present.len(),
        seen.acked.len(),
        seen.nacked.len(),
        leased_at_kill
    );
}
