//! The shared harness of the end-to-end tests: real PostgreSQL 15 clusters ([`Pg`]), the real
//! `wal-archive-server` ([`Server`]) and `wal-archive` ([`Cli`]) binaries, all inside one temporary
//! directory per test ([`TestDir`]), and helpers that poll with a deadline instead of sleeping.
//!
//! The binaries are found in `WAL_ARCHIVE_BIN_DIR` or next to the test executable
//! (`cargo build --workspace --bins` first) and copied into the test directory, because
//! PostgreSQL runs `archive_command` / `restore_command` as its own OS user.
//!
//! Every process a test starts is stopped when its handle is dropped, also when the test fails.
//! Set `WAL_ARCHIVE_E2E_KEEP=1` to keep a test's directory (logs, data directories) afterwards.
//!
//! # Test index (`tests/tests/`)
//!
//! - `harness.rs`: the harness itself against PostgreSQL alone (no binary of ours needed).
//! - `long_outage.rs`: acceptance scenario 1, a standby catches up from the archive then streams.
//! - `failover.rs`: promotion to timeline 2 is archived; a base backup recovers across it.
//! - `bad_input.rs`: what the API refuses (422/409/400/401/403), the helper's exit codes when the
//!   server is missing or down, and secrets kept out of `ps` and logs.
//! - `crash.rs`: `kill -9` of the server during pushes and mid-upload loses and exposes nothing.
//! - `corruption.rs`: a stored object that fails its checksum is never served.
//! - `wal_listing.rs`: `wal-archive wal` ranges and gaps, including after reconciliation.
//! - `streaming.rs`: acceptance scenario 2, WAL pulled through the server's replication slot
//!   (kill -9, primary restart and shutdown, pg_receivewal as oracle, failover and promotion of
//!   the standby streamed from, synchronous mode, the segment in progress served to recovery).
//! - `streaming_errors.rs`: what a DBA gets wrong on the PostgreSQL side (REPLICATION attribute,
//!   pg_hba.conf, a busy slot, max_replication_slots, the password): reported by the receiver
//!   status, `check` and the log, and healed without restarting the server once fixed.
//! - `push_test.rs`: `push --test`, archive_command's dry run: ok only for a token that may push
//!   to the cluster; each refusal, a server that is not the archive or is down, said as such;
//!   nothing stored.
//! - `replication.rs`: a real standby's slot goes inactive while the primary writes: `check`
//!   fails naming the slot once it retains more than `max_slot_retained`; `/metrics` shows it.
//! - `status_page.rs`: the status page with real data (WAL, two backups, one kept, an idle
//!   slot) loaded in headless Chromium; its DOM shows what `/v1/status` says; a screenshot.
//! - `lookahead.rs`: look-ahead push; a stale acknowledgement record never yields a false 0; a
//!   backlog of `.ready` segments archived mostly from records.
//! - `faults.rs`: faults and bad inputs, with the promises they test stated in its header:
//!   exit codes that tell PostgreSQL the truth, an owner-only data directory.
//! - `s3.rs`: storage on a real S3-compatible store (SeaweedFS): create-only writes, faults and
//!   an outage between the server and its bucket, one server per bucket (the lease), and a new
//!   host that rebuilds its catalog from the bucket and serves scenarios 1 and 4 (scenario 8).
//! - `rebuild.rs`: a catalog rebuilt from storage alone says and restores what the old one did.
//! - `timelines.rs`: what PostgreSQL writes around promotions and PITR is accepted: a history
//!   file with decreasing switchpoints, a second `.partial` of the same WAL.
//! - `debian.rs`: the Debian package built by `cargo deb`, installed system-wide (root only),
//!   its service run as its unit runs it, removed (the archive stays) and purged (it goes).
//! - `prefetch.rs`: the asynchronous fetch spool: a corrupted spooled file is discarded at
//!   hand-over, never handed over; one prefetch worker per spool, token out of its arguments,
//!   exit when idle; recovery across a promotion's timeline switch with prefetch on.
//! - `encryption.rs`: encryption at rest: nothing of a real cluster's WAL readable in storage
//!   (against an unencrypted control), served exactly, refused with a clear message without
//!   its key, key rotation through `old_key_files`; its header states the promises.
//! - `quickstart.rs`: README's quickstart (`examples/quickstart.sh`) runs to its end.
//! - `drill.rs`: recovery drills (scenario 7): a passing drill and its record, a drill that
//!   fails naming a segment missing from storage, a drill whose server is killed, cleaned up
//!   at the next start.

