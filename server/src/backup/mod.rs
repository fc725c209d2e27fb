//! Base backups (DESIGN §3, §7.4): taken by the server itself through `BASE_BACKUP`, split into
//! files as the tar streams arrive, each file stored once per cluster by content
//! ([`store`]), indexed in the catalog ([`catalog`]), and `done` only once the archive holds all
//! WAL from the backup's begin to its end.
//!
//! Lifecycle: `running` (streaming) → `waiting_for_wal` → `done`, or `failed` with a reason.
//! A failed backup keeps its row (to show why) but its files are removed; a backup interrupted
//! by the server stopping is failed at the next start ([`startup`]).
//!
//! Deduplication and deletion race on shared blobs; a per-cluster lock ([`Backups::cluster_lock`])
//! makes "decide the blob is there, then reference it" and "drop the last reference, then delete
//! the object" mutually exclusive.

pub mod catalog;
pub mod engine;
pub mod store;
pub mod tar_split;
pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgwal::api::{BackupInfo, BackupRequest};

use crate::catalog::CatalogError;
use crate::config::Config;
use crate::storage::StorageError;
use crate::wal::archive::{Archive, ArchiveError};

/// What went wrong with a backup request. Each variant maps to one API status.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The cluster has no conninfo: nothing to back up from. Not retryable.
    #[error("{0}")]
    NoConninfo(String),
    /// Another backup of the cluster is in progress. Retryable later.
    #[error("{0}")]
    InProgress(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotDone(String),
    #[error("{0}")]
    Kept(String),
    /// Retention has decided to remove the backup.
    #[error("{0}")]
    Deleting(String),
    #[error("{0}")]
    MinimumRedundancy(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// In-memory state shared by the API and the backup tasks.
#[derive(Clone, Default)]
pub struct Backups {
    inner: Arc<Inner>,
}

/// Held for the whole of one run of a job.
type JobLock = Arc<tokio::sync::Mutex<()>>;

/// The live view of one backup in progress, shared by its task and the API.
type LiveInfo = Arc<Mutex<BackupInfo>>;

#[derive(Default)]
struct Inner {
    /// The live view of backups in progress, by (cluster, id).
    live: Mutex<HashMap<(String, String), LiveInfo>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One run at a time per (cluster, job kind): scheduled and API-started runs alike.
    job_locks: Mutex<HashMap<(String, String), JobLock>>,
    /// The time retention and the scheduler go by; tests replace it.
    clock: Mutex<Option<crate::jobs::clock::Clock>>,
    /// Pause points armed by tests (see [`Backups::pause_at`]).
    pauses: Mutex<HashMap<&'static str, Arc<Pause>>>,
}

/// A test's hold on a named point of the code: the code stops there until released.
#[derive(Default)]
pub struct Pause {
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Pause {
    /// Waits until the code reaches the point.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the code go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl Backups {
    /// The lock that orders blob references against blob deletion in `cluster`.
    pub fn cluster_lock(&self, cluster: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(cluster.to_string()).or_default().clone()
    }

    /// The lock that lets one run of job `kind` (`backup`, `retention`) of `cluster` at a time.
    pub fn job_lock(&self, cluster: &str, kind: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .job_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        locks
            .entry((cluster.to_string(), kind.to_string()))
            .or_default()
            .clone()
    }

    /// Arms the pause point `name` for the next time the code reaches it: tests use it to put
    /// one request between the steps of another, deterministically. Unarmed points cost a map
    /// look-up.
    pub fn pause_at(&self, name: &'static str) -> Arc<Pause> {
        let pause = Arc::new(Pause::default());
        self.inner
            .pauses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, pause.clone());
        pause
    }

    /// Stops at `name` if a test armed it (once).
    pub async fn pause_point(&self, name: &'static str) {
        let pause = self
            .inner
            .pauses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(p) = pause {
            p.reached.notify_one();
            p.release.notified().await;
        }
    }

    /// Replaces the clock (tests move time without waiting for it).
    pub fn set_clock(&self, clock: crate::jobs::clock::Clock) {
        *self.inner.clock.lock().unwrap_or_else(|p| p.into_inner()) = Some(clock);
    }

    /// The current time by this state's clock (the system clock unless replaced).
    pub fn now(&self) -> std::time::SystemTime {
        let clock = self
            .inner
            .clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match clock {
            Some(c) => c(),
            None => std::time::SystemTime::now(),
        }
    }

    /// The live state of a backup in progress in this process.
    pub fn live(&self, cluster: &str, id: &str) -> Option<BackupInfo> {
        let live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        let info = live.get(&(cluster.to_string(), id.to_string()))?.clone();
        drop(live);
        let info = info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(info)
    }

    fn register(&self, info: BackupInfo) -> LiveInfo {
        let key = (info.cluster.clone(), info.id.clone());
        let shared = Arc::new(Mutex::new(info));
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, shared.clone());
        shared
    }

    fn unregister(&self, cluster: &str, id: &str) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(cluster.to_string(), id.to_string()));
    }

    /// A row as the API shows it: the live view while the backup is in progress here.
    pub fn present(&self, row: catalog::BackupRow) -> BackupInfo {
        if row.info.status == "running" || row.info.status == "waiting_for_wal" {
            if let Some(live) = self.live(&row.info.cluster, &row.info.id) {
                return BackupInfo {
                    keep: row.info.keep,
                    ..live
                };
            }
        }
        row.info
    }
}

