//! Test support (the `testing` feature): a fresh PostgreSQL database per
//! test, so tests of anything stored in PostgreSQL can run side by side on
//! one server and leave nothing behind.
//!
//! A feature rather than an always-public module: the helper creates and
//! drops databases, which no server should link; test crates turn it on in
//! their `[dev-dependencies]`.

use std::time::Duration;

use tokio_postgres::NoTls;

/// Where the tests' PostgreSQL server is, unless `FLICK_TEST_POSTGRES` says.
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database made for one test, dropped (`WITH (FORCE)`, closing any
/// connection still open) when this is dropped, even if the test panicked.
#[derive(Debug)]
pub struct FreshPostgres {
    /// Connection URL of the new database.
    pub url: String,
    /// Its name: `flick_test_<random hex>`.
    pub name: String,
    admin: tokio_postgres::Config,
}

/// Creates a fresh, empty database on the server `FLICK_TEST_POSTGRES`
/// names (default [`DEFAULT_POSTGRES`]; its user must be allowed to create
/// databases).
///
/// # Panics
///
/// If the server cannot be reached: a PostgreSQL test fails rather than
/// skipping, so a missing server is seen (CI starts one).
pub async fn fresh_postgres() -> FreshPostgres {
    let admin_url = std::env::var("FLICK_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string());
    let mut admin: tokio_postgres::Config =
        admin_url.parse().unwrap_or_else(|e| panic!("FLICK_TEST_POSTGRES is not a PostgreSQL URL: {e}"));
    admin.connect_timeout(Duration::from_secs(5));
    let client = match connect(&admin).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach PostgreSQL for tests at {admin_url} ({e}): start a server there (CI does), \
             or set FLICK_TEST_POSTGRES to one whose user may create databases"
        ),
    };
    let name = format!("flick_test_{}", flick_core::ActivationId::generate().as_str());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let url = url_with_database(&admin_url, &name);
    FreshPostgres { url, name, admin }
}

impl FreshPostgres {
    /// Drops the database now (a test that wants to see it go).
    pub async fn drop_database(mut self) {
        let name = std::mem::take(&mut self.name);
        drop_database(&self.admin, &name).await;
    }
}

impl Drop for FreshPostgres {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        // Drop is not async and may run inside a runtime: a thread of its
        // own with a runtime of its own.
        let (admin, name) = (self.admin.clone(), std::mem::take(&mut self.name));
        let done =
            std::thread::spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(drop_database(&admin, &name)),
                Err(e) => eprintln!("cannot drop test database {name}: no runtime: {e}"),
            });
        let _ = done.join();
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn drop_database(admin: &tokio_postgres::Config, name: &str) {
    let result = match connect(admin).await {
        Ok(client) => client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("cannot drop test database {name}: {e}");
    }
}

/// `url` with its database (the path, or `dbname=` of key=value form) replaced.
fn url_with_database(url: &str, name: &str) -> String {
    if let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) {
        let (authority, query) = match rest.find(['/', '?']) {
            Some(i) => {
                let query = rest[i..].find('?').map(|q| &rest[i + q..]).unwrap_or("");
                (&rest[..i], query)
            }
            None => (rest, ""),
        };
        format!("postgres://{authority}/{name}{query}")
    } else {
        format!("{url} dbname={name}")
    }
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        let cases = [
            ("postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/x"),
            ("postgresql://u:p@h/db?sslmode=disable", "postgres://u:p@h/x?sslmode=disable"),
            ("postgres://h:5", "postgres://h:5/x"),
            ("host=/run/postgresql user=me", "host=/run/postgresql user=me dbname=x"),
        ];
        for (url, want) in cases {
            assert_eq!(url_with_database(url, "x"), want, "{url}");
        }
    }
}
