//! Look-ahead push: while `push` sends the file PostgreSQL asked for, it also sends the next
//! files PostgreSQL has marked `.ready` in `archive_status/`, and records durably what the
//! server acknowledged, so that PostgreSQL's later calls for those names return 0 at once.
//!
//! # Acknowledgement records
//!
//! One JSON file per WAL name in `STATE/acks/`, written with temp file + fsync + rename +
//! directory fsync ([`crate::durable`]). A record holds the server URL and cluster, the XXH3-128
//! and size the server acknowledged for the name (it checks `X-Content-Xxh3` against the bytes it
//! received), its SHA-256, and the identity of the file that was hashed (device, inode, size,
//! mtime_ns, ctime_ns, taken before and re-checked after hashing).
//!
//! **Invariant: a record yields exit 0 only for the exact bytes the server holds.** A name
//! alone proves nothing: after a restore or a re-initialised cluster the same name holds other
//! bytes. A later call trusts a record only if
//! - it names the same server URL and cluster, and is less than a day old; and
//! - the current file's identity equals the recorded one exactly, or else the file's XXH3-128
//!   (computed now) and size equal the recorded ones. XXH3-128 is not cryptographic, but what it
//!   guards against is accident (a restored or re-initialised cluster reusing the name), not
//!   forgery: a 128-bit match of different WAL by chance is out of reach. The server still
//!   stores and checks the SHA-256 of what it received; and
//! - the server still holds the file now: a `HEAD` answered 200 by the same archive instance
//!   (`X-Wal-Archive-Instance`, recorded from the acknowledgement), with the recorded XXH3-128
//!   and size. The server answers 200 only for a cataloged file whose object is present and
//!   intact, as for a `PUT`. A server rolled back (a VM snapshot) or replaced at the same URL,
//!   or one that lost the object since, is never trusted on the record's word.
//!
//! Otherwise the record is deleted and the file is pushed normally (201/200, or the server's
//! 409/422 → exit 1). A record is deleted once used. The server checks `X-Content-Xxh3`
//! against the bytes it receives, so a file that changed between hashing and sending is refused
//! and never recorded.
//!
//! # Bounds
//!
//! Look-ahead uploads run on at most `parallel` threads inside the same `push` process, joined by
//! the main thread once the requested file is stored; one attempt each, started only while the
//! requested file's push has not failed; the process waits for them before it exits, so nothing
//! outlives the call. Their failures are logged and
//! leave no record; the requested file's own push alone decides the exit code.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use pgwal::api::{PutResponse, CONTENT_SIZE_HEADER, CONTENT_XXH3_HEADER, INSTANCE_HEADER};
use pgwal::checksum::Xxh3;
use pgwal::name::{WalFileKind, WalFileName};
use serde::{Deserialize, Serialize};

use crate::client::{status_failure, Client, Failure};
use crate::durable::TempFile;
use crate::helper::state::{self, Identity};

/// Records older than this are never trusted and are swept.
const RECORD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    url: String,
    cluster: String,
    name: String,
    xxh3: String,
    sha256: String,
    size: u64,
    stored_size: u64,
    identity: Identity,
    acknowledged_at: u64,
    /// The archive instance that acknowledged the file (`X-Wal-Archive-Instance`).
    #[serde(default)]
    instance: Option<String>,
}

/// What a record says about the file PostgreSQL asked to push.
pub enum Check {
    /// The server holds exactly this file: exit 0 without contacting it.
    Acknowledged(PutResponse),
    /// Push it; `xxh3` is the file's XXH3-128 if computing it was needed to decide.
    Push { xxh3: Option<String> },
}

/// The acknowledgement records of one (pg_wal, server, cluster).
pub struct Records<'c> {
    client: &'c Client,
    dir: PathBuf,
    url: String,
    cluster: String,
}

