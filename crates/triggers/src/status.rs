//! What `flick triggers` shows: each trigger's state and counts, updated by
//! its source as it connects, fires and fails.

use std::sync::Arc;

use flick_core::now_ms;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerState {
    /// Started, not yet connected (or a cron schedule not yet armed).
    Starting,
    /// Subscribed to its broker.
    Connected,
    /// A cron schedule waiting for its next tick.
    Scheduled,
    /// Not connected: waiting to try again (see `last_error`, `next_attempt_ms`).
    Retrying,
    /// A CloudEvents trigger: matched by `POST /events`, nothing to run.
    Passive,
    Stopped,
}

impl TriggerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Connected => "connected",
            Self::Scheduled => "scheduled",
            Self::Retrying => "retrying",
            Self::Passive => "passive",
            Self::Stopped => "stopped",
        }
    }
}

/// One trigger of one function, as the API lists it. Counts start at zero
/// when flick starts (and when the trigger's definition changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerStatus {
    pub function: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// What it listens to (broker credentials left out).
    pub target: String,
    /// The revision whose manifest declares it.
    pub revision: u32,
    pub state: TriggerState,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// When a retrying trigger tries again.
    pub next_attempt_ms: Option<i64>,
    pub last_fired_ms: Option<i64>,
    /// Events handed to the function (queued, or called for request-reply).
    pub fired: u64,
    /// Events that could not be handed over (each failed attempt counts).
    pub failed: u64,
    pub since_ms: i64,
}

/// A source's handle on its status.
#[derive(Clone, Debug)]
pub(crate) struct Tracker(Arc<Mutex<TriggerStatus>>);

impl Tracker {
    pub fn new(status: TriggerStatus) -> Self {
        Self(Arc::new(Mutex::new(status)))
    }

    pub fn snapshot(&self) -> TriggerStatus {
        self.0.lock().clone()
    }

    pub fn set_revision(&self, revision: u32) {
        self.0.lock().revision = revision;
    }

    pub fn set_state(&self, state: TriggerState) {
        let mut s = self.0.lock();
        s.state = state;
        if state != TriggerState::Retrying {
            s.next_attempt_ms = None;
        }
    }

    pub fn retrying(&self, error: impl ToString, next_in: std::time::Duration) {
        let mut s = self.0.lock();
        s.state = TriggerState::Retrying;
        s.last_error = Some(error.to_string());
        s.last_error_ms = Some(now_ms());
        s.next_attempt_ms = Some(now_ms() + next_in.as_millis() as i64);
    }

    /// Stopped for good by an error no retry can fix.
    pub fn broken(&self, error: impl ToString) {
        let mut s = self.0.lock();
        s.state = TriggerState::Stopped;
        s.next_attempt_ms = None;
        s.last_error = Some(error.to_string());
        s.last_error_ms = Some(now_ms());
    }

    pub fn fired(&self) {
        let mut s = self.0.lock();
        s.fired += 1;
        s.last_fired_ms = Some(now_ms());
    }

    pub fn failed(&self, error: impl ToString) {
        let mut s = self.0.lock();
        s.failed += 1;
        s.last_error = Some(error.to_string());
        s.last_error_ms = Some(now_ms());
    }
}
