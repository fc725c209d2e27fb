//! `wal-archive fetch`: PostgreSQL's restore_command (DESIGN §4).
//!
//! - 0: the complete file is at DEST (verified against its SHA-256, renamed into place);
//! - 1: the archive does not have it — PostgreSQL asks for names that do not exist and needs a
//!   fast "no";
//! - server unreachable after the retry window, or a copy that fails verification: 1 in standby
//!   mode (the standby keeps retrying and may stream from its primary meanwhile), 255 in archive
//!   recovery, so PostgreSQL stops instead of ending recovery early at the wrong point.
//!
//! With prefetch on (the default, 8 segments), the file may come from the verified prefetch
//! spool, which a detached worker fills while PostgreSQL replays ([`crate::helper::spool`],
//! [`crate::helper::worker`]). The call itself never downloads more than the file asked for.
//!
//! The file is written to a temp file beside DEST and renamed into place, so PostgreSQL never
//! sees a partial file, but it is not fsynced: see [`crate::durable`] for why PostgreSQL does
//! not need that.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwal::api::{CONTENT_SHA256_HEADER, CONTENT_SIZE_HEADER, CONTENT_XXH3_HEADER};
use pgwal::checksum::{Sha256, Xxh3};
use pgwal::name::WalFileName;

use crate::client::{status_failure, with_retries, Client, Failure};
use crate::durable::TempFile;
use crate::helper::spool::{HandOver, Spool};
use crate::helper::worker;

/// How long a fetch waits for the worker's copy of the very file it needs while that copy
/// does not grow, before downloading the file itself.
const WORKER_STALL: Duration = Duration::from_secs(5);
/// The longest a fetch waits for the worker's copy at all.
const WORKER_WAIT_LIMIT: Duration = Duration::from_secs(120);

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
    let spool = match name {
        WalFileName::Segment { .. } | WalFileName::History { .. }
            if client.settings.prefetch > 0 =>
        {
            Spool::open(client, cluster, dest)
        }
        _ => None,
    };
    let Some(spool) = spool else {
        return fetch_from_server(client, cluster, &name, dest, window, allow_partial);
    };
    spool.on_request(&name);
    if let WalFileName::History { tli } = name {
        let outcome = fetch_from_server(client, cluster, &name, dest, window, allow_partial)?;
        if let Outcome::Restored { .. } = outcome {
            spool.on_history(tli);
        }
        return Ok(outcome);
    }

    // Tell the worker where replay is before anything else, so that it downloads the next
    // segments while this call hands over or downloads this one. The very first call does
    // not know the segment size yet and tells it once its file is in place.
    let hinted = spool.segment_size_hint(&name);
    if let Some(seg_bytes) = hinted {
        worker::want(client, cluster, &spool, &name, seg_bytes);
    }
    let outcome = match take_from_spool(&spool, &name, dest) {
        Some(size) => {
            // One write: stderr is unbuffered, and a padded name formats digit by digit.
            let line = format!("wal-archive fetch: {name} from the prefetch spool");
            eprintln!("{line}");
            Outcome::Restored { size }
        }
        None => fetch_from_server(client, cluster, &name, dest, window, allow_partial)?,
    };
    if let (None, Outcome::Restored { size }) = (hinted, &outcome) {
        worker::want(client, cluster, &spool, &name, *size);
    }
    Ok(outcome)
}

/// The spooled copy of `name` at `dest`, waiting for it if the worker is receiving it now.
fn take_from_spool(spool: &Spool, name: &WalFileName, dest: &Path) -> Option<u64> {
    match spool.hand_over(name, dest) {
        HandOver::Done(size) => return Some(size),
        HandOver::Discarded => return None,
        HandOver::NotSpooled => {}
    }
    let alive = || worker::is_running(spool.state_dir());
    if !spool.wait_for_worker(name, alive, WORKER_STALL, WORKER_WAIT_LIMIT) {
        return None;
    }
    match spool.hand_over(name, dest) {
        HandOver::Done(size) => Some(size),
        HandOver::NotSpooled | HandOver::Discarded => None,
    }
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
            200 => download(resp, dest).map(|size| Outcome::Restored { size }),
            _ => match status_failure(resp) {
                f if not_in_archive(&f, cluster) => Ok(Outcome::NotFound),
                f => Err(f),
            },
        }
    })
}

