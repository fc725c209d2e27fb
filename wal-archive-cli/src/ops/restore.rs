//! `wal-archive restore`: a data directory rebuilt from a backup, set up for recovery.
//!
//! Steps, each finished before the next starts:
//! 1. the backup (`latest` resolved), its file list and its backup_manifest are fetched, and
//!    the two lists are checked against each other (sizes, SHA-256);
//! 2. the target directory and every tablespace destination must be absent or empty — else
//!    nothing is touched and restore fails;
//! 3. directories are created (the data directory 0700), `pg_tblspc/OID` links point at each
//!    tablespace's original or new location;
//! 4. files are downloaded in parallel (`--jobs`), zstd-decompressed, SHA-256-checked against
//!    the catalog and the manifest, and renamed into place only when they match;
//! 5. `backup_manifest`, then the recovery settings in `postgresql.auto.conf`, then
//!    `recovery.signal` / `standby.signal` — last, so that a directory left half-done by a crash
//!    is never mistaken for a finished restore.
//!
//! On any failure what restore created is removed again, so a second attempt starts clean.
//! Files are created as the user running restore: run it as the PostgreSQL OS user.
//!
//! With `--delta` the target is an existing, stopped data directory of the same cluster, and
//! only what differs is rewritten ([`crate::ops::delta`]); a failure leaves it marked, unable
//! to start, for the next `restore --delta` to finish.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use pgwal::api::{BackupFile, BackupFiles, BackupInfo, CONTENT_SHA256_HEADER};
use pgwal::checksum::{sha256_hex, Sha256};
use pgwal::quote::{conf_string, shell_word};

use crate::args::{GlobalArgs, RestoreArgs};
use crate::client::{status_failure, with_retries, Client, Failure};
use crate::durable::{self, TempFile};
use crate::ops::delta::{self, DeltaStats};
use crate::ops::manifest::{self, Manifest};
use crate::ops::progress::{bytes_bar, human_bytes};

const DEFAULT_RETRY: Duration = Duration::from_secs(60);
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What restore did, for the summary line and `--json`.
#[derive(serde::Serialize)]
pub struct Restored {
    pub backup: String,
    pub target_dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub tablespaces: BTreeMap<u32, PathBuf>,
    pub signal: &'static str,
    /// With `--delta`: what was kept, written and removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaStats>,
}

pub fn restore(
    client: &Client,
    global: &GlobalArgs,
    args: &RestoreArgs,
    json: bool,
) -> Result<Restored> {
    let window = client.settings.retry_for.unwrap_or(DEFAULT_RETRY);
    let cluster = &args.cluster;
    let info = crate::ops::backup::info(client, cluster, &args.backup)?;
    if info.status != "done" {
        bail!(
            "backup {} is {}, not done: only a done backup can be restored",
            info.id,
            info.status
        );
    }
    let base = format!("/v1/clusters/{cluster}/backups/{}", info.id);
    let files: BackupFiles = with_retries(window, "backup file list", || {
        client.get_json(&format!("{base}/files"))
    })?;
    let manifest_bytes = with_retries(window, "backup_manifest", || {
        fetch_manifest(client, &format!("{base}/manifest"))
    })?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    cross_check(&files, &manifest)?;

    warn_if_root();
    let target = absolute(&args.target_dir)?;
    let tablespaces = tablespace_destinations(&info, &args.tablespaces)?;
    let restore_command = restore_command(global, args)?;

    let mut destinations = vec![target.clone()];
    destinations.extend(tablespaces.values().cloned());
    check_no_overlap(&destinations)?;
    if args.delta {
        return restore_delta(
            client,
            args,
            json,
            &info,
            &files,
            &manifest_bytes,
            &target,
            &tablespaces,
            &restore_command,
        );
    }
    // Nothing is created before every destination is known to be free.
    for d in &destinations {
        check_free(d)?;
    }
    let mut created = Created::default();
    let result: Result<Restored> = (|| {
        for d in &destinations {
            created.make(d)?;
        }
        let plan = Plan::new(&target, &tablespaces, &files)?;
        plan.make_dirs(false)?;
        let all: Vec<usize> = (0..plan.files.len()).collect();
        let bytes = plan.download(client, cluster, window, args.jobs.into(), json, &all)?;
        let manifest_out = plan.write_tablespace_map(&tablespaces, &manifest_bytes)?;
        plan.apply_dir_modes()?;
        for d in &destinations {
            durable::sync_tree(d)?;
        }
        write_new(&target.join("backup_manifest"), &manifest_out, 0o600)?;
        let signal = write_recovery_settings(&target, args, &restore_command)?;
        Ok(Restored {
            backup: info.id.clone(),
            target_dir: target.clone(),
            files: plan.files.len(),
            bytes,
            tablespaces: tablespaces.clone(),
            signal,
            delta: None,
        })
    })();
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            created.undo();
            Err(e.context(format!(
                "restore of backup {} into {} failed; what it had written was removed",
                info.id,
                target.display()
            )))
        }
    }
}

