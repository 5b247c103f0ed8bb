//! Event sources of flick: the `[[triggers]]` of deployed functions that
//! invoke them without a waiting caller — cron schedules, MQTT
//! subscriptions and NATS subjects (core and JetStream) — and the
//! [`Manager`] that starts, restarts and stops them as functions are
//! deployed, rolled back and deleted. CloudEvents triggers are passive (the
//! API's `POST /events` routes them); the manager only lists them.
//!
//! # Layout
//! - `sink`: the [`Sink`] seam: where a fired event goes (durably queued,
//!   or called and answered for NATS request-reply), and where a cron
//!   trigger's last tick is kept. [`PlatformSink`] is the real one.
//! - `manager`: reconciles running sources with the current revisions and
//!   keeps each trigger's [`TriggerStatus`].
//! - `alarms`: the schedules of rule triggers' alarm feeds (OpenWhisk's
//!   `/whisk.system/alarms`), firing them through `Platform::fire`;
//! - `cron`, `mqtt`, `nats`: one source each; `event`: the JSON events
//!   they hand to functions.
//!
//! Sources never fail a deploy or flick itself: a broker that is down is
//! retried with backoff, and the trigger's status says so.

pub mod alarms;
mod cron;
mod event;
mod manager;
mod mqtt;
mod nats;
mod platform;
mod sink;
mod status;

pub use manager::{Manager, ManagerConfig, Wanted};
pub use platform::{PlatformSink, wanted_from_routes};
pub use sink::{Reply, Sink, SinkError};
pub use status::{TriggerState, TriggerStatus};

/// Reconnect and retry delays: exponential from 200 ms to 30 s, with jitter
/// (so many triggers of one broker do not reconnect in lockstep), forever.
pub(crate) fn backoff() -> impl Iterator<Item = std::time::Duration> + Send {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}