/// Whether a failure is the archive itself saying it has no such file for `cluster` (DESIGN
/// §4): a 404 with its own error body, `not_found`, naming that very cluster. A 404 from
/// anything else (a wrong URL or path prefix, a proxy, a cluster the archive does not know) is
/// a failure like an unreachable server.
pub fn not_in_archive(failure: &Failure, cluster: &str) -> bool {
    matches!(
        failure,
        Failure::Status { status: 404, kind, cluster: Some(c), .. }
            if kind == pgwal::api::NOT_IN_ARCHIVE && c == cluster
    )
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// What [`receive`] wrote and verified.
pub struct Received {
    pub size: u64,
    /// Lowercase hex SHA-256 the server sent (`X-Content-Sha256`): checked against the bytes,
    /// or vouched for by the XXH3-128 the server recorded with it (see [`receive`]).
    pub sha256: String,
    /// Lowercase hex XXH3-128 of the same bytes, when asked for.
    pub xxh3: Option<String>,
}

/// Streams a 200 response's body through zstd (if encoded) into `out`, checking it against the
/// checksum and size the server cataloged. `out` is left for the caller to publish only on
/// `Ok`.
///
/// When the server sends `X-Content-Xxh3` (the XXH3-128 it recorded when it archived the
/// file), the bytes are checked against that and not hashed with SHA-256 again: the server has
/// just re-checked the stored SHA-256 before sending (DESIGN §7.3), so what is left to catch is
/// damage in transit or on this host, which a 128-bit XXH3 catches as surely, at a thirtieth of
/// the CPU. A header from a server that does not send it means SHA-256, as before. XXH3-128 is
/// also computed with `with_xxh3` (the spool keeps it).
pub fn receive(
    resp: ureq::http::Response<ureq::Body>,
    out: &mut TempFile,
    with_xxh3: bool,
) -> Result<Received, Failure> {
    let expected_sha = header(&resp, CONTENT_SHA256_HEADER)
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| Failure::Fatal("the server sent no checksum header".into()))?;
    let expected_size: Option<u64> =
        header(&resp, CONTENT_SIZE_HEADER).and_then(|v| v.parse().ok());
    let expected_xxh3 = header(&resp, CONTENT_XXH3_HEADER)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    let (sha256, xxh3) = (
        expected_xxh3.is_none(),
        with_xxh3 || expected_xxh3.is_some(),
    );
    let zstd = header(&resp, "content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("zstd"));
    let reader = resp.into_body().into_reader();
    let copied = if zstd {
        let dec = zstd::stream::read::Decoder::new(reader)
            .map_err(|e| Failure::Fatal(format!("cannot start decompression: {e}")))?;
        copy_hashing(dec, out, sha256, xxh3)
    } else {
        copy_hashing(reader, out, sha256, xxh3)
    };
    let hashed = copied.map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
            Failure::Unreachable(format!("download interrupted: {e}"))
        }
        _ => Failure::Fatal(format!("download failed: {e}")),
    })?;
    let size = hashed.size;
    let (what, got, expected) = match &expected_xxh3 {
        Some(x) => (
            "XXH3-128",
            hashed.xxh3.clone().unwrap_or_default(),
            x.clone(),
        ),
        None => (
            "SHA-256",
            hashed.sha256.clone().unwrap_or_default(),
            expected_sha.clone(),
        ),
    };
    if got != expected || expected_size.is_some_and(|s| s != size) {
        return Err(Failure::Fatal(format!(
            "checksum mismatch: received {size} bytes with {what} {got}, the archive cataloged \
             {} bytes with {expected}; the file was not written",
            expected_size.map_or("?".into(), |s| s.to_string())
        )));
    }
    Ok(Received {
        size,
        sha256: expected_sha,
        xxh3: hashed.xxh3,
    })
}

