//! What every SQLite file of flick (the store's `flick.db`, the queue's
//! `queue.db`) needs the same way: owner-only files before SQLite opens
//! them, `user_version` schema migrations, and telling a full disk apart.
//! Each caller maps these errors into its own error type.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

/// A file operation on a database's files failed.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Creates the database file owner-only (0600) before SQLite opens it (the
/// files hold request bodies, environment values, responses and logs).
/// SQLite would create it 0644, and gives the `-wal` and `-shm` files it
/// creates the database file's mode, so creating the file 0600 first covers
/// all three; leftovers of an earlier run are restricted too. Returns the
/// open file (read-write), e.g. to be locked.
pub fn private_db_files(path: &Path) -> Result<std::fs::File, FileError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |action, path: &Path, source| FileError { action, path: path.to_path_buf(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| err("create", path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let name = Path::new(&name);
        match std::fs::set_permissions(name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err("restrict permissions of", name, e)),
            _ => {}
        }
    }
    Ok(file)
}

/// Why [`migrate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The file was written by a newer flick: opening it would lose data.
    #[error("schema version {found} is newer than the {supported} this flick understands")]
    TooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Brings the schema up to date in one immediate transaction: runs the
/// `migrations` past `PRAGMA user_version` (the count already applied) and
/// bumps it after each. `what` names the schema in the log line.
pub fn migrate(conn: &mut Connection, migrations: &[&str], label: &str, what: &str) -> Result<(), MigrateError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(MigrateError::TooNew { found, supported });
    }
    for (done, sql) in migrations.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", done as i64 + 1)?;
    }
    if found < supported {
        tracing::info!(path = label, from = found, to = supported, "migrated {what} schema");
    }
    tx.commit()?;
    Ok(())
}

/// `ENOSPC` or `EDQUOT`: no room to write, whichever limit ran out.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(EDQUOT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_owner_only_even_if_left_readable() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(dir.path().join("x.db-wal"), b"").unwrap();
        std::fs::set_permissions(dir.path().join("x.db-wal"), std::fs::Permissions::from_mode(0o644)).unwrap();
        private_db_files(&db).unwrap();
        for name in ["x.db", "x.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        let err = private_db_files(&dir.path().join("missing/x.db")).unwrap_err();
        assert_eq!(err.action, "create");
    }

    #[test]
    fn migrations_run_once_in_order_and_a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        let steps = ["CREATE TABLE a (x)", "CREATE TABLE b (y)"];
        migrate(&mut conn, &steps[..1], "mem", "test").unwrap();
        migrate(&mut conn, &steps, "mem", "test").unwrap();
        migrate(&mut conn, &steps, "mem", "test").unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, 2);
        let err = migrate(&mut conn, &steps[..1], "mem", "test").unwrap_err();
        assert!(matches!(err, MigrateError::TooNew { found: 2, supported: 1 }), "{err}");
        // A failing step leaves the version where it was.
        let bad = ["CREATE TABLE a (x)", "CREATE TABLE b (y)", "NOT SQL"];
        assert!(matches!(migrate(&mut conn, &bad, "mem", "test"), Err(MigrateError::Sqlite(_))));
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, 2);
    }

    #[test]
    fn full_disk_errors() {
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(28)));
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(122)));
        assert!(!is_disk_full(&std::io::Error::from_raw_os_error(13)));
    }
}
