//! Every method of `SqliteQueue` against a real SQLite file in a temp dir.

use std::time::Duration;

use flick_core::{ActivationId, Cause, Invocation, now_ms};
use flick_queue::{AttemptError, EnqueueOptions, Enqueued, ItemState, Queue, QueueConfig, QueueError, SqliteQueue};

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

#[tokio::test]
async fn enqueue_lease_ack_round_trip_keeps_the_invocation_whole() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let body: Vec<u8> = (0..=255u8).collect();
    let mut first = inv("f", &body);
    first.trigger = Some("every-10s".into());
    first.callback_url = Some("http://127.0.0.1:9/cb".into());
    let id = first.id.clone();
    assert_eq!(q.enqueue(first.clone(), opts()).await.unwrap(), Enqueued::New(id.clone()));
    assert_eq!(q.depth("f").await.unwrap().ready, 1);

    let item = q.item(&id).await.unwrap().unwrap();
    assert_eq!(item.invocation, first);
    assert_eq!(item.state, ItemState::Ready);
    assert_eq!(item.max_attempts, 3);

    let leased = q.lease("f", 10, LEASE).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].invocation, first);
    assert_eq!(leased[0].state, ItemState::Leased);
    assert_eq!(leased[0].deliveries, 1);
    assert!(leased[0].lease_until_ms.unwrap() >= now_ms() + 50_000);
    let depth = q.depth("f").await.unwrap();
    assert_eq!((depth.ready, depth.leased), (0, 1));
    // Leased: not handed out twice.
    assert!(q.lease("f", 10, LEASE).await.unwrap().is_empty());

    assert!(q.ack(&id).await.unwrap());
    assert!(!q.ack(&id).await.unwrap(), "a second ack finds nothing");
    assert!(q.item(&id).await.unwrap().is_none());
    assert_eq!(q.depth("f").await.unwrap(), Default::default());
}

#[tokio::test]
async fn lease_is_per_function_oldest_first_and_bounded_by_n() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let mut ids = Vec::new();
    for i in 0..5 {
        let a = inv("a", format!("{i}").as_bytes());
        ids.push(a.id.clone());
        q.enqueue(a, opts()).await.unwrap();
        q.enqueue(inv("b", b"x"), opts()).await.unwrap();
    }
    let first = q.lease("a", 3, LEASE).await.unwrap();
    assert_eq!(first.iter().map(|i| i.id().clone()).collect::<Vec<_>>(), ids[..3]);
    let rest = q.lease("a", 10, LEASE).await.unwrap();
    assert_eq!(rest.iter().map(|i| i.id().clone()).collect::<Vec<_>>(), ids[3..]);
    assert!(q.lease("a", 10, LEASE).await.unwrap().is_empty());
    assert!(q.lease("nobody", 10, LEASE).await.unwrap().is_empty());
    assert!(q.lease("b", 0, LEASE).await.unwrap().is_empty());
    assert_eq!(q.depth("b").await.unwrap().ready, 5);
}

#[tokio::test]
async fn nack_retries_later_with_the_attempt_counted_and_the_error_kept() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let i = inv("f", b"{}");
    let id = i.id.clone();
    q.enqueue(i, opts()).await.unwrap();
    q.lease("f", 1, LEASE).await.unwrap();
    let later = now_ms() + 3_600_000;
    assert!(q.nack(&id, later, err("boom")).await.unwrap());
    let item = q.item(&id).await.unwrap().unwrap();
    assert_eq!(item.state, ItemState::Ready);
    assert_eq!(item.invocation.attempt, 2);
    assert_eq!(item.not_before_ms, later);
    assert_eq!(item.errors.len(), 1);
    assert_eq!(item.errors[0].attempt, 1, "attempt 0 is filled in with the attempt that failed");
    assert_eq!(item.errors[0].message, "boom");
    // Not due yet: not leased, but it is the next due time.
    assert!(q.lease("f", 1, LEASE).await.unwrap().is_empty());
    assert_eq!(q.next_due_ms().await.unwrap(), Some(later));
    assert!(q.ready_functions().await.unwrap().is_empty());

    // A retry due now is leased again with its attempt.
    assert!(q.nack(&id, now_ms() - 1, err("again")).await.unwrap());
    assert_eq!(q.ready_functions().await.unwrap(), vec![("f".to_string(), 1)]);
    let leased = q.lease("f", 1, LEASE).await.unwrap();
    assert_eq!(leased[0].invocation.attempt, 3);
    assert_eq!(leased[0].errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["boom", "again"]);
    assert!(!q.nack(&ActivationId::generate(), 0, err("x")).await.unwrap());
}

