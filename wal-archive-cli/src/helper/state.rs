//! The helper's state directory: where `push` keeps its acknowledgement records
//! ([`crate::helper::lookahead`]) and `fetch` its prefetch spool ([`crate::helper::spool`]), with the prefetch
//! worker's lock, log and wanted record beside it ([`crate::helper::worker`]).
//!
//! Default: `${XDG_RUNTIME_DIR:-/tmp}/wal-archive-UID/HASH`, where HASH is the first 16 hex
//! digits of the SHA-256 of the absolute pg_wal path, the server URL and the cluster, so that
//! two clusters of one machine, or one cluster archiving to two servers, never share state. It
//! is deliberately outside the data directory: base backups copy the data directory, and a
//! restored copy must not inherit records that speak for another pg_wal. Directories are created
//! with mode 0700; an existing `wal-archive-UID` owned by someone else, or open to others, is
//! refused (the caller then works without state, as with look-ahead and prefetch off).
//!
//! State is an optimisation only: any error here disables it for the call and is logged; it
//! never changes an exit code by itself.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgwal::checksum::Sha256;

use crate::settings::Settings;

/// The state directory of one (pg_wal, server, cluster), created if missing.
///
/// `pg_wal` is the directory of the file PostgreSQL names (`%p`), made absolute.
pub fn dir(settings: &Settings, cluster: &str, pg_wal: &Path) -> io::Result<PathBuf> {
    let uid = fs::metadata("/proc/self")?.uid();
    if let Some(dir) = &settings.spool_dir {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Spooled WAL and acknowledgement records are the cluster's data: an explicit
        // directory others can read or write is not used.
        ensure_private(dir, uid)?;
        return Ok(dir.clone());
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let base = runtime.join(format!("wal-archive-{uid}"));
    match fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // In a shared /tmp, someone else may have made the directory first: use it only if it is
    // a real directory of ours that nobody else can write to.
    ensure_private(&base, uid)?;
    let absolute = fs::canonicalize(pg_wal)?;
    let mut h = Sha256::new();
    h.update(absolute.as_os_str().as_encoded_bytes());
    h.update(b"\n");
    h.update(settings.url.as_bytes());
    h.update(b"\n");
    h.update(cluster.as_bytes());
    let key = h.finish_hex();
    let dir = base.join(&key[..16]);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(dir)
}

/// Refuses a directory that is not a real directory of `uid` closed to everyone else.
fn ensure_private(dir: &Path, uid: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of uid {uid} (mode {:o}, wanted 0700): not used; \
             chmod 700 it, or remove it, or pass another --spool-dir",
            dir.display(),
            meta.permissions().mode() & 0o7777
        )));
    }
    Ok(())
}

/// A sub-directory of the state directory, created (0700) if missing.
pub fn subdir(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let sub = dir.join(name);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&sub)?;
    Ok(sub)
}

/// The directory PostgreSQL's `%p` lives in (its pg_wal), `.` for a bare name.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A file's identity: equal identities mean the same file, unchanged (a rewrite in place
/// changes mtime/ctime; a new file has a new inode or ctime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Identity {
    pub fn of(meta: &fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
        }
    }

    pub fn of_path(path: &Path) -> io::Result<Identity> {
        Ok(Identity::of(&fs::metadata(path)?))
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(spool: &Path) -> Settings {
        let mut s = Settings::resolve(&crate::args::GlobalArgs::default()).expect("settings");
        s.spool_dir = Some(spool.to_path_buf());
        s
    }

    #[test]
    fn an_explicit_spool_dir_open_to_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        // Created by us: 0700, used.
        assert_eq!(
            super::dir(&settings(&spool), "main", dir.path()).expect("private"),
            spool
        );
        let mode = fs::metadata(&spool).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Opened to others: refused, with what to do.
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = super::dir(&settings(&spool), "main", dir.path()).expect_err("refused");
        assert!(e.to_string().contains("chmod 700"), "{e}");
    }
}
