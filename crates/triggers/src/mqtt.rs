//! MQTT triggers (rumqttc, plain TCP): one subscription per trigger, with a
//! persistent session (`clean_session = false`, a client id stable per
//! flick data dir, function and trigger), so QoS 1 messages published while
//! flick was down are delivered when it is back.
//!
//! **Ack rule.** Acks are manual: a QoS 1 message is acknowledged to the
//! broker only after its invocation is durably queued. If flick dies in
//! between, the broker delivers it again: at least once, and a message can
//! run twice (the duplicate has `dup: true`). A message the queue refuses
//! (full, disk full) is retried with backoff and held unacknowledged
//! meanwhile; QoS 0 messages are fire-and-forget.
//!
//! Two tasks per trigger: one polls the connection (it must keep polling
//! for keep-alives while an event waits for the queue), one hands messages
//! to the sink in order and acks them; a third, at stop, queues the
//! goodbye after the submitter's last ack.

use std::time::Duration;

use flick_core::Cause;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::manager::{Ctx, Stop, sleep_or_stop};
use crate::status::TriggerState;

/// Largest message accepted from the broker (a larger one ends the
/// connection: rumqttc cannot skip it).
const MAX_INCOMING: usize = 4 << 20;
/// Messages received and not yet handed to the sink.
const BUFFER: usize = 1024;

pub(crate) async fn run(ctx: Ctx, url: String, topic: String, qos: u8, mut stop: watch::Receiver<Stop>) {
    let Ok(parsed) = url::Url::parse(&url) else {
        return ctx.tracker.broken(format!("`{url}` is not a URL"));
    };
    let host = parsed.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = parsed.port().unwrap_or(1883);
    let mut options = MqttOptions::new(ctx.client_id.clone(), host, port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_INCOMING, 64 << 10);
    if !parsed.username().is_empty() {
        let user = url_decode(parsed.username());
        options.set_credentials(user, url_decode(parsed.password().unwrap_or_default()));
    }
    let qos = if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::channel::<Publish>(BUFFER);
    let submitter = tokio::spawn(submit_loop(ctx.clone(), client.clone(), rx, stop.clone()));
    // Stopping goes through the connection's own request queue, never by
    // cancelling a poll half-way (rumqttc's poll is not cancel-safe: a
    // dropped poll can lose the unsubscribe and the goodbye). Once the
    // submitter has queued the ack of the message in hand: unsubscribe (on
    // removal, so the broker stops keeping messages for a session no one
    // will resume), then disconnect; the poll loop ends when the broker
    // has closed the connection after the disconnect.
    let goodbye = {
        let (client, topic, mut stop) = (client.clone(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s != Stop::Run).await;
            let _ = submitter.await;
            // On removal the disconnect follows the broker's UNSUBACK
            // (the poll loop sends it): a goodbye right behind the
            // unsubscribe can be processed first.
            if *stop.borrow() == Stop::Removed {
                let _ = client.unsubscribe(topic).await;
            } else {
                let _ = client.disconnect().await;
            }
        })
    };

    let mut delays = crate::backoff();
    let mut connected = false;
    loop {
        let event = if connected {
            eventloop.poll().await
        } else {
            // Not connected (or connecting): nothing to lose by cancelling.
            tokio::select! {
                _ = stop.wait_for(|s| *s != Stop::Run) => break,
                event = eventloop.poll() => event,
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                tracing::debug!(function = %ctx.function, trigger = %ctx.trigger, session_present = ack.session_present, "mqtt connected");
                // Subscribing again on a kept session is harmless, and
                // needed when the broker lost it.
                if *stop.borrow() == Stop::Run
                    && let Err(e) = client.try_subscribe(topic.clone(), qos)
                {
                    ctx.tracker.failed(format!("subscribing: {e}"));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    let wait = delays.next().unwrap_or(Duration::from_secs(30));
                    ctx.tracker.retrying(format!("the broker refused the subscription to `{topic}`"), wait);
                } else {
                    ctx.tracker.set_state(TriggerState::Connected);
                    delays = crate::backoff();
                }
            }
            // Written is not yet processed: the broker closing the
            // connection (the next poll's error) says it was, so a
            // successor with the same client id finds the session as this
            // one left it.
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
                break;
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                let _ = client.try_disconnect();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => match tx.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) if p.qos == QoS::AtMostOnce => {
                    ctx.tracker.failed("a QoS 0 message was dropped: the trigger is behind");
                }
                // QoS 1 deliveries are bounded by the broker's in-flight
                // window, so the buffer is never full of them; should it
                // be, the message stays unacked and comes again.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    ctx.tracker.failed("a QoS 1 message was left unacked: the trigger is behind");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            Ok(_) => {}
            Err(e) => {
                connected = false;
                if *stop.borrow() != Stop::Run {
                    break;
                }
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::debug!(function = %ctx.function, trigger = %ctx.trigger, error = %e, "mqtt connection failed");
                ctx.tracker.retrying(format!("mqtt {}: {e}", flick_core::trigger::redact_url(&url)), wait);
                if sleep_or_stop(wait, &mut stop).await {
                    break;
                }
            }
        }
    }
    goodbye.abort();
    ctx.tracker.set_state(TriggerState::Stopped);
}

/// Hands messages to the sink in order; acks each QoS 1 message once its
/// invocation is queued. Stops after the message in hand when asked to.
async fn submit_loop(ctx: Ctx, client: AsyncClient, mut rx: mpsc::Receiver<Publish>, mut stop: watch::Receiver<Stop>) {
    loop {
        let p = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = stop.wait_for(|s| *s != Stop::Run) => return,
        };
        let inv = crate::event::invocation(&ctx.function, Cause::Mqtt, &ctx.trigger, event(&ctx.trigger, &p));
        let mut delays = crate::backoff();
        loop {
            match ctx.sink.submit(inv.clone(), None).await {
                Ok(_) => {
                    ctx.tracker.fired();
                    if p.qos != QoS::AtMostOnce {
                        let _ = client.ack(&p).await;
                    }
                    break;
                }
                Err(e) => {
                    ctx.tracker.failed(&e);
                    if p.qos == QoS::AtMostOnce {
                        break;
                    }
                    // Unacked, the broker keeps it: wait and try again.
                    let wait = delays.next().unwrap_or(Duration::from_secs(30));
                    if sleep_or_stop(wait, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }
}

fn event(trigger: &str, p: &Publish) -> Value {
    let mut e = Map::new();
    e.insert("trigger".into(), trigger.into());
    e.insert("type".into(), "mqtt".into());
    e.insert("topic".into(), p.topic.clone().into());
    crate::event::put_payload(&mut e, &p.payload);
    e.insert("qos".into(), (p.qos as u8).into());
    e.insert("retain".into(), p.retain.into());
    e.insert("dup".into(), p.dup.into());
    Value::Object(e)
}

fn url_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}
