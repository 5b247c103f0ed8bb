//! Property test (a fuzz target, see RELIABILITY.md): random sequences of
//! queue operations (and reopenings) against a simple in-memory model;
//! after every step the depths agree, and every few steps the whole stored
//! content does.
//!
//! `FLICK_FUZZ_CASES` sets the number of cases (default 24).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use flick_core::{ActivationId, Cause, Invocation, now_ms};
use flick_queue::{AttemptError, EnqueueOptions, Enqueued, ItemState, Queue, QueueError, SqliteQueue};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

const FUNCTIONS: [&str; 2] = ["f", "g"];
const HOUR: Duration = Duration::from_secs(3600);

fn config(default: u32) -> Config {
    let cases = std::env::var("FLICK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let persistence = FileFailurePersistence::WithSource("proptest-regressions");
    Config { cases, failure_persistence: Some(Box::new(persistence)), ..Config::default() }
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue { f: usize, key: Option<u8>, max_queued: u64 },
    Lease { f: usize, n: usize },
    Ack(usize),
    Nack { item: usize, later: bool },
    Dead(usize),
    Redrive(usize),
    RedriveAll(Option<usize>),
    PurgeDead(Option<usize>),
    RemoveFunction(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..FUNCTIONS.len();
    prop_oneof![
        4 => (f.clone(), proptest::option::of(0..3u8), 1..6u64)
            .prop_map(|(f, key, max_queued)| Op::Enqueue { f, key, max_queued }),
        3 => (f.clone(), 0..4usize).prop_map(|(f, n)| Op::Lease { f, n }),
        2 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(item, later)| Op::Nack { item, later }),
        1 => any::<usize>().prop_map(Op::Dead),
        1 => any::<usize>().prop_map(Op::Redrive),
        1 => proptest::option::of(f.clone()).prop_map(Op::RedriveAll),
        1 => proptest::option::of(f.clone()).prop_map(Op::PurgeDead),
        1 => f.prop_map(Op::RemoveFunction),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MState {
    Ready { due: bool },
    Leased,
    Dead,
}

#[derive(Clone, Debug)]
struct MItem {
    function: usize,
    state: MState,
    attempt: u32,
    errors: usize,
}

#[derive(Default)]
struct Model {
    items: BTreeMap<String, MItem>,
    keys: HashMap<(usize, u8), ActivationId>,
    /// Every id ever enqueued (operations pick from these, so they also hit
    /// acked and removed ones).
    ids: Vec<ActivationId>,
}

impl Model {
    fn pick(&self, i: usize) -> ActivationId {
        if self.ids.is_empty() { ActivationId::generate() } else { self.ids[i % self.ids.len()].clone() }
    }

    fn queued(&self, f: usize) -> u64 {
        self.items.values().filter(|i| i.function == f && i.state != MState::Dead).count() as u64
    }

    fn live(&mut self, id: &ActivationId) -> Option<&mut MItem> {
        self.items.get_mut(id.as_str()).filter(|i| i.state != MState::Dead)
    }
}

fn error() -> AttemptError {
    AttemptError { message: "model".into(), status: "error".into(), ..AttemptError::default() }
}

/// Runs `op` on the queue and the model and compares their answers.
/// `Reopen` is done by the caller (it replaces the queue).
async fn step(q: &SqliteQueue, m: &mut Model, op: Op) {
    match op {
        Op::Enqueue { f, key, max_queued } => {
            let inv = Invocation::post(FUNCTIONS[f], Cause::Async, vec![f as u8]);
            let id = inv.id.clone();
            let opts =
                EnqueueOptions { max_attempts: 3, idempotency: key.map(|k| (format!("key-{k}"), HOUR)), max_queued };
            let got = q.enqueue(inv, opts).await;
            if let Some(first) = key.and_then(|k| m.keys.get(&(f, k))) {
                assert_eq!(got.unwrap(), Enqueued::Existing(first.clone()));
            } else if m.queued(f) >= max_queued {
                assert!(matches!(got, Err(QueueError::Full { .. })), "{got:?}");
            } else {
                assert_eq!(got.unwrap(), Enqueued::New(id.clone()));
                m.items.insert(
                    id.to_string(),
                    MItem { function: f, state: MState::Ready { due: true }, attempt: 1, errors: 0 },
                );
                if let Some(k) = key {
                    m.keys.insert((f, k), id.clone());
                }
                m.ids.push(id);
            }
        }
        Op::Lease { f, n } => {
            let got = q.lease(FUNCTIONS[f], n, HOUR).await.unwrap();
            let due = m.items.values().filter(|i| i.function == f && i.state == MState::Ready { due: true }).count();
            assert_eq!(got.len(), n.min(due));
            for item in got {
                let mi = m.items.get_mut(item.id().as_str()).expect("leased an item the model does not have");
                assert_eq!(mi.state, MState::Ready { due: true }, "leased an item that was not due");
                assert_eq!(item.invocation.attempt, mi.attempt);
                mi.state = MState::Leased;
            }
        }
        Op::Ack(i) => {
            let id = m.pick(i);
            let expected = m.live(&id).is_some();
            assert_eq!(q.ack(&id).await.unwrap(), expected);
            if expected {
                m.items.remove(id.as_str());
            }
        }
        Op::Nack { item, later } => {
            let id = m.pick(item);
            let retry_at = if later { now_ms() + 3_600_000 } else { 0 };
            let got = q.nack(&id, retry_at, error()).await.unwrap();
            match m.live(&id) {
                Some(mi) => {
                    assert!(got);
                    mi.state = MState::Ready { due: !later };
                    mi.attempt += 1;
                    mi.errors = (mi.errors + 1).min(flick_queue::MAX_ERRORS);
                }
                None => assert!(!got),
            }
        }
        Op::Dead(i) => {
            let id = m.pick(i);
            let got = q.dead(&id, error()).await.unwrap();
            match m.live(&id) {
                Some(mi) => {
                    assert!(got);
                    mi.state = MState::Dead;
                    mi.errors = (mi.errors + 1).min(flick_queue::MAX_ERRORS);
                }
                None => assert!(!got),
            }
        }
        Op::Redrive(i) => {
            let id = m.pick(i);
            let got = q.redrive(&id).await.unwrap();
            match m.items.get_mut(id.as_str()).filter(|i| i.state == MState::Dead) {
                Some(mi) => {
                    assert!(got);
                    mi.state = MState::Ready { due: true };
                    mi.attempt = 1;
                }
                None => assert!(!got),
            }
        }
        Op::RedriveAll(f) => {
            let got = q.redrive_all(f.map(|f| FUNCTIONS[f])).await.unwrap();
            let mut n = 0;
            for mi in m.items.values_mut().filter(|i| i.state == MState::Dead && f.is_none_or(|f| i.function == f)) {
                mi.state = MState::Ready { due: true };
                mi.attempt = 1;
                n += 1;
            }
            assert_eq!(got, n);
        }
        Op::PurgeDead(f) => {
            let got = q.purge_dead(f.map(|f| FUNCTIONS[f])).await.unwrap();
            let before = m.items.len();
            m.items.retain(|_, i| !(i.state == MState::Dead && f.is_none_or(|f| i.function == f)));
            assert_eq!(got as usize, before - m.items.len());
        }
        Op::RemoveFunction(f) => {
            let got = q.remove_function(FUNCTIONS[f]).await.unwrap();
            let before = m.items.len();
            m.items.retain(|_, i| i.function != f);
            m.keys.retain(|(kf, _), _| *kf != f);
            assert_eq!(got as usize, before - m.items.len());
        }
        Op::Reopen => {
            for mi in m.items.values_mut().filter(|i| i.state == MState::Leased) {
                mi.state = MState::Ready { due: true };
            }
        }
    }
}

async fn check_depths(q: &SqliteQueue, m: &Model) {
    for (f, name) in FUNCTIONS.iter().enumerate() {
        let depth = q.depth(name).await.unwrap();
        let count = |s: fn(&MState) -> bool| m.items.values().filter(|i| i.function == f && s(&i.state)).count() as u64;
        assert_eq!(depth.ready, count(|s| matches!(s, MState::Ready { .. })), "{name} ready");
        assert_eq!(depth.leased, count(|s| *s == MState::Leased), "{name} leased");
        assert_eq!(depth.dead, count(|s| *s == MState::Dead), "{name} dead");
    }
}

async fn check_contents(q: &SqliteQueue, m: &Model) {
    let stored = q.items(None, None, 1000).await.unwrap();
    assert_eq!(stored.len(), m.items.len());
    for item in stored {
        let mi = &m.items[item.id().as_str()];
        let state = match mi.state {
            MState::Ready { .. } => ItemState::Ready,
            MState::Leased => ItemState::Leased,
            MState::Dead => ItemState::Dead,
        };
        assert_eq!(item.state, state, "{}", item.id());
        assert_eq!(item.invocation.function, FUNCTIONS[mi.function]);
        assert_eq!(item.invocation.body, vec![mi.function as u8]);
        assert_eq!(item.invocation.attempt, mi.attempt);
        assert_eq!(item.errors.len(), mi.errors);
    }
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn random_operations_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("queue.db");
            let mut q = SqliteQueue::open(&path).unwrap();
            let mut m = Model::default();
            for (n, op) in ops.into_iter().enumerate() {
                if matches!(op, Op::Reopen) {
                    drop(q); // closes the file (and its lock) first
                    q = SqliteQueue::open(&path).unwrap();
                }
                step(&q, &mut m, op).await;
                check_depths(&q, &m).await;
                if n % 5 == 4 {
                    check_contents(&q, &m).await;
                }
            }
            check_contents(&q, &m).await;
        });
    }
}
