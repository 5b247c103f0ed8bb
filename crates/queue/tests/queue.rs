//! `SqliteQueue` against real SQLite files in temp dirs: the trait's
//! contract (`flick_queue::conformance`), then what is its own: restarts,
//! file modes, schema versions, corrupt rows, a full disk, the clock, the
//! dead-letter bound, operations over every function.

use std::sync::Arc;
use std::time::Duration;

use flick_core::{Cause, Invocation, now_ms};
use flick_queue::{AttemptError, EnqueueOptions, ItemState, Queue, QueueConfig, QueueError, SqliteQueue};

fn inv(function: &str, body: &[u8]) -> Invocation {
    let mut inv = Invocation::post(function, Cause::Async, body.to_vec());
    inv.headers.push(("x-test".into(), "yes".into()));
    inv
}

fn open(dir: &tempfile::TempDir) -> SqliteQueue {
    SqliteQueue::open(&dir.path().join("queue.db")).unwrap()
}

fn opts() -> EnqueueOptions {
    EnqueueOptions::default()
}

fn err(message: &str) -> AttemptError {
    AttemptError { message: message.into(), status: "error".into(), ..AttemptError::default() }
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_keeps_the_queue_contract() {
    let dir = tempfile::tempdir().unwrap();
    let q: Arc<dyn Queue> = Arc::new(open(&dir));
    flick_queue::conformance::run(q, flick_queue::conformance::Settings::default()).await;
}

#[tokio::test]
async fn dead_letters_of_every_function_redrive_and_purge_together() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let i = inv("f", b"payload");
    let id = i.id.clone();
    q.enqueue(i, opts()).await.unwrap();
    q.lease("f", 1, LEASE).await.unwrap();
    q.nack(&id, 0, err("one")).await.unwrap();
    q.lease("f", 1, LEASE).await.unwrap();
    assert!(q.dead(&id, err("two")).await.unwrap());
    assert!(!q.dead(&id, err("three")).await.unwrap(), "already dead");
    assert!(!q.ack(&id).await.unwrap(), "dead letters are not acked");
    assert!(q.lease("f", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(q.next_due_ms().await.unwrap(), None);
    assert_eq!(q.depth("f").await.unwrap().dead, 1);
    let dead = q.items(Some("f"), Some(ItemState::Dead), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].dead_ms.is_some());
    assert_eq!(dead[0].errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["one", "two"]);

    assert!(q.redrive(&id).await.unwrap());
    assert!(!q.redrive(&id).await.unwrap(), "no longer dead");
    let again = q.lease("f", 1, LEASE).await.unwrap();
    assert_eq!(again[0].invocation.attempt, 1);
    assert_eq!(again[0].invocation.cause, Cause::Redrive);
    assert_eq!(again[0].invocation.body, b"payload");
    assert_eq!(again[0].errors.len(), 2, "the history is kept");
    q.dead(&id, err("three")).await.unwrap();

    // redrive_all and purge_dead, per function and for all.
    let other = inv("g", b"");
    let other_id = other.id.clone();
    q.enqueue(other, opts()).await.unwrap();
    q.dead(&other_id, err("x")).await.unwrap();
    assert_eq!(q.redrive_all(Some("g")).await.unwrap(), 1);
    assert_eq!(q.depth("g").await.unwrap().ready, 1);
    assert_eq!(q.depth("f").await.unwrap().dead, 1);
    q.dead(&other_id, err("y")).await.unwrap();
    assert_eq!(q.redrive_all(None).await.unwrap(), 2);
    q.dead(&id, err("z")).await.unwrap();
    q.dead(&other_id, err("z")).await.unwrap();
    assert_eq!(q.purge_dead(Some("f")).await.unwrap(), 1);
    assert_eq!(q.purge_dead(None).await.unwrap(), 1);
    assert_eq!(q.depth("f").await.unwrap(), Default::default());
    assert_eq!(q.depth("g").await.unwrap(), Default::default());
}

#[tokio::test]
async fn dead_letter_list_is_bounded_per_function_oldest_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig { max_dead_per_function: 3, ..QueueConfig::default() };
    let q = SqliteQueue::open_with(&dir.path().join("queue.db"), config).unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let i = inv("f", b"");
        ids.push(i.id.clone());
        q.enqueue(i, opts()).await.unwrap();
    }
    for id in &ids {
        assert!(q.dead(id, err("x")).await.unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let dead = q.items(Some("f"), Some(ItemState::Dead), 100).await.unwrap();
    assert_eq!(dead.iter().map(|i| i.id().clone()).collect::<Vec<_>>(), ids[2..]);
    assert_eq!(q.depth("f").await.unwrap().dead, 3);
}

#[tokio::test]
async fn reopening_makes_leased_items_ready_and_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let (leased_id, dead_id, retry_id);
    {
        let q = SqliteQueue::open(&path).unwrap();
        let a = inv("f", b"a");
        leased_id = a.id.clone();
        q.enqueue(a, opts()).await.unwrap();
        q.lease("f", 1, LEASE).await.unwrap();
        let b = inv("f", b"b");
        dead_id = b.id.clone();
        q.enqueue(b, opts()).await.unwrap();
        q.dead(&dead_id, err("x")).await.unwrap();
        let c = inv("g", b"c");
        retry_id = c.id.clone();
        q.enqueue(c, opts()).await.unwrap();
        q.nack(&retry_id, now_ms() + 3_600_000, err("later")).await.unwrap();
        assert!(matches!(SqliteQueue::open(&path), Err(QueueError::Locked { .. })), "one process per queue");
    }
    let q = SqliteQueue::open(&path).unwrap();
    let depth = q.depth("f").await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.dead), (1, 0, 1));
    let item = q.item(&leased_id).await.unwrap().unwrap();
    assert_eq!(item.state, ItemState::Ready);
    assert_eq!(item.deliveries, 1);
    assert_eq!(q.lease("f", 10, LEASE).await.unwrap()[0].id(), &leased_id);
    assert_eq!(q.item(&dead_id).await.unwrap().unwrap().state, ItemState::Dead);
    let retry = q.item(&retry_id).await.unwrap().unwrap();
    assert_eq!((retry.state, retry.invocation.attempt), (ItemState::Ready, 2));
}

