//! The [`Queue`] contract as executable checks, for any implementation:
//! `SqliteQueue`'s tests run them, and a second implementation (a NATS
//! JetStream work queue) must pass them too before it can replace it
//! without its callers noticing. They panic on the first broken promise,
//! naming it.
//!
//! Each check uses functions of its own (`<check>-f`, …), so all of them
//! run on one queue, which must be empty of those names. Global operations
//! (`redrive_all(None)`, `purge_dead(None)`, listings of every function) and
//! what only an implementation can arrange (a restart, a full disk) are left
//! to the implementation's own tests.

use std::sync::Arc;
use std::time::Duration;

use flick_core::{ActivationId, Cause, Invocation, now_ms};

use crate::{AttemptError, EnqueueOptions, Enqueued, ItemState, MAX_ERROR_BYTES, MAX_ERRORS, Queue, QueueError};

/// How the implementation's time behaves.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The shortest lease the implementation honours.
    pub short_lease: Duration,
    /// How long after `short_lease` ran out its item is surely due again.
    pub settle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { short_lease: Duration::from_millis(1), settle: Duration::from_millis(20) }
    }
}

/// Runs every check on `q`.
pub async fn run(q: Arc<dyn Queue>, settings: Settings) {
    macro_rules! check {
        ($name:ident $(, $arg:expr)?) => {{
            tracing::info!(check = stringify!($name), "queue conformance");
            $name(&q $(, $arg)?).await;
        }};
    }
    check!(round_trip_keeps_the_invocation_whole);
    check!(lease_is_per_function_oldest_first_and_bounded);
    check!(nack_counts_the_attempt_keeps_the_error_and_waits);
    check!(errors_are_bounded);
    check!(dead_letters_stay_until_redriven_or_purged);
    check!(max_queued_counts_ready_and_leased_not_dead);
    check!(max_queued_holds_under_concurrency);
    check!(idempotency_keys_dedup_inside_their_window);
    check!(duplicate_ids_are_refused_alone);
    check!(remove_function_takes_items_and_keys);
    check!(expired_leases_are_handed_out_again, settings);
    check!(changes_move_when_work_arrives);
    check!(invalid_input_is_refused_by_name);
}

const LEASE: Duration = Duration::from_secs(600);

fn inv(function: &str, body: &[u8]) -> Invocation {
    let mut inv = Invocation::post(function, Cause::Async, body.to_vec());
    inv.headers.push(("x-test".into(), "yes".into()));
    inv
}

fn opts() -> EnqueueOptions {
    EnqueueOptions::default()
}

fn err(message: &str) -> AttemptError {
    AttemptError { message: message.into(), status: "error".into(), ..AttemptError::default() }
}

fn ids(items: &[crate::Item]) -> Vec<ActivationId> {
    items.iter().map(|i| i.id().clone()).collect()
}

async fn round_trip_keeps_the_invocation_whole(q: &Arc<dyn Queue>) {
    let f = "round-trip-f";
    let mut first = inv(f, &(0..=255u8).collect::<Vec<_>>());
    first.trigger = Some("every-10s".into());
    first.callback_url = Some("http://127.0.0.1:9/cb".into());
    first.parent = Some(ActivationId::generate());
    let id = first.id.clone();
    assert_eq!(q.enqueue(first.clone(), opts()).await.unwrap(), Enqueued::New(id.clone()));
    assert_eq!(q.depth(f).await.unwrap().ready, 1);
    let item = q.item(&id).await.unwrap().expect("an enqueued item can be read");
    assert_eq!(item.invocation, first);
    assert_eq!((item.state, item.max_attempts), (ItemState::Ready, 3));

    let leased = q.lease(f, 10, LEASE).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].invocation, first, "leased as enqueued, body bytes and all");
    assert_eq!((leased[0].state, leased[0].deliveries), (ItemState::Leased, 1));
    assert!(leased[0].lease_until_ms.unwrap() >= now_ms() + 500_000);
    let depth = q.depth(f).await.unwrap();
    assert_eq!((depth.ready, depth.leased), (0, 1));
    assert!(q.lease(f, 10, LEASE).await.unwrap().is_empty(), "a leased item is not handed out twice");

    assert!(q.ack(&id).await.unwrap());
    assert!(!q.ack(&id).await.unwrap(), "a second ack finds nothing");
    assert!(q.item(&id).await.unwrap().is_none());
    assert_eq!(q.depth(f).await.unwrap(), Default::default());
}

