//! Stage one of the command line: the flags as parsed by clap, before any validation.
//! [`crate::settings`] turns them into what the commands use. The server's build script also
//! reads this file, to generate the man pages and shell completions of `wal-archive` from it:
//! it may use clap and std only.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// wal-archive: archive and restore PostgreSQL WAL through a wal-archive server.
#[derive(Parser, Debug)]
#[command(
    name = "wal-archive",
    version,
    // Spelled out, not `about` alone: that would be the description of the crate that compiles
    // this file, and the server's build script compiles it too (for the man pages).
    about = "The wal-archive command: archive_command/restore_command helper and operator commands",
    propagate_version = true
)]
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
    /// Client configuration file (TOML: url, token, retry_for, ca_file, look_ahead, parallel,
    /// prefetch, prefetch_max_bytes, spool_dir, compress_level).
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
    /// push: also send up to N more files PostgreSQL has marked `.ready`, and remember what the
    /// server acknowledged so that later calls for them return at once (0 = off) [default: 16].
    #[arg(long, global = true, value_name = "N")]
    pub look_ahead: Option<usize>,
    /// push/fetch: look-ahead uploads or prefetch downloads at once [default: 2].
    #[arg(long, global = true, value_name = "P", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: Option<u16>,
    /// fetch: keep the next N segments after the requested one in the spool (0 = off)
    /// [default: 8].
    #[arg(long, global = true, value_name = "N")]
    pub prefetch: Option<usize>,
    /// fetch: most bytes the prefetch spool may hold [default: 1073741824].
    #[arg(long, global = true, value_name = "BYTES")]
    pub prefetch_max_bytes: Option<u64>,
    /// Where push keeps its acknowledgement records and fetch its prefetch spool [default:
    /// ${XDG_RUNTIME_DIR:-/tmp}/wal-archive-UID/HASH, HASH of the absolute pg_wal path, the
    /// server URL and the cluster]. Never inside the data directory: base backups copy it.
    #[arg(long, global = true, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// push: zstd-compress the body at this level before sending (0 = off, the default), for
    /// links where the network is the limit.
    #[arg(long, global = true, value_name = "L", value_parser = clap::value_parser!(i32).range(0..=22))]
    pub compress_level: Option<i32>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Archive one WAL file (archive_command = 'wal-archive push --cluster C %p').
    Push {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Path of the WAL file (PostgreSQL's %p).
        #[arg(required_unless_present = "test", conflicts_with = "test")]
        path: Option<PathBuf>,
        /// Store nothing: check that the server is reachable, is a wal-archive server, and
        /// lets this token push WAL of the cluster. Run it as the user archive_command runs
        /// as, with the options archive_command passes.
        #[arg(long)]
        test: bool,
    },
    /// Restore one WAL file (restore_command = 'wal-archive fetch --cluster C %f %p').
    Fetch {
        #[arg(long, value_parser = cluster_name)]
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
    /// The prefetch worker that `fetch` starts in the background (not for direct use).
    #[command(hide = true)]
    FetchWorker {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
    },
    /// Apply the cluster's retention policy now (the server also runs it on schedule).
    Retention {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Runs of scheduled and requested jobs (backups, retention), newest first.
    Jobs {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
    },
    /// Run pg_switch_wal() on the cluster (after a checkpoint on an idle one).
    SwitchWal {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Wait until the closed segment is in the archive.
        #[arg(long)]
        archive: bool,
        /// Seconds to wait for it with --archive.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Check the archive of a cluster: one line per check, OK or FAILED with the fix.
    Check {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Nagios plugin output and exit codes (0 OK, 2 CRITICAL, 3 UNKNOWN).
        #[arg(long)]
        nagios: bool,
    },
    /// What the server's status page shows: per cluster the newest WAL and its age, gaps, the
    /// receiver, slots and standbys, backups, and the failed checks with their fix (exit 1 when
    /// a check fails).
    Status {
        /// Only this cluster [default: every cluster the token may read].
        #[arg(long, value_parser = cluster_name)]
        cluster: Option<String>,
    },
    /// Show the archive's timelines, contiguous WAL ranges and gaps.
    Wal {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
    },
    /// Take a base backup of a cluster (the server connects to it with the cluster's conninfo).
    Backup {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Wait until the backup is done (or failed), showing its progress; without it the
        /// backup's id is printed and the backup goes on in the server.
        #[arg(long)]
        wait: bool,
        /// The checkpoint that starts the backup: `fast` (at once, more I/O) or `spread`
        /// (paced by checkpoint_completion_target) [default: the server's, fast].
        #[arg(long, value_enum)]
        checkpoint: Option<Checkpoint>,
    },
    /// List the backups of a cluster, newest first.
    List {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
    },
    /// Show one backup.
    Show {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Backup id, or `latest` (the newest done backup).
        backup: String,
    },
    /// Rebuild a data directory from a backup, set up for point-in-time recovery or as a standby.
    /// Run it as the PostgreSQL OS user: files are created as the user that runs it.
    Restore(RestoreArgs),
    /// Re-read and re-hash a backup's stored files and check its WAL; print each problem
    /// (exit 1 if there is any).
    Verify {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Backup id or `latest` [default: every done backup].
        backup: Option<String>,
    },
    /// Recovery drill on the server host: restore a backup into a scratch directory, replay the
    /// archive in a throwaway PostgreSQL, check it, measure the time to recover, clean up
    /// (exit 1 when the drill fails).
    Drill(DrillArgs),
    /// Delete a backup (refused for a kept one, or below the cluster's minimum redundancy).
    Delete {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Backup id or `latest`.
        backup: String,
    },
    /// Keep a backup regardless of the retention policy (or stop keeping it with --release).
    Keep {
        #[arg(long, value_parser = cluster_name)]
        cluster: String,
        /// Backup id or `latest`.
        backup: String,
        /// Release the backup: retention applies to it again.
        #[arg(long)]
        release: bool,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Checkpoint {
    Fast,
    Spread,
}

impl Checkpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Checkpoint::Fast => "fast",
            Checkpoint::Spread => "spread",
        }
    }
}

/// PostgreSQL's `recovery_target_action`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetAction {
    Pause,
    Promote,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("target")
        .args(["target_time", "target_lsn", "target_xid", "target_name", "target_immediate"])
        .multiple(false)
))]
pub struct RestoreArgs {
    #[arg(long, value_parser = cluster_name)]
    pub cluster: String,
    /// Backup id, or `latest` (the newest done backup).
    pub backup: String,
    /// The data directory to create: it must not exist or be empty (see --delta).
    #[arg(long)]
    pub target_dir: PathBuf,
    /// Restore into an existing, stopped data directory of the same cluster (an old primary
    /// after a failover): files with the backup's content are kept, others rewritten, files
    /// the backup does not have removed.
    #[arg(long)]
    pub delta: bool,
    /// Restore tablespace NAME (its name or OID) into DIR instead of its original location;
    /// DIR must not exist or be empty. Repeat for each tablespace to move.
    #[arg(long = "tablespace", value_name = "NAME=DIR")]
    pub tablespaces: Vec<String>,
    /// Files downloaded in parallel.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Recover up to this time (recovery_target_time), e.g. '2026-11-21 22:30:00+00'.
    #[arg(long)]
    pub target_time: Option<String>,
    /// Recover up to this WAL location (recovery_target_lsn), e.g. 0/3000060.
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Recover up to this transaction id, included (recovery_target_xid).
    #[arg(long)]
    pub target_xid: Option<String>,
    /// Recover up to this restore point (recovery_target_name, see pg_create_restore_point()).
    #[arg(long)]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent (recovery_target = 'immediate').
    #[arg(long)]
    pub target_immediate: bool,
    /// What PostgreSQL does at the target (recovery_target_action) [PostgreSQL's default: pause].
    #[arg(long, value_enum)]
    pub target_action: Option<TargetAction>,
    /// Timeline to recover along (recovery_target_timeline): `latest`, `current` or a number.
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// Set the directory up as a standby (standby.signal) instead of for archive recovery.
    #[arg(long)]
    pub standby: bool,
    /// primary_conninfo of the standby.
    #[arg(long, requires = "standby")]
    pub primary_conninfo: Option<String>,
    /// primary_slot_name of the standby.
    #[arg(long, requires = "standby")]
    pub primary_slot_name: Option<String>,
    /// Client configuration file that restore_command passes with --config (where the token is
    /// read from) [default: the --config given to this command, if any].
    #[arg(long)]
    pub client_config: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("target")
        .args(["target_time", "target_lsn", "target_xid", "target_name", "target_immediate"])
        .multiple(false)
))]
pub struct DrillArgs {
    #[arg(long, value_parser = cluster_name)]
    pub cluster: String,
    /// Backup id, or `latest` (the newest done backup).
    #[arg(default_value = "latest")]
    pub backup: String,
    /// Replay up to this time (recovery_target_time) instead of the end of the archive.
    #[arg(long)]
    pub target_time: Option<String>,
    /// Replay up to this WAL location (recovery_target_lsn).
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Replay up to this transaction id (recovery_target_xid).
    #[arg(long)]
    pub target_xid: Option<String>,
    /// Replay up to this restore point (recovery_target_name).
    #[arg(long)]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent (recovery_target = 'immediate').
    #[arg(long)]
    pub target_immediate: bool,
    /// Timeline to recover along: `latest`, `current` or a number [default: latest].
    #[arg(long)]
    pub target_timeline: Option<String>,
}

/// A cluster name as the server accepts it (1 to 64 letters, digits, `_` or `-`, starting with
/// a letter or digit; the server's `config::validate_cluster_name`, repeated because this file
/// is also compiled alone for the man pages): it becomes part of every URL.
fn cluster_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(name.to_string())
    } else {
        Err("use 1 to 64 letters, digits, '_' or '-', starting with a letter or digit".into())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn a_cluster_name_that_is_not_one_is_refused_before_any_request() {
        for bad in ["main/switch-wal?", "../x", "", "-x", "a b"] {
            assert!(
                super::Cli::try_parse_from(["wal-archive", "push", "--cluster", bad, "f"]).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(
            super::Cli::try_parse_from(["wal-archive", "push", "--cluster", "db-1_x", "f"]).is_ok()
        );
    }
}
