//! The sources against the real brokers (Mosquitto on 127.0.0.1:1883,
//! nats-server with JetStream on 127.0.0.1:4222; `.ci/run` starts them),
//! with a channel-backed sink in place of the platform. Every test uses its
//! own topics, subjects and streams: tests run in parallel on shared brokers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flick_core::{ActivationId, Cause, Invocation, Manifest, TriggerSpec};
use flick_triggers::{Manager, ManagerConfig, Reply, Sink, SinkError, TriggerState, TriggerStatus, Wanted};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Queues into a channel; answers calls with the event it got; keeps ticks in memory.
struct ChannelSink {
    tx: mpsc::UnboundedSender<(Invocation, Option<String>)>,
    ticks: Mutex<HashMap<(String, String), (String, i64)>>,
    /// Refuse this many submits first (a full queue).
    refuse: Mutex<u32>,
}

#[async_trait]
impl Sink for ChannelSink {
    async fn submit(&self, inv: Invocation, key: Option<String>) -> Result<ActivationId, SinkError> {
        {
            let mut refuse = self.refuse.lock();
            if *refuse > 0 {
                *refuse -= 1;
                return Err(SinkError::Refused("queue full".into()));
            }
        }
        let id = inv.id.clone();
        self.tx.send((inv, key)).map_err(|e| SinkError::Failed(e.to_string()))?;
        Ok(id)
    }
    async fn call(&self, inv: Invocation) -> Result<Reply, SinkError> {
        let mut body = b"answer:".to_vec();
        body.extend_from_slice(&inv.body);
        let id = inv.id.to_string();
        self.tx.send((inv, None)).map_err(|e| SinkError::Failed(e.to_string()))?;
        Ok(Reply { activation_id: id, status: "success".into(), http_status: 200, body })
    }
    async fn last_tick(&self, function: &str, trigger: &str) -> Result<Option<(String, i64)>, SinkError> {
        Ok(self.ticks.lock().get(&(function.into(), trigger.into())).cloned())
    }
    async fn set_last_tick(
        &self,
        function: &str,
        trigger: &str,
        schedule: &str,
        tick_ms: i64,
    ) -> Result<(), SinkError> {
        self.ticks.lock().insert((function.into(), trigger.into()), (schedule.into(), tick_ms));
        Ok(())
    }
}

type Events = mpsc::UnboundedReceiver<(Invocation, Option<String>)>;

fn setup() -> (Arc<ChannelSink>, Arc<Manager>, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Arc::new(ChannelSink { tx, ticks: Mutex::default(), refuse: Mutex::new(0) });
    let manager = Manager::new(
        sink.clone(),
        ManagerConfig { instance: format!("t{}", std::process::id()), stop_grace: Duration::from_secs(5) },
    );
    (sink, manager, rx)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), flick_core::now_ms() % 1_000_000_000)
}

/// The triggers of a manifest with `triggers` appended.
fn triggers(toml: &str) -> Vec<TriggerSpec> {
    let text = format!("name = \"f\"\nruntime = \"exec\"\nhandler = \"cat\"\n{toml}");
    Manifest::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}")).triggers
}

fn wanted(function: &str, toml: &str) -> Vec<Wanted> {
    vec![Wanted { function: function.into(), revision: 1, triggers: triggers(toml) }]
}

async fn wait_status(m: &Manager, what: &str, ok: impl Fn(&TriggerStatus) -> bool) -> TriggerStatus {
    for _ in 0..300 {
        if let Some(s) = m.statuses(None).into_iter().find(|s| ok(s)) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {what}: {:?}", m.statuses(None));
}

async fn recv_n(
    rx: &mut mpsc::UnboundedReceiver<(Invocation, Option<String>)>,
    n: usize,
) -> Vec<(Invocation, Option<String>)> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(x)) => got.push(x),
            _ => panic!("got {} of {n} events", got.len()),
        }
    }
    got
}

fn body(inv: &Invocation) -> serde_json::Value {
    serde_json::from_slice(&inv.body).unwrap()
}

fn mosquitto_pub(topic: &str, qos: u8, messages: &[&str]) {
    for m in messages {
        let st = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", "1883", "-q", &qos.to_string(), "-t", topic, "-m", m])
            .status()
            .expect("mosquitto_pub (apt install mosquitto-clients)");
        assert!(st.success());
    }
}