async fn lease_is_per_function_oldest_first_and_bounded(q: &Arc<dyn Queue>) {
    let (a, b) = ("order-a", "order-b");
    let mut order = Vec::new();
    for i in 0..5 {
        let item = inv(a, format!("{i}").as_bytes());
        order.push(item.id.clone());
        q.enqueue(item, opts()).await.unwrap();
        q.enqueue(inv(b, b"x"), opts()).await.unwrap();
    }
    assert_eq!(ids(&q.lease(a, 3, LEASE).await.unwrap()), order[..3]);
    assert_eq!(ids(&q.lease(a, 10, LEASE).await.unwrap()), order[3..]);
    assert!(q.lease(a, 10, LEASE).await.unwrap().is_empty());
    assert!(q.lease("order-nobody", 10, LEASE).await.unwrap().is_empty());
    assert!(q.lease(b, 0, LEASE).await.unwrap().is_empty());
    assert_eq!(q.depth(b).await.unwrap().ready, 5);
    q.remove_function(a).await.unwrap();
    q.remove_function(b).await.unwrap();
}

async fn nack_counts_the_attempt_keeps_the_error_and_waits(q: &Arc<dyn Queue>) {
    let f = "nack-f";
    let item = inv(f, b"{}");
    let id = item.id.clone();
    q.enqueue(item, opts()).await.unwrap();
    q.lease(f, 1, LEASE).await.unwrap();
    let later = now_ms() + 3_600_000;
    assert!(q.nack(&id, later, err("boom")).await.unwrap());
    let item = q.item(&id).await.unwrap().unwrap();
    assert_eq!((item.state, item.invocation.attempt, item.not_before_ms), (ItemState::Ready, 2, later));
    assert_eq!(item.errors.len(), 1);
    assert_eq!(item.errors[0].attempt, 1, "attempt 0 is filled in with the attempt that failed");
    assert_eq!(item.errors[0].message, "boom");
    assert!(q.lease(f, 1, LEASE).await.unwrap().is_empty(), "not due before its retry time");
    assert!(q.next_due_ms().await.unwrap().is_some_and(|due| due <= later));
    assert!(!q.ready_functions().await.unwrap().iter().any(|(name, _)| name == f));

    assert!(q.nack(&id, now_ms() - 1, err("again")).await.unwrap());
    assert!(q.ready_functions().await.unwrap().contains(&(f.to_string(), 1)));
    let leased = q.lease(f, 1, LEASE).await.unwrap();
    assert_eq!(leased[0].invocation.attempt, 3);
    assert_eq!(leased[0].errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["boom", "again"]);
    assert!(!q.nack(&ActivationId::generate(), 0, err("x")).await.unwrap(), "no such item");
    q.remove_function(f).await.unwrap();
}

async fn errors_are_bounded(q: &Arc<dyn Queue>) {
    let f = "errors-f";
    let item = inv(f, b"");
    let id = item.id.clone();
    q.enqueue(item, opts()).await.unwrap();
    for n in 0..MAX_ERRORS + 8 {
        let message = if n == MAX_ERRORS + 7 { "é".repeat(MAX_ERROR_BYTES) } else { format!("e{n}") };
        assert!(q.nack(&id, 0, err(&message)).await.unwrap());
    }
    let item = q.item(&id).await.unwrap().unwrap();
    assert_eq!(item.errors.len(), MAX_ERRORS);
    assert_eq!(item.errors[0].message, "e8", "the oldest go first");
    assert!(item.errors.last().unwrap().message.len() <= MAX_ERROR_BYTES);
    assert_eq!(item.invocation.attempt, MAX_ERRORS as u32 + 9);
    q.remove_function(f).await.unwrap();
}

