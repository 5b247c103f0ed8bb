//! The [`Store`] contract as executable checks, for any implementation:
//! `tests/conformance.rs` runs them on [`SqliteStore`](crate::SqliteStore)
//! and on [`PgStore`](crate::PgStore), so a caller cannot tell which one it
//! has. They panic on the first broken promise, naming it.
//!
//! Each check uses functions (and triggers, rules) of its own (`cf-<check>`),
//! so all of them run on one store, which must hold test data only: the
//! retention checks prune every record first, and the size-budget check
//! deletes the oldest records of any function. What only an implementation
//! can arrange (reopening, file sizes, a full disk, concurrent schema
//! migration) is left to its own tests.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;

use flick_core::{
    Activation, ActivationId, ActivationStatus, AttemptOutcome, CallbackOutcome, Cause, LogLine, LogStream, Manifest,
    Revision, RuntimeKind, now_ms,
};

use crate::{ActivationQuery, Inserted, NewRevision, PutOutcome, RecordLimits, Rule, RuleTrigger, Store, StoreError};

/// Runs every check on `store`.
pub async fn run(store: Arc<dyn Store>) {
    macro_rules! check {
        ($name:ident) => {{
            tracing::info!(check = stringify!($name), "store conformance");
            $name(&*store).await;
        }};
    }
    check!(same_hash_is_unchanged);
    check!(new_hash_creates_next_revision_and_rollback_keeps_latest);
    check!(set_current_errors_name_what_is_missing);
    check!(functions_are_listed_by_name);
    check!(prune_revisions_keeps_newest_current_and_rollback_target);
    check!(delete_function_removes_revisions_activations_and_ticks);
    check!(activation_round_trip_keeps_every_field);
    check!(causes_attempts_and_parents_round_trip_and_filter);
    check!(listing_order_cursor_filter_and_limit);
    check!(limit_defaults_to_100_and_caps_at_1000);
    check!(activation_counts_per_function);
    check!(a_refused_record_does_not_take_its_batch_down);
    check!(a_large_batch_gives_each_record_its_own_seq);
    check!(inserts_keep_each_function_to_its_count);
    check!(inserts_keep_records_under_the_size_budget);
    check!(concurrent_inserts_are_followed_without_gaps);
    check!(prune_by_age);
    check!(prune_by_count_per_function);
    check!(usage_is_summed_per_function_and_day_and_survives_pruning);
    check!(rule_triggers_and_rules_overwrite_only_when_asked);
    check!(trigger_ticks_are_kept_per_trigger);
    check!(maintenance_answers);
    check!(heartbeats_list_live_members_and_drop_silent_ones);
    check!(a_lease_has_one_holder_until_it_runs_out_or_is_released);
    check!(a_setting_is_made_once);
    check!(shared_code_round_trips_with_its_digest);
}

async fn heartbeats_list_live_members_and_drop_silent_ones(store: &dyn Store) {
    let node = |id: &str, inflight| crate::NodeRecord {
        id: id.into(),
        address: format!("http://{id}:8080"),
        started_ms: 1,
        heartbeat_ms: 0,
        inflight,
        instances: 2,
        version: "v".into(),
    };
    let long = Duration::from_secs(60);
    store.heartbeat(&node("cf-b", 1), long).await.unwrap();
    let live = store.heartbeat(&node("cf-a", 3), long).await.unwrap();
    let ids: Vec<&str> = live.iter().map(|n| n.id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids.contains(&"cf-a") && ids.contains(&"cf-b"), "{ids:?}");
    let a = live.iter().find(|n| n.id == "cf-a").unwrap();
    assert_eq!((a.inflight, a.instances, a.address.as_str()), (3, 2, "http://cf-a:8080"));
    assert!(a.heartbeat_ms > 0, "the store stamps heartbeats");
    // A member silent longer than the timeout is dropped by the next beat.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let live = store.heartbeat(&node("cf-a", 0), Duration::from_millis(50)).await.unwrap();
    assert!(!live.iter().any(|n| n.id == "cf-b"), "a silent member stayed: {live:?}");
    store.leave("cf-a").await.unwrap();
    assert!(!store.nodes().await.unwrap().iter().any(|n| n.id == "cf-a"), "a member that left is listed");
}

async fn a_lease_has_one_holder_until_it_runs_out_or_is_released(store: &dyn Store) {
    let ttl = Duration::from_millis(300);
    assert!(store.acquire_lease("cf-lease", "one", ttl).await.unwrap());
    assert!(!store.acquire_lease("cf-lease", "two", ttl).await.unwrap(), "taken while held");
    assert!(store.acquire_lease("cf-lease", "one", ttl).await.unwrap(), "the holder renews");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.acquire_lease("cf-lease", "two", ttl).await.unwrap(), "a lease that ran out is free");
    store.release_lease("cf-lease", "one").await.unwrap();
    assert!(!store.acquire_lease("cf-lease", "one", ttl).await.unwrap(), "only its holder releases a lease");
    store.release_lease("cf-lease", "two").await.unwrap();
    assert!(store.acquire_lease("cf-lease", "one", ttl).await.unwrap(), "released: free at once");

    // Many at once: each name has one holder, whoever asks with which set.
    let names = |list: &[&str]| list.iter().map(|n| format!("cf-many-{n}")).collect::<Vec<_>>();
    let mut got = store.acquire_leases(&names(&["c", "a", "b"]), "one", ttl).await.unwrap();
    got.sort();
    assert_eq!(got, names(&["a", "b", "c"]));
    let got = store.acquire_leases(&names(&["b", "d"]), "two", ttl).await.unwrap();
    assert_eq!(got, names(&["d"]), "only what nobody holds");
    let mut got = store.acquire_leases(&names(&["a", "b", "c", "d"]), "one", ttl).await.unwrap();
    got.sort();
    assert_eq!(got, names(&["a", "b", "c"]), "renewed, and not another's");
    assert!(store.acquire_leases(&[], "one", ttl).await.unwrap().is_empty());
}

