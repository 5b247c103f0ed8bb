//! The manager: keeps one running source per trigger of every function's
//! current revision. It reconciles on every change of the route table
//! (deploy, rollback, delete): a trigger whose definition is unchanged
//! keeps running (its MQTT session, its cron continuity, its counts); a
//! changed one is restarted; a removed one is stopped (and its MQTT
//! subscription dropped at the broker).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flick_core::{TriggerKind, TriggerSpec, now_ms};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::sink::Sink;
use crate::status::{Tracker, TriggerState, TriggerStatus};

/// Why a source is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Run,
    /// flick is stopping: keep broker sessions (messages queue for the restart).
    Shutdown,
    /// The trigger is gone (redeploy without it, delete): drop its subscription.
    Removed,
}

/// What a running source gets.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub function: String,
    pub trigger: String,
    pub sink: Arc<dyn Sink>,
    pub tracker: Tracker,
    /// Stable per flick data dir, function and trigger (MQTT client id,
    /// NATS connection name).
    pub client_id: String,
}

/// Sleeps for `d`; true if asked to stop meanwhile.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<Stop>) -> bool {
    if *stop.borrow() != Stop::Run {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s != Stop::Run) => true,
    };
    stopped || *stop.borrow() != Stop::Run
}

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Tells this flick's broker clients from another's on the same broker
    /// (a hash of the data dir): part of every MQTT client id.
    pub instance: String,
    /// How long stopping waits for a source to finish the event in hand.
    pub stop_grace: Duration,
}

/// The triggers one function's current revision declares.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub function: String,
    pub revision: u32,
    pub triggers: Vec<TriggerSpec>,
}

struct Running {
    spec: TriggerSpec,
    tracker: Tracker,
    stop: watch::Sender<Stop>,
    task: Option<JoinHandle<()>>,
}

pub struct Manager {
    sink: Arc<dyn Sink>,
    config: ManagerConfig,
    /// Keyed by (function, trigger name).
    running: Mutex<BTreeMap<(String, String), Running>>,
}

impl Manager {
    pub fn new(sink: Arc<dyn Sink>, config: ManagerConfig) -> Arc<Self> {
        Arc::new(Self { sink, config, running: Mutex::default() })
    }

    /// Makes the running sources match `wanted` (every function's current
    /// triggers). Returns at once; stopped sources finish in the background.
    pub fn reconcile(&self, wanted: &[Wanted]) {
        let mut want: BTreeMap<(String, String), (u32, &TriggerSpec)> = BTreeMap::new();
        for w in wanted {
            for t in &w.triggers {
                want.insert((w.function.clone(), t.name.clone()), (w.revision, t));
            }
        }
        let mut stopped = Vec::new();
        {
            let mut running = self.running.lock();
            let gone: Vec<_> = running
                .iter()
                .filter(|(k, r)| want.get(*k).is_none_or(|(_, spec)| **spec != r.spec))
                .map(|(k, _)| k.clone())
                .collect();
            // A changed trigger's old source is stopped first; its successor
            // starts once it is gone (the two would share an MQTT client id,
            // and the old one's unsubscribe must not land after the new
            // one's subscribe).
            let mut predecessors = BTreeMap::new();
            for key in gone {
                if let Some(mut r) = running.remove(&key) {
                    tracing::info!(function = %key.0, trigger = %key.1, "stopping trigger");
                    let _ = r.stop.send(Stop::Removed);
                    if let Some(task) = r.task.take() {
                        let grace = self.config.stop_grace;
                        let abort = task.abort_handle();
                        let done = tokio::spawn(async move {
                            if tokio::time::timeout(grace, task).await.is_err() {
                                abort.abort();
                            }
                        });
                        predecessors.insert(key.clone(), done);
                    }
                    stopped.push(r);
                }
            }
            for ((function, name), (revision, spec)) in want {
                match running.get(&(function.clone(), name.clone())) {
                    Some(r) => r.tracker.set_revision(revision),
                    None => {
                        tracing::info!(function = %function, trigger = %name, kind = spec.kind.type_name(), "starting trigger");
                        let after = predecessors.remove(&(function.clone(), name.clone()));
                        let r = self.start(&function, revision, spec.clone(), after);
                        running.insert((function, name), r);
                    }
                }
            }
        }
        drop(stopped);
    }

    fn start(&self, function: &str, revision: u32, spec: TriggerSpec, after: Option<JoinHandle<()>>) -> Running {
        let tracker = Tracker::new(TriggerStatus {
            function: function.to_string(),
            name: spec.name.clone(),
            kind: spec.kind.type_name().to_string(),
            target: spec.target(),
            revision,
            state: TriggerState::Starting,
            last_error: None,
            last_error_ms: None,
            next_attempt_ms: None,
            last_fired_ms: None,
            fired: 0,
            failed: 0,
            since_ms: now_ms(),
        });
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let ctx = Ctx {
            function: function.to_string(),
            trigger: spec.name.clone(),
            sink: self.sink.clone(),
            tracker: tracker.clone(),
            client_id: format!("flick-{}-{function}-{}", self.config.instance, spec.name),
        };
        let source: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match spec.kind.clone() {
            TriggerKind::Cron { schedule, timezone } => Box::pin(crate::cron::run(ctx, schedule, timezone, stop_rx)),
            TriggerKind::Mqtt { url, topic, qos } => Box::pin(crate::mqtt::run(ctx, url, topic, qos, stop_rx)),
            TriggerKind::Nats { url, subject, stream, consumer } => {
                Box::pin(crate::nats::run(ctx, url, subject, stream.zip(consumer), stop_rx))
            }
            TriggerKind::CloudEvents { .. } => {
                tracker.set_state(TriggerState::Passive);
                return Running { spec, tracker, stop, task: None };
            }
        };
        let task = Some(tokio::spawn(async move {
            if let Some(before) = after {
                let _ = before.await;
            }
            source.await
        }));
        Running { spec, tracker, stop, task }
    }

    /// Every trigger's status (of one function, or all), by function and name.
    pub fn statuses(&self, function: Option<&str>) -> Vec<TriggerStatus> {
        self.running
            .lock()
            .iter()
            .filter(|((f, _), _)| function.is_none_or(|want| want == f))
            .map(|(_, r)| r.tracker.snapshot())
            .collect()
    }

    /// Follows `changes` (bumped at every route change), reconciling with
    /// `snapshot()` each time, until `shutdown`; then stops every source,
    /// keeping broker sessions for the next start.
    pub async fn run<F>(
        self: Arc<Self>,
        mut changes: watch::Receiver<u64>,
        snapshot: F,
        shutdown: impl std::future::Future<Output = ()>,
    ) where
        F: Fn() -> Vec<Wanted> + Send,
    {
        tokio::pin!(shutdown);
        loop {
            changes.borrow_and_update();
            self.reconcile(&snapshot());
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = &mut shutdown => break,
            }
        }
        self.stop_all().await;
    }

    /// Stops every source and waits (at most the grace) for them to finish
    /// the events in hand.
    pub async fn stop_all(&self) {
        let all: Vec<Running> = std::mem::take(&mut *self.running.lock()).into_values().collect();
        let mut tasks = Vec::new();
        for r in all {
            let _ = r.stop.send(Stop::Shutdown);
            tasks.extend(r.task);
        }
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        if tokio::time::timeout(self.config.stop_grace, futures_util::future::join_all(tasks)).await.is_err() {
            tracing::warn!("trigger sources still busy after the grace period; stopping them");
            aborts.iter().for_each(|a| a.abort());
        }
    }
}