/// Destinations may not contain one another.
fn check_no_overlap(destinations: &[PathBuf]) -> Result<()> {
    for (i, a) in destinations.iter().enumerate() {
        for b in &destinations[i + 1..] {
            if a.starts_with(b) || b.starts_with(a) {
                bail!(
                    "{} and {} overlap: give each tablespace a directory of its own, outside \
                     the target directory",
                    a.display(),
                    b.display()
                );
            }
        }
    }
    Ok(())
}

/// `restore --delta` (see [`crate::ops::delta`]).
#[allow(clippy::too_many_arguments)]
fn restore_delta(
    client: &Client,
    args: &RestoreArgs,
    json: bool,
    info: &BackupInfo,
    files: &BackupFiles,
    manifest_bytes: &[u8],
    target: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
    restore_command: &str,
) -> Result<Restored> {
    let window = client.settings.retry_for.unwrap_or(DEFAULT_RETRY);
    let system_identifier = info
        .system_identifier
        .as_deref()
        .context("the backup has no system identifier; --delta cannot check the target")?;
    for d in tablespaces.values() {
        delta::check_tablespace_destination(d)?;
    }
    delta::prepare(target, system_identifier)?;
    let result: Result<Restored> = (|| {
        for d in tablespaces.values() {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot set the mode of {}", d.display()))?;
        }
        let plan = Plan::new(target, tablespaces, files)?;
        let mut roots = vec![target.to_path_buf()];
        roots.extend(tablespaces.values().cloned());
        let expected = delta::expected_tree(
            plan.dirs.iter().map(|(d, _)| d),
            plan.files.iter().map(|(_, p)| p),
            plan.links.iter().map(|(l, to)| (l, to)),
            &roots,
        );
        let removed = delta::remove_extraneous(&roots, target, &expected)?;
        plan.make_dirs(true)?;
        // pg_control last: until it is back, PostgreSQL cannot start on a half-done directory.
        let control = target.join("global/pg_control");
        let compare = delta::comparable(&plan.files);
        let (last, rest): (Vec<usize>, Vec<usize>) =
            (0..plan.files.len()).partition(|i| plan.files[*i].1 == control);
        // Files missing or of another size are downloaded while the others are compared
        // (without a progress bar of their own: the comparison shows one).
        let (early, maybe): (Vec<usize>, Vec<usize>) = rest.into_iter().partition(|i| !compare[*i]);
        let jobs = args.jobs.into();
        // A failed download ends the comparison too: its error is reported at once, not after
        // hashing the rest of the data directory.
        let abandon = AtomicBool::new(false);
        let (kept, early_written) = std::thread::scope(|s| {
            let early_download = s.spawn(|| {
                let written = plan.download(client, &args.cluster, window, jobs, true, &early);
                if written.is_err() {
                    abandon.store(true, Ordering::Relaxed);
                }
                written
            });
            let kept = delta::unchanged(&plan.files, &compare, jobs, json, &abandon);
            let written = early_download
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a download thread panicked")));
            (kept, written)
        });
        let mut written = early_written?;
        let kept = kept?;
        let changed: Vec<usize> = maybe.into_iter().filter(|i| !kept[*i]).collect();
        written += plan.download(client, &args.cluster, window, jobs, json, &changed)?;
        written += plan.download(client, &args.cluster, window, 1, json, &last)?;
        let manifest_out = plan.write_tablespace_map(tablespaces, manifest_bytes)?;
        plan.apply_dir_modes()?;
        for d in &roots {
            durable::sync_tree(d)?;
        }
        write_new(&target.join("backup_manifest"), &manifest_out, 0o600)?;
        let signal = write_recovery_settings(target, args, restore_command)?;
        delta::finish(target)?;
        let stats = DeltaStats {
            kept_files: kept.iter().filter(|k| **k).count(),
            kept_bytes: plan
                .files
                .iter()
                .zip(&kept)
                .filter(|(_, k)| **k)
                .map(|((f, _), _)| f.size)
                .sum(),
            written_files: early.len() + changed.len() + last.len(),
            written_bytes: written,
            removed,
        };
        Ok(Restored {
            backup: info.id.clone(),
            target_dir: target.to_path_buf(),
            files: plan.files.len(),
            bytes: plan.files.iter().map(|(f, _)| f.size).sum(),
            tablespaces: tablespaces.clone(),
            signal,
            delta: Some(stats),
        })
    })();
    result.with_context(|| {
        format!(
            "restore --delta of backup {} into {} failed; the directory is incomplete and \
             PostgreSQL cannot start on it (global/pg_control is absent until the end): run the \
             same restore --delta again",
            info.id,
            target.display()
        )
    })
}

