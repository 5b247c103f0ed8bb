//! Cluster mode end to end (issue 13): three `flick up` nodes on loopback
//! ports, each with its own data dir, sharing a fresh PostgreSQL database
//! and the machine's NATS JetStream. Deploy through one node and call
//! through another; a rollback reaches every node's routes; membership
//! (`flick nodes`), clean leaves and dead nodes; a cron trigger fires once
//! per tick across the cluster and moves when its holder is killed; async
//! work survives a node's SIGKILL; the attacker's side of the node-to-node
//! endpoint.
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

struct Cluster {
    nodes: Vec<Option<Flick>>,
    store: String,
    db: Option<flick_store::testing::FreshPostgres>,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(n: usize, config: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let db = rt.block_on(flick_store::testing::fresh_postgres());
        let store = db.url.clone();
        let mut c = Cluster { nodes: Vec::new(), store, db: Some(db), rt };
        for i in 0..n {
            let node = c.start_node(&format!("node-{i}"), config);
            c.nodes.push(Some(node));
        }
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