#[tokio::test]
async fn the_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    q.enqueue(inv("f", b"secret"), opts()).await.unwrap();
    for name in ["queue.db", "queue.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
}

#[tokio::test]
async fn listings_filter_by_function_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let mut ids = Vec::new();
    for f in ["a", "b", "a"] {
        let i = inv(f, b"");
        ids.push(i.id.clone());
        q.enqueue(i, opts()).await.unwrap();
    }
    q.lease("b", 1, LEASE).await.unwrap();
    let all = q.items(None, None, 10).await.unwrap();
    assert_eq!(all.iter().map(|i| i.id().clone()).collect::<Vec<_>>(), ids);
    assert_eq!(q.items(Some("a"), None, 10).await.unwrap().len(), 2);
    assert_eq!(q.items(None, Some(ItemState::Leased), 10).await.unwrap()[0].id(), &ids[1]);
    assert_eq!(q.items(None, Some(ItemState::Ready), 10).await.unwrap().len(), 2);
    assert_eq!(q.items(Some("a"), Some(ItemState::Ready), 1).await.unwrap().len(), 1);
    assert!(q.items(None, Some(ItemState::Dead), 10).await.unwrap().is_empty());
    assert_eq!(q.items(None, None, 0).await.unwrap().len(), 1, "limit is at least 1");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    drop(SqliteQueue::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(SqliteQueue::open(&path), Err(QueueError::SchemaTooNew { found: 99, .. })));
}

#[tokio::test]
async fn a_corrupt_item_goes_to_the_dead_letter_list_instead_of_blocking_its_function() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let bad = inv("f", b"");
    let good = inv("f", b"");
    {
        let q = SqliteQueue::open(&path).unwrap();
        q.enqueue(bad.clone(), opts()).await.unwrap();
        q.enqueue(good.clone(), opts()).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE items SET invocation = '{not json' WHERE id = ?1", [bad.id.as_str()]).unwrap();
    drop(conn);
    let q = SqliteQueue::open(&path).unwrap();
    let leased = q.lease("f", 10, LEASE).await.unwrap();
    assert_eq!(leased.iter().map(|i| i.id().clone()).collect::<Vec<_>>(), vec![good.id.clone()]);
    let depth = q.depth("f").await.unwrap();
    assert_eq!((depth.ready, depth.leased, depth.dead), (0, 1, 1));
    match q.item(&bad.id).await {
        Err(QueueError::Corrupt { what, .. }) => assert!(what.contains(bad.id.as_str()), "{what}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(q.purge_dead(Some("f")).await.unwrap(), 1);
}

#[tokio::test]
async fn a_full_disk_refuses_with_nothing_acknowledged_and_recovers_when_space_is_freed() {
    // SQLite's page cap fails writes with SQLITE_FULL exactly as a full
    // file system does, without needing one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let config = QueueConfig { max_bytes: Some(256 * 1024), ..QueueConfig::default() };
    let q = SqliteQueue::open_with(&path, config).unwrap();
    let body = vec![b'x'; 2000];
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    // Concurrent enqueuers, so refusals land inside batches with others.
    for _ in 0..20 {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let q = q.clone();
                let i = inv("f", &body);
                tokio::spawn(async move { (i.id.clone(), q.enqueue(i, opts()).await) })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (id, Ok(_)) => accepted.push(id),
                (id, Err(e)) => {
                    assert!(e.is_disk_full(), "{e}");
                    assert!(e.is_transient());
                    assert!(matches!(e, QueueError::DiskFull { .. }), "{e:?}");
                    refused.push(id);
                }
            }
        }
    }
    assert!(!accepted.is_empty() && !refused.is_empty(), "{} accepted, {} refused", accepted.len(), refused.len());
    assert_eq!(q.depth("f").await.unwrap().ready, accepted.len() as u64, "counts only what was stored");
    // Acks free room: accepting works again.
    for id in &accepted[..accepted.len() / 2] {
        assert!(q.ack(id).await.unwrap());
    }
    q.enqueue(inv("f", &body), opts()).await.unwrap();
    drop(q);
    let q = SqliteQueue::open(&path).unwrap();
    for id in &accepted[accepted.len() / 2..] {
        assert!(q.item(id).await.unwrap().is_some(), "accepted {id} lost");
    }
    for id in &refused {
        assert!(q.item(id).await.unwrap().is_none(), "refused {id} was stored");
    }
}