async fn a_setting_is_made_once(store: &dyn Store) {
    assert_eq!(store.setting("cf-setting", "first").await.unwrap(), "first");
    assert_eq!(store.setting("cf-setting", "second").await.unwrap(), "first");
}

async fn shared_code_round_trips_with_its_digest(store: &dyn Store) {
    let archive: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    store.put_code("sha256:cfcode", &archive).await.unwrap();
    match store.code("sha256:cfcode").await.unwrap() {
        Some((digest, bytes)) => {
            assert!(store.is_shared(), "a store that is not shared keeps no code");
            assert_eq!(bytes, archive);
            assert_eq!(digest, hex::encode(sha2::Sha256::digest(&archive)));
        }
        None => assert!(!store.is_shared(), "a shared store lost the code it was given"),
    }
    assert_eq!(store.code("sha256:none").await.unwrap(), None);
    // Unreferenced but new: kept (a deploy shares code before recording it).
    store.sweep_code().await.unwrap();
    assert_eq!(store.code("sha256:cfcode").await.unwrap().is_some(), store.is_shared());
}

/// A manifest of `name` (`runtime`: `python3`, `node`, `exec`).
pub fn manifest(name: &str, runtime: &str, public: bool) -> Manifest {
    Manifest::parse(&format!(
        "name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"main.handler\"\npublic = {public}\n"
    ))
    .unwrap_or_else(|e| panic!("test manifest of {name}: {e}"))
}

