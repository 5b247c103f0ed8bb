//! CloudEvents routing: an event (posted to `/events`, or a function's reply
//! event) goes to every function whose current revision has a
//! `cloudevents` trigger whose filter it matches, each delivery a durable
//! async invocation of a binary-mode request (`ce-*` headers, data as the
//! body), so Knative- and Functions-Framework-style handlers run unchanged.
//!
//! Parsing and rendering events is `flick_core::cloudevent`'s (pure); the
//! HTTP content modes of `POST /events` are the API's. This module only
//! decides where an event goes and hands each delivery to
//! [`Platform::submit`].
//!
//! # Loops
//! A reply to an event is routed like a posted one, one hop further
//! (`flickhops`, set on every delivered event). Routing stops at
//! `event_max_hops`, with a warning and a note on the replying activation.
//! Each delivery's idempotency key is (trigger, source, id): a function is
//! never run twice for the same event through the same trigger within the
//! idempotency window, so a reply that repeats the event it answers (same
//! source and id) does not re-trigger the function that sent it, and a
//! producer's retried POST of an event is delivered once.

use std::collections::BTreeMap;
use std::sync::Arc;

use flick_core::TriggerKind;
use flick_core::cloudevent::{self, CloudEvent, HOPS};
use flick_core::{ActivationId, Cause, Invocation, LogLine, LogStream, Trace, now_ms};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Caller, Platform, PlatformError, Route};

/// How many reply hops an event may travel by default (see the module docs).
pub const DEFAULT_MAX_HOPS: u32 = 8;

/// One function an event was handed to.
#[derive(Clone, Debug, Serialize)]
pub struct EventDelivery {
    pub function: String,
    pub trigger: String,
    pub activation_id: ActivationId,
    /// The same event already went to this trigger within the idempotency
    /// window: `activation_id` is that earlier delivery, nothing new runs.
    pub duplicate: bool,
}

/// A function's current route and one of its `cloudevents` triggers (by
/// name), with that trigger's filter.
type Target = ((Arc<Route>, String), BTreeMap<String, String>);

impl Platform {
    /// Every current revision's `cloudevents` triggers with their filters,
    /// in the order of function names (so routing is deterministic).
    fn cloudevent_targets(&self) -> Vec<Target> {
        let mut routes: Vec<Arc<Route>> =
            self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        routes.sort_by(|a, b| a.revision.function.cmp(&b.revision.function));
        let mut out = Vec::new();
        for route in routes {
            for t in &route.revision.manifest.triggers {
                if let TriggerKind::CloudEvents { filter } = &t.kind {
                    out.push(((route.clone(), t.name.clone()), filter.clone()));
                }
            }
        }
        out
    }

    /// Routes an event posted to `/events`: a durable async invocation for
    /// every matching trigger. No match is not an error (an empty list).
    /// `trace` is the poster's (its `traceparent` header, else a new
    /// trace); the event's own `traceparent` attribute, when valid, wins.
    pub async fn publish_event(
        self: &Arc<Self>,
        event: &CloudEvent,
        trace: Trace,
    ) -> Result<Vec<EventDelivery>, PlatformError> {
        let limit = self.config.event_max_hops;
        if event.hops() > limit {
            return Err(PlatformError::BadRequest(format!(
                "event `{}`: `{HOPS}` is {}, over the hop limit of {limit} (a loop through /events?)",
                event.id(),
                event.hops()
            )));
        }
        self.deliver_event(event, None, trace).await
    }

    /// Submits `event` to every matching trigger, except the function named
    /// in `skip` (the one that replied with this very event id).
    async fn deliver_event(
        self: &Arc<Self>,
        event: &CloudEvent,
        skip: Option<&str>,
        trace: Trace,
    ) -> Result<Vec<EventDelivery>, PlatformError> {
        // The CloudEvents distributed-tracing extension: the event's own
        // trace, when it carries a valid one.
        let trace = match event.get("traceparent") {
            Some(tp) => Trace::from_values(Some(tp), event.get("tracestate")),
            None => trace,
        };
        let targets = self.cloudevent_targets();
        let mut out = Vec::new();
        for (route, trigger) in cloudevent::route(event, &targets) {
            let function = route.revision.function.clone();
            if skip == Some(function.as_str()) {
                continue;
            }
            let mut inv = event_invocation(&function, &trigger, event);
            // One span per delivery, all under the same parent.
            inv.trace = Some(trace.sibling());
            let key = idempotency_key(&trigger, event);
            let submitted = self.submit(route, Caller::Admin, inv, Some(key)).await?;
            out.push(EventDelivery { function, trigger, activation_id: submitted.id, duplicate: submitted.existing });
        }
        Ok(out)
    }

