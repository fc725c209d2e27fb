//! Every rename into place and every fsync of the helper, and why each one is (or is not) there.
//!
//! # Durable: `restore`, look-ahead records
//!
//! A file someone relies on after a crash ([`TempFile::persist`]):
//!
//! 1. write to a temp file in the destination's own directory (same file system, so the rename
//!    below is atomic);
//! 2. `sync_all` the temp file, so the data is on disk before any name points at it;
//! 3. `rename` over the destination (atomic replace: readers see the old state or the whole
//!    new file);
//! 4. fsync the directory so the rename itself survives a crash.
//!
//! On any error the temp file is removed; nothing is left at the destination.
//!
//! `restore` writes thousands of files into one new tree: it renames each one into place after
//! its own fsync (step 2) but skips step 4 per file, and calls [`sync_tree`] once at the end,
//! before it writes the signal file that makes the directory recoverable. A crash before that
//! leaves a tree without a signal file, which restore refuses to reuse (it is not empty).
//!
//! # Atomic but not durable: restore_command's destination and the prefetch spool
//!
//! [`TempFile::publish`] and [`publish_rename`] keep steps 1 and 3 and drop the fsyncs.
//!
//! - **The file `fetch` hands to PostgreSQL** (`RECOVERYXLOG`, or the name PostgreSQL passes as
//!   `%p`) must be complete whenever PostgreSQL can see it, hence the temp file and the atomic
//!   rename, but it need not survive a crash. PostgreSQL either keeps a restored file under its
//!   own name, and then makes it durable itself (`KeepFileRestoredFromArchive` fsyncs it and
//!   renames it with `durable_rename`, which fsyncs again), or reads it once and deletes it.
//!   After a crash, recovery starts again from its last restartpoint and asks the archive again
//!   for every file it needs. An fsync here would only make PostgreSQL wait for the disk twice.
//! - **Spool files** are a cache of the archive. Each carries the XXH3-128 and size it had when
//!   it was received ([`crate::helper::spool`]); a file torn by a crash fails that check at hand-over,
//!   is deleted and downloaded again, so it never needs an fsync either.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates `DEST.wal-archive.PID.tmp` beside `dest`.
    pub fn beside(dest: &Path) -> io::Result<TempFile> {
        let file_name = dest
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} has no file name", dest.display())))?;
        let mut tmp_name = file_name.to_os_string();
        tmp_name.push(format!(".wal-archive.{}.tmp", std::process::id()));
        TempFile::at(dest.with_file_name(tmp_name))
    }

    /// Creates (or truncates) a temp file at exactly `path`, for a writer that is alone in
    /// writing that name (the prefetch worker, which holds the spool's lock).
    pub fn at(path: PathBuf) -> io::Result<TempFile> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    pub fn writer(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("temp file already closed"))
    }

    /// Unix permission bits of the file to be.
    pub fn set_mode(&mut self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.writer()?
            .set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Modification time of the file to be.
    pub fn set_modified(&mut self, time: std::time::SystemTime) -> io::Result<()> {
        self.writer()?.set_modified(time)
    }

    /// Step 3 only: rename over `dest`, no fsync (see "Atomic but not durable" above).
    pub fn publish(mut self, dest: &Path) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temp file already closed"))?;
        drop(file);
        std::fs::rename(&self.path, dest)?;
        // Renamed: nothing to clean up any more.
        self.path = PathBuf::new();
        Ok(())
    }

    /// Steps 2–4: fsync, rename over `dest`, fsync the directory.
    pub fn persist(self, dest: &Path) -> io::Result<()> {
        self.persist_without_dir_sync(dest)?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)?.sync_all()
    }

    /// Steps 2–3 only: the caller fsyncs the directory later ([`sync_tree`]).
    pub fn persist_without_dir_sync(mut self, dest: &Path) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temp file already closed"))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.path, dest)?;
        // Renamed: nothing to clean up any more.
        self.path = PathBuf::new();
        Ok(())
    }
}

/// Moves the complete file `src` over `dest` with one atomic `rename`, no fsync (see "Atomic
/// but not durable" above). Fails with `ErrorKind::CrossesDevices` across file systems.
pub fn publish_rename(src: &Path, dest: &Path) -> io::Result<()> {
    std::fs::rename(src, dest)
}

/// fsyncs every directory below and including `root` (symlinks are not followed), so that the
/// names created by [`TempFile::persist_without_dir_sync`] survive a crash.
pub fn sync_tree(root: &Path) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
        File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_or_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("RECOVERYXLOG");
        let mut t = TempFile::beside(&dest).expect("create");
        t.write_all(b"hello").expect("write");
        t.persist(&dest).expect("persist");
        assert_eq!(std::fs::read(&dest).expect("read"), b"hello");

        let other = dir.path().join("OTHER");
        let mut t = TempFile::beside(&other).expect("create");
        t.write_all(b"partial").expect("write");
        drop(t);
        assert!(!other.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn publishes_at_an_exact_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let part = dir.path().join("X.part");
        let dest = dir.path().join("X");
        let mut t = TempFile::at(part.clone()).expect("create");
        t.write_all(b"whole").expect("write");
        t.publish(&dest).expect("publish");
        assert!(!part.exists());
        assert_eq!(std::fs::read(&dest).expect("read"), b"whole");

        let moved = dir.path().join("Y");
        publish_rename(&dest, &moved).expect("rename");
        assert!(!dest.exists());
        assert_eq!(std::fs::read(&moved).expect("read"), b"whole");
    }
}