pub mod background;
pub mod backup;
pub mod cli;
pub mod factory;
pub mod fake_http;
pub mod faulty_proxy;
pub mod http;
pub mod pg;
pub mod proxy;
pub mod seaweed;
pub mod server;
pub mod testdir;
pub mod util;
pub mod wal;

pub use background::Background;
pub use cli::Cli;
pub use factory::WalFactory;
pub use fake_http::FakeHttp;
pub use faulty_proxy::FaultyProxy;
pub use http::{Api, Response};
pub use pg::{copy_archive_command, BaseBackupOptions, Pg, PgOptions};
pub use proxy::FreezableProxy;
pub use seaweed::SeaweedFs;
pub use server::Server;
pub use testdir::{pg_command, Binary, TestDir, PG_BIN, PSQL};
pub use util::{
    list_files, pseudo_random_bytes, run_ok, run_with_deadline, sha256_file, sha256_hex,
    wait_until, Output,
};
pub use wal::{
    format_lsn, is_segment_name, parse_lsn, parse_segment, segment_name, segment_of_lsn,
    segment_offset, segment_range, SEG_SIZE,
};

use std::time::Duration;

/// A generous bound for conditions that take seconds on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `archive_command` for a cluster that pushes to `server` as cluster `cluster`, quoted for
/// postgresql.conf: `'/…/bin/wal-archive --url http://127.0.0.1:PORT push --cluster C %p'`.
pub fn archive_command(server: &Server, cluster: &str) -> anyhow::Result<String> {
    archive_command_with(server, cluster, "")
}

/// [`archive_command`] with extra global options (e.g. `--retry-for 2`) before the subcommand.
pub fn archive_command_with(server: &Server, cluster: &str, extra: &str) -> anyhow::Result<String> {
    let bin = server_cli_bin(server)?;
    Ok(format!(
        "'{} --url {}{} push --cluster {cluster} %p'",
        bin.display(),
        server.url(),
        spaced(extra)
    ))
}

/// `restore_command` that fetches from `server`, cluster `cluster`, quoted for postgresql.conf.
pub fn restore_command(server: &Server, cluster: &str) -> anyhow::Result<String> {
    restore_command_with(server, cluster, "")
}

/// [`restore_command`] with extra global options before the subcommand.
pub fn restore_command_with(server: &Server, cluster: &str, extra: &str) -> anyhow::Result<String> {
    let bin = server_cli_bin(server)?;
    Ok(format!(
        "'{} --url {}{} fetch --cluster {cluster} %f %p'",
        bin.display(),
        server.url(),
        spaced(extra)
    ))
}

fn spaced(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!(" {extra}")
    }
}

fn server_cli_bin(server: &Server) -> anyhow::Result<std::path::PathBuf> {
    Ok(server.cli()?.bin().to_path_buf())
}

/// A server configuration with one cluster `cluster` that streams from `conninfo` and retries
/// every second at most (`reconnect_max_delay = 1`); `extra` adds lines to the cluster's section
/// (`synchronous = true`, `password = "..."`, ...).
pub fn streaming_config(cluster: &str, conninfo: &str, extra: &str) -> String {
    format!(
        "[clusters.{cluster}]\nconninfo = {}\nstreaming = true\nreconnect_max_delay = 1\n{extra}\n",
        toml_string(conninfo)
    )
}

/// `text` as a TOML basic string.
pub fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `count(*)`, `sum(id)` and an md5 of every row of `table` ordered by `id`: equal on two clusters
/// means equal data.
pub fn table_fingerprint(pg: &Pg, table: &str) -> anyhow::Result<String> {
    pg.psql(&format!(
        "select count(*) || ' ' || coalesce(sum(id), 0) || ' ' || \
         md5(coalesce(string_agg(id::text || ':' || payload, ',' order by id), '')) from {table}"
    ))
}
