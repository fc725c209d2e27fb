//! `restore --delta`: a backup restored into an existing data directory of the same cluster (the
//! old primary after a failover, DESIGN scenario 3), rewriting only what differs.
//!
//! 1. [`prepare`] refuses a directory PostgreSQL is running on (`postmaster.pid` naming a live
//!    process) and one of another cluster (the system identifier in `global/pg_control`), then
//!    marks the directory ([`IN_PROGRESS`], holding the system identifier) and removes
//!    `global/pg_control`: from here until restore ends PostgreSQL refuses to start on it, and a
//!    second `restore --delta` recognises it by the mark.
//! 2. [`remove_extraneous`] removes every file, link and directory the backup does not have
//!    (the old timeline's WAL in `pg_wal`, `postmaster.pid`, old signal files, leftovers), and
//!    whatever has another kind than in the backup.
//! 3. [`unchanged`] hashes each remaining file whose size matches with SHA-256, in parallel: a
//!    file with the backup's content is kept (its mode and time set, fsynced); every other one
//!    is downloaded like a full restore does. `global/pg_control` is written last.
//!
//! The mark is removed only after the signal file is written, so an interrupted delta restore
//! leaves a directory that does not start and that the next `restore --delta` finishes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use pgwal::api::BackupFile;
use pgwal::checksum::Sha256;

use crate::durable::TempFile;
use crate::ops::progress::bytes_bar;

/// The mark of a delta restore in progress, at the top of the data directory.
pub const IN_PROGRESS: &str = "wal-archive-delta.in-progress";

/// What a delta restore did with the files already there.
#[derive(serde::Serialize, Default, Debug, Clone)]
pub struct DeltaStats {
    /// Files that already had the backup's content.
    pub kept_files: usize,
    pub kept_bytes: u64,
    /// Files downloaded (new, or different).
    pub written_files: usize,
    pub written_bytes: u64,
    /// Files, links and directories removed because the backup does not have them.
    pub removed: usize,
}

/// Checks that `target` is a stopped data directory of the cluster `system_identifier`, then
/// marks it and removes `global/pg_control` (see the module documentation).
pub fn prepare(target: &Path, system_identifier: &str) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", target.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "{} does not exist: --delta restores into an existing data directory (without \
             --delta, restore creates it)",
            target.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", target.display())),
    }
    if let Some(pid) = running_postmaster(target)? {
        bail!(
            "PostgreSQL (PID {pid}, from {}/postmaster.pid) is running on {}: stop it first; \
             restore --delta never writes into a running cluster (if no such server runs, \
             remove the stale postmaster.pid)",
            target.display(),
            target.display()
        );
    }
    let mark = target.join(IN_PROGRESS);
    let control = target.join("global/pg_control");
    let found = match std::fs::read(&control) {
        Ok(bytes) => control_system_identifier(&bytes)
            .with_context(|| format!("{} is not a pg_control file", control.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::read_to_string(&mark) {
            Ok(text) => text.trim().to_string(),
            Err(_) => bail!(
                "{} is not a PostgreSQL data directory (no global/pg_control): --delta \
                 restores into a data directory of the same cluster",
                target.display()
            ),
        },
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", control.display())),
    };
    if found != system_identifier {
        bail!(
            "{} belongs to another cluster (system identifier {found}, the backup's is \
             {system_identifier}); nothing was changed. --delta only re-bases a data directory \
             of the same cluster",
            target.display()
        );
    }
    let mut tmp = TempFile::beside(&mark)?;
    io::Write::write_all(&mut tmp, format!("{system_identifier}\n").as_bytes())?;
    tmp.set_mode(0o600)?;
    tmp.persist(&mark)
        .with_context(|| format!("cannot write {}", mark.display()))?;
    match std::fs::remove_file(&control) {
        Ok(()) => File::open(target.join("global"))?.sync_all()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", control.display())),
    }
    Ok(())
}

/// A tablespace destination a delta restore may clean: absent, empty, or holding only
/// PostgreSQL's per-version directories (`PG_15_202209061`, ...). Anything else is someone's
/// data, and a wrong `--tablespace` must not wipe it.
pub fn check_tablespace_destination(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        if !name.to_string_lossy().starts_with("PG_") {
            bail!(
                "{} holds {:?}, which is not a PostgreSQL tablespace directory; restore --delta \
                 cleans a tablespace's destination and will not touch it (nothing was changed)",
                dir.display(),
                name
            );
        }
    }
    Ok(())
}