impl<'c> Records<'c> {
    /// Opens (creating) `STATE/acks`; `None` (logged) when the state directory is unusable.
    pub fn open(client: &'c Client, cluster: &str, pg_wal: &Path) -> Option<Records<'c>> {
        let opened =
            state::dir(&client.settings, cluster, pg_wal).and_then(|d| state::subdir(&d, "acks"));
        match opened {
            Ok(dir) => Some(Records {
                client,
                dir,
                url: client.settings.url.clone(),
                cluster: cluster.to_string(),
            }),
            Err(e) => {
                eprintln!("wal-archive push: look-ahead off: no state directory: {e}");
                None
            }
        }
    }

    fn path(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    fn has(&self, name: &WalFileName) -> bool {
        self.path(name).exists()
    }

    /// Removes records older than a day and temp files left by a killed process.
    pub fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| {
                    age > RECORD_MAX_AGE
                        || (age > Duration::from_secs(3600)
                            && entry.file_name().to_string_lossy().ends_with(".tmp"))
                });
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Decides from the record for `name`, if any, whether `path` is already held by the
    /// server. The record is consumed either way.
    pub fn check(&self, name: &WalFileName, path: &Path) -> Result<Check, Failure> {
        let record_path = self.path(name);
        let record: Option<Record> = fs::read(&record_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let Some(record) = record else {
            // Missing, or unreadable debris: nothing to trust.
            let _ = fs::remove_file(&record_path);
            return Ok(Check::Push { xxh3: None });
        };
        // Used (or refused) once, then gone; a crash before this leaves a record that is
        // still checked against the file next time.
        let _ = fs::remove_file(&record_path);
        let fresh =
            state::now_secs().saturating_sub(record.acknowledged_at) < RECORD_MAX_AGE.as_secs();
        if record.url != self.url
            || record.cluster != self.cluster
            || record.name != name.to_string()
            || !fresh
        {
            return Ok(Check::Push { xxh3: None });
        }
        let acknowledged = || PutResponse {
            name: name.to_string(),
            outcome: "acknowledged".into(),
            sha256: record.sha256.clone(),
            xxh3: Some(record.xxh3.clone()),
            size: record.size,
            stored_size: record.stored_size,
        };
        let identity = Identity::of_path(path)
            .map_err(|e| Failure::Fatal(format!("cannot stat {}: {e}", path.display())))?;
        let mut hashed = None;
        let same = identity == record.identity || {
            // Another inode or changed times: only the bytes can tell.
            let (xxh3, size) = hash_file(path)?;
            let same = xxh3.eq_ignore_ascii_case(&record.xxh3) && size == record.size;
            hashed = Some(xxh3);
            same
        };
        if same {
            return Ok(match self.still_held(name, &record) {
                Ok(()) => Check::Acknowledged(acknowledged()),
                Err(why) => {
                    eprintln!(
                        "wal-archive push: {name}: an earlier look-ahead sent it, but {why}; \
                         pushing it"
                    );
                    Check::Push { xxh3: hashed }
                }
            });
        }
        let xxh3 = hashed.unwrap_or_default();
        eprintln!(
            "wal-archive push: {name}: the file differs from what an earlier look-ahead sent \
             (XXH3-128 {xxh3}, recorded {}); pushing it",
            record.xxh3
        );
        Ok(Check::Push { xxh3: Some(xxh3) })
    }

    /// Whether the server holds `name` now, as `record` says it was acknowledged: a `HEAD`
    /// answered 200 by the same archive instance with the same XXH3-128 and size.
    fn still_held(&self, name: &WalFileName, record: &Record) -> Result<(), String> {
        let Some(instance) = record.instance.as_deref() else {
            return Err("the record names no archive instance".into());
        };
        let resp = self
            .client
            .head(&format!("/v1/clusters/{}/wal/{name}", self.cluster))
            .map_err(|e| format!("the server cannot confirm it ({e})"))?;
        let header = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase)
        };
        if resp.status().as_u16() != 200 {
            return Err(format!(
                "the server does not hold it now (HTTP {})",
                resp.status()
            ));
        }
        if header(INSTANCE_HEADER).as_deref() != Some(instance) {
            return Err(format!(
                "the archive at {} is not the instance that acknowledged it",
                self.url
            ));
        }
        let size = header(CONTENT_SIZE_HEADER).and_then(|v| v.parse::<u64>().ok());
        if header(CONTENT_XXH3_HEADER).as_deref() != Some(record.xxh3.as_str())
            || size != Some(record.size)
        {
            return Err("the server holds other bytes under that name".into());
        }
        Ok(())
    }

    fn write(&self, record: &Record) -> std::io::Result<()> {
        let dest = self.dir.join(&record.name);
        let mut tmp = TempFile::beside(&dest)?;
        tmp.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
        tmp.persist(&dest)
    }
}

/// The files PostgreSQL has marked `.ready` in `pg_wal/archive_status`, in the order its
/// archiver takes them (history files first, then by name), without `requested`, without
/// names already recorded, at most `limit`.
pub fn candidates(
    pg_wal: &Path,
    requested: &WalFileName,
    records: &Records,
    limit: usize,
) -> Vec<WalFileName> {
    if limit == 0 {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut names: Vec<WalFileName> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")?
                .parse::<WalFileName>()
                .ok()
        })
        .filter(|n| n != requested && !records.has(n))
        .collect();
    names.sort_by_key(|n| (n.kind() != WalFileKind::History, n.to_string()));
    names.truncate(limit);
    names
}