/// `sha256:` and 64 of `c`.
pub fn hash(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// A deploy of `name` with content hash [`hash`]`(hash_char)` and archive
/// `<hash_char><name>`.
pub fn deploy(name: &str, runtime: &str, public: bool, hash_char: char) -> NewRevision {
    NewRevision {
        manifest: manifest(name, runtime, public),
        hash: hash(hash_char),
        code_size: 1234,
        archive: Some(format!("{hash_char}{name}")),
    }
}

/// A successful HTTP call of `function` that started at `start_ms`.
pub fn record(function: &str, start_ms: i64) -> Activation {
    Activation {
        id: ActivationId::generate(),
        seq: 0,
        function: function.into(),
        revision: 1,
        revision_id: 1,
        start_ms,
        end_ms: start_ms + 12,
        duration_ms: 11.75,
        init_ms: 0.0,
        wait_ms: 0.25,
        exec_ms: 11.5,
        cold: false,
        prewarmed: false,
        status: ActivationStatus::Success,
        http_status: 200,
        response: "ok".into(),
        response_truncated: false,
        logs: Vec::new(),
        logs_truncated: false,
        cause: Cause::Http,
        trigger: None,
        attempt: 1,
        max_attempts: 1,
        attempts: Vec::new(),
        parent: None,
        caller_gave_up_ms: None,
        callback: None,
        memory_mb: 0,
        cpu_ms: None,
        memory_peak_bytes: None,
        trace_id: None,
        span_id: None,
        parent_span_id: None,
        traceparent: None,
    }
}

/// A record of about `bytes`: half response, half one log line.
pub fn big_record(function: &str, bytes: usize) -> Activation {
    let mut a = record(function, now_ms());
    a.response = "r".repeat(bytes / 2);
    a.logs = vec![LogLine { ts_ms: 1, stream: LogStream::Stdout, text: "\u{1}".repeat(bytes / 2) }];
    a
}

pub fn created(outcome: PutOutcome) -> Revision {
    match outcome {
        PutOutcome::Created(rev) => rev,
        other => panic!("expected a new revision, got {other:?}"),
    }
}

async fn insert(store: &dyn Store, function: &str, start_ms: i64) -> i64 {
    store.insert_activation(&record(function, start_ms)).await.expect("insert a record")
}

async fn seqs(store: &dyn Store, query: ActivationQuery) -> Vec<i64> {
    store.activations(&query).await.expect("list records").iter().map(|a| a.seq).collect()
}

/// Seqs of one function's records, oldest first.
async fn seqs_of(store: &dyn Store, function: &str) -> Vec<i64> {
    let query =
        ActivationQuery { function: Some(function.into()), after_seq: Some(0), limit: 1000, ..Default::default() };
    seqs(store, query).await
}

/// Seqs of all records of these functions, in seq order.
async fn seqs_of_all(store: &dyn Store, functions: &[&str]) -> Vec<i64> {
    let mut all = Vec::new();
    for f in functions {
        all.extend(seqs_of(store, f).await);
    }
    all.sort_unstable();
    all
}

fn stored(results: &[Inserted]) -> usize {
    results.iter().filter(|r| r.is_ok()).count()
}

async fn same_hash_is_unchanged(store: &dyn Store) {
    let f = "cf-same";
    let first = created(store.put_revision(deploy(f, "python3", false, 'a')).await.unwrap());
    assert_eq!((first.function.as_str(), first.number), (f, 1));
    let again = store.put_revision(deploy(f, "python3", false, 'a')).await.unwrap();
    assert_eq!(again, PutOutcome::Unchanged(first.clone()), "the same hash again is not a new revision");
    assert_eq!(store.revisions(f).await.unwrap(), vec![first]);
}

async fn new_hash_creates_next_revision_and_rollback_keeps_latest(store: &dyn Store) {
    let f = "cf-rollback";
    let r1 = created(store.put_revision(deploy(f, "python3", false, 'a')).await.unwrap());
    let r2 = created(store.put_revision(deploy(f, "exec", true, 'b')).await.unwrap());
    assert_eq!(r2.number, 2);
    assert!(r2.id > r1.id, "revision ids grow");
    assert_eq!(store.current_revision(f).await.unwrap(), Some(r2.clone()));
    assert_eq!(store.revision(f, 1).await.unwrap(), Some(r1.clone()));
    assert_eq!(store.revisions(f).await.unwrap(), vec![r2.clone(), r1.clone()], "revisions newest first");

    let info = store.function(f).await.unwrap().unwrap();
    assert_eq!((info.current_revision, info.latest_revision), (2, 2));
    assert_eq!((info.runtime, info.public, info.hash.as_str()), (RuntimeKind::Exec, true, r2.hash.as_str()));

    assert_eq!(store.set_current(f, 1).await.unwrap(), r1);
    let info = store.function(f).await.unwrap().unwrap();
    assert_eq!((info.current_revision, info.latest_revision), (1, 2), "a rollback keeps the latest");
    assert_eq!((info.runtime, info.public, info.hash.as_str()), (RuntimeKind::Python3, false, r1.hash.as_str()));
    assert!(info.updated_ms >= info.created_ms);
    assert_eq!(store.current_revision(f).await.unwrap(), Some(r1));

    // Compared with the current revision, not the latest: redeploying
    // what revision 2 had is a new deploy after a rollback.
    let r3 = created(store.put_revision(deploy(f, "exec", true, 'b')).await.unwrap());
    assert_eq!(r3.number, 3);
    let hashes = store.referenced_hashes().await.unwrap();
    assert!(hashes.contains(&hash('a')) && hashes.contains(&hash('b')), "{hashes:?}");
    assert!(hashes.windows(2).all(|w| w[0] < w[1]), "referenced hashes sorted and distinct: {hashes:?}");
}

async fn set_current_errors_name_what_is_missing(store: &dyn Store) {
    let f = "cf-setcur";
    store.put_revision(deploy(f, "python3", false, 'a')).await.unwrap();
    match store.set_current("cf-setcur-nope", 1).await {
        Err(StoreError::FunctionNotFound(name)) => assert_eq!(name, "cf-setcur-nope"),
        other => panic!("expected FunctionNotFound, got {other:?}"),
    }
    match store.set_current(f, 7).await {
        Err(StoreError::RevisionNotFound { function, number }) => assert_eq!((function.as_str(), number), (f, 7)),
        other => panic!("expected RevisionNotFound, got {other:?}"),
    }
    assert_eq!(store.function(f).await.unwrap().unwrap().current_revision, 1);
    assert_eq!(store.function("cf-setcur-nope").await.unwrap(), None);
    assert_eq!(store.current_revision("cf-setcur-nope").await.unwrap(), None);
    assert_eq!(store.revision(f, 2).await.unwrap(), None);
}

async fn functions_are_listed_by_name(store: &dyn Store) {
    // Byte order, as SQLite compares: `-` (0x2d) before digits before letters.
    for name in ["cf-list-zeta", "cf-list-alpha", "cf-list-mid", "cf-list-9", "cf-list-a-b"] {
        store.put_revision(deploy(name, "node", false, 'c')).await.unwrap();
    }
    let names: Vec<String> =
        store.functions().await.unwrap().into_iter().map(|f| f.name).filter(|n| n.starts_with("cf-list-")).collect();
    assert_eq!(names, ["cf-list-9", "cf-list-a-b", "cf-list-alpha", "cf-list-mid", "cf-list-zeta"]);
}

async fn prune_revisions_keeps_newest_current_and_rollback_target(store: &dyn Store) {
    let f = "cf-prune";
    for c in ['a', 'b', 'c', 'd', 'e', 'f'] {
        store.put_revision(deploy(f, "python3", false, c)).await.unwrap();
    }
    let numbers = || async { store.revisions(f).await.unwrap().iter().map(|r| r.number).collect::<Vec<_>>() };
    let archives = || async {
        let all = store.referenced_archives().await.unwrap();
        all.into_iter().filter(|a| a.ends_with(f)).collect::<Vec<_>>()
    };
    // Current is 6 (the newest): keep 2 → 6 and 5 (also the rollback target).
    let gone: Vec<u32> = store.prune_revisions(f, 2).await.unwrap().iter().map(|r| r.number).collect();
    assert_eq!(gone, [1, 2, 3, 4], "pruned revisions come back oldest first");
    assert_eq!(numbers().await, [6, 5]);
    assert_eq!(archives().await, [format!("e{f}"), format!("f{f}")]);
    let current = store.current_revision(f).await.unwrap().unwrap();
    assert_eq!(store.revision_archive(current.id).await.unwrap(), Some(format!("f{f}")));
    assert_eq!(store.revision_archive(u64::MAX >> 1).await.unwrap(), None);
    assert_eq!(store.revision_archive(u64::MAX).await.unwrap(), None);

    // Rolled back to 5 after two more deploys (7, 8): current 5 is old; it
    // and its rollback target (none older) stay with the newest.
    store.set_current(f, 5).await.unwrap();
    store.put_revision(deploy(f, "python3", false, 'g')).await.unwrap();
    store.put_revision(deploy(f, "python3", false, 'h')).await.unwrap();
    store.set_current(f, 5).await.unwrap();
    let gone: Vec<u32> = store.prune_revisions(f, 1).await.unwrap().iter().map(|r| r.number).collect();
    assert_eq!(gone, [6, 7]);
    assert_eq!(numbers().await, [8, 5]);
    assert!(store.prune_revisions("cf-prune-nope", 1).await.unwrap().is_empty());
}

async fn delete_function_removes_revisions_activations_and_ticks(store: &dyn Store) {
    let (gone_f, kept_f) = ("cf-gone", "cf-kept");
    let r1 = created(store.put_revision(deploy(gone_f, "python3", false, 'a')).await.unwrap());
    let r2 = created(store.put_revision(deploy(gone_f, "python3", false, 'b')).await.unwrap());
    store.put_revision(deploy(kept_f, "python3", false, 'c')).await.unwrap();
    store.set_trigger_tick(gone_f, "tick", "* * * * * * UTC", 1000).await.unwrap();
    let gone = record(gone_f, 1);
    store.insert_activation(&gone).await.unwrap();
    let kept = insert(store, kept_f, 2).await;

    assert!(store.delete_function(gone_f).await.unwrap());
    assert!(!store.delete_function(gone_f).await.unwrap(), "a second delete finds nothing");
    assert_eq!(store.function(gone_f).await.unwrap(), None);
    assert!(store.revisions(gone_f).await.unwrap().is_empty());
    assert_eq!(store.activation(&gone.id).await.unwrap(), None);
    assert!(seqs_of(store, gone_f).await.is_empty());
    assert_eq!(seqs_of(store, kept_f).await, [kept]);
    assert_eq!(store.trigger_tick(gone_f, "tick").await.unwrap(), None, "ticks go with the function");
    assert!(store.function(kept_f).await.unwrap().is_some());

    // A new function of the same name starts over at revision 1, but
    // never at a revision id used before.
    let again = created(store.put_revision(deploy(gone_f, "python3", false, 'a')).await.unwrap());
    assert_eq!(again.number, 1);
    assert!(again.id > r1.id.max(r2.id), "revision id {} was used before", again.id);
}

async fn activation_round_trip_keeps_every_field(store: &dyn Store) {
    let mut a = record("cf-round", 1_000);
    a.cold = true;
    a.prewarmed = true;
    a.init_ms = 87.5;
    a.status = ActivationStatus::Timeout;
    a.http_status = 504;
    // A NUL byte and non-ASCII text: kept as they are.
    a.response = "timed out after 5s \u{0} ünïcode".into();
    a.response_truncated = true;
    a.logs = vec![
        LogLine { ts_ms: 1_001, stream: LogStream::Stdout, text: "starting".into() },
        LogLine { ts_ms: 1_002, stream: LogStream::Stderr, text: "ünïcode \"quoted\"\n\u{0}".into() },
    ];
    a.logs_truncated = true;
    a.caller_gave_up_ms = Some(250.5);
    a.memory_mb = 256;
    a.cpu_ms = Some(3.25);
    a.memory_peak_bytes = Some(100 << 20);
    a.revision = 7;
    a.revision_id = 1 << 40;
    let inv = flick_core::Invocation::post("cf-round", Cause::Http, vec![]);
    a = a.traced(inv.trace.as_ref());
    assert!(a.trace_id.is_some() && a.span_id.is_some() && a.traceparent.is_some());
    let seq = store.insert_activation(&a).await.unwrap();
    assert!(seq > 0);

    let stored = store.activation(&a.id).await.unwrap().unwrap();
    assert_eq!(stored, Activation { seq, ..a.clone() }, "a record reads back as stored");
    assert_eq!(store.activation(&ActivationId::generate()).await.unwrap(), None);
    let dup = store.insert_activation(&a).await;
    assert!(
        matches!(&dup, Err(e) if !e.is_transient()),
        "ids are unique, and a duplicate is not worth retrying: {dup:?}"
    );
}

async fn causes_attempts_and_parents_round_trip_and_filter(store: &dyn Store) {
    let f = "cf-cause";
    let parent = record("cf-cause-seq", 1_000);
    let mut a = record(f, 1_000);
    a.cause = Cause::Cron;
    a.trigger = Some("cf-every-10s".into());
    a.attempt = 3;
    a.max_attempts = 3;
    a.attempts = (1..=2)
        .map(|n| AttemptOutcome {
            attempt: n,
            status: ActivationStatus::Error,
            http_status: 500,
            message: format!("boom {n}"),
            start_ms: 900 + i64::from(n),
            duration_ms: 1.5,
        })
        .collect();
    a.parent = Some(parent.id.clone());
    let seq = store.insert_activation(&a).await.unwrap();
    store.insert_activation(&parent).await.unwrap();
    let plain = insert(store, f, 1_001).await;
    assert_eq!(store.activation(&a.id).await.unwrap().unwrap(), Activation { seq, ..a.clone() });

    let ids = |q: ActivationQuery| async move {
        store.activations(&q).await.unwrap().into_iter().map(|a| a.id).collect::<Vec<_>>()
    };
    let only_a = vec![a.id.clone()];
    let of_f = ActivationQuery { function: Some(f.into()), ..Default::default() };
    assert_eq!(ids(ActivationQuery { cause: Some(Cause::Cron), ..of_f.clone() }).await, only_a);
    assert_eq!(ids(ActivationQuery { trigger: Some("cf-every-10s".into()), ..Default::default() }).await, only_a);
    assert_eq!(ids(ActivationQuery { parent: Some(parent.id.clone()), ..Default::default() }).await, only_a);
    let http = ActivationQuery { cause: Some(Cause::Http), ..of_f.clone() };
    assert_eq!(seqs(store, http).await, [plain]);
    let seq_http =
        ActivationQuery { function: Some("cf-cause-seq".into()), cause: Some(Cause::Http), ..Default::default() };
    assert_eq!(ids(seq_http).await, vec![parent.id]);
    assert!(ids(ActivationQuery { trigger: Some("cf-other".into()), ..Default::default() }).await.is_empty());

    let cb = CallbackOutcome {
        url: "http://127.0.0.1:9/cb".into(),
        delivered: false,
        attempts: 3,
        http_status: Some(500),
        error: Some("HTTP 500".into()),
        end_ms: 2_000,
    };
    assert!(store.set_callback(&a.id, &cb).await.unwrap());
    assert_eq!(store.activation(&a.id).await.unwrap().unwrap().callback, Some(cb.clone()));
    assert!(store.delete_activation(&a.id).await.unwrap());
    assert!(!store.delete_activation(&a.id).await.unwrap(), "a second delete finds nothing");
    assert!(!store.set_callback(&a.id, &cb).await.unwrap(), "no callback on a record that is gone");
}

async fn listing_order_cursor_filter_and_limit(store: &dyn Store) {
    let (a, b) = ("cf-order-a", "cf-order-b");
    let mut s = Vec::new();
    for (i, f) in [a, b, a, b, a].into_iter().enumerate() {
        s.push(insert(store, f, 100 + i as i64).await);
    }
    assert!(s.windows(2).all(|w| w[0] < w[1]), "seq grows with each insert: {s:?}");

    // Checks run one at a time, so the newest records are these.
    let newest = ActivationQuery { limit: 5, ..Default::default() };
    assert_eq!(seqs(store, newest).await, [s[4], s[3], s[2], s[1], s[0]], "newest first");
    let after = ActivationQuery { after_seq: Some(s[1]), ..Default::default() };
    assert_eq!(seqs(store, after).await, [s[2], s[3], s[4]], "after a cursor: oldest first");

    let only_a = ActivationQuery { function: Some(a.into()), ..Default::default() };
    assert_eq!(seqs(store, only_a.clone()).await, [s[4], s[2], s[0]]);
    let a_after = ActivationQuery { after_seq: Some(s[0]), ..only_a.clone() };
    assert_eq!(seqs(store, a_after).await, [s[2], s[4]]);
    let none = ActivationQuery { function: Some("cf-order-c".into()), ..Default::default() };
    assert!(seqs(store, none).await.is_empty());

    let two = ActivationQuery { limit: 2, ..only_a.clone() };
    assert_eq!(seqs(store, two).await, [s[4], s[2]]);
    let first_two = ActivationQuery { limit: 2, after_seq: Some(0), ..only_a };
    assert_eq!(seqs(store, first_two).await, [s[0], s[2]]);
}

async fn limit_defaults_to_100_and_caps_at_1000(store: &dyn Store) {
    let f = "cf-limit";
    let batch: Vec<Activation> = (0..1001).map(|i| record(f, i)).collect();
    let results = store.insert_activations(&batch, RecordLimits::UNLIMITED).await.unwrap();
    assert_eq!(stored(&results), 1001);
    let count = |limit| async move {
        let query = ActivationQuery { function: Some(f.into()), limit, ..Default::default() };
        store.activations(&query).await.unwrap().len()
    };
    assert_eq!(count(0).await, 100, "limit 0 is the default, 100");
    assert_eq!(count(5000).await, 1000, "no listing is longer than 1000");
    assert_eq!(count(1000).await, 1000);
    assert_eq!(count(7).await, 7);
}

/// Stores may write a batch in pieces (PostgreSQL: multi-row inserts):
/// every record gets the seq it is read back with, a refused one in a
/// large batch leaves only itself out, and usage counts what was stored.
async fn a_large_batch_gives_each_record_its_own_seq(store: &dyn Store) {
    let f = "cf-large";
    let mut batch: Vec<Activation> = (0..301).map(|i| record(f, 1_000 + i)).collect();
    batch[250].id = batch[17].id.clone();
    let results = store.insert_activations(&batch, RecordLimits::UNLIMITED).await.unwrap();
    assert_eq!(results.len(), 301);
    assert!(results[250].is_err(), "a reused id is refused");
    assert_eq!(stored(&results), 300);
    let mut seen = std::collections::HashSet::new();
    for (a, r) in batch.iter().zip(&results).filter(|(_, r)| r.is_ok()) {
        let seq = *r.as_ref().unwrap();
        assert!(seen.insert(seq), "seq {seq} given twice");
        let back = store.activation(&a.id).await.unwrap().expect("stored");
        assert_eq!((back.seq, back.start_ms), (seq, a.start_ms), "{}", a.id);
    }
    let usage = store.usage(Some(f), 0).await.unwrap();
    assert_eq!(usage.iter().map(|u| u.invocations).sum::<u64>(), 300);
}

async fn activation_counts_per_function(store: &dyn Store) {
    for (f, n) in [("cf-count-b", 3), ("cf-count-a", 1)] {
        for i in 0..n {
            insert(store, f, i).await;
        }
    }
    let counts: Vec<(String, u64)> =
        store.activation_counts().await.unwrap().into_iter().filter(|(f, _)| f.starts_with("cf-count-")).collect();
    assert_eq!(counts, vec![("cf-count-a".to_string(), 1), ("cf-count-b".to_string(), 3)], "counted, by name");
}

async fn a_refused_record_does_not_take_its_batch_down(store: &dyn Store) {
    let f = "cf-refused";
    let first = record(f, 1);
    store.insert_activation(&first).await.unwrap();
    let (a, b) = (record(f, 2), record(f, 3));
    // The middle one reuses an id: the database refuses it alone.
    let results =
        store.insert_activations(&[a.clone(), first.clone(), b.clone()], RecordLimits::UNLIMITED).await.unwrap();
    assert_eq!(results.len(), 3, "one result per record");
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let (sa, sb) = (*results[0].as_ref().unwrap(), *results[2].as_ref().unwrap());
    assert!(sa < sb, "seq follows the batch's order");
    let err = results[1].as_ref().unwrap_err();
    assert!(!err.is_transient(), "a duplicate is the record's own fault: {err}");
    for x in [&first, &a, &b] {
        assert!(store.activation(&x.id).await.unwrap().is_some());
    }
    assert_eq!(seqs_of(store, f).await.len(), 3);
    let usage = store.usage(Some(f), 0).await.unwrap();
    assert_eq!(usage.iter().map(|u| u.invocations).sum::<u64>(), 3, "the refused record is not billed");
}

async fn inserts_keep_each_function_to_its_count(store: &dyn Store) {
    let (a, b) = ("cf-cap-a", "cf-cap-b");
    let limits = RecordLimits { per_function: 3, max_bytes: u64::MAX };
    let mut kept = Vec::new();
    for i in 0..5 {
        let results = store.insert_activations(&[record(a, i), record(b, i)], limits).await.unwrap();
        kept.push(*results[0].as_ref().unwrap());
    }
    assert_eq!(seqs_of(store, a).await, kept[2..], "the newest 3 are kept");
    assert_eq!(seqs_of(store, b).await.len(), 3);
}

async fn inserts_keep_records_under_the_size_budget(store: &dyn Store) {
    let (a, b) = ("cf-budget-a", "cf-budget-b");
    let budget = 2 << 20;
    let limits = RecordLimits { per_function: u32::MAX, max_bytes: budget };
    let mut last = Vec::new();
    // 24 MiB of records through a 2 MiB budget, in batches of 8 x 32 KiB.
    for round in 0..96 {
        let batch: Vec<Activation> = (0..8).map(|i| big_record(if i % 2 == 0 { a } else { b }, 32 << 10)).collect();
        let results = store.insert_activations(&batch, limits).await.unwrap();
        assert_eq!(stored(&results), 8, "round {round}");
        last = batch;
    }
    // The newest records are the ones kept, whole.
    for x in &last {
        let got = store.activation(&x.id).await.unwrap().unwrap();
        assert_eq!((got.response.len(), got.logs[0].text.len()), (16 << 10, 16 << 10));
    }
    let kept = seqs_of_all(store, &[a, b]).await.len() as u64;
    assert!(kept * (32 << 10) <= budget, "{kept} records of 32 KiB kept under a budget of {budget} bytes");
    assert!(kept >= 32, "only {kept} records kept: the budget holds far more");
}

async fn concurrent_inserts_are_followed_without_gaps(store: &dyn Store) {
    let f = "cf-follow";
    let (writers, batches, per_batch) = (4, 10, 5);
    let follow = async {
        let mut seen: Vec<Activation> = Vec::new();
        let mut cursor = 0;
        let mut idle_rounds = 0;
        // A cursor that skipped a record never sees them all: give up then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while idle_rounds < 20 && std::time::Instant::now() < deadline {
            let query = ActivationQuery { function: Some(f.into()), after_seq: Some(cursor), ..Default::default() };
            let page = store.activations(&query).await.unwrap();
            if let Some(last) = page.last() {
                cursor = last.seq;
                seen.extend(page);
                idle_rounds = 0;
            } else if seen.len() == writers * batches * per_batch {
                idle_rounds += 1;
            }
            tokio::task::yield_now().await;
        }
        seen
    };
    let write = |w: usize| async move {
        let mut ids = Vec::new();
        for i in 0..batches {
            let batch: Vec<Activation> = (0..per_batch).map(|j| record(f, (w * 1000 + i * 10 + j) as i64)).collect();
            ids.extend(batch.iter().map(|a| a.id.clone()));
            let results = store.insert_activations(&batch, RecordLimits::UNLIMITED).await.unwrap();
            assert_eq!(stored(&results), per_batch);
        }
        ids
    };
    let writes = async {
        let mut all = Vec::new();
        for ids in futures_join_all((0..writers).map(write).collect()).await {
            all.extend(ids);
        }
        all
    };
    let (seen, written) = tokio::join!(follow, writes);
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "a follower sees each record once, in seq order");
    let mut seen_ids: Vec<String> = seen.iter().map(|a| a.id.as_str().to_string()).collect();
    let mut written_ids: Vec<String> = written.iter().map(|id| id.as_str().to_string()).collect();
    seen_ids.sort();
    written_ids.sort();
    assert_eq!(seen_ids, written_ids, "a follower's cursor skipped records written concurrently");
}