/// Writes the record of a backup to storage ([`crate::meta`]): as the catalog has it, with its
/// file list when `with_files` (a done backup).
pub async fn write_record(
    archive: &Archive,
    row: &catalog::BackupRow,
    with_files: bool,
) -> Result<(), BackupError> {
    let mut info = row.info.clone();
    info.retention = None;
    let files = if with_files {
        catalog::files(&archive.catalog, &info.cluster, &info.id).await?
    } else {
        Vec::new()
    };
    let manifest = match (&row.manifest_key, &row.manifest_sha256, row.manifest_size) {
        (Some(key), Some(sha256), Some(size)) => Some(crate::meta::ManifestRef {
            key: key.clone(),
            sha256: sha256.clone(),
            size,
        }),
        _ => None,
    };
    let key = crate::meta::backup_key(&info.cluster, &info.id);
    crate::meta::put(
        &*archive.blobs,
        &key,
        &crate::meta::BackupRecord {
            info,
            manifest,
            files,
        },
    )
    .await
    .map_err(|e| BackupError::Storage(StorageError::Io(e.to_string())))
}

/// Removes a backup's record from storage: the first step of removing a backup, so that a
/// catalog rebuilt from storage never lists one whose files are going.
async fn remove_record(archive: &Archive, cluster: &str, id: &str) -> Result<(), BackupError> {
    crate::meta::remove(&*archive.blobs, &crate::meta::backup_key(cluster, id))
        .await
        .map_err(|e| BackupError::Storage(StorageError::Io(e.to_string())))
}

/// Backup ids: the UTC start time, `YYYYMMDDTHHMMSS`, sortable as text.
pub fn new_id(now: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .filter(|c| *c != 'Z')
        .collect()
}