/// Files are created as the user running restore, and PostgreSQL refuses a data directory it
/// does not own: say so before the work, not after.
fn warn_if_root() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user of the process looking at it.
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        eprintln!(
            "wal-archive restore: warning: running as root, so the restored files belong to \
             root; PostgreSQL will not start on them. Run restore as the PostgreSQL OS user \
             (e.g. `runuser -u postgres -- wal-archive restore ...`) or chown -R the data \
             directory and tablespaces to it afterwards."
        );
    }
}

fn fetch_manifest(client: &Client, path: &str) -> Result<Vec<u8>, Failure> {
    let resp = client.get(path, false)?;
    if resp.status().as_u16() != 200 {
        return Err(status_failure(resp));
    }
    let expected = resp
        .headers()
        .get(CONTENT_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let bytes = resp
        .into_body()
        .into_with_config()
        .limit(1 << 30)
        .read_to_vec()
        .map_err(|e| Failure::Unreachable(format!("reading the backup_manifest: {e}")))?;
    if let Some(expected) = expected {
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(Failure::Fatal(format!(
                "the backup_manifest received has SHA-256 {actual}, the server cataloged \
                 {expected}"
            )));
        }
    }
    Ok(bytes)
}

/// The path a file has in the backup_manifest.
fn manifest_path(f: &BackupFile) -> String {
    match f.tablespace_oid {
        Some(oid) => format!("pg_tblspc/{oid}/{}", f.path),
        None => f.path.clone(),
    }
}

