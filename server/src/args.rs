//! The server's command line, as clap parses it. Kept apart from `main.rs` so that the build
//! script generates the man page and shell completions from this very definition.

use std::path::PathBuf;

use clap::Parser;

/// The wal-archive server: a WAL archive and backup server for PostgreSQL.
///
/// Runs with no flags at all: local storage and SQLite under /var/lib/wal-archive,
/// listening on 127.0.0.1:8420.
#[derive(Parser, Debug)]
#[command(name = "wal-archive-server", version, about)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "WAL_ARCHIVE_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for storage, the catalog and the lock file (default /var/lib/wal-archive).
    #[arg(long, env = "WAL_ARCHIVE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8420).
    #[arg(long, env = "WAL_ARCHIVE_LISTEN")]
    pub listen: Option<String>,
    /// Set the catalog aside and rebuild it from storage alone (backups, WAL, keep flags,
    /// job history), then run. A missing catalog over an archive is rebuilt without it.
    #[arg(long)]
    pub rebuild_catalog: bool,
    /// Take the storage over even though another server's lease on it has not expired: only
    /// when that server is gone for good (its host lost). Two servers must never write one
    /// storage at once.
    #[arg(long)]
    pub take_over: bool,
}