fn valid_id(id: &str) -> bool {
    id.len() == 15
        && id.bytes().enumerate().all(|(i, b)| {
            if i == 8 {
                b == b'T'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// Registers a backup of `cluster` and starts it in the background. Returns its first state.
pub async fn start(
    archive: &Archive,
    config: &Arc<Config>,
    backups: &Backups,
    cluster: &str,
    req: BackupRequest,
) -> Result<BackupInfo, BackupError> {
    let cfg = config.cluster(cluster);
    let Some(conninfo) = cfg.conninfo.clone() else {
        return Err(BackupError::NoConninfo(format!(
            "cluster {cluster:?} has no conninfo in the server configuration: add \
             [clusters.{cluster}] conninfo = \"host=... user=... \" so the server can connect \
             for backups"
        )));
    };
    let fast = match req.checkpoint.as_deref() {
        None | Some("fast") => true,
        Some("spread") => false,
        Some(other) => {
            return Err(BackupError::BadRequest(format!(
                "checkpoint {other:?}: use \"fast\" or \"spread\""
            )))
        }
    };
    // Ids have one-second resolution. When the previous backup ended within the same second
    // (its id is taken but nothing runs), wait for the next second rather than refuse: a
    // system-cron job or a script taking backups back to back must not fail for that.
    let mut attempts = 0;
    let (id, begin_time) = loop {
        let now = std::time::SystemTime::now();
        let id = new_id(now);
        let begin_time = humantime::format_rfc3339_seconds(now).to_string();
        match catalog::start(&archive.catalog, cluster, &id, &begin_time).await? {
            catalog::StartOutcome::Started => break (id, begin_time),
            catalog::StartOutcome::InProgress(other) => {
                return Err(BackupError::InProgress(format!(
                    "backup {other} of cluster {cluster:?} is still in progress; wait for it to \
                     end (wal-archive show --cluster {cluster} {other})"
                )))
            }
            catalog::StartOutcome::IdTaken if attempts < 3 => {
                attempts += 1;
                let into_second = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let rest = 1_000_000_000u32.saturating_sub(into_second);
                tokio::time::sleep(std::time::Duration::from_nanos(u64::from(rest) + 1_000_000))
                    .await;
            }
            catalog::StartOutcome::IdTaken => {
                return Err(BackupError::InProgress(format!(
                    "a backup of cluster {cluster:?} with id {id} already exists and the clock \
                     did not move on; try again in a second"
                )))
            }
        }
    };
    let info = BackupInfo {
        id: id.clone(),
        cluster: cluster.to_string(),
        status: "running".into(),
        begin_time,
        ..Default::default()
    };
    let live = backups.register(info.clone());
    let job = engine::Job {
        archive: archive.clone(),
        cluster: cluster.to_string(),
        conninfo,
        cfg,
        fast_checkpoint: fast,
        backups: backups.clone(),
        live,
        row: catalog::BackupRow {
            info: info.clone(),
            ..Default::default()
        },
    };
    tracing::info!(cluster, backup = %id, "backup started");
    tokio::spawn(job.run());
    Ok(info)
}

/// The backup `id` (`latest`: the newest `done` one).
pub async fn find(
    archive: &Archive,
    cluster: &str,
    id: &str,
) -> Result<catalog::BackupRow, BackupError> {
    let not_found = || {
        BackupError::NotFound(format!(
            "cluster {cluster:?} has no backup {id:?} (wal-archive list --cluster {cluster})"
        ))
    };
    if id == "latest" {
        return catalog::list(&archive.catalog, cluster)
            .await?
            .into_iter()
            .find(|r| r.info.status == "done")
            .ok_or_else(not_found);
    }
    if !valid_id(id) {
        return Err(BackupError::NotFound(format!(
            "{id:?} is not a backup id (YYYYMMDDTHHMMSS or latest)"
        )));
    }
    catalog::get(&archive.catalog, cluster, id)
        .await?
        .ok_or_else(not_found)
}

/// Deletes a backup and the objects only it referenced.
pub async fn delete(
    archive: &Archive,
    config: &Config,
    backups: &Backups,
    cluster: &str,
    id: &str,
) -> Result<BackupInfo, BackupError> {
    // Decide and act under one lock: a keep set, or a retention plan recorded, between the
    // checks and the removal would otherwise be ignored.
    let lock = backups.cluster_lock(cluster);
    let _guard = lock.lock().await;
    let row = find(archive, cluster, id).await?;
    let id = row.info.id.clone();
    if row.info.status == "running" || row.info.status == "waiting_for_wal" {
        return Err(BackupError::InProgress(format!(
            "backup {id} is {}; it can be deleted once it has ended",
            row.info.status
        )));
    }
    if row.info.status == "deleting" {
        return Err(BackupError::Deleting(format!(
            "backup {id} is being removed by retention already"
        )));
    }
    if row.info.keep {
        return Err(BackupError::Kept(format!(
            "backup {id} is kept; release it first (wal-archive keep --cluster {cluster} {id} --release)"
        )));
    }
    let minimum = config.cluster(cluster).minimum_redundancy;
    if row.info.status == "done" {
        let done = catalog::list(&archive.catalog, cluster)
            .await?
            .iter()
            .filter(|r| r.info.status == "done")
            .count() as u64;
        if done.saturating_sub(1) < u64::from(minimum) {
            return Err(BackupError::MinimumRedundancy(format!(
                "deleting backup {id} would leave {} done backups, fewer than minimum_redundancy = \
                 {minimum} of cluster {cluster:?}",
                done.saturating_sub(1)
            )));
        }
    }
    backups.pause_point("delete.decided").await;
    remove_record(archive, cluster, &id).await?;
    let keys = catalog::remove(&archive.catalog, cluster, &id, false).await?;
    let removed = delete_objects(archive, &keys).await;
    tracing::info!(cluster, backup = %id, objects = removed, "backup deleted");
    Ok(row.info)
}

/// Removes a backup retention has marked `deleting` (no keep or redundancy checks: the policy
/// decided). Its rows go in one transaction, then the objects only it referenced; safe to
/// repeat after a crash.
pub async fn remove_marked(
    archive: &Archive,
    backups: &Backups,
    cluster: &str,
    id: &str,
) -> Result<usize, BackupError> {
    let lock = backups.cluster_lock(cluster);
    let _guard = lock.lock().await;
    remove_record(archive, cluster, id).await?;
    let keys = catalog::remove(&archive.catalog, cluster, id, false).await?;
    let removed = delete_objects(archive, &keys).await;
    tracing::info!(cluster, backup = %id, objects = removed, "backup removed by retention");
    Ok(removed)
}

/// Deletes objects whose rows are gone; failures are logged (start-up cleanup retries them).
async fn delete_objects(archive: &Archive, keys: &[String]) -> usize {
    let mut removed = 0;
    for key in keys {
        match archive.blobs.delete(key).await {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(key = %key, "could not delete an unreferenced object: {e}; it will be removed at the next start")
            }
        }
    }
    removed
}

pub async fn set_keep(
    archive: &Archive,
    backups: &Backups,
    cluster: &str,
    id: &str,
    keep: bool,
) -> Result<BackupInfo, BackupError> {
    // Under the lock that deletion and retention decide under, so that a keep is either seen
    // by them or refused because the backup is already going.
    let lock = backups.cluster_lock(cluster);
    let guard = lock.lock().await;
    let row = find(archive, cluster, id).await?;
    if keep && row.info.status == "deleting" {
        return Err(BackupError::Deleting(format!(
            "backup {} is being removed by retention; it can no longer be kept",
            row.info.id
        )));
    }
    // Storage first: what is reported kept survives the loss of the catalog.
    let mut kept = row.clone();
    kept.info.keep = keep;
    if row.info.status == "done" {
        write_record(archive, &kept, true).await?;
    }
    catalog::set_keep(&archive.catalog, cluster, &row.info.id, keep).await?;
    drop(guard);
    let row = find(archive, cluster, &row.info.id).await?;
    Ok(backups.present(row))
}

/// At start, before serving: backups left in progress were interrupted; they fail and their
/// files go. Then every backup object that no row references (a crash between the catalog
/// transaction and the object deletion, or during an upload) is removed — but only for
/// clusters the catalog has backups of: a catalog that lost its backup rows altogether (a new
/// catalog file over old storage) must not turn into a wipe of every stored backup.
pub async fn startup(archive: &Archive) -> Result<(), BackupError> {
    // A backup recorded done in storage whose catalog row never said so (the server stopped
    // between the two) is done: storage is what was reported.
    for row in catalog::in_progress(&archive.catalog).await? {
        let key = crate::meta::backup_key(&row.info.cluster, &row.info.id);
        if let Ok(Some(record)) =
            crate::meta::get::<crate::meta::BackupRecord>(&*archive.blobs, &key).await
        {
            if record.info.status == "done" {
                tracing::warn!(cluster = %row.info.cluster, backup = %row.info.id,
                    "backup was recorded done in storage before a restart; marked done");
                catalog::update(
                    &archive.catalog,
                    catalog::BackupRow {
                        info: record.info,
                        ..row
                    },
                )
                .await?;
            }
        }
    }
    let interrupted = catalog::fail_interrupted(
        &archive.catalog,
        "interrupted: the server stopped while the backup was in progress; start a new backup",
    )
    .await?;
    for (cluster, id) in &interrupted {
        tracing::warn!(cluster = %cluster, backup = %id, "backup was interrupted by a restart; marked failed");
        catalog::remove(&archive.catalog, cluster, id, true).await?;
    }
    let referenced = catalog::referenced_keys(&archive.catalog).await?;
    let known = catalog::clusters_with_backups(&archive.catalog).await?;
    let objects = archive.blobs.list("backups").await?;
    let mut removed = 0;
    let mut unknown: HashMap<String, u64> = HashMap::new();
    for obj in objects {
        // Records (`backups/CLUSTER/meta/`) describe backups; they are not content.
        if referenced.contains(&obj.key) || obj.key.split('/').nth(2) == Some("meta") {
            continue;
        }
        let cluster = obj.key.split('/').nth(1).unwrap_or_default().to_string();
        if known.contains(&cluster) {
            archive.blobs.delete(&obj.key).await?;
            removed += 1;
        } else {
            *unknown.entry(cluster).or_default() += 1;
        }
    }
    for (cluster, n) in unknown {
        tracing::warn!(cluster = %cluster, objects = n,
            "storage holds backup objects of a cluster the catalog has no backups of; left in place");
    }
    if removed > 0 || !interrupted.is_empty() {
        tracing::info!(
            interrupted = interrupted.len(),
            removed,
            "backup storage cleaned up"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sortable_timestamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_300_200);
        let id = new_id(t);
        assert_eq!(id.len(), 15, "{id}");
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("latest"));
        assert!(!valid_id("../../etc/passwd"));
    }
}
