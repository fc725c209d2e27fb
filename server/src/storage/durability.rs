//! Every place where the server makes bytes durable on the local file system, and why.
//!
//! Objects on the local backend are written by `object_store`'s `LocalFileSystem` with fsync
//! enabled. For one stored WAL file ([`crate::storage`] `BlobUpload::commit`) that means:
//!
//! 1. the staging file `staging/<id>#1` is written and `sync_all`ed before it is renamed to
//!    `staging/<id>` — without it a crash could leave a name pointing at a file whose data never
//!    reached the disk;
//! 2. the staging directory is fsynced after that rename (the rename itself is a directory update);
//! 3. the final key is created with `link(2)`, which fails if the name exists — this is what makes
//!    "never overwritten" hold even between two concurrent uploads — and the final directory is
//!    fsynced so the new name survives a power loss (this is the point of acknowledgement);
//! 4. missing parent directories are created and their parents fsynced.
//!
//! Only after step 3 returns does the server answer 201 (DESIGN §7.1). The staging name is then
//! unlinked without fsync: if it survives a crash it is swept at the next start.
//!
//! The SQLite catalog runs in WAL mode with `synchronous = FULL`: a commit returns once it is on
//! disk, so a state the server has reported (a backup `done`, a keep flag, a retention plan)
//! survives a power loss. WAL rows are written after their object is durable; a crash between
//! the two leaves an object without a row, which start-up reconciliation re-indexes.
//!
//! # Owner only
//!
//! The archive holds every WAL record and base backup of its clusters, `pg_authid` included.
//! The server sets its umask to 077 at start, so every directory it creates is 0700 and every
//! file 0600 whatever the umask it inherited, and [`make_private`] closes a data directory
//! that others can enter.

use std::fs;
use std::io;
use std::path::Path;

use object_store::local::LocalFileSystem;

/// Opens (creating if needed) the local object store rooted at `root`, with fsync on every write.
pub fn local_object_store(root: &Path) -> io::Result<LocalFileSystem> {
    create_dir_all_durable(root)?;
    LocalFileSystem::new_with_prefix(root)
        .map(|fs| fs.with_fsync(true).with_automatic_cleanup(false))
        .map_err(io::Error::other)
}

/// `mkdir -p` that also fsyncs the parent of every directory it creates, so the directory
/// entries survive a crash.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_durable(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// The umask of the server process: nothing it creates is readable by others.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Sets the process umask to [`PRIVATE_UMASK`] (before any thread starts or file is created).
pub fn set_private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(PRIVATE_UMASK));
}

/// Makes `dir` owner-only (0700) if group or others may enter or read it; returns its mode
/// before, when it had to be changed. With the top directory closed, nothing under it is
/// reachable by another account, whatever the modes below.
pub fn make_private(dir: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode))
}

/// fsync of a directory: makes its entries (creations, renames, links) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Removes the temporary files `LocalFileSystem` writes beside a destination (`NAME#N`) that a
/// crash left behind. Returns how many were removed.
pub fn remove_local_upload_debris(root: &Path) -> io::Result<u64> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if is_upload_debris(&entry.file_name().to_string_lossy()) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn is_upload_debris(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((base, n)) => {
            !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_directory_is_closed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("data");
        fs::create_dir(&d).expect("mkdir");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(make_private(&d).expect("close"), Some(0o755));
        let mode = fs::metadata(&d).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(make_private(&d).expect("again"), None);
    }

    #[test]
    fn debris_names() {
        assert!(is_upload_debris("000000010000000000000001.zst#1"));
        assert!(is_upload_debris("x#12"));
        assert!(!is_upload_debris("000000010000000000000001.zst"));
        assert!(!is_upload_debris("#1"));
        assert!(!is_upload_debris("a#b"));
    }

    #[test]
    fn sweeps_debris_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("wal/main");
        create_dir_all_durable(&sub).expect("mkdir");
        fs::write(sub.join("a.zst"), b"keep").expect("write");
        fs::write(sub.join("b.zst#3"), b"debris").expect("write");
        assert_eq!(remove_local_upload_debris(dir.path()).expect("sweep"), 1);
        assert!(sub.join("a.zst").exists());
        assert!(!sub.join("b.zst#3").exists());
    }
}
