//! The seam between sources and the platform: what a source does with an
//! event. The platform's implementation is [`crate::PlatformSink`]; tests use
//! channel-backed ones.

use async_trait::async_trait;
use flick_core::{ActivationId, Invocation};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The function is gone (deleted while the event was on its way).
    #[error("function `{0}` does not exist")]
    Gone(String),
    /// Not accepted now (queue full, disk full, store busy): try again later.
    #[error("{0}")]
    Refused(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// A function's answer to a synchronous call (NATS request-reply).
#[derive(Clone, Debug)]
pub struct Reply {
    pub activation_id: String,
    /// `success`, `error`, `timeout`, … (the activation's status).
    pub status: String,
    pub http_status: u16,
    pub body: Vec<u8>,
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Durably queues an async invocation. `Ok` means it is stored and will
    /// run: only then may the source acknowledge the message to its broker.
    /// `idempotency_key`, when given, makes a second submit of the same event
    /// (a redelivery) return the first activation instead of queueing again.
    async fn submit(&self, inv: Invocation, idempotency_key: Option<String>) -> Result<ActivationId, SinkError>;

    /// Runs an invocation and waits for its answer (NATS request-reply).
    async fn call(&self, inv: Invocation) -> Result<Reply, SinkError>;

    /// The last tick a cron trigger fired: the schedule it was fired under
    /// (`"<schedule> <zone>"`) and its scheduled time (ms since the epoch).
    async fn last_tick(&self, function: &str, trigger: &str) -> Result<Option<(String, i64)>, SinkError>;

    /// Records the last tick a cron trigger fired.
    async fn set_last_tick(&self, function: &str, trigger: &str, schedule: &str, tick_ms: i64)
    -> Result<(), SinkError>;
}
