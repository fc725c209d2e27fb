//! Stage one of the command line: the flags as parsed by clap, before any validation.
//! [`crate::settings`] turns them into what the commands use.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// wal-archive: archive and restore PostgreSQL WAL through a wal-archive server.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after the command name.
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Server URL [default: http://127.0.0.1:8420]
    #[arg(long, global = true, env = "WAL_ARCHIVE_URL")]
    pub url: Option<String>,
    /// Access token. Prefer WAL_ARCHIVE_TOKEN or a config file: arguments are visible in `ps`.
    #[arg(long, global = true, env = "WAL_ARCHIVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Client configuration file (TOML: url, token, retry_for).
    #[arg(long, global = true, env = "WAL_ARCHIVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate (for https:// URLs with a
    /// private CA); the system's web roots are used otherwise.
    #[arg(long, global = true, env = "WAL_ARCHIVE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to keep retrying while the server cannot be reached
    /// [default: 60, or 10 for `fetch` in standby mode].
    #[arg(long, global = true, env = "WAL_ARCHIVE_RETRY_FOR")]
    pub retry_for: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Archive one WAL file (archive_command = 'wal-archive push --cluster C %p').
    Push {
        #[arg(long)]
        cluster: String,
        /// Path of the WAL file (PostgreSQL's %p).
        path: PathBuf,
    },
    /// Restore one WAL file (restore_command = 'wal-archive fetch --cluster C %f %p').
    Fetch {
        #[arg(long)]
        cluster: String,
        /// Name of the WAL file (PostgreSQL's %f).
        walname: String,
        /// Where to write it (PostgreSQL's %p).
        dest: PathBuf,
        /// PostgreSQL data directory, to tell standby mode (standby.signal) from archive
        /// recovery [default: the current directory, where PostgreSQL runs restore_command].
        #[arg(long)]
        pgdata: Option<PathBuf>,
    },
    /// Check the archive of a cluster: one line per check, OK or FAILED with the fix.
    Check {
        #[arg(long)]
        cluster: String,
        /// Nagios plugin output and exit codes (0 OK, 2 CRITICAL, 3 UNKNOWN).
        #[arg(long)]
        nagios: bool,
    },
    /// Show the archive's timelines, contiguous WAL ranges and gaps.
    Wal {
        #[arg(long)]
        cluster: String,
    },
}