#[tokio::test]
async fn items_accepted_before_the_clock_stepped_back_are_not_held_back() {
    // Simulated by stamping stored items an hour ahead of the wall clock,
    // as if they were accepted before the system clock was set back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let early = inv("f", b"");
    {
        let q = SqliteQueue::open(&path).unwrap();
        q.enqueue(early.clone(), opts()).await.unwrap();
    }
    let ahead = now_ms() + 3_600_000;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE items SET due_ms = ?1, not_before_ms = ?1, enqueued_ms = ?1", [ahead]).unwrap();
    drop(conn);
    let q = SqliteQueue::open(&path).unwrap();
    let later = inv("f", b"");
    q.enqueue(later.clone(), opts()).await.unwrap();
    assert_eq!(q.ready_functions().await.unwrap(), vec![("f".to_string(), 2)]);
    let leased = q.lease("f", 10, LEASE).await.unwrap();
    assert_eq!(leased.iter().map(|i| i.id().clone()).collect::<Vec<_>>(), vec![early.id, later.id]);
    assert!(leased[1].enqueued_ms >= ahead, "the queue's time does not go back");
}

#[tokio::test]
async fn the_queue_clock_does_not_stand_still_for_more_than_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let far = inv("f", b"");
    {
        let q = SqliteQueue::open(&path).unwrap();
        q.enqueue(far.clone(), opts()).await.unwrap();
    }
    let years_ahead = now_ms() + 3 * 365 * 24 * 3_600_000;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE items SET due_ms = ?1, not_before_ms = ?1, enqueued_ms = ?1", [years_ahead]).unwrap();
    drop(conn);
    let q = SqliteQueue::open(&path).unwrap();
    // A retry an hour from now stays an hour from now.
    let fresh = inv("f", b"");
    q.enqueue(fresh.clone(), opts()).await.unwrap();
    assert!(q.nack(&fresh.id, now_ms() + 3_600_000, err("later")).await.unwrap());
    assert!(q.lease("f", 10, LEASE).await.unwrap().is_empty(), "neither is due by the wall clock");
}

#[tokio::test]
async fn stored_json_leaves_out_column_fields_and_full_json_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let mut full = inv("f", b"body");
    full.trigger = Some("t".into());
    let compact = inv("f", b"");
    {
        let q = SqliteQueue::open(&path).unwrap();
        q.enqueue(full.clone(), opts()).await.unwrap();
        q.enqueue(compact.clone(), opts()).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored: String =
        conn.query_row("SELECT invocation FROM items WHERE id = ?1", [compact.id.as_str()], |r| r.get(0)).unwrap();
    assert!(!stored.contains(compact.id.as_str()) && !stored.contains("null"), "{stored}");
    // A row as the first version of the queue wrote it: the whole invocation.
    let mut legacy = full.clone();
    legacy.body = Vec::new();
    conn.execute(
        "UPDATE items SET invocation = ?2 WHERE id = ?1",
        [full.id.as_str(), &serde_json::to_string(&legacy).unwrap()],
    )
    .unwrap();
    drop(conn);
    let q = SqliteQueue::open(&path).unwrap();
    assert_eq!(q.item(&full.id).await.unwrap().unwrap().invocation, full);
    assert_eq!(q.item(&compact.id).await.unwrap().unwrap().invocation, compact);
}