#[tokio::test]
async fn errors_are_bounded_in_number_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let i = inv("f", b"");
    let id = i.id.clone();
    q.enqueue(i, opts()).await.unwrap();
    for n in 0..40 {
        let message = if n == 39 { "é".repeat(5000) } else { format!("e{n}") };
        assert!(q.nack(&id, 0, err(&message)).await.unwrap());
    }
    let item = q.item(&id).await.unwrap().unwrap();
    assert_eq!(item.errors.len(), flick_queue::MAX_ERRORS);
    assert_eq!(item.errors[0].message, "e8", "the oldest go first");
    assert!(item.errors.last().unwrap().message.len() <= flick_queue::MAX_ERROR_BYTES);
    assert_eq!(item.invocation.attempt, 41);
}

#[tokio::test]
async fn dead_letters_stay_until_redriven_or_purged() {
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
async fn max_queued_counts_ready_and_leased_but_not_dead() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let limited = EnqueueOptions { max_queued: 2, ..opts() };
    let a = inv("f", b"");
    let a_id = a.id.clone();
    q.enqueue(a, limited.clone()).await.unwrap();
    q.enqueue(inv("f", b""), limited.clone()).await.unwrap();
    q.lease("f", 1, LEASE).await.unwrap();
    let refused = inv("f", b"");
    let refused_id = refused.id.clone();
    match q.enqueue(refused, limited.clone()).await {
        Err(QueueError::Full { function, queued: 2, limit: 2 }) => assert_eq!(function, "f"),
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(q.item(&refused_id).await.unwrap().is_none(), "nothing stored");
    // Other functions have their own bound.
    q.enqueue(inv("g", b""), limited.clone()).await.unwrap();
    // A dead letter frees its place.
    q.dead(&a_id, err("x")).await.unwrap();
    q.enqueue(inv("f", b""), limited.clone()).await.unwrap();
    assert!(matches!(q.enqueue(inv("f", b""), limited).await, Err(QueueError::Full { .. })));
}

#[tokio::test]
async fn max_queued_holds_inside_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let limited = EnqueueOptions { max_queued: 10, ..opts() };
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let q = q.clone();
            let limited = limited.clone();
            tokio::spawn(async move { q.enqueue(inv("f", b""), limited).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(QueueError::Full { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(q.depth("f").await.unwrap().ready, 10);
    assert_eq!(q.items(Some("f"), None, 1000).await.unwrap().len(), 10);
}

#[tokio::test]
async fn idempotency_keys_dedup_inside_their_window_only() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let keyed = |window| EnqueueOptions { idempotency: Some(("k1".into(), window)), ..opts() };
    let first = inv("f", b"1");
    let first_id = first.id.clone();
    assert_eq!(q.enqueue(first, keyed(Duration::from_secs(3600))).await.unwrap(), Enqueued::New(first_id.clone()));
    let second = inv("f", b"2");
    let second_id = second.id.clone();
    assert_eq!(
        q.enqueue(second, keyed(Duration::from_secs(3600))).await.unwrap(),
        Enqueued::Existing(first_id.clone())
    );
    assert!(q.item(&second_id).await.unwrap().is_none(), "a repeat stores nothing");
    assert_eq!(q.depth("f").await.unwrap().ready, 1);
    // Still the first after it was acked.
    q.ack(&first_id).await.unwrap();
    assert_eq!(q.enqueue(inv("f", b"3"), keyed(Duration::from_secs(3600))).await.unwrap().id(), &first_id);
    // The same key of another function is another key.
    assert!(q.enqueue(inv("g", b""), keyed(Duration::from_secs(3600))).await.unwrap().is_new());

    // Sync calls share the keys.
    let sync_id = ActivationId::generate();
    assert_eq!(q.claim_idempotency("f", "k1", &sync_id, Duration::from_secs(60)).await.unwrap(), Some(first_id));
    assert_eq!(q.claim_idempotency("f", "k2", &sync_id, Duration::from_secs(60)).await.unwrap(), None);
    let other = ActivationId::generate();
    assert_eq!(q.claim_idempotency("f", "k2", &other, Duration::from_secs(60)).await.unwrap(), Some(sync_id));

    // A window that has passed: the key is free again, and pruned.
    assert_eq!(q.claim_idempotency("f", "short", &other, Duration::from_millis(1)).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let third = ActivationId::generate();
    assert_eq!(q.claim_idempotency("f", "short", &third, Duration::from_millis(1)).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(q.prune().await.unwrap(), 1);
    assert_eq!(q.prune().await.unwrap(), 0);
    assert!(matches!(
        q.claim_idempotency("f", "", &third, Duration::from_secs(1)).await,
        Err(QueueError::Invalid { .. })
    ));
}

#[tokio::test]
async fn duplicate_ids_are_refused_without_failing_the_rest_of_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let original = inv("f", b"");
    q.enqueue(original.clone(), opts()).await.unwrap();
    // The duplicate and 50 good ones race into the same batches.
    let mut tasks = Vec::new();
    for n in 0..51 {
        let q = q.clone();
        let i = if n == 25 { original.clone() } else { inv("f", b"") };
        tasks.push(tokio::spawn(async move { (i.id.clone(), q.enqueue(i, opts()).await) }));
    }
    let mut good = 0;
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(Enqueued::New(_))) => good += 1,
            (id, Err(QueueError::Duplicate { id: dup })) => assert_eq!(id, dup),
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!(good, 50);
    assert_eq!(q.depth("f").await.unwrap().ready, 51);
}

#[tokio::test]
async fn remove_function_takes_its_items_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let keyed = EnqueueOptions { idempotency: Some(("k".into(), Duration::from_secs(3600))), ..opts() };
    let a = inv("f", b"");
    q.enqueue(a.clone(), keyed.clone()).await.unwrap();
    q.enqueue(inv("f", b""), opts()).await.unwrap();
    q.lease("f", 1, LEASE).await.unwrap();
    let d = inv("f", b"");
    q.enqueue(d.clone(), opts()).await.unwrap();
    q.dead(&d.id, err("x")).await.unwrap();
    q.enqueue(inv("g", b""), opts()).await.unwrap();
    assert_eq!(q.remove_function("f").await.unwrap(), 3);
    assert_eq!(q.depth("f").await.unwrap(), Default::default());
    assert!(q.items(Some("f"), None, 100).await.unwrap().is_empty());
    assert_eq!(q.depth("g").await.unwrap().ready, 1);
    // Its key went with it: a redeploy starts clean.
    assert!(q.enqueue(inv("f", b""), keyed).await.unwrap().is_new());
}

#[tokio::test]
async fn expired_leases_are_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let i = inv("f", b"");
    let id = i.id.clone();
    q.enqueue(i, opts()).await.unwrap();
    assert_eq!(q.lease("f", 1, Duration::from_millis(1)).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(q.ready_functions().await.unwrap(), vec![("f".to_string(), 1)]);
    let again = q.lease("f", 1, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].deliveries, 2);
    assert_eq!(again[0].invocation.attempt, 1, "a redelivery is not a new attempt");
    assert_eq!(q.depth("f").await.unwrap().leased, 1);
    assert!(q.ack(&id).await.unwrap());
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
async fn changes_move_when_work_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let mut changes = q.changes();
    let before = *changes.borrow_and_update();
    q.enqueue(inv("f", b""), opts()).await.unwrap();
    assert!(changes.has_changed().unwrap());
    assert_ne!(*changes.borrow_and_update(), before);
    q.lease("f", 1, LEASE).await.unwrap();
    assert!(!changes.has_changed().unwrap(), "a lease makes nothing due");
}

#[tokio::test]
async fn invalid_input_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir);
    let e = q.enqueue(inv("", b""), opts()).await.unwrap_err();
    assert!(e.to_string().contains("function name"), "{e}");
    let keyed = EnqueueOptions { idempotency: Some((String::new(), Duration::from_secs(1))), ..opts() };
    let e = q.enqueue(inv("f", b""), keyed).await.unwrap_err();
    assert!(e.to_string().contains("idempotency key"), "{e}");
    let long = "k".repeat(flick_queue::MAX_KEY_BYTES + 1);
    let keyed = EnqueueOptions { idempotency: Some((long.clone(), Duration::from_secs(1))), ..opts() };
    let e = q.enqueue(inv("f", b""), keyed).await.unwrap_err();
    assert!(e.to_string().contains("1025 bytes"), "{e}");
    let e = q.claim_idempotency("f", &long, &ActivationId::generate(), Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, QueueError::Invalid { what: "idempotency key", .. }), "{e:?}");
    assert_eq!(q.depth("f").await.unwrap(), Default::default(), "nothing stored");
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