/// Receives a 200 response into a temp file beside `dest` and renames it over `dest` only if
/// it matches the server's checksum and size (not fsynced: see [`crate::durable`]). Returns
/// the size written.
pub fn download(resp: ureq::http::Response<ureq::Body>, dest: &Path) -> Result<u64, Failure> {
    let mut tmp = TempFile::beside(dest).map_err(|e| {
        Failure::Fatal(format!(
            "cannot create a file beside {}: {e}",
            dest.display()
        ))
    })?;
    let got = receive(resp, &mut tmp, false)?;
    tmp.publish(dest)
        .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", dest.display())))?;
    Ok(got.size)
}

/// What [`copy_hashing`] copied.
pub struct Hashed {
    pub size: u64,
    pub sha256: Option<String>,
    pub xxh3: Option<String>,
}

/// Copies `src` to `dst`, computing the SHA-256 and/or the XXH3-128 of the bytes on the way.
pub fn copy_hashing(
    mut src: impl Read,
    dst: &mut impl Write,
    sha256: bool,
    xxh3: bool,
) -> io::Result<Hashed> {
    let mut sha = sha256.then(Sha256::new);
    let mut xxh = xxh3.then(Xxh3::new);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(h) = sha.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some(h) = xxh.as_mut() {
            h.update(&buf[..n]);
        }
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(Hashed {
        size: total,
        sha256: sha.map(Sha256::finish_hex),
        xxh3: xxh.map(|h| h.finish_hex()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwal::checksum::{sha256_hex, xxh3_hex};

    fn response(body: &[u8], headers: &[(&str, String)]) -> ureq::http::Response<ureq::Body> {
        let mut b = ureq::http::Response::builder().status(200);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        b.body(ureq::Body::builder().data(body.to_vec()))
            .expect("response")
    }

    fn receive_into(dir: &Path, resp: ureq::http::Response<ureq::Body>) -> Result<u64, Failure> {
        download(resp, &dir.join("RECOVERYXLOG"))
    }

    #[test]
    fn bytes_are_checked_against_the_servers_xxh3_else_its_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut damaged = good.clone();
        damaged[123_456] ^= 1;
        let size = good.len().to_string();
        let with_xxh3 = |sha: String| {
            vec![
                (CONTENT_SHA256_HEADER, sha),
                (CONTENT_XXH3_HEADER, xxh3_hex(&good)),
                (CONTENT_SIZE_HEADER, size.clone()),
            ]
        };
        // XXH3 given: it decides (the SHA-256 is the server's to check, not hashed again).
        assert_eq!(
            receive_into(dir.path(), response(&good, &with_xxh3(sha256_hex(&good)))).expect("ok"),
            good.len() as u64
        );
        assert_eq!(
            std::fs::read(dir.path().join("RECOVERYXLOG")).expect("read"),
            good
        );
        std::fs::remove_file(dir.path().join("RECOVERYXLOG")).expect("rm");
        let e = receive_into(
            dir.path(),
            response(&damaged, &with_xxh3(sha256_hex(&good))),
        )
        .expect_err("damaged bytes refused");
        assert!(e.to_string().contains("XXH3-128"), "{e}");
        // No XXH3 header (an older server): SHA-256 decides.
        let sha_only = vec![
            (CONTENT_SHA256_HEADER, sha256_hex(&good)),
            (CONTENT_SIZE_HEADER, size.clone()),
        ];
        let e = receive_into(dir.path(), response(&damaged, &sha_only))
            .expect_err("damaged bytes refused");
        assert!(e.to_string().contains("SHA-256"), "{e}");
        // A short body is refused whatever its checksum says.
        let short = &good[..1000];
        let e = receive_into(
            dir.path(),
            response(
                short,
                &[
                    (CONTENT_SHA256_HEADER, sha256_hex(short)),
                    (CONTENT_XXH3_HEADER, xxh3_hex(short)),
                    (CONTENT_SIZE_HEADER, size.clone()),
                ],
            ),
        )
        .expect_err("short body refused");
        assert!(e.to_string().contains("mismatch"), "{e}");
        // Nothing was ever written at the destination, and no temp file is left.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(receive_into(dir.path(), response(&good, &sha_only)).is_ok());
    }
}
