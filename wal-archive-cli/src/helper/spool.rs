//! The prefetch spool of `fetch`: the segments PostgreSQL will most likely ask for next, so that
//! most restore_command calls are a local, verified move instead of a round trip.
//!
//! # Design: filled in the background, taken in the foreground
//!
//! restore_command is one process per file, and PostgreSQL waits for each. So the call itself
//! never downloads ahead: it records the name PostgreSQL asked for (`prefetch-wanted` in the
//! state directory) and makes sure the prefetch worker runs ([`crate::helper::worker`]), a detached
//! process that keeps the next `prefetch` segments of the same timeline spooled while
//! PostgreSQL replays. The call then hands the requested file over from the spool if it is
//! there, waits for it if the worker is receiving it right now, or downloads it itself.
//!
//! Files of `STATE/spool/`:
//! - `NAME`: a complete spooled segment;
//! - `NAME.sum`: its sidecar, `SHA256 SIZE XXH3 ORIGIN INODE CTIME` (hex SHA-256 the server
//!   sent, size, hex XXH3-128 of the bytes received, the [`origin`] it came from, and the
//!   [`Stamp`] of `NAME` once fsynced and in place), written after `NAME`;
//! - `NAME.part`: the segment the worker is receiving (only the worker, which holds the
//!   spool's lock, writes these).
//!
//! # What is handed over (invariants)
//!
//! - **Only exact names.** A spooled file is handed over only for the very name PostgreSQL asks
//!   for, never for "the same segment on another timeline" (pgBackRest issue 2423), and only
//!   to a fetch of the same server URL and cluster: an explicit `--spool-dir` may be shared by
//!   several clusters' restore_commands, so the sidecar and the wanted record carry the
//!   origin, and a worker serves only the wanted names of its own.
//! - **Only verified bytes.** A file is spooled only after its checksum and size matched what
//!   the server sent (`X-Content-Xxh3`, else `X-Content-Sha256`, and `X-Content-Size`, checked
//!   while receiving, as for a direct download: [`crate::helper::fetch::receive`]); its XXH3-128 is
//!   computed in the same pass. The worker then fsyncs it, renames it into place and writes
//!   the sidecar last, with the file's inode number and change time ([`Stamp`]): a file
//!   without a sidecar is never handed over.
//! - **Unchanged since.** At hand-over the file's inode, size and change time must still be
//!   the sidecar's. Every write, truncation, replacement or chmod of the file sets its change
//!   time to the kernel's clock for file times (which no process can set back, and which
//!   advances once per clock tick: only a change within the tick of the worker's own rename
//!   would keep the stamp), and the bytes were fsynced before the stamp was taken, so a crash
//!   cannot tear them either: a matching stamp means the bytes are the verified ones, without
//!   reading 16 MiB again on PostgreSQL's critical path (about 7 ms a segment on a 2-core VM,
//!   4% of the replay time of a segment). The file is then renamed to PostgreSQL's
//!   destination when the spool is on the same file system, or else copied, hashing while
//!   copying, into a temp file beside the destination that is renamed only if the XXH3-128
//!   matches too. On a file system that keeps whole seconds only (a change time without
//!   nanoseconds), a change within the stamp's second would not show: there the file is also
//!   read and XXH3-checked before the rename. A file that fails either check is deleted with
//!   its sidecar, never handed over, and the call downloads the name normally.
//! - **Only what the archive had.** Files come from plain `GET`s answered 200 (never the
//!   zero-filled `?partial=true` form); 404s are never remembered past a few seconds.
//! - **Timeline switches.** When PostgreSQL asks for a segment on timeline T, spooled segments
//!   of other timelines are discarded; when it gets a `.history` file of timeline T, spooled
//!   segments of timelines below T are discarded.
//! - **Bounded and fresh.** At most `prefetch_max_bytes` and the next `prefetch` names are
//!   filled; names older than the requested one on its timeline, files older than
//!   [`MAX_AGE`] and debris of killed processes are removed.
//!
//! Spooled files are fsynced by the worker, in the background, before they are stamped; what
//! PostgreSQL then gets is not fsynced again here ([`crate::durable`]), and PostgreSQL's own
//! fsync of it finds it clean.

