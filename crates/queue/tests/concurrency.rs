//! Many enqueuers and several dispatchers at once on one queue: every
//! acknowledged enqueue is stored exactly once, and without a crash every
//! item is delivered exactly once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flick_core::{Cause, Invocation};
use flick_queue::{EnqueueOptions, Enqueued, Queue, SqliteQueue};

const ENQUEUERS: usize = 64;
const PER_ENQUEUER: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_enqueue_is_stored_and_delivered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let q = SqliteQueue::open(&path).unwrap();
    let functions = ["a", "b", "c"];

    let enqueuers: Vec<_> = (0..ENQUEUERS)
        .map(|t| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..PER_ENQUEUER {
                    let f = functions[(t + n) % functions.len()];
                    let inv = Invocation::post(f, Cause::Async, format!("{t}/{n}").into_bytes());
                    let id = inv.id.clone();
                    assert_eq!(q.enqueue(inv, EnqueueOptions::default()).await.unwrap(), Enqueued::New(id.clone()));
                    ids.push((f, id, format!("{t}/{n}")));
                }
                ids
            })
        })
        .collect();
    // Dispatchers lease and ack while the enqueuers run.
    let dispatchers: Vec<_> = functions
        .iter()
        .flat_map(|f| [f, f])
        .map(|&f| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 200 {
                    let items = q.lease(f, 32, Duration::from_secs(3600)).await.unwrap();
                    if items.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    idle = 0;
                    for item in items {
                        assert_eq!(item.invocation.function, f);
                        assert!(q.ack(item.id()).await.unwrap(), "a leased item acks once");
                        got.push((item.id().clone(), String::from_utf8(item.invocation.body).unwrap()));
                    }
                }
                got
            })
        })
        .collect();

    let mut accepted = HashMap::new();
    for e in enqueuers {
        for (f, id, body) in e.await.unwrap() {
            assert!(accepted.insert(id, (f, body)).is_none());
        }
    }
    assert_eq!(accepted.len(), ENQUEUERS * PER_ENQUEUER);
    let mut delivered = HashSet::new();
    for d in dispatchers {
        for (id, body) in d.await.unwrap() {
            assert_eq!(accepted.get(&id).map(|(_, b)| b.as_str()), Some(body.as_str()), "delivered what was enqueued");
            assert!(delivered.insert(id), "delivered twice without a crash");
        }
    }
    // What the dispatchers did not get (they gave up after ~1 s idle) is still stored.
    let rest: Vec<_> = accepted.keys().filter(|id| !delivered.contains(*id)).collect();
    for id in &rest {
        assert!(q.item(id).await.unwrap().is_some(), "{id} lost");
    }
    let total: u64 = {
        let mut n = 0;
        for f in functions {
            n += q.depth(f).await.unwrap().queued();
        }
        n
    };
    assert_eq!(total as usize, rest.len());
    drop(q);
    // The file agrees with the counts: each id once.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored: i64 = conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0)).unwrap();
    assert_eq!(stored as usize, rest.len());
}
