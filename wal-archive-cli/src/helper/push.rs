//! `wal-archive push`: PostgreSQL's archive_command. Exit 0 only once the server says the file is
//! durably stored (201) or an identical copy already was (200), or an acknowledgement record
//! proves the server holds exactly this file's bytes ([`crate::helper::lookahead`]) — DESIGN §4.
//!
//! With look-ahead on (the default, 16 files), the next files marked `.ready` are sent on
//! `parallel` threads while the requested one is pushed (and on the main thread too once it is
//! stored); the process waits for them (one attempt each) before it exits. The requested
//! file's result alone decides the exit code.
//!
//! `push --test` sends nothing: the server runs the authorisation of an upload to the cluster
//! and answers what it knows of it ([`test`]).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgwal::api::{PushTestResponse, PutResponse, INSTANCE_HEADER};
use pgwal::name::WalFileName;

use crate::client::{read_json, status_failure, with_retries, Client, Failure};
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

/// `push --test`: whether the server at the configured URL is reachable, is a wal-archive
/// server (every answer of one carries `X-Wal-Archive-Instance`), and lets this token push WAL
/// of `cluster`, which `POST /v1/clusters/{cluster}/wal-test` answers without storing anything.
/// One attempt, unless `--retry-for` asks for more: a test answers for now. The error says what
/// is wrong and what to do.
pub fn test(client: &Client, cluster: &str) -> Result<PushTestResponse, String> {
    let url = &client.settings.url;
    let path = format!("/v1/clusters/{cluster}/wal-test");
    let window = client.settings.retry_for.unwrap_or(Duration::ZERO);
    with_retries(window, "push --test", || {
        let resp = client.post_json(&path, &serde_json::json!({}))?;
        if !resp.headers().contains_key(INSTANCE_HEADER) {
            return Err(Failure::Fatal(format!(
                "{url} answered HTTP {} without the {INSTANCE_HEADER} header that every answer \
                 of a wal-archive server carries: it is not a wal-archive server; check --url, \
                 WAL_ARCHIVE_URL or `url` in the client config file",
                resp.status().as_u16()
            )));
        }
        read_json(resp, &[200])
    })
    .map_err(|f| match f {
        Failure::Unreachable(m) => format!(
            "cannot reach {url}: {m}; check that wal-archive-server runs and listens there, \
             and --url, WAL_ARCHIVE_URL or `url` in the client config file"
        ),
        Failure::Status {
            status: 401,
            message,
            ..
        } => format!("{url} refused the token (401): {message}"),
        Failure::Status {
            status: 403,
            message,
            ..
        } => format!(
            "{url} does not let this token push WAL of cluster {cluster:?} (403): {message}; on \
             the server, give the token role \"archiver\" (or \"admin\") and list {cluster:?} \
             in its `clusters`, or use the cluster's own token"
        ),
        // A wal-archive server without this route: a path after its address, or a server
        // older than `push --test`.
        Failure::Status {
            status: 404, kind, ..
        } if kind == "http" => format!(
            "{url} is a wal-archive server, but it has no {path} (404): the URL takes no path \
             after host:port; if it has none, the server is older than `push --test`"
        ),
        Failure::Status {
            status,
            kind,
            message,
            ..
        } => format!("{url} refused the test ({status} {kind}): {message}"),
        Failure::Fatal(m) => m,
    })
}

/// The one line `push --test` prints when the server would take WAL of the cluster.
pub fn describe_test(client: &Client, r: &PushTestResponse) -> String {
    let who = match &r.token {
        Some(name) => format!("from token {name:?}"),
        None => "without a token (the server has none configured)".to_string(),
    };
    let binding = match &r.system_identifier {
        Some(id) => format!("bound to PostgreSQL system {id}"),
        None => "no WAL yet: the first push binds it to its PostgreSQL system".to_string(),
    };
    format!(
        "ok: {} (wal-archive instance {}) accepts WAL of cluster {:?} {who} ({binding}); \
         nothing was stored",
        client.settings.url, r.instance, r.cluster
    )
}
