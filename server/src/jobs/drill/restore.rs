//! A backup written into a drill's scratch directory straight from storage: every file
//! decompressed and checked against the SHA-256 and size the catalog recorded before it is
//! given its name, tablespaces moved into the scratch directory (their `pg_tblspc` links point
//! there), everything owned by the user PostgreSQL runs as.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use pgwal::api::BackupFile;
use tokio::io::AsyncWriteExt;

use super::scratch::{RunAs, Scratch};
use crate::backup::catalog::{self, BackupRow};
use crate::wal::archive::Archive;
use crate::wal::object_format::Decompressor;

/// Files written at once.
const PARALLEL: usize = 4;
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What was written.
pub struct Written {
    pub files: u64,
    pub bytes: u64,
}

/// `rel` below `root`: relative, without `..`.
fn below(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty()
        || rel.contains('\0')
        || !p
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("the backup lists the unsafe path {rel:?}"));
    }
    Ok(root.join(p))
}

/// Writes backup `row` into `scratch`; `progress` gets the bytes written so far.
pub async fn write_backup(
    archive: &Archive,
    row: &BackupRow,
    scratch: &Scratch,
    run_as: &RunAs,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Written, String> {
    let info = &row.info;
    let files = catalog::files(&archive.catalog, &info.cluster, &info.id)
        .await
        .map_err(|e| format!("reading the file list of backup {}: {e}", info.id))?;
    let pgdata = scratch.pgdata();
    let mut roots: BTreeMap<u32, PathBuf> = BTreeMap::new();
    for t in &info.tablespaces {
        roots.insert(t.oid, scratch.tablespace(t.oid));
    }
    let root_of = |f: &BackupFile| -> Result<PathBuf, String> {
        match f.tablespace_oid {
            None => Ok(pgdata.clone()),
            Some(oid) => roots.get(&oid).cloned().ok_or_else(|| {
                format!(
                    "{}: in tablespace {oid}, which the backup does not list",
                    f.path
                )
            }),
        }
    };
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());

    // Directories first (each owner-writable while files go in), then files, then links.
    let mut dirs: Vec<(PathBuf, u32)> = roots.values().map(|d| (d.clone(), 0o700)).collect();
    for f in files.iter().filter(|f| f.kind == "dir") {
        dirs.push((below(&root_of(f)?, &f.path)?, f.mode & 0o7777));
    }
    dirs.sort();
    for (dir, _) in &dirs {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io("cannot create", dir, e))?;
        run_as
            .own(dir)
            .map_err(|e| io("cannot give away", dir, e))?;
    }
    let mut plain = Vec::new();
    for f in files.iter().filter(|f| f.kind == "file") {
        let path = below(&root_of(f)?, &f.path)?;
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| io("cannot create", parent, e))?;
                run_as
                    .own(parent)
                    .map_err(|e| io("cannot give away", parent, e))?;
            }
        }
        plain.push((f, path));
    }
    let total: u64 = plain.iter().map(|(f, _)| f.size).sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    // The futures are made before the stream (not by a closure of it), so that the stream's
    // type names no closure over borrowed lifetimes and the job's future stays `Send`.
    let done = &done;
    let writes: Vec<_> = plain
        .iter()
        .map(|(f, path)| async move {
            write_file(archive, &info.cluster, f, path, run_as).await?;
            let n = done.fetch_add(f.size, std::sync::atomic::Ordering::Relaxed) + f.size;
            progress(n.min(total));
            Ok::<_, String>(())
        })
        .collect();
    let mut results = futures::stream::iter(writes).buffer_unordered(PARALLEL);
    while let Some(r) = results.next().await {
        r?;
    }
    drop(results);
    for f in files.iter().filter(|f| f.kind == "symlink") {
        let path = below(&root_of(f)?, &f.path)?;
        // Tablespace links point into the scratch directory. Other links are not made: a
        // throwaway copy never reaches out of its scratch directory into the host's files.
        let Some(oid) = f
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|oid| oid.parse::<u32>().ok())
            .filter(|_| f.tablespace_oid.is_none())
        else {
            tracing::warn!(path = %f.path, "a drill does not restore the backup's symlink");
            continue;
        };
        let target = scratch.tablespace(oid);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io("cannot create", parent, e))?;
        }
        tokio::fs::symlink(&target, &path)
            .await
            .map_err(|e| io("cannot link", &path, e))?;
        run_as
            .own(&path)
            .map_err(|e| io("cannot give away", &path, e))?;
    }
    for (dir, mode) in dirs.iter().rev() {
        let mode = if *mode == 0 { 0o700 } else { mode | 0o700 };
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(|e| io("cannot set the mode of", dir, e))?;
    }
    Ok(Written {
        files: plain.len() as u64,
        bytes: total,
    })
}

/// One file: its blob decompressed and hashed as it is written beside `path`, renamed into
/// place only when size and SHA-256 are the catalog's.
async fn write_file(
    archive: &Archive,
    cluster: &str,
    f: &BackupFile,
    path: &Path,
    run_as: &RunAs,
) -> Result<(), String> {
    let sha = f
        .sha256
        .as_deref()
        .ok_or_else(|| format!("{}: the catalog has no SHA-256 for it", f.path))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".drill-partial");
    let tmp = PathBuf::from(tmp);
    let mut out = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut hasher = pgwal::checksum::Sha256::new();
    let mut size = 0u64;
    let blob = catalog::blob(&archive.catalog, cluster, sha)
        .await
        .map_err(|e| format!("{}: {e}", f.path))?;
    match blob {
        None if f.size == 0 && sha == EMPTY_SHA256 => {}
        None => {
            return Err(format!(
                "{}: no stored object is cataloged for its content {sha}",
                f.path
            ))
        }
        Some(blob) => {
            let mut stream =
                archive.blobs.get(&blob.object_key).await.map_err(|e| {
                    format!("{}: cannot read object {}: {e}", f.path, blob.object_key)
                })?;
            let mut dec = Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    format!("{}: cannot read object {}: {e}", f.path, blob.object_key)
                })?;
                let mut plain = Vec::new();
                dec.write(&chunk, |b| {
                    plain.extend_from_slice(b);
                    Ok(())
                })
                .map_err(|e| {
                    format!(
                        "{}: object {} cannot be decompressed: {e}",
                        f.path, blob.object_key
                    )
                })?;
                hasher.update(&plain);
                size += plain.len() as u64;
                out.write_all(&plain)
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            }
            if !dec.is_complete() {
                return Err(format!(
                    "{}: object {} ends inside a zstd frame",
                    f.path, blob.object_key
                ));
            }
        }
    }
    let got = hasher.finish_hex();
    if got != sha || size != f.size {
        return Err(format!(
            "{}: the stored content is damaged: read {size} bytes with SHA-256 {got}, the \
             backup recorded {} bytes with SHA-256 {sha}",
            f.path, f.size
        ));
    }
    out.flush()
        .await
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    drop(out);
    tokio::fs::set_permissions(
        &tmp,
        std::fs::Permissions::from_mode(f.mode & 0o7777 | 0o600),
    )
    .await
    .map_err(|e| format!("cannot set the mode of {}: {e}", tmp.display()))?;
    run_as
        .own(&tmp)
        .map_err(|e| format!("cannot give away {}: {e}", tmp.display()))?;
    // No fsync: the copy is thrown away after the drill, and a crash removes it.
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::below;
    use std::path::{Path, PathBuf};

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(
            below(Path::new("/r"), "base/1/2").expect("ok"),
            PathBuf::from("/r/base/1/2")
        );
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(below(Path::new("/r"), bad).is_err(), "{bad}");
        }
    }
}
