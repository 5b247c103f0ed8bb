//! Cluster mode end to end (issue 13): three `flick up` nodes on loopback
//! ports, each with its own data dir, sharing a fresh PostgreSQL database
//! and the machine's NATS JetStream. Deploy through one node and call
//! through another; a rollback reaches every node's routes; membership
//! (`flick nodes`), clean leaves and dead nodes; a cron trigger fires once
//! per tick across the cluster and moves when its holder is killed (so do
//! an alarm feed and an MQTT subscription, its broker session resumed);
//! async work survives a node's SIGKILL with one record per call; the
//! attacker's side of the node-to-node endpoint and of route misses.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (`FLICK_TEST_POSTGRES`) and NATS on
//! 127.0.0.1:4222 (`FLICK_TEST_NATS`); CI starts both.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Flick, Reply, manifest};
use serde_json::Value;

fn nats_url() -> String {
    std::env::var("FLICK_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// At most this many clusters run at once: the test harness runs every
/// test of this file in parallel, and eleven clusters of three nodes on two
/// cores starve heartbeats past the 5 s that drops a member.
const CLUSTERS_AT_ONCE: usize = 3;

static RUNNING: (std::sync::Mutex<usize>, std::sync::Condvar) = (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// A place among the clusters running, held until its cluster is dropped.
struct Turn;

impl Turn {
    fn take() -> Self {
        let (count, freed) = &RUNNING;
        let mut n = count.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *n >= CLUSTERS_AT_ONCE {
            n = freed.wait(n).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *n += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (count, freed) = &RUNNING;
        *count.lock().unwrap_or_else(std::sync::PoisonError::into_inner) -= 1;
        freed.notify_one();
    }
}

struct Cluster {
    nodes: Vec<Option<Flick>>,
    store: String,
    db: Option<flick_store::testing::FreshPostgres>,
    rt: tokio::runtime::Runtime,
    _turn: Turn,
}

impl Cluster {
    fn start(n: usize, config: &str) -> Self {
        let turn = Turn::take();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let db = rt.block_on(flick_store::testing::fresh_postgres());
        let store = db.url.clone();
        let mut c = Cluster { nodes: Vec::new(), store, db: Some(db), rt, _turn: turn };
        for i in 0..n {
            let node = c.start_node(&format!("node-{i}"), config);
            c.nodes.push(Some(node));
        }
        // Each node learns of members that joined after it at its next
        // heartbeat (every second).
        std::thread::sleep(Duration::from_millis(1500));
        c
    }

    fn start_node(&self, id: &str, config: &str) -> Flick {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        self.start_in(dir, id)
    }

    fn start_in(&self, dir: tempfile::TempDir, id: &str) -> Flick {
        Flick::start_in(dir, &["--store", &self.store, "--queue", &nats_url(), "--node-id", id])
    }

    fn node(&self, i: usize) -> &Flick {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn live(&self) -> impl Iterator<Item = &Flick> {
        self.nodes.iter().flatten()
    }

    fn node_ids(&self, via: usize) -> Vec<String> {
        let r = self.node(via).get("/v1/nodes");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes first: they hold connections to the database.
        self.nodes.clear();
        if let Some(db) = self.db.take() {
            self.rt.block_on(async {
                // The cluster's JetStream streams are named after its id.
                if let Ok(store) = flick_store::PgStore::connect(&db.url).await {
                    use flick_store::Store as _;
                    if let Ok(id) = store.setting("cluster_id", "none").await {
                        let config = flick_queue::JetStreamConfig {
                            prefix: format!("flick_{id}"),
                            ..flick_queue::JetStreamConfig::default()
                        };
                        if let Ok(q) = flick_queue::JetStreamQueue::connect(&nats_url(), config).await {
                            let _ = q.delete_streams().await;
                        }
                    }
                }
                db.drop_database().await
            });
        }
    }
}

fn send(flick: &Flick, name: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    let mut rb = http.post(format!("{}/fn/{name}", flick.base)).body(body.to_string()).bearer_auth(&flick.key);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().unwrap();
    Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.bytes().unwrap().to_vec() }
}

fn deploy_sh(flick: &Flick, name: &str, extra: &str, script: &str) {
    flick.deploy_files(name, &[("flick.toml", &manifest(name, "exec", "sh run.sh", extra)), ("run.sh", script)]);
}

fn activations(flick: &Flick, query: &str) -> Vec<Value> {
    let r = flick.get(&format!("/v1/activations?{query}&limit=1000"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["activations"].as_array().unwrap().clone()
}

#[test]
fn deployed_through_one_node_callable_through_another_at_once() {
    let c = Cluster::start(3, "");
    // The same admin key on every node: the cluster's, from the store.
    assert!(c.live().all(|n| n.key == c.node(0).key), "nodes disagree on the admin key");
    deploy_sh(c.node(0), "hello", "", "echo \"hello: $(cat)\"\n");
    for i in [2, 1, 0] {
        let r = c.node(i).invoke("hello", &format!("via {i}"));
        assert_eq!(r.status, 200, "through node {i}: {}", r.text());
        assert!(r.text().contains(&format!("via {i}")), "{}", r.text());
        // Its record is in the shared store: every node shows it, once the
        // node that ran the call has written it (records go in batches).
        let id = r.activation_id();
        for j in 0..3 {
            let n = c.node(j);
            let seen = n.wait_until(Duration::from_secs(5), || {
                let r = n.get(&format!("/v1/activations/{id}"));
                r.status == 200 && r.json()["status"] == "success"
            });
            assert!(seen, "node {j} does not show the record of {id}");
        }
    }
    // Its warm instance lives on one node, its home, whichever node was called.
    let with_instances: Vec<usize> = (0..3).filter(|i| c.node(*i).instances("hello") > 0).collect();
    assert_eq!(with_instances.len(), 1, "instances on nodes {with_instances:?}");
    // A caller without the key is refused on every node (the function is
    // not public), whichever node would run it.
    for i in 0..3 {
        assert_eq!(c.node(i).request("POST", "/fn/hello", "x", false).status, 401);
    }
}

#[test]
fn a_rollback_through_one_node_reaches_the_others_routes_within_a_second() {
    let c = Cluster::start(3, "");
    deploy_sh(c.node(0), "ver", "", "echo one\n");
    deploy_sh(c.node(0), "ver", "", "echo two\n");
    for i in 0..3 {
        assert_eq!(c.node(i).invoke("ver", "").text().trim(), "two", "node {i}");
    }
    let rolled = c.node(1).cli_ok(&["rollback", "ver"]);
    assert!(rolled.contains('1'), "{rolled}");
    let started = Instant::now();
    let mut seen = HashMap::new();
    while seen.len() < 3 && started.elapsed() < Duration::from_secs(10) {
        for i in 0..3 {
            if !seen.contains_key(&i) && c.node(i).invoke("ver", "").text().trim() == "one" {
                seen.insert(i, started.elapsed());
            }
        }
    }
    assert_eq!(seen.len(), 3, "nodes still serving revision 2 after 10 s: {seen:?}");
    let slowest = seen.values().max().unwrap();
    assert!(*slowest < Duration::from_secs(1), "a rollback took {slowest:?} to reach every node");
    // A delete, too: every node answers 404 for it.
    c.node(2).cli_ok(&["delete", "ver"]);
    for i in 0..3 {
        let ok = c.node(i).wait_until(Duration::from_secs(2), || c.node(i).invoke("ver", "").status == 404);
        assert!(ok, "node {i} still serves a deleted function");
    }
}

#[test]
fn nodes_are_listed_leave_cleanly_at_once_and_dead_ones_are_dropped() {
    let mut c = Cluster::start(3, "");
    let all = c.node_ids(0);
    assert_eq!(all, ["node-0", "node-1", "node-2"]);
    let table = c.node(1).cli_ok(&["nodes"]);
    for id in &all {
        assert!(table.contains(id.as_str()), "{table}");
    }
    assert!(table.contains("127.0.0.1:"), "addresses are shown: {table}");

    // A clean stop leaves at once.
    let status = c.nodes[2].as_mut().unwrap().stop();
    assert!(status.success());
    c.nodes[2] = None;
    assert_eq!(c.node_ids(0), ["node-0", "node-1"]);

    // A killed node is dropped after the heartbeat timeout (5 s).
    let killed = c.nodes[1].take().unwrap().kill9();
    assert!(c.node_ids(0).contains(&"node-1".to_string()), "dropped before its heartbeats stopped counting");
    let ok = c.node(0).wait_until(Duration::from_secs(15), || c.node_ids(0) == ["node-0"]);
    assert!(ok, "a dead node is still listed: {:?}", c.node_ids(0));

    // It rejoins with its data dir, under its id.
    let back = c.start_in(killed, "node-1");
    c.nodes[1] = Some(back);
    assert_eq!(c.node_ids(0), ["node-0", "node-1"]);
}

/// The finished cron activations of `function`, with their scheduled tick.
fn ticks(flick: &Flick, function: &str) -> Vec<i64> {
    activations(flick, &format!("function={function}&cause=cron"))
        .iter()
        .filter(|a| a["status"] == "success")
        .map(|a| {
            let event: Value = serde_json::from_str(a["response"].as_str().unwrap().trim()).unwrap();
            event["scheduled_ms"].as_i64().unwrap()
        })
        .collect()
}

/// Which running node runs `function`'s trigger (`flick triggers` lists a
/// trigger only where it runs).
fn holders(c: &Cluster, function: &str) -> Vec<usize> {
    (0..c.nodes.len())
        .filter(|i| c.nodes[*i].is_some())
        .filter(|i| {
            let r = c.node(*i).get(&format!("/v1/triggers/{function}"));
            r.status == 200 && !r.json()["triggers"].as_array().unwrap().is_empty()
        })
        .collect()
}

#[test]
fn a_one_second_cron_fires_once_per_tick_and_moves_when_its_holder_is_killed() {
    let mut c = Cluster::start(3, "");
    deploy_sh(
        c.node(0),
        "ticker",
        "[[triggers]]\ntype = \"cron\"\nname = \"every-second\"\nschedule = \"* * * * * *\"\n",
        "cat\n",
    );
    let ok = c.node(0).wait_until(Duration::from_secs(30), || ticks(c.node(0), "ticker").len() >= 4);
    assert!(ok, "the cron did not fire");
    let held = holders(&c, "ticker");
    assert_eq!(held.len(), 1, "exactly one node runs the trigger: {held:?}");
    let holder = held[0];
    let before = ticks(c.node(0), "ticker").len();
    let killed_at = flick_core_now_ms();
    drop(c.nodes[holder].take().unwrap().kill9());
    let survivor = (0..3).find(|i| *i != holder).unwrap();
    // Another node takes the lease over (5 s lease) and fires on.
    let ok = c.node(survivor).wait_until(Duration::from_secs(30), || {
        ticks(c.node(survivor), "ticker").iter().filter(|t| **t > killed_at + 1000).count() >= 3
    });
    assert!(ok, "no ticks after the holder was killed (had {before})");
    assert_eq!(holders(&c, "ticker").len(), 1);
    let all = ticks(c.node(survivor), "ticker");
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "a tick fired twice: {all:?}");
}

/// The start times of `function`'s calls made by rule trigger `trigger`,
/// one per fire (a fire's calls share their parent, the trigger's record).
fn fires(flick: &Flick, function: &str, trigger: &str) -> Vec<i64> {
    let mut by_parent: HashMap<String, i64> = HashMap::new();
    for a in activations(flick, &format!("function={function}&trigger={trigger}")) {
        let parent = a["parent"].as_str().unwrap_or_default().to_string();
        let start = a["start_ms"].as_i64().unwrap();
        let first = by_parent.entry(parent).or_insert(start);
        *first = (*first).min(start);
    }
    let mut starts: Vec<i64> = by_parent.into_values().collect();
    starts.sort_unstable();
    starts
}

/// The node id holding lease `name`, as the shared database has it.
fn lease_holder(c: &Cluster, name: &str) -> Option<String> {
    let url = c.db.as_ref().unwrap().url.clone();
    c.rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let row = client.query_opt("SELECT holder FROM leases WHERE name = $1", &[&name]).await.unwrap();
        row.map(|r| r.get(0))
    })
}

/// An OpenWhisk alarm feed set through one node fires its trigger once per
/// tick across three nodes (the node holding the `feeds/alarms` lease runs
/// it), and goes on firing from another node when that one is killed.
#[test]
fn an_alarm_feed_fires_once_per_tick_across_the_cluster_and_survives_its_holder() {
    let mut c = Cluster::start(3, "");
    deploy_sh(c.node(0), "woken", "", "cat\n");
    let ow = |i: usize, method: &str, path: &str, body: Value| {
        let r = c.node(i).request(method, &format!("/api/v1/namespaces/{path}"), body.to_string(), true);
        assert!(r.status < 300, "{method} {path} through node {i}: {} {}", r.status, r.text());
    };
    ow(1, "PUT", "_/triggers/tick", serde_json::json!({}));
    ow(2, "PUT", "_/rules/tick-rule", serde_json::json!({"trigger": "/_/tick", "action": "/_/woken"}));
    ow(
        0,
        "POST",
        "whisk.system/actions/alarms/alarm?blocking=true",
        serde_json::json!({"lifecycleEvent": "CREATE", "triggerName": "/_/tick", "cron": "* * * * * *",
                           "trigger_payload": {"from": "alarm"}}),
    );
    let ok = c.node(2).wait_until(Duration::from_secs(30), || fires(c.node(2), "woken", "tick").len() >= 6);
    assert!(ok, "the alarm did not fire through the cluster");
    let seen = fires(c.node(2), "woken", "tick");
    // One fire per second: three nodes each firing would make three.
    let span_s = (seen[seen.len() - 1] - seen[0]) / 1000;
    assert!(seen.len() as i64 <= span_s + 2, "{} fires in {span_s} s: {seen:?}", seen.len());
    let any = activations(c.node(2), "function=woken&trigger=tick");
    assert!(any.iter().all(|a| a["response"].as_str().unwrap_or_default().contains("alarm")), "{any:?}");

    let holder = lease_holder(&c, "feeds/alarms").expect("a node holds the alarm feeds' lease");
    let holder: usize = holder.strip_prefix("node-").unwrap().parse().unwrap();
    let killed_at = flick_core_now_ms();
    drop(c.nodes[holder].take().unwrap().kill9());
    let survivor = (0..3).find(|i| *i != holder).unwrap();
    let after = |c: &Cluster| {
        fires(c.node(survivor), "woken", "tick").into_iter().filter(|t| *t > killed_at + 1000).collect::<Vec<_>>()
    };
    let ok = c.node(survivor).wait_until(Duration::from_secs(40), || after(&c).len() >= 4);
    assert!(ok, "no fires after the holder (node-{holder}) was killed");
    let later = after(&c);
    let span_s = (later[later.len() - 1] - later[0]) / 1000;
    assert!(later.len() as i64 <= span_s + 2, "{} fires in {span_s} s after the kill: {later:?}", later.len());
    let now = lease_holder(&c, "feeds/alarms").unwrap();
    assert_ne!(now, format!("node-{holder}"), "the killed node still holds the lease");
}

fn flick_core_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn async_work_accepted_anywhere_completes_when_a_node_is_killed_under_load() {
    let mut c = Cluster::start(3, "retry_base = \"50ms\"\nretry_cap = \"200ms\"\n");
    // Slow enough that some calls are running when the node dies.
    deploy_sh(c.node(0), "work", "concurrency = 1\n", "sleep 0.05; cat\n");
    let mut ids = Vec::new();
    for k in 0..60 {
        let via = if k > 30 { c.node(k % 2) } else { c.node(k % 3) };
        let r = send(via, "work", &format!("job-{k}"), &[("x-flick-async", "true")]);
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push((r.activation_id(), format!("job-{k}")));
        if k == 30 {
            drop(c.nodes[2].take().unwrap().kill9());
        }
    }
    let reader = c.node(0);
    for (id, body) in &ids {
        let mut last = Value::Null;
        let done = reader.wait_until(Duration::from_secs(90), || {
            let r = reader.get(&format!("/v1/activations/{id}"));
            if r.status != 200 {
                return false;
            }
            last = r.json();
            last["status"] == "success"
        });
        assert!(done, "accepted call {id} never completed: {last}");
        assert_eq!(last["response"].as_str().unwrap().trim(), body);
    }
    // One record per accepted call: a call the killed node was running ran
    // again elsewhere under its id, and no call left two outcomes.
    let mut records: HashMap<String, usize> = HashMap::new();
    for a in activations(reader, "function=work") {
        *records.entry(a["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for (id, _) in &ids {
        assert_eq!(records.get(id.as_str()), Some(&1), "records of {id}: {records:?}");
    }
    assert_eq!(records.len(), ids.len(), "records of calls nobody made: {records:?}");
}

/// A call running on a node that is SIGKILLed runs again on another node
/// once JetStream's ack wait (30 s) has passed, under the same id, and its
/// record shows the delivery that did not finish.
#[test]
fn a_call_cut_off_by_its_nodes_death_runs_again_and_says_so() {
    let mut c = Cluster::start(2, "");
    deploy_sh(c.node(0), "long", "", "sleep 4; cat\n");
    let r = send(c.node(0), "long", "once", &[("x-flick-async", "true")]);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.activation_id();
    // The node whose dispatcher leased it runs it there.
    let mut runner = None;
    let found = c.node(0).wait_until(Duration::from_secs(20), || {
        runner = (0..2).find(|i| c.node(*i).instances("long") > 0);
        runner.is_some()
    });
    assert!(found, "the call never started");
    let runner = runner.unwrap();
    drop(c.nodes[runner].take().unwrap().kill9());
    let other = 1 - runner;
    let mut last = Value::Null;
    let done = c.node(other).wait_until(Duration::from_secs(90), || {
        let r = c.node(other).get(&format!("/v1/activations/{id}"));
        if r.status != 200 {
            return false;
        }
        last = r.json();
        last["status"] == "success"
    });
    assert!(done, "the call cut off by node-{runner}'s death never completed: {last}");
    assert_eq!(last["response"].as_str().unwrap().trim(), "once");
    assert_eq!(last["attempt"].as_u64(), Some(1), "a redelivery is not a new attempt: {last}");
    let earlier = last["attempts"].as_array().unwrap();
    assert!(
        earlier.iter().any(|a| a["message"].as_str().unwrap_or_default().contains("did not finish")),
        "the record does not show the lost delivery: {last}"
    );
}

#[test]
fn the_node_to_node_endpoint_is_closed_to_everyone_else() {
    let c = Cluster::start(2, "");
    deploy_sh(c.node(0), "secret", "", "echo ran\n");
    let forward = serde_json::json!({
        "invocation": { "id": "0123456789abcdef0123456789abcdef", "function": "secret", "method": "POST",
                        "path": "/", "raw_path": "/", "query": "", "headers": [], "body": "" },
        "admin": true, "revision_id": 1, "spill": false,
    });
    let http = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    for secret in [None, Some(""), Some("guess"), Some(c.node(0).key.as_str())] {
        let mut rb = http.post(format!("{}/v1/cluster/invoke", c.node(1).base)).json(&forward);
        if let Some(s) = secret {
            rb = rb.header("x-flick-cluster-secret", s);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status().as_u16(), 404, "secret {secret:?}: {}", r.text().unwrap());
    }
    assert!(activations(c.node(0), "function=secret").is_empty(), "a forged forward ran the function");
}

/// An attacker calling name after unknown name makes a node look each one
/// up in the shared database. With those lookups stalled (the test holds
/// the `functions` table locked), at most two are in the database at a
/// time, the rest are answered 404 without waiting on it, and known
/// functions keep answering; a name that was sprayed is still callable at
/// once once it is deployed elsewhere (no miss is remembered).
#[test]
fn a_spray_of_unknown_names_cannot_tie_up_the_shared_database() {
    let c = Cluster::start(2, "");
    deploy_sh(c.node(0), "known", "", "echo known\n");
    assert_eq!(c.node(1).invoke("known", "").status, 200);
    let db = c.db.as_ref().unwrap().url.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let tx = client.transaction().await.unwrap();
            tx.batch_execute("LOCK TABLE functions IN ACCESS EXCLUSIVE MODE").await.unwrap();
            locked_tx.send(()).unwrap();
            // The most of the nodes' queries seen waiting on the lock at once.
            let mut most = 0i64;
            while done_rx.try_recv().is_err() {
                let row = tx
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap();
                most = most.max(row.get(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx.rollback().await.unwrap();
            most
        })
    });
    locked_rx.recv().unwrap();
    let base = c.node(1).base.clone();
    let key = c.node(1).key.clone();
    let spray: Vec<_> = (0..40)
        .map(|i| {
            let (base, key) = (base.clone(), key.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build();
                let r = http.unwrap().post(format!("{base}/fn/ghost-{i}")).bearer_auth(key).body("x").send();
                r.unwrap().status().as_u16()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Known functions are served from the route table meanwhile.
    let r = c.node(1).invoke("known", "");
    assert_eq!(r.status, 200, "a known function while the spray waits: {}", r.text());
    // Most of the spray was answered without waiting for the database.
    let answered_early = spray.iter().filter(|t| t.is_finished()).count();
    assert!(answered_early >= 30, "only {answered_early} of 40 unknown names answered while the lookups stalled");
    std::thread::sleep(Duration::from_millis(1000));
    done_tx.send(()).unwrap();
    let most = holder.join().unwrap();
    let statuses: Vec<u16> = spray.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 404), "unknown names: {statuses:?}");
    assert!((1..=2).contains(&most), "{most} lookups of unknown names waited in the database at once");
    // A sprayed name deployed through the other node is callable here at once.
    deploy_sh(c.node(0), "ghost-3", "", "echo real\n");
    let r = c.node(1).invoke("ghost-3", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("real"), "{}", r.text());
}

#[test]
fn max_instances_holds_across_the_cluster_and_calls_spill_past_a_busy_home() {
    let c = Cluster::start(3, "");
    deploy_sh(c.node(0), "narrow", "max_instances = 2\nconcurrency = 1\n", "sleep 1; cat\n");
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|s| {
        let watcher = {
            let (peak, done, c) = (peak.clone(), done.clone(), &c);
            s.spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let total: u64 = (0..3).map(|i| c.node(i).instances("narrow")).sum();
                    peak.fetch_max(total, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let calls: Vec<_> = (0..6)
            .map(|k| {
                let c = &c;
                s.spawn(move || c.node(k % 3).invoke("narrow", &format!("call-{k}")))
            })
            .collect();
        for (k, call) in calls.into_iter().enumerate() {
            let r = call.join().unwrap();
            assert_eq!(r.status, 200, "call {k}: {}", r.text());
            assert_eq!(r.text().trim(), format!("call-{k}"));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap();
    });
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= 2, "{peak} instances at once across the cluster (max_instances = 2)");
    // Both shares were used: the home's busy instance made calls spill.
    let with_instances = (0..3).filter(|i| c.node(*i).instances("narrow") > 0).count();
    assert_eq!(with_instances, 2, "two nodes hold one instance each");
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{}-{nanos}", std::process::id())
}

#[test]
fn an_mqtt_trigger_delivers_each_message_once_and_its_session_moves_when_its_holder_dies() {
    let mut c = Cluster::start(3, "");
    let topic = unique("flick-cluster/");
    deploy_sh(
        c.node(0),
        "sensor",
        &format!(
            "[[triggers]]\ntype = \"mqtt\"\nname = \"temps\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"{topic}\"\nqos = 1\n"
        ),
        "cat\n",
    );
    // One node holds the subscription, and it is connected.
    let connected_holder = |c: &Cluster| {
        let held = holders(c, "sensor");
        (held.len() == 1 && c.node(held[0]).get("/v1/triggers/sensor").json()["triggers"][0]["state"] == "connected")
            .then(|| held[0])
    };
    let ok = c.node(0).wait_until(Duration::from_secs(30), || connected_holder(&c).is_some());
    assert!(ok, "no node holds the MQTT subscription: {:?}", holders(&c, "sensor"));
    let publish = |range: std::ops::Range<i64>| {
        let mut args = vec!["-h".to_string(), "127.0.0.1".into(), "-p".into(), "1883".into(), "-q".into(), "1".into()];
        args.extend(["-t".into(), topic.clone(), "-l".into()]);
        let mut publisher = std::process::Command::new("mosquitto_pub")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_pub (mosquitto-clients)");
        {
            use std::io::Write as _;
            let stdin = publisher.stdin.as_mut().unwrap();
            for i in range {
                writeln!(stdin, "{{\"i\":{i}}}").unwrap();
            }
        }
        drop(publisher.stdin.take());
        assert!(publisher.wait().unwrap().success());
    };
    let seen = |c: &Cluster, via: usize| -> Vec<i64> {
        let mut got: Vec<i64> = activations(c.node(via), "function=sensor&cause=mqtt")
            .iter()
            .filter(|a| a["status"] == "success")
            .map(|a| {
                let e: Value = serde_json::from_str(a["response"].as_str().unwrap().trim()).unwrap();
                e["payload"]["i"].as_i64().unwrap()
            })
            .collect();
        got.sort();
        got
    };
    let n = 40;
    publish(0..n);
    let ok = c.node(1).wait_until(Duration::from_secs(60), || seen(&c, 1).len() >= n as usize);
    assert!(ok, "{} of {n} messages delivered", seen(&c, 1).len());
    // Stragglers (a second subscriber's copies) would arrive by now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(seen(&c, 1), (0..n).collect::<Vec<_>>(), "each message once");

    // The holder dies; what is published meanwhile waits in the broker's
    // session, which the node taking the lease over resumes.
    let holder = connected_holder(&c).expect("a connected holder");
    drop(c.nodes[holder].take().unwrap().kill9());
    publish(n..n + 20);
    let survivor = (0..3).find(|i| *i != holder).unwrap();
    let ok = c.node(survivor).wait_until(Duration::from_secs(60), || seen(&c, survivor).len() >= n as usize + 20);
    assert!(ok, "after the holder died: {:?}", seen(&c, survivor));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(seen(&c, survivor), (0..n + 20).collect::<Vec<_>>(), "each message once, across the hand-over");
    assert_eq!(holders(&c, "sensor").len(), 1, "one node holds the subscription again");
}

/// A nats-server of the test's own (JetStream, its own store dir), so it can
/// be stopped and started without disturbing other tests.
struct PrivateNats {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateNats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        Self::start_on(port, dir)
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> Self {
        let server = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nats-server is installed (CI installs it)");
        let child = std::process::Command::new(server)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL: the harshest restart) and starts it again on the
    /// same port and store after `down`.
    fn restart(mut self, down: Duration) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(down);
        let (port, dir) = (self.port, std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()));
        Self::start_on(port, dir)
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ends every connection to the cluster's database and refuses new ones for
/// `down`: what the nodes see when PostgreSQL restarts.
fn bounce_postgres(c: &Cluster, down: Duration) {
    let name = c.db.as_ref().unwrap().name.clone();
    let admin = flick_store::testing::DEFAULT_POSTGRES;
    c.rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.execute(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"), &[]).await.unwrap();
        client
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[&name])
            .await
            .unwrap();
        tokio::time::sleep(down).await;
        client.execute(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"), &[]).await.unwrap();
    });
}

#[test]
fn restarting_nats_and_postgresql_under_load_loses_no_accepted_work() {
    let turn = Turn::take();
    let nats = PrivateNats::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = rt.block_on(flick_store::testing::fresh_postgres());
    let mut c = Cluster { nodes: Vec::new(), store: db.url.clone(), db: Some(db), rt, _turn: turn };
    for i in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "retry_base = \"50ms\"\nretry_cap = \"500ms\"\n").unwrap();
        let node =
            Flick::start_in(dir, &["--store", &c.store, "--queue", &nats.url(), "--node-id", &format!("node-{i}")]);
        c.nodes.push(Some(node));
    }
    std::thread::sleep(Duration::from_millis(1500));
    deploy_sh(c.node(0), "steady", "", "sleep 0.02; cat\n");
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut submit = |c: &Cluster, k: usize| {
        let r = send(c.node(k % 3), "steady", &format!("job-{k}"), &[("x-flick-async", "true")]);
        match r.status {
            202 => accepted.push((r.activation_id(), format!("job-{k}"))),
            // Refused while a server was down: not accepted, nothing promised.
            500..=599 => refused += 1,
            s => panic!("job-{k}: {s} {}", r.text()),
        }
    };
    for k in 0..30 {
        submit(&c, k);
    }
    let nats = nats.restart(Duration::from_secs(2));
    for k in 30..60 {
        submit(&c, k);
    }
    bounce_postgres(&c, Duration::from_secs(2));
    for k in 60..90 {
        submit(&c, k);
    }
    assert!(accepted.len() >= 60, "only {} of 90 accepted ({refused} refused)", accepted.len());
    let reader = c.node(1);
    for (id, body) in &accepted {
        let mut last = Value::Null;
        let done = reader.wait_until(Duration::from_secs(120), || {
            let r = reader.get(&format!("/v1/activations/{id}"));
            if r.status != 200 {
                return false;
            }
            last = r.json();
            last["status"] == "success"
        });
        if !done {
            let state = c.rt.block_on(async {
                use flick_queue::Queue as _;
                use flick_store::Store as _;
                let store = flick_store::PgStore::connect(&c.store).await.unwrap();
                let cid = store.setting("cluster_id", "none").await.unwrap();
                let config = flick_queue::JetStreamConfig { prefix: format!("flick_{cid}"), ..Default::default() };
                let q = flick_queue::JetStreamQueue::connect(&nats.url(), config).await.unwrap();
                let parsed = flick_core::ActivationId::parse(id).unwrap();
                format!(
                    "record: {:?}\nitem: {:?}\ndepth: {:?}",
                    store.activation(&parsed).await.map(|a| a.map(|a| a.status)),
                    q.item(&parsed).await,
                    q.depth("steady").await
                )
            });
            panic!("accepted call {id} never completed after the restarts: {last}\n{state}");
        }
        assert_eq!(last["response"].as_str().unwrap().trim(), body);
    }
    // The nodes reconnected by themselves: a new deploy reaches them all.
    deploy_sh(c.node(2), "after", "", "echo after\n");
    for i in 0..3 {
        assert_eq!(c.node(i).invoke("after", "").text().trim(), "after", "node {i}");
    }
    drop(c);
    drop(nats);
}