use std::fs::Metadata;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pgwal::checksum::Sha256;
use pgwal::name::{WalFileKind, WalFileName};
use pgwal::segment::SegmentSize;

use crate::client::{status_failure, Client, Failure};
use crate::durable::{self, TempFile};
use crate::helper::fetch::{copy_hashing, receive};
use crate::helper::state;

/// Spooled files older than this are removed unused.
pub const MAX_AGE: Duration = Duration::from_secs(10 * 60);

const SIDECAR: &str = ".sum";
const PART: &str = ".part";
const WANTED: &str = "prefetch-wanted";

/// The sidecar of a spooled file: what it was verified to be when it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub sha256: String,
    pub size: u64,
    pub xxh3: String,
    pub origin: String,
    /// The spooled file as the worker left it, fsynced and in place.
    pub stamp: Stamp,
}

/// Which file, and when it last changed: inode number and change time (`st_ctime`, seconds
/// and nanoseconds). The kernel sets the change time on every write, truncation, rename or
/// mode change; no system call sets it to a chosen value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub ino: u64,
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the change time has a fraction of a second. A file system that keeps whole
    /// seconds only (ext4 with 128-byte inodes, some network file systems) always gives 0; on
    /// one that keeps nanoseconds, 0 is one chance in a billion, and then costs one re-read.
    pub fn fine_grained(&self) -> bool {
        self.ctime.1 != 0
    }
}

impl Sidecar {
    fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {} {}.{:09}\n",
            self.sha256,
            self.size,
            self.xxh3,
            self.origin,
            self.stamp.ino,
            self.stamp.ctime.0,
            self.stamp.ctime.1
        )
    }

    fn parse(text: &str) -> Option<Sidecar> {
        let mut parts = text.split_whitespace();
        let sha256 = parts.next()?.to_ascii_lowercase();
        let size = parts.next()?.parse().ok()?;
        let xxh3 = parts.next()?.to_ascii_lowercase();
        let origin = parts.next()?.to_string();
        let ino = parts.next()?.parse().ok()?;
        let (secs, nanos) = parts.next()?.split_once('.')?;
        let ctime = (secs.parse().ok()?, nanos.parse().ok()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (parts.next().is_none() && hex(&sha256, 64) && hex(&xxh3, 32)).then_some(Sidecar {
            sha256,
            size,
            xxh3,
            origin,
            stamp: Stamp { ino, ctime },
        })
    }
}

/// Where spooled files come from: 16 hex digits of the SHA-256 of the server URL and the
/// cluster.
pub fn origin(url: &str, cluster: &str) -> String {
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    h.update(b"\n");
    h.update(cluster.as_bytes());
    h.finish_hex()[..16].to_string()
}

/// The last segment PostgreSQL asked for, as `fetch` recorded it for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: WalFileName,
    pub size: SegmentSize,
}

/// How a hand-over ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HandOver {
    /// The file of this many bytes is at the destination.
    Done(u64),
    /// No sidecar: not spooled (perhaps not yet).
    NotSpooled,
    /// Spooled but unusable (failed its check, gone, or could not be moved); removed.
    Discarded,
}

/// How a verified spooled file reaches the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// One `rename`: spool and destination share a file system.
    Rename,
    /// A copy into a temp file beside the destination, then a rename.
    Copy,
}

pub struct Spool {
    state: PathBuf,
    dir: PathBuf,
    /// [`origin`] of the server and cluster this spool is used for.
    origin: String,
}

impl Spool {
    /// Opens (creating) `STATE/spool` for the pg_wal `dest` is in; `None` (logged) when the
    /// state directory is unusable: fetch then works without a spool.
    pub fn open(client: &Client, cluster: &str, dest: &Path) -> Option<Spool> {
        let pg_wal = state::parent_dir(dest);
        let origin = origin(&client.settings.url, cluster);
        match state::dir(&client.settings, cluster, &pg_wal)
            .and_then(|d| Spool::in_state(&d, &origin))
        {
            Ok(spool) => Some(spool),
            Err(e) => {
                eprintln!("wal-archive fetch: prefetch off: no state directory: {e}");
                None
            }
        }
    }