/// Ends a delta restore: the mark goes, durably.
pub fn finish(target: &Path) -> Result<()> {
    std::fs::remove_file(target.join(IN_PROGRESS))
        .with_context(|| format!("cannot remove {}", target.join(IN_PROGRESS).display()))?;
    File::open(target)?.sync_all()?;
    Ok(())
}

/// The PID in `postmaster.pid` when that process is alive.
fn running_postmaster(target: &Path) -> Result<Option<u32>> {
    let text = match std::fs::read_to_string(target.join("postmaster.pid")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("cannot read postmaster.pid"),
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return Ok(None);
    };
    Ok(Path::new("/proc")
        .join(pid.to_string())
        .exists()
        .then_some(pid))
}

/// `ControlFileData.system_identifier`: the first 8 bytes of `pg_control`, in the byte order
/// of the machine that wrote it (pg_control.h), as the decimal string the archive uses.
fn control_system_identifier(bytes: &[u8]) -> Result<String> {
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .context("shorter than 8 bytes")?;
    Ok(u64::from_ne_bytes(first).to_string())
}

/// What the backup has at a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Expected {
    Dir,
    File,
    Link(PathBuf),
}

/// The backup's paths (`dirs`, `files`, `links`) and every directory above them, up to the
/// roots.
pub fn expected_tree<'a>(
    dirs: impl Iterator<Item = &'a PathBuf>,
    files: impl Iterator<Item = &'a PathBuf>,
    links: impl Iterator<Item = (&'a PathBuf, &'a PathBuf)>,
    roots: &[PathBuf],
) -> HashMap<PathBuf, Expected> {
    let mut tree = HashMap::new();
    let add_parents = |tree: &mut HashMap<PathBuf, Expected>, p: &Path| {
        let mut cur = p.parent();
        while let Some(dir) = cur {
            if roots.iter().any(|r| r == dir) || !roots.iter().any(|r| dir.starts_with(r)) {
                break;
            }
            tree.entry(dir.to_path_buf()).or_insert(Expected::Dir);
            cur = dir.parent();
        }
    };
    for d in dirs {
        add_parents(&mut tree, d);
        tree.insert(d.clone(), Expected::Dir);
    }
    for f in files {
        add_parents(&mut tree, f);
        tree.insert(f.clone(), Expected::File);
    }
    for (l, to) in links {
        add_parents(&mut tree, l);
        tree.insert(l.clone(), Expected::Link(to.clone()));
    }
    tree
}