async fn dead_letters_stay_until_redriven_or_purged(q: &Arc<dyn Queue>) {
    let (f, g) = ("dead-f", "dead-g");
    let item = inv(f, b"payload");
    let id = item.id.clone();
    q.enqueue(item, opts()).await.unwrap();
    q.lease(f, 1, LEASE).await.unwrap();
    q.nack(&id, 0, err("one")).await.unwrap();
    q.lease(f, 1, LEASE).await.unwrap();
    assert!(q.dead(&id, err("two")).await.unwrap());
    assert!(!q.dead(&id, err("three")).await.unwrap(), "already dead");
    assert!(!q.ack(&id).await.unwrap(), "dead letters are not acked");
    assert!(!q.nack(&id, 0, err("x")).await.unwrap(), "dead letters are not retried");
    assert!(q.lease(f, 10, LEASE).await.unwrap().is_empty());
    assert_eq!(q.depth(f).await.unwrap().dead, 1);
    let dead = q.items(Some(f), Some(ItemState::Dead), 10).await.unwrap();
    assert_eq!(ids(&dead), vec![id.clone()]);
    assert!(dead[0].dead_ms.is_some());
    assert_eq!(dead[0].errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["one", "two"]);

    assert!(q.redrive(&id).await.unwrap());
    assert!(!q.redrive(&id).await.unwrap(), "no longer dead");
    let again = q.lease(f, 1, LEASE).await.unwrap();
    assert_eq!((again[0].invocation.attempt, again[0].invocation.cause), (1, Cause::Redrive));
    assert_eq!(again[0].invocation.body, b"payload");
    assert_eq!(again[0].errors.len(), 2, "the history is kept");
    q.dead(&id, err("three")).await.unwrap();

    let other = inv(g, b"");
    let other_id = other.id.clone();
    q.enqueue(other, opts()).await.unwrap();
    q.dead(&other_id, err("x")).await.unwrap();
    assert_eq!(q.redrive_all(Some(g)).await.unwrap(), 1);
    assert_eq!(q.depth(g).await.unwrap().ready, 1);
    assert_eq!(q.depth(f).await.unwrap().dead, 1, "another function's dead letters stay");
    q.dead(&other_id, err("y")).await.unwrap();
    assert_eq!(q.purge_dead(Some(f)).await.unwrap(), 1);
    assert_eq!(q.depth(f).await.unwrap(), Default::default());
    assert_eq!(q.depth(g).await.unwrap().dead, 1);
    assert_eq!(q.purge_dead(Some(g)).await.unwrap(), 1);
}