/// Polls futures together on this task (no spawn: they borrow the store).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

async fn prune_by_age(store: &dyn Store) {
    store.prune_activations(i64::MAX, 0).await.unwrap();
    let (a, b) = ("cf-age-a", "cf-age-b");
    let _old_a = insert(store, a, 10).await;
    let new_a = insert(store, a, 50).await;
    let _old_b = insert(store, b, 49).await;
    let edge_b = insert(store, b, 50).await;
    assert_eq!(store.prune_activations(50, 100).await.unwrap(), 2, "records that started before 50 go");
    assert_eq!(seqs_of_all(store, &[a, b]).await, [new_a, edge_b]);
    assert_eq!(store.prune_activations(50, 100).await.unwrap(), 0);
}

async fn prune_by_count_per_function(store: &dyn Store) {
    store.prune_activations(i64::MAX, 0).await.unwrap();
    let (fa, fb, fc) = ("cf-keep-a", "cf-keep-b", "cf-keep-c");
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..5 {
        a.push(insert(store, fa, 1_000 + i).await);
        if i < 2 {
            b.push(insert(store, fb, 1_000 + i).await);
        }
    }
    // Ranked by seq, not start time: the latest-starting record of `c`
    // was stored first, so it is the one that goes.
    let late_start_early_seq = insert(store, fc, 9_000).await;
    let c2 = insert(store, fc, 1_000).await;
    let c3 = insert(store, fc, 1_000).await;

    assert_eq!(store.prune_activations(0, 2).await.unwrap(), 3 + 1);
    let mut expected = vec![a[3], a[4], b[0], b[1], c2, c3];
    expected.sort();
    let all = seqs_of_all(store, &[fa, fb, fc]).await;
    assert_eq!(all, expected);
    assert!(!all.contains(&late_start_early_seq));

    // Age and count together in one call.
    assert_eq!(store.prune_activations(1_001, 1).await.unwrap(), 3 + 1);
    assert_eq!(seqs_of_all(store, &[fa, fb, fc]).await, [b[1], a[4]]);
}