#[tokio::test]
async fn mqtt_qos1_messages_with_wildcards_reach_the_sink_once_each() {
    let (_sink, m, mut rx) = setup();
    let base = unique("flick-test/");
    m.reconcile(&wanted(
        "f",
        &format!("[[triggers]]\ntype = \"mqtt\"\nname = \"temps\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"{base}/+/temperature\"\nqos = 1\n"),
    ));
    wait_status(&m, "connected", |s| s.state == TriggerState::Connected).await;
    let n = 20;
    let msgs: Vec<String> = (0..n).map(|i| format!("{{\"i\":{i}}}")).collect();
    let refs: Vec<&str> = msgs.iter().map(String::as_str).collect();
    mosquitto_pub(&format!("{base}/kitchen/temperature"), 1, &refs);
    mosquitto_pub(&format!("{base}/kitchen/humidity"), 1, &["not matched"]);
    mosquitto_pub(&format!("{base}/hall/temperature"), 1, &["plain text \u{1b}[2J"]);
    let got = recv_n(&mut rx, n + 1).await;
    let mut seen: Vec<i64> = Vec::new();
    for (inv, key) in &got {
        assert_eq!((inv.cause, inv.trigger.as_deref(), key.as_deref()), (Cause::Mqtt, Some("temps"), None));
        let e = body(inv);
        assert_eq!(e["qos"], 1);
        if e["topic"] == format!("{base}/hall/temperature") {
            assert_eq!(e["payload_base64"], true);
        } else {
            assert_eq!(e["topic"], format!("{base}/kitchen/temperature"));
            seen.push(e["payload"]["i"].as_i64().unwrap());
        }
    }
    seen.sort();
    assert_eq!(seen, (0..n as i64).collect::<Vec<_>>(), "each message once, in any order");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "no duplicates, nothing from the unmatched topic");
    let s = m.statuses(Some("f")).pop().unwrap();
    assert_eq!((s.fired, s.failed), (n as u64 + 1, 0));
    m.stop_all().await;
}

#[tokio::test]
async fn mqtt_messages_refused_by_the_queue_are_held_and_retried_not_lost() {
    let (sink, m, mut rx) = setup();
    let topic = unique("flick-test/refused/");
    *sink.refuse.lock() = 3;
    m.reconcile(&wanted(
        "refused",
        &format!("[[triggers]]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"{topic}\"\n"),
    ));
    wait_status(&m, "connected", |s| s.state == TriggerState::Connected).await;
    mosquitto_pub(&topic, 1, &["1", "2"]);
    let got = recv_n(&mut rx, 2).await;
    let payloads: Vec<_> = got.iter().map(|(i, _)| body(i)["payload"].clone()).collect();
    assert_eq!(payloads, [1, 2], "in order, after the refusals");
    let s = m.statuses(None).pop().unwrap();
    assert_eq!((s.fired, s.failed, s.name.as_str()), (2, 3, "mqtt-1"));
    m.stop_all().await;
}

#[tokio::test]
async fn mqtt_session_keeps_qos1_messages_published_while_stopped() {
    let topic = unique("flick-test/session/");
    let spec = format!("[[triggers]]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"{topic}\"\n");
    let (sink, m, mut rx) = setup();
    m.reconcile(&wanted("session", &spec));
    wait_status(&m, "connected", |s| s.state == TriggerState::Connected).await;
    m.stop_all().await; // a flick shutdown: the session stays at the broker
    mosquitto_pub(&topic, 1, &["\"while down\""]);
    // The same data dir (instance), function and trigger: the same client id.
    let m2 = Manager::new(
        sink.clone(),
        ManagerConfig { instance: format!("t{}", std::process::id()), stop_grace: Duration::from_secs(5) },
    );
    m2.reconcile(&wanted("session", &spec));
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(body(&got[0].0)["payload"], "while down");
    // A redeploy that changes the topic: the old subscription goes before the new one comes.
    let topic2 = format!("{topic}/v2");
    m2.reconcile(&wanted("session", &spec.replace(&format!("\"{topic}\""), &format!("\"{topic2}\""))));
    wait_status(&m2, "connected to v2", |s| s.state == TriggerState::Connected && s.target.contains("/v2")).await;
    mosquitto_pub(&topic, 1, &["\"old\""]);
    mosquitto_pub(&topic2, 1, &["\"new\""]);
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(body(&got[0].0)["payload"], "new");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "the old topic still delivers");
    // Removed (not shut down): the subscription goes, nothing is kept for it.
    m2.reconcile(&[]);
    assert!(m2.statuses(None).is_empty());
}