async fn max_queued_counts_ready_and_leased_not_dead(q: &Arc<dyn Queue>) {
    let (f, g) = ("bound-f", "bound-g");
    let limited = EnqueueOptions { max_queued: 2, ..opts() };
    let a = inv(f, b"");
    let a_id = a.id.clone();
    q.enqueue(a, limited.clone()).await.unwrap();
    q.enqueue(inv(f, b""), limited.clone()).await.unwrap();
    q.lease(f, 1, LEASE).await.unwrap();
    let refused = inv(f, b"");
    let refused_id = refused.id.clone();
    match q.enqueue(refused, limited.clone()).await {
        Err(QueueError::Full { function, queued: 2, limit: 2 }) => assert_eq!(function, f),
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(q.item(&refused_id).await.unwrap().is_none(), "nothing stored");
    q.enqueue(inv(g, b""), limited.clone()).await.unwrap();
    q.dead(&a_id, err("x")).await.unwrap();
    q.enqueue(inv(f, b""), limited.clone()).await.unwrap();
    assert!(matches!(q.enqueue(inv(f, b""), limited).await, Err(QueueError::Full { .. })));
    q.remove_function(f).await.unwrap();
    q.remove_function(g).await.unwrap();
}

async fn max_queued_holds_under_concurrency(q: &Arc<dyn Queue>) {
    let f = "bound-concurrent-f";
    let limited = EnqueueOptions { max_queued: 10, ..opts() };
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (q, limited) = (q.clone(), limited.clone());
            tokio::spawn(async move { q.enqueue(inv(f, b""), limited).await })
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
    assert_eq!(q.depth(f).await.unwrap().ready, 10);
    assert_eq!(q.items(Some(f), None, 1000).await.unwrap().len(), 10);
    q.remove_function(f).await.unwrap();
}

async fn idempotency_keys_dedup_inside_their_window(q: &Arc<dyn Queue>) {
    let (f, g) = ("idem-f", "idem-g");
    let hour = Duration::from_secs(3600);
    let keyed = |window| EnqueueOptions { idempotency: Some(("k1".into(), window)), ..opts() };
    let first = inv(f, b"1");
    let first_id = first.id.clone();
    assert_eq!(q.enqueue(first, keyed(hour)).await.unwrap(), Enqueued::New(first_id.clone()));
    let second = inv(f, b"2");
    let second_id = second.id.clone();
    assert_eq!(q.enqueue(second, keyed(hour)).await.unwrap(), Enqueued::Existing(first_id.clone()));
    assert!(q.item(&second_id).await.unwrap().is_none(), "a repeat stores nothing");
    assert_eq!(q.depth(f).await.unwrap().ready, 1);
    q.ack(&first_id).await.unwrap();
    assert_eq!(q.enqueue(inv(f, b"3"), keyed(hour)).await.unwrap().id(), &first_id, "still the first after its ack");
    assert!(q.enqueue(inv(g, b""), keyed(hour)).await.unwrap().is_new(), "keys are per function");

    let sync_id = ActivationId::generate();
    assert_eq!(q.claim_idempotency(f, "k1", &sync_id, hour).await.unwrap(), Some(first_id), "shared with sync calls");
    assert_eq!(q.claim_idempotency(f, "k2", &sync_id, hour).await.unwrap(), None);
    let other = ActivationId::generate();
    assert_eq!(q.claim_idempotency(f, "k2", &other, hour).await.unwrap(), Some(sync_id));

    let short = Duration::from_millis(1);
    assert_eq!(q.claim_idempotency(f, "short", &other, short).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(q.claim_idempotency(f, "short", &ActivationId::generate(), short).await.unwrap(), None, "window over");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(q.prune().await.unwrap() >= 1, "the expired key is pruned");
    q.remove_function(f).await.unwrap();
    q.remove_function(g).await.unwrap();
}

async fn duplicate_ids_are_refused_alone(q: &Arc<dyn Queue>) {
    let f = "duplicate-f";
    let original = inv(f, b"");
    q.enqueue(original.clone(), opts()).await.unwrap();
    let tasks: Vec<_> = (0..51)
        .map(|n| {
            let q = q.clone();
            let item = if n == 25 { original.clone() } else { inv(f, b"") };
            tokio::spawn(async move { (item.id.clone(), q.enqueue(item, opts()).await) })
        })
        .collect();
    let mut good = 0;
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(Enqueued::New(_))) => good += 1,
            (id, Err(QueueError::Duplicate { id: dup })) => assert_eq!(id, dup),
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!(good, 50, "the duplicate fails alone");
    assert_eq!(q.depth(f).await.unwrap().ready, 51);
    q.remove_function(f).await.unwrap();
}

async fn remove_function_takes_items_and_keys(q: &Arc<dyn Queue>) {
    let (f, g) = ("remove-f", "remove-g");
    let keyed = EnqueueOptions { idempotency: Some(("k".into(), Duration::from_secs(3600))), ..opts() };
    q.enqueue(inv(f, b""), keyed.clone()).await.unwrap();
    q.enqueue(inv(f, b""), opts()).await.unwrap();
    q.lease(f, 1, LEASE).await.unwrap();
    let d = inv(f, b"");
    q.enqueue(d.clone(), opts()).await.unwrap();
    q.dead(&d.id, err("x")).await.unwrap();
    q.enqueue(inv(g, b""), opts()).await.unwrap();
    assert_eq!(q.remove_function(f).await.unwrap(), 3, "ready, leased and dead");
    assert_eq!(q.depth(f).await.unwrap(), Default::default());
    assert!(q.items(Some(f), None, 100).await.unwrap().is_empty());
    assert_eq!(q.depth(g).await.unwrap().ready, 1);
    assert!(q.enqueue(inv(f, b""), keyed).await.unwrap().is_new(), "its keys went with it");
    q.remove_function(f).await.unwrap();
    q.remove_function(g).await.unwrap();
}

async fn expired_leases_are_handed_out_again(q: &Arc<dyn Queue>, settings: Settings) {
    let f = "expiry-f";
    let item = inv(f, b"");
    let id = item.id.clone();
    q.enqueue(item, opts()).await.unwrap();
    assert_eq!(q.lease(f, 1, settings.short_lease).await.unwrap().len(), 1);
    tokio::time::sleep(settings.short_lease + settings.settle).await;
    assert!(q.ready_functions().await.unwrap().contains(&(f.to_string(), 1)));
    let again = q.lease(f, 1, LEASE).await.unwrap();
    assert_eq!(ids(&again), vec![id.clone()]);
    assert_eq!(again[0].deliveries, 2);
    assert_eq!(again[0].invocation.attempt, 1, "a redelivery is not a new attempt");
    assert_eq!(q.depth(f).await.unwrap().leased, 1);
    assert!(q.ack(&id).await.unwrap());
}

async fn changes_move_when_work_arrives(q: &Arc<dyn Queue>) {
    let f = "changes-f";
    let mut changes = q.changes();
    changes.borrow_and_update();
    q.enqueue(inv(f, b""), opts()).await.unwrap();
    assert!(changes.has_changed().unwrap(), "an enqueue wakes dispatchers");
    changes.borrow_and_update();
    let leased = q.lease(f, 1, LEASE).await.unwrap();
    q.nack(leased[0].id(), 0, err("x")).await.unwrap();
    assert!(changes.has_changed().unwrap(), "a nack wakes dispatchers");
    q.remove_function(f).await.unwrap();
}

async fn invalid_input_is_refused_by_name(q: &Arc<dyn Queue>) {
    let e = q.enqueue(inv("", b""), opts()).await.unwrap_err();
    assert!(e.to_string().contains("function name"), "{e}");
    let keyed = EnqueueOptions { idempotency: Some((String::new(), Duration::from_secs(1))), ..opts() };
    let e = q.enqueue(inv("invalid-f", b""), keyed).await.unwrap_err();
    assert!(e.to_string().contains("idempotency key"), "{e}");
    let long = "k".repeat(crate::MAX_KEY_BYTES + 1);
    let keyed = EnqueueOptions { idempotency: Some((long.clone(), Duration::from_secs(1))), ..opts() };
    assert!(matches!(q.enqueue(inv("invalid-f", b""), keyed).await, Err(QueueError::Invalid { .. })));
    let e = q.claim_idempotency("invalid-f", &long, &ActivationId::generate(), Duration::from_secs(1)).await;
    assert!(matches!(e, Err(QueueError::Invalid { what: "idempotency key", .. })), "{e:?}");
    assert_eq!(q.depth("invalid-f").await.unwrap(), Default::default(), "nothing stored");
}
