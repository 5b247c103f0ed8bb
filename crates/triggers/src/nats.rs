//! NATS triggers (async-nats): a core subscription, or a JetStream durable
//! pull consumer when the trigger names `stream` and `consumer`.
//!
//! - **Core, with a reply subject** (request-reply): the function is called
//!   synchronously and its response body is published to the reply subject,
//!   with headers `Flick-Activation-Id` and `Flick-Status`.
//! - **Core, without one**: an async invocation. Core NATS has no acks: a
//!   message published while flick is down or disconnected is not seen.
//! - **JetStream**: each message is acked only after its invocation is
//!   durably queued, and nak'ed with a delay when the queue refuses it, so
//!   JetStream redelivers it. A message whose ack was lost (flick died
//!   between queueing and acking) is redelivered; its idempotency key
//!   (stream and stream sequence) makes the second submit find the first
//!   activation instead of queueing it again, within the idempotency window.
//!   The stream must exist; the durable consumer is created when missing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use flick_core::Cause;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, watch};

use crate::manager::{Ctx, Stop, sleep_or_stop};
use crate::status::TriggerState;

/// Request-reply calls in flight per trigger.
const MAX_CALLS: usize = 64;
/// How long JetStream waits before redelivering a message flick nak'ed.
const NAK_DELAY: Duration = Duration::from_secs(2);

pub(crate) async fn run(
    ctx: Ctx,
    url: String,
    subject: String,
    jetstream: Option<(String, String)>,
    mut stop: watch::Receiver<Stop>,
) {
    let shown = flick_core::trigger::redact_url(&url);
    let mut delays = crate::backoff();
    loop {
        let outcome = match connect(&ctx, &url).await {
            Ok(client) => {
                let result = match &jetstream {
                    None => core(&ctx, &client, &subject, &mut stop).await,
                    Some((stream, consumer)) => js(&ctx, &client, &subject, stream, consumer, &mut stop).await,
                };
                // Flush acks and replies before going.
                let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
                if result.is_ok() {
                    delays = crate::backoff();
                }
                result
            }
            Err(e) => Err(e),
        };
        if *stop.borrow() != Stop::Run {
            break;
        }
        let wait = delays.next().unwrap_or(Duration::from_secs(30));
        let error = match outcome {
            Ok(()) => "the subscription ended".to_string(),
            Err(e) => e,
        };
        ctx.tracker.retrying(format!("nats {shown}: {error}"), wait);
        if sleep_or_stop(wait, &mut stop).await {
            break;
        }
    }
    ctx.tracker.set_state(TriggerState::Stopped);
}

async fn connect(ctx: &Ctx, url: &str) -> Result<async_nats::Client, String> {
    let tracker = ctx.tracker.clone();
    let options = async_nats::ConnectOptions::new()
        .name(&ctx.client_id)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let tracker = tracker.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracker.set_state(TriggerState::Connected),
                    async_nats::Event::Disconnected => {
                        tracker.retrying("disconnected from the server; reconnecting", Duration::ZERO)
                    }
                    async_nats::Event::ServerError(e) => tracker.failed(format!("server error: {e}")),
                    async_nats::Event::SlowConsumer(_) => tracker.failed("slow consumer: messages were dropped"),
                    _ => {}
                }
            }
        });
    options.connect(url).await.map_err(|e| e.to_string())
}

async fn core(
    ctx: &Ctx,
    client: &async_nats::Client,
    subject: &str,
    stop: &mut watch::Receiver<Stop>,
) -> Result<(), String> {
    let mut sub = client.subscribe(subject.to_string()).await.map_err(|e| format!("subscribing: {e}"))?;
    ctx.tracker.set_state(TriggerState::Connected);
    let calls = Arc::new(Semaphore::new(MAX_CALLS));
    loop {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s != Stop::Run) => break,
            msg = sub.next() => match msg { Some(m) => m, None => return Ok(()) },
        };
        let mut e = event(&ctx.trigger, &msg.subject, &msg.payload, msg.headers.as_ref());
        match msg.reply {
            Some(reply) => {
                e["reply"] = true.into();
                let mut inv = crate::event::invocation(&ctx.function, Cause::Nats, &ctx.trigger, e);
                inv.trace = Some(message_trace(msg.headers.as_ref()));
                // Calls run side by side (a slow one does not hold up the
                // rest), at most MAX_CALLS at once.
                let Ok(permit) = calls.clone().acquire_owned().await else { break };
                let (ctx, client) = (ctx.clone(), client.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut headers = async_nats::HeaderMap::new();
                    let body = match ctx.sink.call(inv).await {
                        Ok(r) => {
                            ctx.tracker.fired();
                            headers.insert("Flick-Activation-Id", r.activation_id.as_str());
                            headers.insert("Flick-Status", r.status.as_str());
                            r.body
                        }
                        Err(e) => {
                            ctx.tracker.failed(&e);
                            headers.insert("Flick-Status", "platform_error");
                            serde_json::to_vec(
                                &serde_json::json!({"errorType": "Flick.TriggerError", "errorMessage": e.to_string()}),
                            )
                            .unwrap_or_default()
                        }
                    };
                    if let Err(e) = client.publish_with_headers(reply, headers, body.into()).await {
                        ctx.tracker.failed(format!("publishing the reply: {e}"));
                    }
                });
            }
            None => {
                let mut inv = crate::event::invocation(&ctx.function, Cause::Nats, &ctx.trigger, e);
                inv.trace = Some(message_trace(msg.headers.as_ref()));
                match ctx.sink.submit(inv, None).await {
                    Ok(_) => ctx.tracker.fired(),
                    // Core NATS cannot redeliver: the message is lost, and counted.
                    Err(e) => ctx.tracker.failed(&e),
                }
            }
        }
    }
    // Calls in flight finish and publish their replies.
    let _ = tokio::time::timeout(Duration::from_secs(30), calls.acquire_many(MAX_CALLS as u32)).await;
    Ok(())
}

