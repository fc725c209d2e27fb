//! `wal-archive-server`: parses flags, merges configuration, and runs [`wal_archive_server::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wal_archive_server::config::{Config, Overrides};

/// The wal-archive server: a WAL archive and backup server for PostgreSQL.
///
/// Runs with no flags at all: local storage and SQLite under /var/lib/wal-archive,
/// listening on 127.0.0.1:8420.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "WAL_ARCHIVE_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for storage, the catalog and the lock file (default /var/lib/wal-archive).
    #[arg(long, env = "WAL_ARCHIVE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8420).
    #[arg(long, env = "WAL_ARCHIVE_LISTEN")]
    listen: Option<String>,
    /// Set the catalog aside and rebuild it from storage alone (backups, WAL, keep flags,
    /// job history), then run. A missing catalog over an archive is rebuilt without it.
    #[arg(long)]
    rebuild_catalog: bool,
    /// Take the storage over even though another server's lease on it has not expired: only
    /// when that server is gone for good (its host lost). Two servers must never write one
    /// storage at once.
    #[arg(long)]
    take_over: bool,
}

fn main() -> ExitCode {
    // Before any file or thread exists: everything the server creates is owner-only.
    wal_archive_server::storage::durability::set_private_umask();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let overrides = Overrides {
        config_file: args.config,
        data_dir: args.data_dir,
        listen: args.listen,
        rebuild_catalog: args.rebuild_catalog,
        take_over: args.take_over,
    };
    let config = match Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wal-archive-server: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wal-archive-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(wal_archive_server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("wal-archive-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