#[tokio::test]
async fn nats_core_publish_and_request_reply() {
    let (_sink, m, mut rx) = setup();
    let subject = unique("flick.test.core.");
    m.reconcile(&wanted(
        "g",
        &format!("[[triggers]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"{subject}.*\"\n"),
    ));
    wait_status(&m, "connected", |s| s.state == TriggerState::Connected).await;
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let n = 25;
    for i in 0..n {
        client.publish(format!("{subject}.x"), format!("{i}").into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let got = recv_n(&mut rx, n).await;
    let mut seen: Vec<i64> = got.iter().map(|(inv, _)| body(inv)["payload"].as_i64().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, (0..n as i64).collect::<Vec<_>>());
    assert!(got.iter().all(|(inv, _)| inv.cause == Cause::Nats && inv.trigger.as_deref() == Some("nats-1")));

    let answer = client.request(format!("{subject}.ask"), "{\"q\":1}".into()).await.unwrap();
    assert!(answer.payload.starts_with(b"answer:"), "{:?}", answer.payload);
    assert_eq!(answer.headers.as_ref().and_then(|h| h.get("Flick-Status")).map(|v| v.as_str()), Some("success"));
    let (inv, _) = recv_n(&mut rx, 1).await.pop().unwrap();
    assert_eq!((body(&inv)["reply"].as_bool(), body(&inv)["payload"]["q"].as_i64()), (Some(true), Some(1)));
    m.stop_all().await;
}

#[tokio::test]
async fn jetstream_durable_consumer_acks_after_the_sink_and_redelivers_refusals() {
    let (sink, m, mut rx) = setup();
    let stream = unique("FLICKTEST");
    let subject = unique("flick.test.js.");
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{subject}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let n = 10;
    for i in 0..n {
        js.publish(format!("{subject}.a"), format!("{i}").into()).await.unwrap().await.unwrap();
    }
    *sink.refuse.lock() = 2;
    m.reconcile(&wanted(
        "h",
        &format!("[[triggers]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"{subject}.>\"\nstream = \"{stream}\"\nconsumer = \"flick-h\"\n"),
    ));
    let got = recv_n(&mut rx, n).await;
    let mut seen: Vec<i64> = got.iter().map(|(inv, _)| body(inv)["payload"].as_i64().unwrap()).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..n as i64).collect::<Vec<_>>(),
        "published before the trigger started, refused ones redelivered"
    );
    assert!(got.iter().all(|(_, key)| key.as_deref().is_some_and(|k| k.starts_with(&format!("flick-js:{stream}:")))));
    // Everything acked: a restart of the consumer gets nothing again.
    m.stop_all().await;
    let (_sink2, m2, mut rx2) = setup();
    m2.reconcile(&wanted(
        "h",
        &format!("[[triggers]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"{subject}.>\"\nstream = \"{stream}\"\nconsumer = \"flick-h\"\n"),
    ));
    wait_status(&m2, "connected", |s| s.state == TriggerState::Connected).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx2.try_recv().is_err(), "acked messages came again");
    m2.stop_all().await;
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test]
async fn a_broker_that_is_down_shows_retrying_with_the_error() {
    let (_sink, m, _rx) = setup();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    m.reconcile(&wanted(
        "down",
        &format!("[[triggers]]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic = \"x\"\n\n[[triggers]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\nsubject = \"x\"\n"),
    ));
    for kind in ["mqtt", "nats"] {
        let s = wait_status(&m, "retrying", |s| s.kind == kind && s.state == TriggerState::Retrying).await;
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains(&port.to_string()) || e.to_lowercase().contains("refused")),
            "{s:?}"
        );
        assert!(s.next_attempt_ms.is_some());
    }
    m.reconcile(&[]);
    assert!(m.statuses(None).is_empty());
}

#[tokio::test]
async fn cron_fires_every_second_and_catches_up_once_after_a_gap() {
    let (sink, m, mut rx) = setup();
    let spec =
        "[[triggers]]\ntype = \"cron\"\nname = \"tick\"\nschedule = \"* * * * * *\"\ntimezone = \"Europe/Rome\"\n";
    m.reconcile(&wanted("c", spec));
    let got = recv_n(&mut rx, 2).await;
    for (inv, key) in &got {
        let e = body(inv);
        assert_eq!(
            (inv.cause, e["trigger"].as_str(), e["catch_up"].as_bool()),
            (Cause::Cron, Some("tick"), Some(false))
        );
        assert!(
            e["scheduled_time"].as_str().unwrap().ends_with("+01:00")
                || e["scheduled_time"].as_str().unwrap().ends_with("+02:00")
        );
        assert_eq!(key.as_deref(), Some(format!("flick-cron:tick:{}", e["scheduled_ms"]).as_str()));
    }
    m.stop_all().await;
    while rx.try_recv().is_ok() {}
    let (_, last) = sink.ticks.lock().get(&("c".to_string(), "tick".to_string())).cloned().unwrap();
    // Down for a while: several ticks missed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let m2 = Manager::new(sink.clone(), ManagerConfig { instance: "x".into(), stop_grace: Duration::from_secs(5) });
    m2.reconcile(&wanted("c", spec));
    let (first, _) = recv_n(&mut rx, 1).await.pop().unwrap();
    let e = body(&first);
    assert_eq!(e["catch_up"], true, "{e}");
    assert!(e["missed"].as_u64().unwrap() >= 3, "{e}");
    assert!(e["scheduled_ms"].as_i64().unwrap() > last);
    let (second, _) = recv_n(&mut rx, 1).await.pop().unwrap();
    assert_eq!(body(&second)["catch_up"], false, "one catch-up, then the schedule");
    m2.stop_all().await;
}