async fn usage_is_summed_per_function_and_day_and_survives_pruning(store: &dyn Store) {
    let (fa, fb) = ("cf-usage-a", "cf-usage-b");
    let day = 86_400_000;
    let call = |f: &str, start: i64, status, exec_ms: f64| Activation {
        memory_mb: 256,
        exec_ms,
        cpu_ms: Some(exec_ms / 2.0),
        memory_peak_bytes: Some(100 << 20),
        cold: status != ActivationStatus::Success,
        status,
        ..record(f, start)
    };
    let ours = |days: Vec<crate::UsageDay>| -> Vec<crate::UsageDay> {
        days.into_iter().filter(|u| u.function.starts_with("cf-usage-")).collect()
    };
    let batch = vec![
        call(fa, day + 5, ActivationStatus::Success, 200.0),
        call(fa, day + 9, ActivationStatus::Error, 199.2),
        call(fa, 2 * day + 1, ActivationStatus::Success, 10.0),
        call(fb, day + 7, ActivationStatus::Success, 1.0),
    ];
    for r in store.insert_activations(&batch, RecordLimits::UNLIMITED).await.unwrap() {
        r.unwrap();
    }
    // The same record again is refused, and counted once.
    assert!(store.insert_activations(&batch[..1], RecordLimits::UNLIMITED).await.unwrap()[0].is_err());
    let all = ours(store.usage(None, 0).await.unwrap());
    let days: Vec<_> = all.iter().map(|u| (u.function.as_str(), u.day.as_str())).collect();
    assert_eq!(days, [(fa, "1970-01-02"), (fb, "1970-01-02"), (fa, "1970-01-03")], "by day, then function");
    let a1 = &all[0];
    assert_eq!((a1.invocations, a1.errors, a1.cold_starts, a1.billed_ms), (2, 1, 1, 400));
    assert_eq!(a1.billed_mib_ms, 256 * 400);
    assert_eq!(a1.measured_byte_ms, (100u64 << 20) as f64 * 400.0);
    assert!((a1.cpu_ms - 199.6).abs() < 1e-9, "{}", a1.cpu_ms);
    assert_eq!(store.usage(Some(fa), 2 * day).await.unwrap().len(), 1, "since a day, for one function");
    assert_eq!(store.usage(Some(fa), 2 * day + 86_399_999).await.unwrap().len(), 1, "since any ms of the day");
    assert!(store.usage(Some("cf-usage-nope"), 0).await.unwrap().is_empty());
    assert!(store.prune_activations(i64::MAX, 0).await.unwrap() >= 4);
    assert_eq!(ours(store.usage(None, 0).await.unwrap()), all, "pruning records keeps the bill");
    // A call that ran without a record of its own (a retried attempt).
    store.count_usage(&call(fb, day + 8, ActivationStatus::Timeout, 99.5)).await.unwrap();
    let b1 = store.usage(Some(fb), day).await.unwrap();
    assert_eq!((b1[0].invocations, b1[0].errors, b1[0].billed_ms), (2, 1, 101), "{b1:?}");
    assert!(seqs_of(store, fb).await.is_empty(), "and stores no record");
}

