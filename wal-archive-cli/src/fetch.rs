//! `wal-archive fetch`: PostgreSQL's restore_command (DESIGN §4).
//!
//! - 0: the complete file is at DEST (verified against its SHA-256, written durably);
//! - 1: the archive does not have it — PostgreSQL asks for names that do not exist and needs a
//!   fast "no";
//! - server unreachable after the retry window, or a copy that fails verification: 1 in standby
//!   mode (the standby keeps retrying and may stream from its primary meanwhile), 255 in archive
//!   recovery, so PostgreSQL stops instead of ending recovery early at the wrong point.
//!
//! With prefetch on (the default, 8 segments), the file may come from the verified prefetch
//! spool, and the call may fill the spool, bounded, before it exits ([`crate::spool`]).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgwal::api::{CONTENT_SHA256_HEADER, CONTENT_SIZE_HEADER};
use pgwal::checksum::Sha256;
use pgwal::name::WalFileName;

use crate::client::{status_failure, with_retries, Client, Failure};
use crate::durable::TempFile;
use crate::spool::{Spool, FILL_DEADLINE};

/// Exit status that makes PostgreSQL abort recovery (anything above 125 does).
pub const EXIT_ABORT_RECOVERY: u8 = 255;

pub enum Outcome {
    Restored { size: u64 },
    NotFound,
}

/// Standby mode when `standby.signal` is in the data directory.
pub fn standby_mode(pgdata: Option<&Path>) -> bool {
    let dir = pgdata
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join("standby.signal").exists()
}

pub fn default_retry(standby: bool) -> Duration {
    // A standby should not wait long on a dead archive: it has its primary to stream from.
    if standby {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    }
}

pub fn fetch(
    client: &Client,
    cluster: &str,
    walname: &str,
    dest: &Path,
    window: Duration,
    allow_partial: bool,
) -> Result<Outcome, Failure> {
    let name: WalFileName = walname
        .parse()
        .map_err(|e| Failure::Fatal(format!("{walname:?} is not a WAL file name: {e}")))?;
    let spool = if client.settings.prefetch > 0 {
        Spool::open(client, cluster, dest)
    } else {
        None
    };
    let Some(spool) = spool else {
        return fetch_from_server(client, cluster, &name, dest, window, allow_partial);
    };
    spool.on_request(&name);
    let outcome = match spool.hand_over(&name, dest) {
        Some(size) => {
            eprintln!("wal-archive fetch: {name} from the prefetch spool");
            Outcome::Restored { size }
        }
        None => fetch_from_server(client, cluster, &name, dest, window, allow_partial)?,
    };
    // The file PostgreSQL asked for is in place; now, bounded, fill the spool for the next
    // calls. Nothing here changes the outcome.
    if let Outcome::Restored { size } = outcome {
        match name {
            WalFileName::History { tli } => spool.on_history(tli),
            WalFileName::Segment { .. } => {
                let deadline = Instant::now() + FILL_DEADLINE.min(window);
                spool.fill(client, cluster, &name, size, deadline);
            }
            _ => {}
        }
    }
    Ok(outcome)
}

fn fetch_from_server(
    client: &Client,
    cluster: &str,
    name: &WalFileName,
    dest: &Path,
    window: Duration,
    allow_partial: bool,
) -> Result<Outcome, Failure> {
    // In archive recovery the segment being streamed may be served zero-filled after its last
    // durable byte, so that recovery can reach the last streamed byte; a standby streams that
    // part from its primary instead.
    let url_path = if allow_partial {
        format!("/v1/clusters/{cluster}/wal/{name}?partial=true")
    } else {
        format!("/v1/clusters/{cluster}/wal/{name}")
    };
    with_retries(window, &format!("fetch {name}"), || {
        let resp = client.get(&url_path, true)?;
        match resp.status().as_u16() {
            200 => download(resp, dest).map(|(size, _)| Outcome::Restored { size }),
            404 => Ok(Outcome::NotFound),
            _ => Err(status_failure(resp)),
        }
    })
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Streams the body through zstd (if encoded) and SHA-256 into a temp file beside `dest`, then
/// makes it durable there only if the checksum and size match what the server cataloged.
/// Returns the size and SHA-256 (hex) written.
pub fn download(
    resp: ureq::http::Response<ureq::Body>,
    dest: &Path,
) -> Result<(u64, String), Failure> {
    let expected_sha = header(&resp, CONTENT_SHA256_HEADER)
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| Failure::Fatal("the server sent no checksum header".into()))?;
    let expected_size: Option<u64> =
        header(&resp, CONTENT_SIZE_HEADER).and_then(|v| v.parse().ok());
    let zstd = header(&resp, "content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("zstd"));
    let reader = resp.into_body().into_reader();
    let mut tmp = TempFile::beside(dest).map_err(|e| {
        Failure::Fatal(format!(
            "cannot create a file beside {}: {e}",
            dest.display()
        ))
    })?;
    let copied = if zstd {
        let dec = zstd::stream::read::Decoder::new(reader)
            .map_err(|e| Failure::Fatal(format!("cannot start decompression: {e}")))?;
        copy_hashing(dec, &mut tmp)
    } else {
        copy_hashing(reader, &mut tmp)
    };
    let (sha, size) = copied.map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
            Failure::Unreachable(format!("download interrupted: {e}"))
        }
        _ => Failure::Fatal(format!("download failed: {e}")),
    })?;
    if sha != expected_sha || expected_size.is_some_and(|s| s != size) {
        return Err(Failure::Fatal(format!(
            "checksum mismatch: received {size} bytes with SHA-256 {sha}, the archive cataloged \
             {} bytes with {expected_sha}; the file was not written",
            expected_size.map_or("?".into(), |s| s.to_string())
        )));
    }
    tmp.persist(dest)
        .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", dest.display())))?;
    Ok((size, sha))
}

pub fn copy_hashing(mut src: impl Read, dst: &mut impl Write) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((hasher.finish_hex(), total))
}