    /// After a function invoked for a CloudEvent (`delivered`) answered
    /// with `status`/`headers`/`body`: routes the reply event it answered
    /// with, if any. Returns notes for that activation's record (what was
    /// routed, or why nothing was). Called by the dispatcher when an
    /// attempt has succeeded, before its record is written.
    pub async fn route_reply(
        self: &Arc<Self>,
        delivered: &Invocation,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Vec<LogLine> {
        if delivered.cause != Cause::CloudEvent || !(200..300).contains(&status) {
            return Vec::new();
        }
        let note =
            |text: String| LogLine { ts_ms: now_ms(), stream: LogStream::Stderr, text: format!("flick: {text}") };
        let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
        let mut reply = match cloudevent::reply_from_response(pairs, body) {
            Ok(Some(reply)) => reply,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::warn!(function = %delivered.function, activation = %delivered.id, error = %e, "reply event not routed");
                return vec![note(format!("the reply is not a valid CloudEvent, not routed: {e}"))];
            }
        };
        let header =
            |name: &str| delivered.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let hops = header("ce-flickhops").and_then(|h| h.parse::<u32>().ok()).unwrap_or(0) + 1;
        let limit = self.config.event_max_hops;
        if hops > limit {
            tracing::warn!(
                function = %delivered.function, activation = %delivered.id, event = reply.id(), hops, limit,
                "reply event not routed: over the hop limit (a loop of replies?)"
            );
            return vec![note(format!(
                "reply event `{}` not routed: it would be hop {hops}, over the limit of {limit} (event_max_hops)",
                reply.id()
            ))];
        }
        reply.set_hops(hops);
        // A function answering with the event it was given (same id) is not
        // handed it again.
        let same_id = header("ce-id").is_some_and(|id| id == reply.id());
        let skip = same_id.then_some(delivered.function.as_str());
        // The reply's deliveries are children of the call that replied.
        let trace = delivered.trace.as_ref().map_or_else(Trace::start, Trace::child);
        match self.deliver_event(&reply, skip, trace).await {
            Ok(sent) if sent.is_empty() && same_id => vec![note(format!(
                "reply event `{}` has the id of the event `{}` was given: not routed back to it; no other trigger matched",
                reply.id(),
                delivered.function
            ))],
            Ok(sent) if sent.is_empty() => {
                vec![note(format!("reply event `{}` (type `{}`) matched no trigger", reply.id(), reply.ty()))]
            }
            Ok(sent) => {
                let to: Vec<String> = sent
                    .iter()
                    .map(|d| {
                        let dup = if d.duplicate { ", duplicate" } else { "" };
                        format!("{} ({}{dup})", d.function, d.activation_id)
                    })
                    .collect();
                vec![note(format!("reply event `{}` (hop {hops}) routed to {}", reply.id(), to.join(", ")))]
            }
            Err(e) => {
                tracing::warn!(function = %delivered.function, activation = %delivered.id, error = %e, "reply event not routed");
                vec![note(format!("reply event `{}` could not be queued: {e}", reply.id()))]
            }
        }
    }
}

/// The request a function gets for an event: `POST /` in binary mode,
/// with its hop count.
fn event_invocation(function: &str, trigger: &str, event: &CloudEvent) -> Invocation {
    let mut event = event.clone();
    event.set_hops(event.hops());
    let (headers, body) = event.to_binary();
    let mut inv = Invocation::post(function, Cause::CloudEvent, body);
    inv.headers = headers;
    inv.trigger = Some(trigger.to_string());
    inv
}

/// One event through one trigger, whatever the length of its id and source.
fn idempotency_key(trigger: &str, event: &CloudEvent) -> String {
    let mut h = Sha256::new();
    h.update(event.source().as_bytes());
    h.update([0]);
    h.update(event.id().as_bytes());
    format!("cloudevent:{trigger}:{}", hex::encode(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pairs: &[(&str, &str)]) -> CloudEvent {
        let mut all = vec![("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")];
        all.extend_from_slice(pairs);
        cloudevent::from_binary(all.iter().map(|(n, v)| (*n, v.as_bytes())), b"{\"k\":1}").unwrap()
    }

    #[test]
    fn deliveries_are_binary_mode_requests_with_a_hop_count() {
        let ev = event(&[("content-type", "application/json"), ("ce-region", "eu west")]);
        let inv = event_invocation("f", "cloudevents-1", &ev);
        assert_eq!((inv.method.as_str(), inv.path.as_str(), inv.cause), ("POST", "/", Cause::CloudEvent));
        assert_eq!(inv.trigger.as_deref(), Some("cloudevents-1"));
        assert_eq!(inv.body, b"{\"k\":1}");
        let get = |n: &str| inv.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("ce-id"), Some("1"));
        assert_eq!(get("ce-flickhops"), Some("0"));
        assert_eq!(get("ce-region"), Some("eu%20west"));
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("ce-datacontenttype"), None);
        // What the function receives parses back to the same event.
        let back =
            cloudevent::from_binary(inv.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), &inv.body).unwrap();
        assert_eq!((back.get("region"), back.hops()), (Some("eu west"), 0));
    }

    #[test]
    fn idempotency_keys_follow_trigger_source_and_id() {
        let a = event(&[]);
        assert_eq!(idempotency_key("t1", &a), idempotency_key("t1", &a));
        assert_ne!(idempotency_key("t1", &a), idempotency_key("t2", &a));
        let mut c = a.clone();
        c.attributes.insert("id".into(), "2".into());
        assert_ne!(idempotency_key("t1", &a), idempotency_key("t1", &c));
        let mut long = a.clone();
        long.attributes.insert("source".into(), "x".repeat(10_000));
        assert!(idempotency_key("t1", &long).len() < 80);
    }
}
