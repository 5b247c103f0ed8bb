//! `JetStreamQueue` against a real nats-server with JetStream
//! (`FLICK_TEST_NATS`, default `nats://127.0.0.1:4222`): the trait's
//! contract, then what is JetStream's own: two nodes sharing one prefix,
//! a node dying with a lease, operations over every function, an
//! unreachable server. Each test uses streams of its own (a random
//! prefix) and deletes them at the end, pass or fail.
//!
//! These tests fail, not skip, when NATS cannot be reached: start
//! `nats-server -js` (CI does).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flick_core::{ActivationId, Cause, Invocation};
use flick_queue::{AttemptError, EnqueueOptions, ItemState, JetStreamConfig, JetStreamQueue, Queue, QueueError};

fn url() -> String {
    std::env::var("FLICK_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn config(ack_wait: Duration) -> JetStreamConfig {
    let prefix = format!("test{}", &ActivationId::generate().as_str()[20..]);
    JetStreamConfig { prefix, ack_wait, ..JetStreamConfig::default() }
}

async fn connect(config: JetStreamConfig) -> JetStreamQueue {
    match JetStreamQueue::connect(&url(), config).await {
        Ok(q) => q,
        Err(e) => panic!(
            "{e}\nThese tests need nats-server with JetStream at {} (start `nats-server -js`, \
             or point FLICK_TEST_NATS at one)",
            url()
        ),
    }
}

/// Runs `test` on a fresh prefix, then deletes its streams whatever happened.
async fn with_streams<F, Fut>(ack_wait: Duration, test: F)
where
    F: FnOnce(JetStreamConfig, JetStreamQueue) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let config = config(ack_wait);
    let q = connect(config.clone()).await;
    let outcome = tokio::spawn(test(config, q.clone())).await;
    q.delete_streams().await.expect("delete the test's streams");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn inv(function: &str) -> Invocation {
    Invocation::post(function, Cause::Async, b"{}".to_vec())
}

fn opts() -> EnqueueOptions {
    EnqueueOptions::default()
}

const LEASE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_queue_keeps_the_queue_contract() {
    with_streams(Duration::from_secs(30), |_, q| async move {
        // A lease that ran out is released (nak'ed) by the next read of the
        // queue, or by the upkeep tick (100 ms): 300 ms covers both.
        let settings = flick_queue::conformance::Settings {
            short_lease: Duration::from_millis(50),
            settle: Duration::from_millis(300),
        };
        flick_queue::conformance::run(Arc::new(q), settings).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_lease_the_same_item_at_once() {
    with_streams(Duration::from_secs(30), |config, a| async move {
        let b = connect(config).await;
        let f = "shared-f";
        let mut all = HashSet::new();
        for _ in 0..60 {
            all.insert(a.enqueue(inv(f), opts()).await.unwrap().id().clone());
        }
        let lease_all = |q: JetStreamQueue| async move {
            let mut got = Vec::new();
            loop {
                let batch = q.lease(f, 7, LEASE).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch.into_iter().map(|i| i.id().clone()));
            }
            got
        };
        let (from_a, from_b) = tokio::join!(tokio::spawn(lease_all(a.clone())), tokio::spawn(lease_all(b.clone())));
        let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
        let (set_a, set_b): (HashSet<_>, HashSet<_>) =
            (from_a.iter().cloned().collect(), from_b.iter().cloned().collect());
        assert_eq!(set_a.len() + set_b.len(), from_a.len() + from_b.len(), "no node got an item twice");
        assert!(set_a.is_disjoint(&set_b), "no item leased by both nodes");
        assert_eq!(&set_a | &set_b, all, "every item leased once");
        let depth = b.depth(f).await.unwrap();
        assert_eq!((depth.ready, depth.leased), (0, 60), "another node's leases count as leased");
        for id in &from_a {
            assert!(a.ack(id).await.unwrap());
        }
        for id in &from_b {
            assert!(a.ack(id).await.unwrap(), "an item leased by another node can be acked here too");
        }
        assert_eq!(b.depth(f).await.unwrap(), Default::default());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_lease_goes_to_another_after_ack_wait() {
    let ack_wait = Duration::from_secs(1);
    with_streams(ack_wait, |config, survivor| async move {
        let f = "orphan-f";
        let id = survivor.enqueue(inv(f), opts()).await.unwrap().id().clone();
        let dying = connect(config).await;
        let leased = dying.lease(f, 1, LEASE).await.unwrap();
        assert_eq!(leased.len(), 1);
        drop(dying);
        assert!(survivor.lease(f, 1, LEASE).await.unwrap().is_empty(), "not before ack_wait");
        let mut again = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            again = survivor.lease(f, 1, LEASE).await.unwrap();
            if !again.is_empty() {
                break;
            }
        }
        assert_eq!(again.len(), 1, "handed to the surviving node after ack_wait");
        assert_eq!(again[0].id(), &id);
        assert_eq!(again[0].deliveries, 2, "the redelivery shows");
        assert_eq!(again[0].invocation.attempt, 1, "a redelivery is not a new attempt");
        assert!(survivor.ack(&id).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lease_is_kept_past_ack_wait_while_its_node_lives() {
    with_streams(Duration::from_secs(1), |config, a| async move {
        let b = connect(config).await;
        let f = "long-f";
        let id = a.enqueue(inv(f), opts()).await.unwrap().id().clone();
        assert_eq!(a.lease(f, 1, LEASE).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(b.lease(f, 1, LEASE).await.unwrap().is_empty(), "progress keeps it with its node");
        assert!(a.ack(&id).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_every_function_redrive_and_purge_together() {
    with_streams(Duration::from_secs(30), |_, q| async move {
        let err = AttemptError { message: "x".into(), ..Default::default() };
        for f in ["all-f", "all-g"] {
            for _ in 0..2 {
                let id = q.enqueue(inv(f), opts()).await.unwrap().id().clone();
                assert!(q.dead(&id, err.clone()).await.unwrap());
            }
        }
        assert_eq!(q.items(None, Some(ItemState::Dead), 100).await.unwrap().len(), 4);
        assert_eq!(q.redrive_all(None).await.unwrap(), 4);
        assert_eq!(q.items(None, Some(ItemState::Ready), 100).await.unwrap().len(), 4);
        for item in q.items(None, None, 100).await.unwrap() {
            assert!(q.dead(item.id(), err.clone()).await.unwrap());
        }
        assert_eq!(q.purge_dead(None).await.unwrap(), 4);
        assert!(q.items(None, None, 100).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_list_is_bounded_per_function() {
    let mut config = config(Duration::from_secs(30));
    config.max_dead_per_function = 3;
    let q = connect(config).await;
    let outcome = tokio::spawn({
        let q = q.clone();
        async move {
            let mut ids = Vec::new();
            for _ in 0..5 {
                let id = q.enqueue(inv("bounded-f"), opts()).await.unwrap().id().clone();
                q.dead(&id, AttemptError::default()).await.unwrap();
                ids.push(id);
            }
            assert_eq!(q.depth("bounded-f").await.unwrap().dead, 3);
            let kept: Vec<_> =
                q.items(Some("bounded-f"), None, 10).await.unwrap().iter().map(|i| i.id().clone()).collect();
            assert_eq!(kept, ids[2..], "the oldest went");
        }
    })
    .await;
    q.delete_streams().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error_that_says_what_to_do() {
    let e = JetStreamQueue::connect("nats://127.0.0.1:1", JetStreamConfig::default()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(matches!(e, QueueError::Unavailable { .. }), "{e:?}");
    assert!(e.to_string().contains("nats-server"), "{e}");
}
