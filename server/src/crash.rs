//! Crash points: named steps where the server kills itself with SIGKILL when
//! `WAL_ARCHIVE_CRASH_AT` names them, so that tests can put a `kill -9` at an exact step of
//! ingest, backup, retention and drills and check what survives (DESIGN §7.5). Unset (always, outside
//! those tests) a point costs one comparison.
//!
//! The points, in the order each operation passes them:
//! - `ingest.received`: the body is read and validated, nothing published;
//! - `ingest.published`: the object is durable under its key, the catalog has no row;
//! - `ingest.cataloged`: the row is written, the client has no answer;
//! - `backup.streaming`: the first file of a backup is stored;
//! - `backup.streamed`: every file and the manifest are stored, the backup waits for its WAL;
//! - `backup.done`: the backup is recorded `done`;
//! - `retention.planned`: the plan is recorded, nothing removed;
//! - `retention.backups_removed`: the planned backups are gone, their WAL not yet;
//! - `retention.wal_objects_removed`: the planned WAL objects are deleted, their rows not yet;
//! - `drill.postgres_running`: a drill's throwaway PostgreSQL runs and accepted a connection.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const CRASH_AT_ENV: &str = "WAL_ARCHIVE_CRASH_AT";

/// Kills the process with SIGKILL if `WAL_ARCHIVE_CRASH_AT` is `name`.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_AT_ENV).ok().filter(|v| !v.is_empty()));
    if at.as_deref() == Some(name) {
        tracing::warn!(point = name, "{CRASH_AT_ENV}: killing the server here");
        eprintln!("wal-archive-server: {CRASH_AT_ENV}={name}: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // Not reached: SIGKILL cannot be caught.
        std::process::abort();
    }
}