/// The server's file list and PostgreSQL's manifest must describe the same files.
fn cross_check(files: &BackupFiles, manifest: &Manifest) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in files.files.iter().filter(|f| f.kind == "file") {
        let path = manifest_path(f);
        let Some(sha) = f.sha256.as_deref() else {
            problems.push(format!("{path}: the server's file list has no SHA-256"));
            continue;
        };
        match manifest.files.get(&path) {
            // The manifest does not list itself.
            None if path == "backup_manifest" => {}
            None => problems.push(format!("{path}: not in the backup_manifest")),
            Some(m) => {
                seen.insert(path.clone());
                if m.size != f.size {
                    problems.push(format!(
                        "{path}: {} bytes in the server's file list, {} in the backup_manifest",
                        f.size, m.size
                    ));
                }
                if let Some(msha) = &m.sha256 {
                    if !msha.eq_ignore_ascii_case(sha) {
                        problems.push(format!(
                            "{path}: SHA-256 {sha} in the server's file list, {msha} in the \
                             backup_manifest"
                        ));
                    }
                }
            }
        }
    }
    for path in manifest.files.keys() {
        if !seen.contains(path) {
            problems.push(format!(
                "{path}: in the backup_manifest but not in the server's file list"
            ));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        bail!(
            "the backup's file list and its backup_manifest disagree; nothing was restored:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot tell the current directory")?
            .join(p)
    };
    // Lexically: `..` is resolved against what is written, the path may not exist yet.
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Where each tablespace (by OID) goes: its original location, or `--tablespace NAME=DIR`.
fn tablespace_destinations(info: &BackupInfo, moves: &[String]) -> Result<BTreeMap<u32, PathBuf>> {
    let mut out: BTreeMap<u32, PathBuf> = info
        .tablespaces
        .iter()
        .map(|t| (t.oid, PathBuf::from(&t.location)))
        .collect();
    let mut moved = std::collections::HashSet::new();
    for m in moves {
        let Some((name, dir)) = m.split_once('=') else {
            bail!("--tablespace {m:?}: expected NAME=DIR");
        };
        if dir.is_empty() {
            bail!("--tablespace {m:?}: the directory is empty");
        }
        let found = info.tablespaces.iter().find(|t| {
            t.name.as_deref() == Some(name) || name.parse::<u32>().is_ok_and(|oid| oid == t.oid)
        });
        let Some(t) = found else {
            let known: Vec<String> = info
                .tablespaces
                .iter()
                .map(|t| format!("{} (oid {})", t.name.as_deref().unwrap_or("?"), t.oid))
                .collect();
            let hint = if info.tablespaces.iter().any(|t| t.name.is_none()) {
                " (the server did not record every name: give those by OID)"
            } else {
                ""
            };
            bail!(
                "--tablespace {m:?}: backup {} has no tablespace {name:?}; it has: {}{hint}",
                info.id,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        };
        if !moved.insert(t.oid) {
            bail!("--tablespace: tablespace {name:?} is given twice");
        }
        out.insert(t.oid, absolute(Path::new(dir))?);
    }
    for (oid, dir) in &out {
        if !dir.is_absolute() {
            bail!(
                "tablespace {oid} has the relative location {}; give it a directory with \
                 --tablespace {oid}=DIR",
                dir.display()
            );
        }
    }
    Ok(out)
}

/// Absent, or an empty directory.
fn check_free(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
        Ok(m) if !m.is_dir() => bail!(
            "{} exists and is not a directory; restore writes only into an absent or empty \
             directory",
            dir.display()
        ),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; restore writes only into an absent or empty directory \
                     (nothing was changed there): move its contents away or choose another",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// The destination directories restore created or filled, to remove again on failure.
#[derive(Default)]
struct Created {
    /// (directory, whether restore created it rather than found it empty)
    dirs: Vec<(PathBuf, bool)>,
}

impl Created {
    fn make(&mut self, dir: &Path) -> Result<()> {
        let existed = dir.exists();
        if !existed {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        self.dirs.push((dir.to_path_buf(), !existed));
        // PostgreSQL refuses a data directory others can read (and a tablespace should not be).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))
    }

    fn undo(&self) {
        for (dir, created) in &self.dirs {
            let result = if *created {
                std::fs::remove_dir_all(dir)
            } else {
                empty_dir(dir)
            };
            if let Err(e) = result {
                eprintln!(
                    "wal-archive restore: could not clean up {}: {e}; remove its contents by hand",
                    dir.display()
                );
            }
        }
    }
}

fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A file list turned into local paths.
struct Plan<'a> {
    target: &'a Path,
    dirs: Vec<(PathBuf, u32)>,
    links: Vec<(PathBuf, PathBuf)>,
    files: Vec<(&'a BackupFile, PathBuf)>,
}

/// `rel` as a path below `root`: relative, no `..`, no root or prefix components.
fn below(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || rel.contains('\0') {
        bail!("the backup lists an invalid path {rel:?}");
    }
    for c in p.components() {
        if !matches!(c, Component::Normal(_) | Component::CurDir) {
            bail!("the backup lists the unsafe path {rel:?}; refusing to restore it");
        }
    }
    Ok(root.join(p))
}

impl<'a> Plan<'a> {
    fn new(
        target: &'a Path,
        tablespaces: &BTreeMap<u32, PathBuf>,
        files: &'a BackupFiles,
    ) -> Result<Plan<'a>> {
        let mut plan = Plan {
            target,
            dirs: Vec::new(),
            links: Vec::new(),
            files: Vec::new(),
        };
        for (oid, dest) in tablespaces {
            plan.links
                .push((target.join("pg_tblspc").join(oid.to_string()), dest.clone()));
        }
        for f in &files.files {
            let root = match f.tablespace_oid {
                None => target.to_path_buf(),
                Some(oid) => tablespaces
                    .get(&oid)
                    .with_context(|| {
                        format!(
                            "{}: in tablespace {oid}, which the backup does not list",
                            f.path
                        )
                    })?
                    .clone(),
            };
            let path = below(&root, &f.path)?;
            match f.kind.as_str() {
                "dir" => plan.dirs.push((path, f.mode & 0o7777)),
                "file" => plan.files.push((f, path)),
                "symlink" => {
                    // pg_tblspc links are made from the tablespace list above (to the new
                    // locations); other links are restored as they were.
                    let in_tblspc = f.tablespace_oid.is_none() && f.path.starts_with("pg_tblspc/");
                    if !in_tblspc {
                        let to = f
                            .link_target
                            .as_deref()
                            .with_context(|| format!("{}: a symlink without a target", f.path))?;
                        plan.links.push((path, PathBuf::from(to)));
                    }
                }
                other => bail!("{}: unknown kind {other:?} in the backup", f.path),
            }
        }
        plan.dirs.sort();
        Ok(plan)
    }

    /// Creates the directories and links; with `delta`, a link already in place (the right
    /// one: others were removed) stays.
    fn make_dirs(&self, delta: bool) -> Result<()> {
        for (dir, _) in &self.dirs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for (_, path) in &self.files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
        }
        for (link, to) in &self.links {
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            if delta && std::fs::symlink_metadata(link).is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(to, link)
                .with_context(|| format!("cannot link {} to {}", link.display(), to.display()))?;
        }
        Ok(())
    }

    /// Directory modes last (deepest first), so that a read-only mode cannot stop the
    /// downloads.
    fn apply_dir_modes(&self) -> Result<()> {
        for (dir, mode) in self.dirs.iter().rev() {
            // The owner keeps full access: PostgreSQL must be able to write everywhere.
            let mode = if *mode == 0 { 0o700 } else { mode | 0o700 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        }
        Ok(())
    }

    /// Downloads the files at `indices` of [`Plan::files`] with `jobs` threads; returns the
    /// bytes written.
    fn download(
        &self,
        client: &Client,
        cluster: &str,
        window: Duration,
        jobs: usize,
        json: bool,
        indices: &[usize],
    ) -> Result<u64> {
        let total: u64 = indices.iter().map(|i| self.files[*i].0.size).sum();
        let bar = bytes_bar(Some(total), json);
        bar.set_message("restore");
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..jobs.max(1) {
                scope.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some((file, path)) = indices.get(n).map(|i| &self.files[*i]) else {
                        return;
                    };
                    let result = with_retries(window, &format!("download {}", file.path), || {
                        download_file(client, cluster, file, path)
                    });
                    match result {
                        Ok(()) => bar.inc(file.size),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if slot.is_none() {
                                *slot = Some(anyhow::Error::from(e).context(format!(
                                    "{}: cannot restore {}",
                                    manifest_path(file),
                                    path.display()
                                )));
                            }
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
        Ok(total)
    }

    /// Rewrites `tablespace_map` (when the backup has one) with the locations the tablespaces
    /// are restored to; returns the backup_manifest to write, updated for the new map.
    fn write_tablespace_map(
        &self,
        tablespaces: &BTreeMap<u32, PathBuf>,
        manifest_bytes: &[u8],
    ) -> Result<Vec<u8>> {
        let map_path = self.target.join("tablespace_map");
        let Some((file, _)) = self
            .files
            .iter()
            .find(|(f, _)| f.tablespace_oid.is_none() && f.path == "tablespace_map")
        else {
            return Ok(manifest_bytes.to_vec());
        };
        let old = std::fs::read(&map_path)
            .with_context(|| format!("cannot read {}", map_path.display()))?;
        let new = rewrite_tablespace_map(&old, tablespaces)?;
        if new == old {
            return Ok(manifest_bytes.to_vec());
        }
        let mut tmp = TempFile::beside(&map_path)?;
        tmp.write_all(&new)?;
        tmp.set_mode(file.mode & 0o7777)?;
        tmp.persist(&map_path)?;
        manifest::with_file_replaced(
            manifest_bytes,
            "tablespace_map",
            new.len() as u64,
            &sha256_hex(&new),
        )
    }
}

/// `tablespace_map` lines are `OID LOCATION` (PostgreSQL escapes `\n`, `\r` and `\` in the
/// location with a backslash); each location becomes the tablespace's restore destination.
fn rewrite_tablespace_map(old: &[u8], tablespaces: &BTreeMap<u32, PathBuf>) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(old).context("tablespace_map is not UTF-8")?;
    let mut out = String::new();
    for line in text.lines() {
        let Some((oid, location)) = line.split_once(' ') else {
            bail!("tablespace_map has a line without a location: {line:?}");
        };
        let location = match oid.parse::<u32>().ok().and_then(|o| tablespaces.get(&o)) {
            Some(dest) => {
                let dest = dest
                    .to_str()
                    .with_context(|| format!("{} is not UTF-8", dest.display()))?;
                let mut escaped = String::new();
                for c in dest.chars() {
                    if matches!(c, '\n' | '\r' | '\\') {
                        escaped.push('\\');
                    }
                    escaped.push(c);
                }
                escaped
            }
            None => location.to_string(),
        };
        out.push_str(&format!("{oid} {location}\n"));
    }
    Ok(out.into_bytes())
}

/// One file: `GET /blobs/{sha}` (zstd on the wire), hashed as it is written to a temp file
/// beside `path`, renamed into place only when size and SHA-256 match.
fn download_file(
    client: &Client,
    cluster: &str,
    file: &BackupFile,
    path: &Path,
) -> Result<(), Failure> {
    let sha = file
        .sha256
        .as_deref()
        .ok_or_else(|| Failure::Fatal("no SHA-256 in the file list".into()))?;
    let io_err =
        |what: &str, e: io::Error| Failure::Fatal(format!("{what} {}: {e}", path.display()));
    let mut tmp = TempFile::beside(path).map_err(|e| io_err("cannot create a file beside", e))?;
    let (actual, size) = if file.size == 0 && sha == EMPTY_SHA256 {
        (EMPTY_SHA256.to_string(), 0)
    } else {
        let resp = client.get(&format!("/v1/clusters/{cluster}/blobs/{sha}"), true)?;
        if resp.status().as_u16() != 200 {
            return Err(status_failure(resp));
        }
        let zstd = resp
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("zstd"));
        let reader = resp.into_body().into_reader();
        let copied = if zstd {
            let dec = zstd::stream::read::Decoder::new(reader)
                .map_err(|e| Failure::Fatal(format!("cannot start decompression: {e}")))?;
            copy_hashing(dec, &mut tmp)
        } else {
            copy_hashing(reader, &mut tmp)
        };
        copied.map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => {
                Failure::Unreachable(format!("download interrupted: {e}"))
            }
            _ => Failure::Fatal(format!("download failed: {e}")),
        })?
    };
    if actual != sha || size != file.size {
        return Err(Failure::Fatal(format!(
            "checksum mismatch: received {size} bytes with SHA-256 {actual}, the backup has \
             {} bytes with SHA-256 {sha}; the file was not written",
            file.size
        )));
    }
    tmp.set_mode(file.mode & 0o7777)
        .map_err(|e| io_err("cannot set the mode of", e))?;
    if let Ok(secs) = u64::try_from(file.mtime) {
        let _ = tmp.set_modified(UNIX_EPOCH + Duration::from_secs(secs));
    }
    tmp.persist_without_dir_sync(path)
        .map_err(|e| io_err("cannot write", e))
}

fn copy_hashing(mut src: impl Read, dst: &mut impl Write) -> io::Result<(String, u64)> {
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

/// Writes a file that did not exist, durably, with `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = TempFile::beside(path)?;
    tmp.write_all(bytes)?;
    tmp.set_mode(mode)?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `restore_command`: this very binary, the server it was asked, credentials by reference.
fn restore_command(global: &GlobalArgs, args: &RestoreArgs) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the path of this wal-archive binary")?;
    let exe = exe
        .to_str()
        .context("the path of this binary is not UTF-8")?
        .to_string();
    let mut words = vec![shell_word(&exe)];
    if let Some(url) = &global.url {
        words.push("--url".into());
        words.push(shell_word(url));
    }
    let config = args.client_config.as_ref().or(global.config.as_ref());
    if let Some(config) = config {
        let config = absolute(config)?;
        if !config.is_file() {
            bail!(
                "{} (the client configuration restore_command will use) does not exist",
                config.display()
            );
        }
        words.push("--config".into());
        words.push(shell_word(
            config.to_str().context("the config path is not UTF-8")?,
        ));
    } else if global.token.is_some() {
        eprintln!(
            "wal-archive restore: note: the token is never written into restore_command; give \
             PostgreSQL WAL_ARCHIVE_TOKEN in its environment, or restore again with \
             --client-config FILE (a file readable by the PostgreSQL user that holds it)"
        );
    }
    if let Some(ca) = &global.ca_file {
        let ca = absolute(ca)?;
        words.push("--ca-file".into());
        words.push(shell_word(ca.to_str().context("the CA path is not UTF-8")?));
    }
    words.push("fetch".into());
    words.push("--cluster".into());
    words.push(shell_word(&args.cluster));
    words.push("%f".into());
    words.push("%p".into());
    Ok(words.join(" "))
}

/// Appends the recovery settings to postgresql.auto.conf and writes the signal file; returns
/// the signal file's name.
fn write_recovery_settings(
    target: &Path,
    args: &RestoreArgs,
    restore_command: &str,
) -> Result<&'static str> {
    let mut lines: Vec<(&str, String)> = vec![("restore_command", restore_command.to_string())];
    if let Some(t) = &args.target_time {
        lines.push(("recovery_target_time", t.clone()));
    }
    if let Some(l) = &args.target_lsn {
        let lsn: pgwal::Lsn = l
            .parse()
            .map_err(|e| anyhow::anyhow!("--target-lsn {l:?} is not an LSN: {e}"))?;
        lines.push(("recovery_target_lsn", lsn.to_string()));
    }
    if let Some(x) = &args.target_xid {
        if x.is_empty() || !x.chars().all(|c| c.is_ascii_digit()) {
            bail!("--target-xid {x:?} is not a transaction id");
        }
        lines.push(("recovery_target_xid", x.clone()));
    }
    if let Some(n) = &args.target_name {
        lines.push(("recovery_target_name", n.clone()));
    }
    if args.target_immediate {
        lines.push(("recovery_target", "immediate".into()));
    }
    if let Some(a) = args.target_action {
        lines.push(("recovery_target_action", a.as_str().into()));
    }
    lines.push(("recovery_target_timeline", args.target_timeline.clone()));
    if let Some(c) = &args.primary_conninfo {
        lines.push(("primary_conninfo", c.clone()));
    }
    if let Some(s) = &args.primary_slot_name {
        lines.push(("primary_slot_name", s.clone()));
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut text = format!(
        "\n# Recovery settings added by wal-archive restore (unix time {stamp}).\n\
         # Recovery removes recovery.signal / standby.signal when it ends, not these lines.\n"
    );
    for (k, v) in &lines {
        text.push_str(&format!("{k} = {}\n", conf_string(v)));
    }
    let conf = target.join("postgresql.auto.conf");
    let mut old = match std::fs::read(&conf) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            b"# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
                .to_vec()
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", conf.display())),
    };
    let mode = std::fs::metadata(&conf)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    if !old.ends_with(b"\n") && !old.is_empty() {
        old.push(b'\n');
    }
    old.extend_from_slice(text.as_bytes());
    let mut tmp = TempFile::beside(&conf)?;
    tmp.write_all(&old)?;
    tmp.set_mode(mode)?;
    tmp.persist(&conf)
        .with_context(|| format!("cannot write {}", conf.display()))?;
    let signal = if args.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    write_new(&target.join(signal), b"", 0o600)?;
    Ok(signal)
}

