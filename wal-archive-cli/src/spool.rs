//! The prefetch spool of `fetch`: the segments PostgreSQL will most likely ask for next, so that
//! most restore_command calls are a local, verified copy instead of a round trip.
//!
//! # Design: bounded, in the same process
//!
//! restore_command is one process per file, and nothing may outlive it unbounded. So there is no
//! daemon and no detached child: after `fetch` has written the requested file to PostgreSQL's
//! `dest` (fsync + rename), and only if fewer than half of the next `prefetch` segment names on
//! the same timeline are spooled, it downloads the missing ones on `parallel` threads before
//! exiting, for at most [`FILL_DEADLINE`] (or the retry window, if shorter), one attempt each,
//! stopping at the first 404 (the archive ends there). PostgreSQL waits for that call, but the
//! calls that follow are served from the spool, so throughput rises by the parallelism and by
//! the round trips saved.
//!
//! # What is handed over (invariants)
//!
//! - **Only exact names.** A spooled file is handed over only for the very name PostgreSQL asks
//!   for, never for "the same segment on another timeline" (pgBackRest issue 2423).
//! - **Only verified bytes.** Each spooled file `NAME` has a sidecar `NAME.sha256` with the
//!   SHA-256 and size the server sent (`X-Content-Sha256` / `X-Content-Size`, checked while
//!   downloading). At hand-over the file is hashed again *while* it is copied to `dest`; on a
//!   mismatch both are deleted, nothing is renamed into place, and the file is downloaded
//!   normally.
//! - **Only what the archive had.** Files come from plain `GET`s answered 200 (never the
//!   zero-filled `?partial=true` form); 404s are never remembered past the call.
//! - **Timeline switches.** When PostgreSQL asks for a segment on timeline T, spooled segments
//!   of other timelines are discarded; when it gets a `.history` file of timeline T, spooled
//!   segments of timelines below T are discarded.
//! - **Bounded and fresh.** At most `prefetch_max_bytes` and the next `prefetch` names are
//!   filled; names older than the requested one on its timeline, files older than
//!   [`MAX_AGE`] and debris of killed processes are removed at every call.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use pgwal::name::{WalFileKind, WalFileName};
use pgwal::segment::SegmentSize;

use crate::client::{status_failure, Client, Failure};
use crate::durable::TempFile;
use crate::fetch::{copy_hashing, download};
use crate::state;

/// Longest a fetch spends filling the spool after its own file is in place.
pub const FILL_DEADLINE: Duration = Duration::from_secs(30);
/// Spooled files older than this are removed unused.
pub const MAX_AGE: Duration = Duration::from_secs(10 * 60);

const SIDECAR: &str = ".sha256";

pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating) `STATE/spool` for the pg_wal `dest` is in; `None` (logged) when the
    /// state directory is unusable: fetch then works without a spool.
    pub fn open(client: &Client, cluster: &str, dest: &Path) -> Option<Spool> {
        let pg_wal = state::parent_dir(dest);
        match state::dir(&client.settings, cluster, &pg_wal)
            .and_then(|d| state::subdir(&d, "spool"))
        {
            Ok(dir) => Some(Spool { dir }),
            Err(e) => {
                eprintln!("wal-archive fetch: prefetch off: no state directory: {e}");
                None
            }
        }
    }

    fn data(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    fn sidecar(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}{SIDECAR}"))
    }

    fn remove(&self, name: &WalFileName) {
        let _ = fs::remove_file(self.sidecar(name));
        let _ = fs::remove_file(self.data(name));
    }

    fn is_spooled(&self, name: &WalFileName) -> bool {
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
                // Temp files of a running fetch are young; of a killed one, old.
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

    /// Spooled segments and their sizes.
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

    /// Hands the spooled copy of exactly `name` over to `dest` if it still matches its
    /// checksum: hashes it while copying to a temp file beside `dest`, renames only on a match.
    /// The spooled copy is removed either way. `None`: not spooled or discarded.
    pub fn hand_over(&self, name: &WalFileName, dest: &Path) -> Option<u64> {
        let sidecar = fs::read_to_string(self.sidecar(name)).ok();
        let result = sidecar.and_then(|text| {
            let mut parts = text.split_whitespace();
            let sha = parts.next()?.to_ascii_lowercase();
            let size: u64 = parts.next()?.parse().ok()?;
            let src = File::open(self.data(name)).ok()?;
            let mut tmp = TempFile::beside(dest).ok()?;
            let (got_sha, got_size) = copy_hashing(src, &mut tmp).ok()?;
            if got_sha != sha || got_size != size {
                eprintln!(
                    "wal-archive fetch: the spooled copy of {name} fails its checksum ({got_size} \
                     bytes, SHA-256 {got_sha}; expected {size} bytes, {sha}); discarded, \
                     downloading it again"
                );
                return None;
            }
            match tmp.persist(dest) {
                Ok(()) => Some(size),
                Err(e) => {
                    eprintln!(
                        "wal-archive fetch: cannot write {}: {e}; downloading {name} again",
                        dest.display()
                    );
                    None
                }
            }
        });
        if result.is_some() || self.data(name).exists() || self.sidecar(name).exists() {
            self.remove(name);
        }
        result
    }

    /// Fills the spool with the segments after `served` (a segment of `seg_bytes` bytes) if
    /// fewer than half of the next `settings.prefetch` names are spooled. Bounded by `deadline`,
    /// `prefetch_max_bytes`, and the first 404. Returns how many were downloaded.
    pub fn fill(
        &self,
        client: &Client,
        cluster: &str,
        served: &WalFileName,
        seg_bytes: u64,
        deadline: Instant,
    ) -> usize {
        let ahead = client.settings.prefetch;
        if ahead == 0 || served.kind() != WalFileKind::Segment {
            return 0;
        }
        let Ok(size) = SegmentSize::new(seg_bytes) else {
            return 0;
        };
        let Some(segno) = served.segno(size) else {
            return 0;
        };
        let next: Vec<WalFileName> = (1..=ahead as u64)
            .map(|i| WalFileName::segment(served.timeline(), segno + i, size))
            .collect();
        let missing: Vec<WalFileName> = next
            .iter()
            .filter(|n| !self.is_spooled(n))
            .cloned()
            .collect();
        if missing.len() * 2 <= ahead {
            return 0;
        }
        let used: u64 = self.segments().iter().map(|(_, b)| b).sum();
        let budget = client.settings.prefetch_max_bytes.saturating_sub(used) / seg_bytes;
        let missing: Vec<WalFileName> = missing.into_iter().take(budget as usize).collect();
        let queue = Mutex::new(missing.into_iter());
        let stop = AtomicBool::new(false);
        let done = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..client.settings.parallel.max(1) {
                s.spawn(|| loop {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                        return;
                    }
                    let next = match queue.lock() {
                        Ok(mut q) => q.next(),
                        Err(_) => return,
                    };
                    let Some(name) = next else { return };
                    match self.download_one(client, cluster, &name) {
                        Ok(true) => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        // Not archived (yet): the names after it will not be either.
                        Ok(false) => stop.store(true, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("wal-archive fetch: prefetch {name}: {e}");
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        done.into_inner()
    }

    /// One prefetch download into the spool. `Ok(false)`: 404.
    fn download_one(
        &self,
        client: &Client,
        cluster: &str,
        name: &WalFileName,
    ) -> Result<bool, Failure> {
        let resp = client.get(&format!("/v1/clusters/{cluster}/wal/{name}"), true)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(false),
            _ => return Err(status_failure(resp)),
        }
        let (size, sha) = download(resp, &self.data(name))?;
        // The sidecar is written last: a data file without one is never handed over.
        let sidecar = self.sidecar(name);
        let written = TempFile::beside(&sidecar).and_then(|mut tmp| {
            tmp.write_all(format!("{sha} {size}\n").as_bytes())?;
            tmp.persist_without_dir_sync(&sidecar)
        });
        if let Err(e) = written {
            self.remove(name);
            return Err(Failure::Fatal(format!("cannot write to the spool: {e}")));
        }
        Ok(true)
    }
}