async fn rule_triggers_and_rules_overwrite_only_when_asked(store: &dyn Store) {
    let mut params = serde_json::Map::new();
    params.insert("a".into(), serde_json::json!(1));
    let t = RuleTrigger {
        name: "cf-t".into(),
        params,
        annotations: serde_json::json!([{"key": "feed", "value": "/whisk.system/alarms/alarm"}]),
        feed: Some(serde_json::json!({"cron": "* * * * * *"})),
        created_ms: 1,
        updated_ms: 1,
    };
    let r = Rule {
        name: "cf-r".into(),
        trigger: "cf-t".into(),
        action: "cf-f".into(),
        active: true,
        annotations: serde_json::json!([]),
        created_ms: 2,
        updated_ms: 2,
    };
    assert!(store.put_rule_trigger(&t, false).await.unwrap());
    let changed = RuleTrigger { feed: None, updated_ms: 5, ..t.clone() };
    assert!(!store.put_rule_trigger(&changed, false).await.unwrap(), "no overwrite: left alone");
    assert_eq!(store.rule_trigger("cf-t").await.unwrap(), Some(t.clone()));
    assert!(store.put_rule(&r, false).await.unwrap());
    assert!(!store.put_rule(&Rule { action: "cf-g".into(), ..r.clone() }, false).await.unwrap());
    assert!(store.set_rule_active("cf-r", false).await.unwrap());
    assert!(!store.set_rule_active("cf-nope", false).await.unwrap());
    let got = store.rule("cf-r").await.unwrap().unwrap();
    assert_eq!((got.action.as_str(), got.active, &got.annotations), ("cf-f", false, &r.annotations));
    assert!(got.updated_ms >= r.updated_ms);
    assert_eq!(store.rules(Some("cf-t")).await.unwrap().len(), 1);
    assert!(store.rules(Some("cf-other")).await.unwrap().is_empty());
    let replaced = RuleTrigger { feed: None, created_ms: 9, updated_ms: 9, ..t.clone() };
    assert!(store.put_rule_trigger(&replaced, true).await.unwrap());
    let now = store.rule_trigger("cf-t").await.unwrap().unwrap();
    assert_eq!((now.feed, now.created_ms, now.updated_ms), (None, 1, 9), "an overwrite keeps created_ms");
    assert!(store.put_rule(&Rule { action: "cf-g".into(), ..r.clone() }, true).await.unwrap());
    assert_eq!(store.rule("cf-r").await.unwrap().unwrap().action, "cf-g");
    assert_eq!(store.rule_triggers().await.unwrap().iter().filter(|t| t.name == "cf-t").count(), 1);
    assert!(store.delete_rule_trigger("cf-t").await.unwrap());
    assert!(!store.delete_rule_trigger("cf-t").await.unwrap());
    assert_eq!(store.rule_trigger("cf-t").await.unwrap(), None);
    // Its rule stays, as OpenWhisk's do.
    assert!(store.rule("cf-r").await.unwrap().is_some());
    assert!(store.delete_rule("cf-r").await.unwrap());
    assert!(!store.delete_rule("cf-r").await.unwrap());
    assert!(!store.rules(None).await.unwrap().iter().any(|r| r.name == "cf-r"));
}