/// The one-paragraph summary a person gets.
pub fn print_human(r: &Restored) {
    println!(
        "restored backup {} into {}: {} files, {}",
        r.backup,
        r.target_dir.display(),
        r.files,
        human_bytes(r.bytes)
    );
    for (oid, dir) in &r.tablespaces {
        println!("  tablespace {oid} at {}", dir.display());
    }
    if let Some(d) = &r.delta {
        println!(
            "  delta: {} files kept ({}), {} written ({}), {} entries removed",
            d.kept_files,
            human_bytes(d.kept_bytes),
            d.written_files,
            human_bytes(d.written_bytes),
            d.removed
        );
    }
    println!(
        "  {} written; start PostgreSQL on it (as its OS user) to recover",
        r.signal
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        let root = Path::new("/r");
        assert_eq!(
            below(root, "base/1/123").expect("ok"),
            PathBuf::from("/r/base/1/123")
        );
        assert!(below(root, "../etc/passwd").is_err());
        assert!(below(root, "/etc/passwd").is_err());
        assert!(below(root, "base/../../x").is_err());
        assert!(below(root, "").is_err());
    }

    #[test]
    fn restore_command_references_credentials_and_never_holds_the_token() {
        use clap::Parser;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("client.toml");
        std::fs::write(&config, "token = \"s3cret\"\n").expect("write");
        let cli = crate::args::Cli::try_parse_from([
            "wal-archive",
            "--url",
            "https://archive:8420",
            "--token",
            "s3cret",
            "restore",
            "--cluster",
            "main",
            "latest",
            "--target-dir",
            "/x",
            "--client-config",
            config.to_str().expect("utf-8"),
        ])
        .expect("parse");
        let crate::args::Command::Restore(args) = cli.command else {
            panic!("not restore");
        };
        let cmd = restore_command(&cli.global, &args).expect("command");
        assert!(!cmd.contains("s3cret"), "{cmd}");
        assert!(
            cmd.ends_with(&format!(
                " --url https://archive:8420 --config {} fetch --cluster main %f %p",
                config.display()
            )),
            "{cmd}"
        );
    }

    #[test]
    fn recovery_targets_are_exclusive() {
        use clap::Parser;
        let parsed = crate::args::Cli::try_parse_from([
            "wal-archive",
            "restore",
            "--cluster",
            "main",
            "latest",
            "--target-dir",
            "/x",
            "--target-time",
            "2026-11-21 22:00:00+00",
            "--target-immediate",
        ]);
        assert!(parsed.is_err());
        let parsed = crate::args::Cli::try_parse_from([
            "wal-archive",
            "restore",
            "--cluster",
            "main",
            "latest",
            "--target-dir",
            "/x",
            "--primary-slot-name",
            "s",
        ]);
        assert!(parsed.is_err(), "--primary-slot-name needs --standby");
    }

    #[test]
    fn tablespace_map_gets_new_locations() {
        let mut m = BTreeMap::new();
        m.insert(16384, PathBuf::from("/new/ts"));
        let out = rewrite_tablespace_map(b"16384 /old/ts\n16385 /other\n", &m).expect("rewrite");
        assert_eq!(out, b"16384 /new/ts\n16385 /other\n");
    }
}
