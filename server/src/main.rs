//! `wal-archive-server`: parses flags (`args.rs`), merges configuration, and runs
//! [`wal_archive_server::run`].

mod args;

use std::process::ExitCode;

use clap::Parser;
use wal_archive_server::config::{Config, Overrides};

use crate::args::Args;

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