    /// The spool of the state directory `state` (`STATE/spool`, created if missing), used for
    /// the server and cluster of `origin`.
    pub fn in_state(state: &Path, origin: &str) -> io::Result<Spool> {
        Ok(Spool {
            dir: state::subdir(state, "spool")?,
            state: state.to_path_buf(),
            origin: origin.to_string(),
        })
    }

    /// The state directory this spool belongs to (where the worker's lock and log are).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    fn data(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    fn sidecar(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}{SIDECAR}"))
    }

    fn part(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}{PART}"))
    }

    fn remove(&self, name: &WalFileName) {
        let _ = fs::remove_file(self.sidecar(name));
        let _ = fs::remove_file(self.data(name));
    }

    pub fn is_spooled(&self, name: &WalFileName) -> bool {
        self.sidecar(name).exists() && self.data(name).exists()
    }

    /// Housekeeping when PostgreSQL asks for `requested`: drops stale names, other timelines'
    /// segments, old files and temp debris.
    pub fn on_request(&self, requested: &WalFileName) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                let _ = fs::remove_file(entry.path());
                continue;
            };
            let too_old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > MAX_AGE);
            let base = file_name.strip_suffix(SIDECAR).unwrap_or(file_name);
            let Ok(name) = base.parse::<WalFileName>() else {
                // Temp files of a running process are young; of a killed one, old.
                if too_old {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            };
            let stale = match requested {
                WalFileName::Segment { .. } => {
                    name.timeline() != requested.timeline() || name < *requested
                }
                _ => false,
            };
            if stale || too_old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// After PostgreSQL got the history file of timeline `tli`: segments of older timelines
    /// may lie past the switch and are no use any more.
    pub fn on_history(&self, tli: u32) {
        for (name, _) in self.segments() {
            if name.timeline() < tli {
                self.remove(&name);
            }
        }
    }

    /// Spooled segments (complete files, with or without a sidecar yet) and their sizes.
    fn segments(&self) -> Vec<(WalFileName, u64)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.parse::<WalFileName>().ok()?;
                Some((name, e.metadata().ok()?.len()))
            })
            .collect()
    }

    /// Bytes of the complete files in the spool.
    pub fn used_bytes(&self) -> u64 {
        self.segments().iter().map(|(_, b)| b).sum()
    }

    /// Records `name` (a segment of `seg_bytes` bytes) as the one PostgreSQL asked for last.
    pub fn set_wanted(&self, name: &WalFileName, seg_bytes: u64) -> io::Result<()> {
        let path = self.state.join(WANTED);
        let mut tmp = TempFile::beside(&path)?;
        tmp.write_all(format!("{name} {seg_bytes} {}\n", self.origin).as_bytes())?;
        tmp.publish(&path)
    }

    /// The last recorded request, if any, well-formed and of this spool's origin.
    pub fn wanted(&self) -> Option<Wanted> {
        let text = fs::read_to_string(self.state.join(WANTED)).ok()?;
        let mut parts = text.split_whitespace();
        let name: WalFileName = parts.next()?.parse().ok()?;
        let size = SegmentSize::new(parts.next()?.parse().ok()?).ok()?;
        let origin = parts.next()?;
        (origin == self.origin
            && name.kind() == WalFileKind::Segment
            && name.segment_name_is_valid_for(size))
        .then_some(Wanted { name, size })
    }

    /// The segment size to assume for `name` before it is restored: its sidecar's, else that
    /// of the last recorded request.
    pub fn segment_size_hint(&self, name: &WalFileName) -> Option<u64> {
        fs::read_to_string(self.sidecar(name))
            .ok()
            .and_then(|t| Sidecar::parse(&t))
            .map(|s| s.size)
            .filter(|s| SegmentSize::new(*s).is_ok())
            .or_else(|| self.wanted().map(|w| w.size.bytes()))
    }

    /// The names the worker keeps spooled for `wanted`: the next `ahead` segments after it on
    /// its timeline, in order.
    pub fn window(wanted: &Wanted, ahead: usize) -> Vec<WalFileName> {
        let Some(segno) = wanted.name.segno(wanted.size) else {
            return Vec::new();
        };
        (1..=ahead as u64)
            .map(|i| WalFileName::segment(wanted.name.timeline(), segno + i, wanted.size))
            .collect()
    }

    /// Hands the spooled copy of exactly `name` over to `dest` if it still matches its
    /// sidecar. The spooled copy is removed either way.
    pub fn hand_over(&self, name: &WalFileName, dest: &Path) -> HandOver {
        let method = if same_file_system(&self.dir, &state::parent_dir(dest)) {
            Method::Rename
        } else {
            Method::Copy
        };
        self.hand_over_by(name, dest, method)
    }

    fn hand_over_by(&self, name: &WalFileName, dest: &Path, method: Method) -> HandOver {
        let Ok(text) = fs::read_to_string(self.sidecar(name)) else {
            return HandOver::NotSpooled;
        };
        let result = match Sidecar::parse(&text) {
            Some(sidecar) if sidecar.origin == self.origin => {
                self.move_verified(name, &sidecar, dest, method)
            }
            Some(_) => Err("was received from another server or cluster".to_string()),
            None => Err("has an unreadable sidecar".to_string()),
        };
        self.remove(name);
        match result {
            Ok(size) => HandOver::Done(size),
            Err(why) => {
                eprintln!(
                    "wal-archive fetch: the spooled copy of {name} {why}; discarded, downloading \
                     it again"
                );
                HandOver::Discarded
            }
        }
    }

    /// Checks the spooled `name` against `sidecar` and moves it to `dest`; `Err`: why not.
    fn move_verified(
        &self,
        name: &WalFileName,
        sidecar: &Sidecar,
        dest: &Path,
        method: Method,
    ) -> Result<u64, String> {
        let data = self.data(name);
        let meta = fs::symlink_metadata(&data).map_err(|e| format!("cannot be read ({e})"))?;
        if !meta.is_file() || meta.len() != sidecar.size || Stamp::of(&meta) != sidecar.stamp {
            return Err(format!(
                "was changed after it was verified and spooled ({} bytes, inode {}, changed at \
                 {}.{:09}; spooled: {} bytes, inode {}, {}.{:09})",
                meta.len(),
                meta.ino(),
                meta.ctime(),
                meta.ctime_nsec(),
                sidecar.size,
                sidecar.stamp.ino,
                sidecar.stamp.ctime.0,
                sidecar.stamp.ctime.1
            ));
        }
        if method == Method::Rename && !sidecar.stamp.fine_grained() {
            // A file system that keeps whole seconds only: a change within the second of the
            // stamp would not show, so the bytes are read and checked.
            let file = File::open(&data).map_err(|e| format!("cannot be read ({e})"))?;
            let got = copy_hashing(file, &mut io::sink(), false, true)
                .map_err(|e| format!("cannot be read ({e})"))?;
            check(sidecar, got.size, got.xxh3.as_deref())?;
        }
        if method == Method::Rename {
            // Unchanged since it was verified and fsynced: what was checked is what moves.
            let _ = fs::remove_file(self.sidecar(name));
            match durable::publish_rename(&data, dest) {
                Ok(()) => return Ok(sidecar.size),
                // A bind mount shares the device number but not the mount: copy instead.
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {}
                Err(e) => return Err(format!("cannot be moved to {} ({e})", dest.display())),
            }
        }
        let file = File::open(&data).map_err(|e| format!("cannot be read ({e})"))?;
        let mut tmp = TempFile::beside(dest)
            .map_err(|e| format!("cannot be copied beside {} ({e})", dest.display()))?;
        let got = copy_hashing(file, &mut tmp, false, true)
            .map_err(|e| format!("cannot be copied to {} ({e})", dest.display()))?;
        check(sidecar, got.size, got.xxh3.as_deref())?;
        tmp.publish(dest)
            .map_err(|e| format!("cannot be moved to {} ({e})", dest.display()))?;
        Ok(sidecar.size)
    }

    /// Whether the worker is receiving `name` right now: its part file exists, or the complete
    /// file does and its sidecar is about to follow.
    fn in_flight(&self, name: &WalFileName) -> Option<u64> {
        if let Ok(meta) = fs::metadata(self.part(name)) {
            return Some(meta.len());
        }
        let young = fs::metadata(self.data(name))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(2));
        young.then_some(u64::MAX)
    }

    /// If the worker is receiving exactly `name`, waits for its sidecar rather than downloading
    /// the file a second time. `true`: the sidecar is there (hand it over). `false` at once when
    /// the worker is not on it; after waiting when the part file has not grown for `stall`,
    /// `worker_alive` says the worker is gone, or `limit` has passed.
    pub fn wait_for_worker(
        &self,
        name: &WalFileName,
        mut worker_alive: impl FnMut() -> bool,
        stall: Duration,
        limit: Duration,
    ) -> bool {
        let Some(mut seen) = self.in_flight(name) else {
            return false;
        };
        if !worker_alive() {
            return false;
        }
        let start = Instant::now();
        let mut grew = start;
        let mut next_alive_check = start + Duration::from_millis(200);
        loop {
            if self.sidecar(name).exists() {
                return true;
            }
            let Some(now_seen) = self.in_flight(name) else {
                // The worker dropped it (a 404, a failed check): the caller downloads it.
                return self.sidecar(name).exists();
            };
            let now = Instant::now();
            if now_seen != seen {
                seen = now_seen;
                grew = now;
            }
            if now.duration_since(grew) > stall || now.duration_since(start) > limit {
                return false;
            }
            if now >= next_alive_check {
                if !worker_alive() {
                    return self.sidecar(name).exists();
                }
                next_alive_check = now + Duration::from_millis(200);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes what a killed worker may have left: part files and complete files without a
    /// sidecar. Only the worker holding the spool's lock calls this.
    pub fn remove_worker_debris(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let orphan = file_name
                .parse::<WalFileName>()
                .is_ok_and(|n| !self.sidecar(&n).exists());
            if file_name.ends_with(PART) || orphan {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Receives `name` into the spool: `NAME.part` (created before the request, so that a
    /// fetch of that name sees it coming), verified against the server's checksum and size,
    /// fsynced, renamed to `NAME`, then the sidecar with the file's [`Stamp`]. `Ok(false)`:
    /// 404. Only the worker calls this.
    pub fn receive_one(
        &self,
        client: &Client,
        cluster: &str,
        name: &WalFileName,
    ) -> Result<bool, Failure> {
        let local = |e: io::Error| Failure::Fatal(format!("cannot write to the spool: {e}"));
        let mut part = TempFile::at(self.part(name)).map_err(local)?;
        let resp = client.get(&format!("/v1/clusters/{cluster}/wal/{name}"), true)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(false),
            _ => return Err(status_failure(resp)),
        }
        let got = receive(resp, &mut part, true)?;
        let xxh3 = got
            .xxh3
            .ok_or_else(|| Failure::Fatal("no XXH3-128 was computed".into()))?;
        part.persist_without_dir_sync(&self.data(name))
            .map_err(local)?;
        self.seal(name, got.sha256, got.size, xxh3).map_err(|e| {
            self.remove(name);
            local(e)
        })?;
        Ok(true)
    }

    /// Writes the sidecar of the spooled `name` (complete, fsynced and in place), stamping the
    /// file as it is now. The sidecar is written last: a data file without one is never handed
    /// over.
    fn seal(&self, name: &WalFileName, sha256: String, size: u64, xxh3: String) -> io::Result<()> {
        let stamp = Stamp::of(&fs::symlink_metadata(self.data(name))?);
        let sidecar = Sidecar {
            sha256,
            size,
            xxh3,
            origin: self.origin.clone(),
            stamp,
        };
        let path = self.sidecar(name);
        let mut tmp = TempFile::beside(&path)?;
        tmp.write_all(sidecar.to_line().as_bytes())?;
        tmp.publish(&path)
    }
}

fn check(sidecar: &Sidecar, size: u64, xxh3: Option<&str>) -> Result<(), String> {
    let xxh3 = xxh3.unwrap_or("none");
    if size == sidecar.size && xxh3 == sidecar.xxh3 {
        Ok(())
    } else {
        Err(format!(
            "fails its checksum ({size} bytes, XXH3-128 {xxh3}; expected {} bytes, {})",
            sidecar.size, sidecar.xxh3
        ))
    }
}

/// Whether `a` and `b` are on one file system (a `rename` between them can work).
fn same_file_system(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwal::checksum::{sha256_hex, xxh3_hex};

    const SEG: u64 = 1 << 20;

    fn segment_bytes(seed: u8) -> Vec<u8> {
        (0..SEG)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn name(n: u64) -> WalFileName {
        WalFileName::segment(1, n, SegmentSize::new(SEG).expect("size"))
    }

    /// Writes the sidecar of `bytes`, already at the data path of `name`, as the worker does.
    fn seal(spool: &Spool, name: &WalFileName, bytes: &[u8]) {
        spool
            .seal(name, sha256_hex(bytes), bytes.len() as u64, xxh3_hex(bytes))
            .expect("sidecar");
    }

    /// Rewrites the spooled `name` with `bytes` until its change time differs from the one
    /// sealed (the kernel's clock for file times advances once per tick).
    fn rewrite_after_seal(spool: &Spool, name: &WalFileName, bytes: &[u8]) {
        let sealed = Sidecar::parse(&fs::read_to_string(spool.sidecar(name)).expect("sidecar"))
            .expect("parse")
            .stamp;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            fs::write(spool.data(name), bytes).expect("write");
            let now = Stamp::of(&fs::metadata(spool.data(name)).expect("stat"));
            if now != sealed {
                return;
            }
            assert!(Instant::now() < deadline, "the change time never moved");
            std::thread::yield_now();
        }
    }

    fn open(state: &Path) -> Spool {
        Spool::in_state(state, &origin("http://127.0.0.1:8420", "main")).expect("spool")
    }

    /// A spool with `name` spooled as the worker would leave it.
    fn spooled(state: &Path, name: &WalFileName, bytes: &[u8]) -> Spool {
        let spool = open(state);
        fs::write(spool.data(name), bytes).expect("write");
        seal(&spool, name, bytes);
        spool
    }

    fn leftovers(spool: &Spool) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&spool.dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sidecar_round_trip_and_refusals() {
        let s = Sidecar {
            sha256: "ab".repeat(32),
            size: 16 << 20,
            xxh3: "cd".repeat(16),
            origin: origin("http://db", "main"),
            stamp: Stamp {
                ino: 1234,
                ctime: (1_767_225_599, 7),
            },
        };
        assert!(s.to_line().ends_with(" 1234 1767225599.000000007\n"));
        assert!(s.stamp.fine_grained());
        let whole_seconds = Stamp {
            ino: 1234,
            ctime: (1_767_225_599, 0),
        };
        assert!(!whole_seconds.fine_grained());
        assert_eq!(Sidecar::parse(&s.to_line()), Some(s.clone()));
        // The form without a stamp (spooled by an older version): not trusted.
        assert_eq!(
            Sidecar::parse(&format!(
                "{} {} {} {}\n",
                s.sha256, s.size, s.xxh3, s.origin
            )),
            None
        );
        // The older two-field form, truncated or extended lines, and non-hex digests.
        assert_eq!(Sidecar::parse(&format!("{} {}\n", s.sha256, s.size)), None);
        assert_eq!(
            Sidecar::parse(&format!("{} {} {}\n", s.sha256, s.size, s.xxh3)),
            None
        );
        assert_eq!(Sidecar::parse(&s.to_line()[..40]), None);
        assert_eq!(Sidecar::parse(&format!("{} x", s.to_line().trim())), None);
        assert_eq!(
            Sidecar::parse(&format!(
                "{} {} {} {}",
                "zz".repeat(32),
                s.size,
                s.xxh3,
                s.origin
            )),
            None
        );
    }

    #[test]
    fn hand_over_by_rename_and_by_copy() {
        for method in [Method::Rename, Method::Copy] {
            let state = tempfile::tempdir().expect("tempdir");
            let pg_wal = tempfile::tempdir().expect("tempdir");
            let bytes = segment_bytes(7);
            let spool = spooled(state.path(), &name(3), &bytes);
            let dest = pg_wal.path().join("RECOVERYXLOG");
            assert_eq!(
                spool.hand_over_by(&name(3), &dest, method),
                HandOver::Done(SEG),
                "{method:?}"
            );
            assert_eq!(fs::read(&dest).expect("read"), bytes, "{method:?}");
            assert!(leftovers(&spool).is_empty(), "{method:?}");
            // Only the destination is in pg_wal: no temp file left beside it.
            assert_eq!(fs::read_dir(pg_wal.path()).expect("ls").count(), 1);
            // Gone from the spool: a second hand-over of the name finds nothing.
            assert_eq!(
                spool.hand_over_by(&name(3), &dest, method),
                HandOver::NotSpooled
            );
        }
    }

    #[test]
    fn same_file_system_takes_the_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = segment_bytes(1);
        let spool = spooled(&dir.path().join("state"), &name(9), &bytes);
        let pg_wal = dir.path().join("pg_wal");
        fs::create_dir(&pg_wal).expect("mkdir");
        assert!(same_file_system(&spool.dir, &pg_wal));
        let inode = fs::metadata(spool.data(&name(9))).expect("stat").ino();
        let dest = pg_wal.join("000000010000000000000009");
        assert_eq!(spool.hand_over(&name(9), &dest), HandOver::Done(SEG));
        assert_eq!(
            fs::metadata(&dest).expect("stat").ino(),
            inode,
            "not renamed"
        );
        assert!(!same_file_system(&spool.dir, &dir.path().join("missing")));
    }

    #[test]
    fn a_damaged_or_incomplete_spool_file_is_never_handed_over() {
        for method in [Method::Rename, Method::Copy] {
            let state = tempfile::tempdir().expect("tempdir");
            let pg_wal = tempfile::tempdir().expect("tempdir");
            let dest = pg_wal.path().join("RECOVERYXLOG");

            // One flipped bit, same size, written after the file was spooled.
            let bytes = segment_bytes(2);
            let spool = spooled(state.path(), &name(1), &bytes);
            let mut damaged = bytes.clone();
            damaged[5000] ^= 1;
            rewrite_after_seal(&spool, &name(1), &damaged);
            assert_eq!(
                spool.hand_over_by(&name(1), &dest, method),
                HandOver::Discarded
            );
            assert!(!dest.exists(), "{method:?}: a damaged file was handed over");

            // The same bytes as a new file (another inode) in its place.
            let spool = spooled(state.path(), &name(3), &bytes);
            let other = state.path().join("other");
            fs::write(&other, &bytes).expect("write");
            fs::rename(&other, spool.data(&name(3))).expect("rename");
            assert_eq!(
                spool.hand_over_by(&name(3), &dest, method),
                HandOver::Discarded
            );
            assert!(
                !dest.exists(),
                "{method:?}: a replaced file was handed over"
            );

            // Stamped, but the bytes are not the ones verified (a sidecar written for other
            // content): a copy, which reads every byte anyway, checks them too.
            if method == Method::Copy {
                let spool = open(state.path());
                fs::write(spool.data(&name(7)), &damaged).expect("write");
                seal(&spool, &name(7), &bytes);
                assert_eq!(
                    spool.hand_over_by(&name(7), &dest, method),
                    HandOver::Discarded
                );
                assert!(
                    !dest.exists(),
                    "a copy that fails its checksum was handed over"
                );
            }

            // Torn: shorter than its sidecar says.
            let spool = spooled(state.path(), &name(2), &bytes);
            fs::write(spool.data(&name(2)), &bytes[..1000]).expect("write");
            assert_eq!(
                spool.hand_over_by(&name(2), &dest, method),
                HandOver::Discarded
            );
            assert!(!dest.exists());

            // A sidecar without its file, and an unreadable sidecar.
            let spool = spooled(state.path(), &name(4), &bytes);
            fs::remove_file(spool.data(&name(4))).expect("rm");
            assert_eq!(
                spool.hand_over_by(&name(4), &dest, method),
                HandOver::Discarded
            );
            let spool = spooled(state.path(), &name(5), &bytes);
            fs::write(spool.sidecar(&name(5)), "garbage").expect("write");
            assert_eq!(
                spool.hand_over_by(&name(5), &dest, method),
                HandOver::Discarded
            );

            // A file whose sidecar is not written yet is not spooled, and stays.
            fs::write(spool.data(&name(6)), &bytes).expect("write");
            assert_eq!(
                spool.hand_over_by(&name(6), &dest, method),
                HandOver::NotSpooled
            );
            assert!(!dest.exists());
            assert_eq!(leftovers(&spool), vec![name(6).to_string()], "{method:?}");
            assert_eq!(fs::read_dir(pg_wal.path()).expect("ls").count(), 0);
        }
    }

    #[test]
    fn wanted_window_and_housekeeping() {
        let state = tempfile::tempdir().expect("tempdir");
        let bytes = segment_bytes(3);
        let spool = spooled(state.path(), &name(5), &bytes);
        assert_eq!(spool.wanted(), None);
        assert_eq!(spool.segment_size_hint(&name(5)), Some(SEG));
        assert_eq!(spool.segment_size_hint(&name(6)), None);
        spool.set_wanted(&name(4), SEG).expect("wanted");
        let wanted = spool.wanted().expect("recorded");
        assert_eq!(wanted.name, name(4));
        assert_eq!(spool.segment_size_hint(&name(6)), Some(SEG));
        assert_eq!(
            Spool::window(&wanted, 3),
            vec![name(5), name(6), name(7)],
            "the next names after the wanted one, in order"
        );
        assert!(spool.is_spooled(&name(5)));
        assert_eq!(spool.used_bytes(), SEG);

        // A request on another timeline drops timeline 1; debris goes with the worker's sweep.
        fs::write(spool.part(&name(6)), b"partial").expect("write");
        fs::write(spool.data(&name(8)), b"no sidecar").expect("write");
        spool.remove_worker_debris();
        assert_eq!(
            leftovers(&spool),
            vec![name(5).to_string(), format!("{}{SIDECAR}", name(5))]
        );
        let tl2 = WalFileName::segment(2, 5, SegmentSize::new(SEG).expect("size"));
        spool.on_request(&tl2);
        assert!(leftovers(&spool).is_empty());
    }

    #[test]
    fn another_server_or_cluster_never_gets_the_file() {
        let state = tempfile::tempdir().expect("tempdir");
        let pg_wal = tempfile::tempdir().expect("tempdir");
        let dest = pg_wal.path().join("RECOVERYXLOG");
        let bytes = segment_bytes(5);
        let ours = spooled(state.path(), &name(2), &bytes);
        ours.set_wanted(&name(1), SEG).expect("wanted");
        for (url, cluster) in [
            ("http://127.0.0.1:8420", "other"),
            ("http://b:8420", "main"),
        ] {
            let theirs = Spool::in_state(state.path(), &origin(url, cluster)).expect("spool");
            assert_eq!(theirs.wanted(), None, "{url} {cluster}");
        }
        let theirs =
            Spool::in_state(state.path(), &origin("http://b:8420", "main")).expect("spool");
        assert_eq!(theirs.hand_over(&name(2), &dest), HandOver::Discarded);
        assert!(!dest.exists());
        assert_eq!(ours.wanted().map(|w| w.name), Some(name(1)));
    }

    #[test]
    fn waits_only_while_the_worker_is_on_that_very_name() {
        let state = tempfile::tempdir().expect("tempdir");
        let spool = open(state.path());
        let quick = Duration::from_millis(300);
        // Nothing in flight: no wait at all.
        let start = Instant::now();
        assert!(!spool.wait_for_worker(&name(1), || true, quick, quick));
        assert!(start.elapsed() < Duration::from_millis(100));
        // In flight but the worker is gone.
        fs::write(spool.part(&name(1)), b"x").expect("write");
        assert!(!spool.wait_for_worker(&name(1), || false, quick, quick));
        // In flight and not growing: gives up after the stall time.
        let start = Instant::now();
        assert!(!spool.wait_for_worker(&name(1), || true, quick, Duration::from_secs(30)));
        assert!(start.elapsed() >= quick);
        // Completed by the "worker" meanwhile.
        let bytes = segment_bytes(4);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                fs::write(spool.data(&name(1)), &bytes).expect("write");
                let _ = fs::remove_file(spool.part(&name(1)));
                seal(&spool, &name(1), &bytes);
            });
            assert!(spool.wait_for_worker(&name(1), || true, quick, Duration::from_secs(30)));
        });
    }
}