/// Removes below each root whatever `expected` does not list with the same kind (links are
/// never followed, but for a `pg_wal` link to a directory); the mark at the top of `target`
/// stays. Returns how many entries went.
pub fn remove_extraneous(
    roots: &[PathBuf],
    target: &Path,
    expected: &HashMap<PathBuf, Expected>,
) -> Result<usize> {
    let mark = target.join(IN_PROGRESS);
    let mut removed = 0;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if path == mark {
                continue;
            }
            let kind = entry.file_type()?;
            // pg_wal is often a link to a directory on another disk (initdb --waldir): the
            // link stays, and what it points to is cleaned like pg_wal itself.
            let wal_link = kind.is_symlink() && path == target.join("pg_wal") && path.is_dir();
            let keep = match expected.get(&path) {
                Some(Expected::Dir) if kind.is_dir() || wal_link => {
                    stack.push(path.clone());
                    true
                }
                Some(Expected::File) => kind.is_file(),
                Some(Expected::Link(to)) => {
                    kind.is_symlink() && std::fs::read_link(&path).is_ok_and(|t| &t == to)
                }
                _ => false,
            };
            if keep {
                continue;
            }
            let result = if kind.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.with_context(|| format!("cannot remove {}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The files worth comparing: those already at their path with the backup's size. The others
/// are written whatever their content.
pub fn comparable(files: &[(&BackupFile, PathBuf)]) -> Vec<bool> {
    files.iter().map(|(f, p)| same_size(p, f.size)).collect()
}

/// For each file marked in `compare`, whether the one already at its path has the backup's
/// size and SHA-256; such a file gets the backup's mode and time and is fsynced. Hashes with
/// `jobs` threads, largest files first: one file is hashed by one thread, so the largest (a
/// 1 GiB relation segment) is the longest single task, and starting it first keeps it from
/// running alone at the end. Once `abandon` is set (the restore failed elsewhere), no further
/// file is compared and the answer is to be discarded.
pub fn unchanged(
    files: &[(&BackupFile, PathBuf)],
    compare: &[bool],
    jobs: usize,
    quiet: bool,
    abandon: &AtomicBool,
) -> Result<Vec<bool>> {
    let mut order: Vec<usize> = (0..files.len()).filter(|i| compare[*i]).collect();
    order.sort_by_key(|i| std::cmp::Reverse(files[*i].0.size));
    let candidates: u64 = order.iter().map(|i| files[*i].0.size).sum();
    let bar = bytes_bar(Some(candidates), quiet);
    bar.set_message("delta: comparing");
    let next = AtomicUsize::new(0);
    let kept = Mutex::new(vec![false; files.len()]);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                if abandon.load(Ordering::Relaxed) || first_error.lock().is_ok_and(|e| e.is_some())
                {
                    return;
                }
                let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let (file, path) = &files[i];
                match keep_if_same(file, path) {
                    Ok(same) => {
                        if same {
                            kept.lock().unwrap_or_else(|p| p.into_inner())[i] = true;
                        }
                        bar.inc(file.size);
                    }
                    Err(e) => {
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(kept.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn same_size(path: &Path, size: u64) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Whether the file at `path` has `file`'s content; if so, its mode and time are set and it is
/// fsynced (a crashed PostgreSQL may have left its last writes only in the page cache).
fn keep_if_same(file: &BackupFile, path: &Path) -> Result<bool> {
    let Some(sha) = file.sha256.as_deref() else {
        return Ok(false);
    };
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    if hasher.finish_hex() != sha {
        return Ok(false);
    }
    // Mode and time are set only where they differ: an inode left clean makes the fsync below
    // a no-op instead of a journal commit per kept file.
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mode = file.mode & 0o7777;
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    if let Ok(secs) = u64::try_from(file.mtime) {
        let mtime = UNIX_EPOCH + Duration::from_secs(secs);
        if meta.modified().ok() != Some(mtime) {
            let _ = f.set_modified(mtime);
        }
    }
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_identifier_from_pg_control() {
        let mut bytes = 7_312_345_678_901_234_567u64.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(
            control_system_identifier(&bytes).expect("id"),
            "7312345678901234567"
        );
        assert!(control_system_identifier(&[1, 2, 3]).is_err());
    }

    #[test]
    fn same_content_is_kept_and_an_abandoned_comparison_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, content: &[u8], backup: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write");
            let f = BackupFile {
                tablespace_oid: None,
                path: name.to_string(),
                kind: "file".into(),
                size: backup.len() as u64,
                sha256: Some(pgwal::checksum::sha256_hex(backup)),
                mode: 0o600,
                mtime: 1_767_225_600,
                link_target: None,
            };
            (f, path)
        };
        let owned = [
            file("same", b"12345678", b"12345678"),
            file("changed", b"12345678", b"87654321"),
            file("longer", b"123456789", b"12345678"),
        ];
        let files: Vec<(&BackupFile, PathBuf)> =
            owned.iter().map(|(f, p)| (f, p.clone())).collect();
        let compare = comparable(&files);
        assert_eq!(compare, vec![true, true, false]);
        let go_on = AtomicBool::new(false);
        let kept = unchanged(&files, &compare, 2, true, &go_on).expect("compare");
        assert_eq!(kept, vec![true, false, false]);
        // A kept file has the backup's time.
        let mtime = std::fs::metadata(&files[0].1)
            .expect("stat")
            .modified()
            .expect("mtime");
        assert_eq!(mtime, UNIX_EPOCH + Duration::from_secs(1_767_225_600));
        let stop = AtomicBool::new(true);
        let kept = unchanged(&files, &compare, 2, true, &stop).expect("abandoned");
        assert_eq!(kept, vec![false, false, false]);
    }

    #[test]
    fn extraneous_entries_go_and_the_backup_s_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let w = |rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, rel).expect("write");
            p
        };
        let kept = w("base/1/100");
        w("base/1/101");
        w("pg_wal/000000010000000000000009");
        w("postmaster.pid");
        w(IN_PROGRESS);
        std::fs::create_dir_all(root.join("pg_notify/sub")).expect("mkdir");
        // A file where the backup has a directory.
        w("pg_replslot");
        let link = root.join("pg_tblspc/16384");
        std::fs::create_dir_all(root.join("pg_tblspc")).expect("mkdir");
        std::os::unix::fs::symlink("/elsewhere", &link).expect("link");

        let dirs = [root.join("pg_wal"), root.join("pg_replslot")];
        let files = [kept.clone(), root.join("global/pg_control")];
        let to = PathBuf::from("/ts");
        let links = [(link.clone(), to.clone())];
        let roots = [root.clone()];
        let tree = expected_tree(
            dirs.iter(),
            files.iter(),
            links.iter().map(|(a, b)| (a, b)),
            &roots,
        );
        assert_eq!(tree.get(&root.join("base")), Some(&Expected::Dir));
        assert!(!tree.contains_key(&root));
        // pg_wal on another disk: the link stays, its old WAL goes.
        let waldir = dir.path().join("waldisk");
        std::fs::create_dir_all(&waldir).expect("mkdir");
        std::fs::write(waldir.join("000000010000000000000007"), "old").expect("write");
        std::fs::remove_dir_all(root.join("pg_wal")).expect("rm");
        std::os::unix::fs::symlink(&waldir, root.join("pg_wal")).expect("link");
        let removed = remove_extraneous(&roots, &root, &tree).expect("remove");
        assert!(std::fs::symlink_metadata(root.join("pg_wal"))
            .expect("pg_wal")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_dir(&waldir).expect("list").count(), 0);
        assert!(kept.is_file());
        assert!(root.join(IN_PROGRESS).is_file());
        for gone in [
            "base/1/101",
            "postmaster.pid",
            "pg_notify",
            "pg_replslot",
            "pg_tblspc/16384",
        ] {
            assert!(
                std::fs::symlink_metadata(root.join(gone)).is_err(),
                "{gone} is still there"
            );
        }
        assert_eq!(removed, 6);
    }

    #[test]
    fn a_tablespace_destination_with_other_data_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = dir.path().join("ts");
        check_tablespace_destination(&ts).expect("absent");
        std::fs::create_dir_all(ts.join("PG_15_202209061")).expect("mkdir");
        check_tablespace_destination(&ts).expect("a tablespace");
        std::fs::write(ts.join("important.csv"), "x").expect("write");
        let err = check_tablespace_destination(&ts).expect_err("refused");
        assert!(err.to_string().contains("important.csv"), "{err}");
    }
}