/// A queue of look-ahead uploads (files of `pg_wal`), worked by up to `settings.parallel`
/// threads plus the calling thread once the requested file is stored. One attempt each; a
/// record for each the server acknowledged with our checksum. No upload starts once `stop` is
/// set or `deadline` (the end of the push's retry window) has passed.
pub struct Batch<'a> {
    client: &'a Client,
    cluster: &'a str,
    pg_wal: &'a Path,
    records: &'a Records<'a>,
    queue: Mutex<std::vec::IntoIter<WalFileName>>,
    stop: &'a AtomicBool,
    deadline: Instant,
}

impl<'a> Batch<'a> {
    pub fn new(
        client: &'a Client,
        cluster: &'a str,
        pg_wal: &'a Path,
        names: Vec<WalFileName>,
        records: &'a Records<'a>,
        stop: &'a AtomicBool,
        deadline: Instant,
    ) -> Batch<'a> {
        Batch {
            client,
            cluster,
            pg_wal,
            records,
            queue: Mutex::new(names.into_iter()),
            stop,
            deadline,
        }
    }

    /// Takes uploads from the queue until it is empty or the batch is stopped.
    pub fn work(&self) {
        loop {
            if self.stop.load(Ordering::SeqCst) || Instant::now() >= self.deadline {
                return;
            }
            let next = match self.queue.lock() {
                Ok(mut q) => q.next(),
                Err(_) => return,
            };
            let Some(name) = next else { return };
            match push_one_ahead(self.client, self.cluster, self.pg_wal, &name, self.records) {
                Ok(_) => {}
                Err(e) => {
                    eprintln!("wal-archive push: look-ahead {name}: {e}");
                    if matches!(e, Failure::Unreachable(_)) {
                        // The next uploads would fail alike: leave them to later calls.
                        self.stop.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// One look-ahead upload. `Ok(false)`: skipped (the file is gone or changing).
fn push_one_ahead(
    client: &Client,
    cluster: &str,
    pg_wal: &Path,
    name: &WalFileName,
    records: &Records,
) -> Result<bool, Failure> {
    let path = pg_wal.join(name.to_string());
    let Ok(before) = Identity::of_path(&path) else {
        // Archived and removed meanwhile: nothing to do.
        return Ok(false);
    };
    let (xxh3, size) = hash_file(&path)?;
    match Identity::of_path(&path) {
        Ok(after) if after == before && size == before.size => {}
        _ => return Ok(false),
    }
    let url_path = format!("/v1/clusters/{cluster}/wal/{name}");
    let file = File::open(&path)
        .map_err(|e| Failure::Fatal(format!("cannot open {}: {e}", path.display())))?;
    let mut resp = client.put_file(&url_path, &file, &xxh3, client.settings.compress_level)?;
    let instance = resp
        .headers()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let put = match resp.status().as_u16() {
        200 | 201 => resp
            .body_mut()
            .read_json::<PutResponse>()
            .map_err(|e| Failure::Fatal(format!("unexpected answer from the server: {e}")))?,
        _ => return Err(status_failure(resp)),
    };
    // The server checked X-Content-Xxh3; an answer that does not confirm it (an older server)
    // is no proof.
    if put
        .xxh3
        .as_deref()
        .is_none_or(|x| !x.eq_ignore_ascii_case(&xxh3))
        || put.size != size
    {
        return Err(Failure::Fatal(format!(
            "the server acknowledged XXH3-128 {} ({} bytes), we sent {xxh3} ({size} bytes); \
             no record written",
            put.xxh3.as_deref().unwrap_or("(none)"),
            put.size
        )));
    }
    let record = Record {
        url: records.url.clone(),
        cluster: records.cluster.clone(),
        name: name.to_string(),
        xxh3,
        sha256: put.sha256,
        size,
        stored_size: put.stored_size,
        identity: before,
        acknowledged_at: state::now_secs(),
        instance,
    };
    records
        .write(&record)
        .map_err(|e| Failure::Fatal(format!("cannot write its record: {e}")))?;
    Ok(true)
}

/// XXH3-128 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64), Failure> {
    let mut file = File::open(path)
        .map_err(|e| Failure::Fatal(format!("cannot open {}: {e}", path.display())))?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Failure::Fatal(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finish_hex(), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn client(spool: &Path, url: &str) -> Client {
        let mut settings = Settings::resolve(&crate::args::GlobalArgs::default()).expect("s");
        settings.url = url.into();
        settings.spool_dir = Some(spool.to_path_buf());
        Client::new(settings).expect("client")
    }

    /// A server on loopback that answers every request with `status` and the file headers of
    /// `xxh3`/`size` from archive instance `instance`.
    fn fake_archive(status: u16, instance: &str, xxh3: &str, size: u64) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let reply = format!(
            "HTTP/1.1 {status} X\r\n{INSTANCE_HEADER}: {instance}\r\n{CONTENT_XXH3_HEADER}: \
             {xxh3}\r\n{CONTENT_SIZE_HEADER}: {size}\r\nContent-Length: 0\r\n\r\n"
        );
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        url
    }

    #[test]
    fn a_record_counts_only_for_the_same_bytes_server_and_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg_wal = dir.path().join("pg_wal");
        fs::create_dir_all(pg_wal.join("archive_status")).expect("mkdir");
        let name: WalFileName = "000000010000000000000003".parse().expect("name");
        let path = pg_wal.join(name.to_string());
        fs::write(&path, b"first bytes").expect("write");
        let (xxh3, size) = hash_file(&path).expect("hash");
        let instance = "ab".repeat(16);
        let url = fake_archive(200, &instance, &xxh3, size);
        let c = client(&dir.path().join("state"), &url);
        let records = Records::open(&c, "main", &pg_wal).expect("records");
        let record = |url: &str, cluster: &str| Record {
            url: url.into(),
            cluster: cluster.into(),
            name: name.to_string(),
            xxh3: xxh3.clone(),
            sha256: "0".repeat(64),
            size,
            stored_size: 1,
            identity: Identity::of_path(&path).expect("stat"),
            acknowledged_at: state::now_secs(),
            instance: Some(instance.clone()),
        };
        // Same file, and the same archive instance holds it: trusted, then consumed.
        records.write(&record(&url, "main")).expect("write");
        assert!(matches!(
            records.check(&name, &path).expect("check"),
            Check::Acknowledged(_)
        ));
        assert!(!records.has(&name));
        // Another server or cluster: never.
        for (u, c) in [("http://b", "main"), (url.as_str(), "other")] {
            records.write(&record(u, c)).expect("write");
            assert!(matches!(
                records.check(&name, &path).expect("check"),
                Check::Push { .. }
            ));
        }
        // A record from before instances were recorded: never.
        let mut r = record(&url, "main");
        r.instance = None;
        records.write(&r).expect("write");
        assert!(matches!(
            records.check(&name, &path).expect("check"),
            Check::Push { .. }
        ));
        // Same name, new file with other bytes (new inode): pushed.
        records.write(&record(&url, "main")).expect("write");
        fs::remove_file(&path).expect("rm");
        fs::write(&path, b"other bytes").expect("write");
        assert!(matches!(
            records.check(&name, &path).expect("check"),
            Check::Push { xxh3: Some(_) }
        ));
        // Same bytes in a new file (new inode): trusted after hashing.
        fs::write(&path, b"first bytes").expect("write");
        let mut r = record(&url, "main");
        r.identity.ino = r.identity.ino.wrapping_add(1);
        records.write(&r).expect("write");
        assert!(matches!(
            records.check(&name, &path).expect("check"),
            Check::Acknowledged(_)
        ));
    }

    /// A server rolled back or replaced at the same URL is another instance, or no longer holds
    /// the file: the record is not trusted, the file is pushed.
    #[test]
    fn a_record_counts_only_while_the_same_instance_holds_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg_wal = dir.path().join("pg_wal");
        fs::create_dir_all(pg_wal.join("archive_status")).expect("mkdir");
        let name: WalFileName = "000000010000000000000004".parse().expect("name");
        let path = pg_wal.join(name.to_string());
        fs::write(&path, b"some bytes").expect("write");
        let (xxh3, size) = hash_file(&path).expect("hash");
        let ours = "cd".repeat(16);
        for (what, url) in [
            (
                "another instance",
                fake_archive(200, &"ef".repeat(16), &xxh3, size),
            ),
            ("the file is gone", fake_archive(404, &ours, &xxh3, size)),
            (
                "other bytes",
                fake_archive(200, &ours, &"00".repeat(16), size),
            ),
        ] {
            let c = client(&dir.path().join("state"), &url);
            let records = Records::open(&c, "main", &pg_wal).expect("records");
            records
                .write(&Record {
                    url: url.clone(),
                    cluster: "main".into(),
                    name: name.to_string(),
                    xxh3: xxh3.clone(),
                    sha256: "0".repeat(64),
                    size,
                    stored_size: 1,
                    identity: Identity::of_path(&path).expect("stat"),
                    acknowledged_at: state::now_secs(),
                    instance: Some(ours.clone()),
                })
                .expect("write");
            assert!(
                matches!(
                    records.check(&name, &path).expect("check"),
                    Check::Push { .. }
                ),
                "{what}"
            );
        }
    }
}
