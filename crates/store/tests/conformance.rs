//! The `Store` contract (`flick_store::conformance`) on both stores: SQLite
//! in a temp dir, PostgreSQL in a fresh database on the server
//! `FLICK_TEST_POSTGRES` names (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Without a reachable server the PostgreSQL test fails, saying so.

use std::sync::Arc;

use flick_store::{PgStore, SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flick.db")).unwrap());
    flick_store::conformance::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_the_store_contract() {
    let db = flick_store::testing::fresh_postgres().await;
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
    flick_store::conformance::run(store).await;
    db.drop_database().await;
}
