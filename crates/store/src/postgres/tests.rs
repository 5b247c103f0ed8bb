//! What only the PostgreSQL store has to show: concurrent migration, the
//! follow cursor under concurrent inserts, connection errors. The trait's
//! contract is `conformance`, run in `tests/conformance.rs`.

use std::time::Duration;

use super::*;
use crate::conformance::record;
use crate::testing::fresh_postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let db = fresh_postgres().await;
    let connects = (0..4).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move { PgStore::connect(&url).await })
    });
    let mut stores = Vec::new();
    for c in connects {
        stores.push(c.await.unwrap().unwrap_or_else(|e| panic!("a concurrent connect failed: {e}")));
    }
    let client = stores[0].client().await.unwrap();
    assert_eq!(schema::version(&client).await.unwrap(), schema::VERSION);
    let rows = client.query("SELECT version FROM flick_schema_version", &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "one version row");
    // All four work on the one schema.
    for (i, s) in stores.iter().enumerate() {
        s.insert_activation(&record("migrated", i as i64)).await.unwrap();
    }
    assert_eq!(stores[3].activation_counts().await.unwrap(), vec![("migrated".to_string(), 4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let db = fresh_postgres().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    store.client().await.unwrap().execute("UPDATE flick_schema_version SET version = 99", &[]).await.unwrap();
    match PgStore::connect(&db.url).await {
        Err(StoreError::SchemaTooNew { path, found: 99, supported }) if supported == schema::VERSION => {
            assert!(path.ends_with(&db.name), "{path}")
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// Seq order must be commit order, or a follower skips records: here a
/// transaction stays open across a concurrent insert and then stores one
/// more record. Without the activations lock the concurrent insert takes
/// its seq while the transaction is open (then waits on the byte counter's
/// row), below the transaction's second record, and commits after it: a
/// follower that read the transaction's records has moved its cursor past
/// that seq and never sees it. With the lock it gets its seq only after
/// the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_committed_later_never_gets_an_earlier_seq() {
    let db = fresh_postgres().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    let cursor = store.insert_activation(&record("follow", 0)).await.unwrap();
    let follow = |store: PgStore, after: i64| async move {
        let query = ActivationQuery { function: Some("follow".into()), after_seq: Some(after), ..Default::default() };
        store.activations(&query).await.unwrap().iter().map(|a| a.seq).collect::<Vec<_>>()
    };
    let seq = |results: Vec<Inserted>| *results[0].as_ref().unwrap();

    let mut client = store.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let first = seq(insert_batch(&tx, &[record("follow", 1)], RecordLimits::UNLIMITED).await.unwrap());

    let writer = store.clone();
    let concurrent =
        tokio::spawn(async move { writer.insert_activations(&[record("follow", 2)], RecordLimits::UNLIMITED).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(follow(store.clone(), cursor).await.is_empty(), "nothing is visible before a commit");
    assert!(!concurrent.is_finished(), "the concurrent insert waits for the open transaction");

    let second = seq(insert_batch(&tx, &[record("follow", 3)], RecordLimits::UNLIMITED).await.unwrap());
    tx.commit().await.unwrap();
    let seen = follow(store.clone(), cursor).await;
    let last = concurrent.await.unwrap().unwrap();
    let last = seq(last);
    assert!(
        last > second,
        "seq {last} was committed after seq {second}: a follower that saw {seen:?} has moved past it and never sees it"
    );
    assert_eq!(follow(store, cursor).await, [first, second, last]);
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    // Port 1 on loopback: nothing listens there.
    let e = PgStore::connect("postgres://flick@127.0.0.1:1/flick?connect_timeout=2").await.unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("cannot reach PostgreSQL at 127.0.0.1:1/flick: "), "{text}");
    assert!(e.is_transient());
    let e = PgStore::connect("postgres://h:notaport/db").await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidUrl(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_connection_is_transient_and_the_pool_recovers() {
    let db = fresh_postgres().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    store.insert_activation(&record("recover", 1)).await.unwrap();
    // An administrator (or a failover) ends every session: 57P01.
    let admin = PgStore::connect(&db.url).await.unwrap();
    let killer = admin.client().await.unwrap();
    let victim = store.client().await.unwrap();
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    killer.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    let e = StoreError::from(victim.query_one("SELECT 1", &[]).await.unwrap_err());
    assert!(e.is_transient(), "a terminated session is worth retrying: {e}");
    drop(victim);
    // The pool notices at checkout and connects again.
    let mut ok = false;
    for _ in 0..3 {
        if store.activation_counts().await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the store works again after its connection was terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_budget_counts_live_records_only() {
    let db = fresh_postgres().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    let total = |store: PgStore| async move {
        let client = store.client().await.unwrap();
        client.query_one("SELECT total FROM activation_bytes", &[]).await.unwrap().get::<_, i64>(0)
    };
    let a = crate::conformance::big_record("b", 10_000);
    store.insert_activation(&a).await.unwrap();
    let one = total(store.clone()).await;
    assert_eq!(one as u64, record_bytes(&a));
    store.insert_activation(&record("b", 1)).await.unwrap();
    assert!(store.delete_activation(&a.id).await.unwrap());
    assert_eq!(total(store.clone()).await as u64, record_bytes(&record("b", 1)), "deletes are subtracted");
    store.prune_activations(i64::MAX, 0).await.unwrap();
    assert_eq!(total(store.clone()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_hear_of_every_change_of_a_current_revision() {
    let db = fresh_postgres().await;
    let (a, b) = (PgStore::connect(&db.url).await.unwrap(), PgStore::connect(&db.url).await.unwrap());
    let mut heard = b.changes().expect("a shared store sends notices");
    // The listener connects in the background: wait until it hears one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        a.put_revision(crate::conformance::deploy("warmup", "exec", false, if n % 2 == 0 { 'a' } else { 'b' }))
            .await
            .unwrap();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), heard.recv()).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no notice within 10 s");
    }
    while heard.try_recv().is_ok() {}
    a.put_revision(crate::conformance::deploy("noticed", "exec", false, 'a')).await.unwrap();
    assert_eq!(recv(&mut heard).await, crate::Change::Function("noticed".into()));
    a.put_revision(crate::conformance::deploy("noticed", "exec", false, 'b')).await.unwrap();
    assert_eq!(recv(&mut heard).await, crate::Change::Function("noticed".into()));
    a.set_current("noticed", 1).await.unwrap();
    assert_eq!(recv(&mut heard).await, crate::Change::Function("noticed".into()));
    assert!(a.delete_function("noticed").await.unwrap());
    assert_eq!(recv(&mut heard).await, crate::Change::Function("noticed".into()));
    // A transaction that rolls back notifies no one.
    let mut client = a.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO functions (name, current_revision, created_ms, updated_ms) VALUES ('ghost', 1, 0, 0)", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), heard.recv()).await.is_err(),
        "a rolled back change was heard"
    );
}

async fn recv(heard: &mut tokio::sync::broadcast::Receiver<crate::Change>) -> crate::Change {
    tokio::time::timeout(Duration::from_secs(5), heard.recv()).await.expect("a notice within 5 s").unwrap()
}