async fn js(
    ctx: &Ctx,
    client: &async_nats::Client,
    subject: &str,
    stream: &str,
    consumer: &str,
    stop: &mut watch::Receiver<Stop>,
) -> Result<(), String> {
    let context = jetstream::new(client.clone());
    let s = context.get_stream(stream).await.map_err(|e| format!("stream `{stream}`: {e}"))?;
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(consumer.to_string()),
        filter_subject: subject.to_string(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let c = s
        .get_or_create_consumer(consumer, config)
        .await
        .map_err(|e| format!("consumer `{consumer}` on stream `{stream}`: {e}"))?;
    let mut messages = c.messages().await.map_err(|e| format!("consumer `{consumer}`: {e}"))?;
    ctx.tracker.set_state(TriggerState::Connected);
    loop {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s != Stop::Run) => return Ok(()),
            msg = messages.next() => match msg {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("consumer `{consumer}`: {e}")),
                Some(Ok(m)) => m,
            },
        };
        let mut e = event(&ctx.trigger, &msg.subject, &msg.payload, msg.headers.as_ref());
        let key = match msg.info() {
            Ok(info) => {
                e["stream"] = info.stream.into();
                e["consumer"] = info.consumer.into();
                e["sequence"] = info.stream_sequence.into();
                e["delivered"] = info.delivered.into();
                Some(format!("flick-js:{}:{}", info.stream, info.stream_sequence))
            }
            Err(_) => None,
        };
        let mut inv = crate::event::invocation(&ctx.function, Cause::Nats, &ctx.trigger, e);
        inv.trace = Some(message_trace(msg.headers.as_ref()));
        match ctx.sink.submit(inv, key).await {
            Ok(_) => {
                ctx.tracker.fired();
                if let Err(e) = msg.ack().await {
                    ctx.tracker.failed(format!("acking: {e}"));
                }
            }
            Err(e) => {
                ctx.tracker.failed(&e);
                let _ = msg.ack_with(jetstream::AckKind::Nak(Some(NAK_DELAY))).await;
            }
        }
    }
}

/// The trace a message's publisher asked to continue (its `traceparent`
/// and `tracestate` headers, validated as over HTTP), or a new one.
fn message_trace(headers: Option<&async_nats::HeaderMap>) -> flick_core::Trace {
    let values = |want: &str| -> Vec<String> {
        headers
            .into_iter()
            .flat_map(|h| h.iter())
            .filter(|(name, _)| name.to_string().eq_ignore_ascii_case(want))
            .flat_map(|(_, values)| values.iter().map(|v| v.to_string()))
            .collect()
    };
    let (parents, states) = (values("traceparent"), values("tracestate"));
    flick_core::Trace::from_headers(parents.iter().map(|v| v.as_bytes()), states.iter().map(|v| v.as_bytes()))
}

fn event(trigger: &str, subject: &str, payload: &[u8], headers: Option<&async_nats::HeaderMap>) -> Value {
    let mut e = Map::new();
    e.insert("trigger".into(), trigger.into());
    e.insert("type".into(), "nats".into());
    e.insert("subject".into(), subject.into());
    crate::event::put_payload(&mut e, payload);
    if let Some(h) = headers {
        let mut m = Map::new();
        for (name, values) in h.iter() {
            let v: Vec<Value> = values.iter().map(|v| Value::String(v.to_string())).collect();
            m.insert(name.to_string(), Value::Array(v));
        }
        e.insert("headers".into(), Value::Object(m));
    }
    e.insert("reply".into(), false.into());
    Value::Object(e)
}
