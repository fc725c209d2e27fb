//! `wal-archive push`: PostgreSQL's archive_command. Exit 0 only once the server says the file is
//! durably stored (201) or an identical copy already was (200), or an acknowledgement record
//! proves the server holds exactly this file's bytes ([`crate::helper::lookahead`]) — DESIGN §4.
//!
//! With look-ahead on (the default, 16 files), the next files marked `.ready` are sent on
//! `parallel` threads while the requested one is pushed (and on the main thread too once it is
//! stored); the process waits for them (one attempt each) before it exits. The requested
//! file's result alone decides the exit code.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgwal::api::PutResponse;
use pgwal::name::WalFileName;

use crate::client::{status_failure, with_retries, Client, Failure};
use crate::helper::lookahead::{self, Check, Records};
use crate::helper::state;

pub const DEFAULT_RETRY: Duration = Duration::from_secs(60);

pub fn push(client: &Client, cluster: &str, path: &Path) -> Result<PutResponse, Failure> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure::Fatal(format!("{} has no file name", path.display())))?;
    let wal_name: WalFileName = name.parse().map_err(|e| {
        Failure::Fatal(format!(
            "{name:?} is not a WAL file name PostgreSQL archives: {e}"
        ))
    })?;
    let look_ahead = client.settings.look_ahead;
    let pg_wal = state::parent_dir(path);
    let records = if look_ahead > 0 {
        Records::open(client, cluster, &pg_wal)
    } else {
        None
    };
    let mut known_xxh3 = None;
    if let Some(records) = &records {
        records.sweep();
        match records.check(&wal_name, path)? {
            Check::Acknowledged(resp) => {
                eprintln!(
                    "wal-archive push: {wal_name} already acknowledged by the server \
                     (look-ahead, SHA-256 {}); not sent again",
                    resp.sha256
                );
                return Ok(resp);
            }
            Check::Push { xxh3 } => known_xxh3 = xxh3,
        }
    }
    // XXH3-128, not SHA-256: the server computes the SHA-256 it stores from what it receives
    // and refuses a body that does not match this (see pgwal::checksum::Xxh3).
    let xxh3 = match known_xxh3 {
        Some(s) => s,
        None => lookahead::hash_file(path)?.0,
    };
    let ahead = match &records {
        Some(r) => lookahead::candidates(&pg_wal, &wal_name, r, look_ahead),
        None => Vec::new(),
    };
    let window = client.settings.retry_for.unwrap_or(DEFAULT_RETRY);
    let deadline = Instant::now() + window;
    let stop = AtomicBool::new(false);
    let batch = records
        .as_ref()
        .filter(|_| !ahead.is_empty())
        .map(|r| lookahead::Batch::new(client, cluster, &pg_wal, ahead, r, &stop, deadline));
    std::thread::scope(|s| {
        if let Some(batch) = &batch {
            for _ in 0..client.settings.parallel.max(1) {
                s.spawn(|| batch.work());
            }
        }
        let result = push_requested(client, cluster, path, &wal_name, &xxh3, window);
        match (&result, &batch) {
            // No new look-ahead uploads once the file PostgreSQL waits for has failed.
            (Err(_), _) => stop.store(true, Ordering::SeqCst),
            // Its file stored, this thread helps with the rest before the process exits.
            (Ok(_), Some(batch)) => batch.work(),
            (Ok(_), None) => {}
        }
        result
    })
}

fn push_requested(
    client: &Client,
    cluster: &str,
    path: &Path,
    wal_name: &WalFileName,
    xxh3: &str,
    window: Duration,
) -> Result<PutResponse, Failure> {
    let url_path = format!("/v1/clusters/{cluster}/wal/{wal_name}");
    with_retries(window, &format!("push {wal_name}"), || {
        // Re-open for every attempt so each sends the file from its start.
        let file = File::open(path)
            .map_err(|e| Failure::Fatal(format!("cannot open {}: {e}", path.display())))?;
        let mut resp = client.put_file(&url_path, &file, xxh3, client.settings.compress_level)?;
        match resp.status().as_u16() {
            200 | 201 => resp
                .body_mut()
                .read_json::<PutResponse>()
                .map_err(|e| Failure::Fatal(format!("unexpected answer from the server: {e}"))),
            _ => Err(status_failure(resp)),
        }
    })
}