async fn trigger_ticks_are_kept_per_trigger(store: &dyn Store) {
    let f = "cf-cron";
    store.put_revision(deploy(f, "python3", false, 'a')).await.unwrap();
    assert_eq!(store.trigger_tick(f, "tick").await.unwrap(), None);
    store.set_trigger_tick(f, "tick", "* * * * * * UTC", 1000).await.unwrap();
    store.set_trigger_tick(f, "tick", "*/2 * * * * * UTC", 2000).await.unwrap();
    store.set_trigger_tick(f, "other", "0 * * * * * UTC", 5).await.unwrap();
    assert_eq!(store.trigger_tick(f, "tick").await.unwrap(), Some(("*/2 * * * * * UTC".into(), 2000)));
    assert_eq!(store.trigger_tick(f, "other").await.unwrap(), Some(("0 * * * * * UTC".into(), 5)));
    assert!(store.delete_function(f).await.unwrap());
    assert_eq!(store.trigger_tick(f, "tick").await.unwrap(), None);
    assert_eq!(store.trigger_tick(f, "other").await.unwrap(), None);
}

async fn maintenance_answers(store: &dyn Store) {
    store.maintain().await.expect("maintain");
    store.checkpoint().await.expect("checkpoint");
    insert(store, "cf-maintain", 1).await;
    store.maintain().await.expect("maintain after a write");
}
