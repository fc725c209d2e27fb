//! One backup, from `BASE_BACKUP` to `done` or `failed`.
//!
//! `BASE_BACKUP` (PostgreSQL 15 syntax, see `pgrepl::basebackup`) is asked for progress
//! reports, a manifest with SHA-256 checksums, a tablespace map, and no WAL: the WAL comes from
//! the archive, and the backup is `done` only once the archive holds every segment from the
//! begin LSN to the end LSN (DESIGN §7.4). On a primary, PostgreSQL 15 ends the backup with a
//! WAL switch, so the end segment gets archived by `archive_command` or the receiver without
//! help.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgrepl::{BackupEvent, BaseBackupOptions, ConnInfo, ReplError, ReplicationConnection};
use pgwal::api::{BackupFile, BackupInfo, BackupTablespace};
use pgwal::name::WalFileName;
use pgwal::{Lsn, SegmentSize};

use super::catalog::{self, BackupRow, BlobRow};
use super::store::{self, ContentWriter};
use super::tar_split::{EntryKind, EntryMeta, TarEvent, TarSplitter};
use super::Backups;
use crate::catalog::{now_rfc3339, Binding};
use crate::config::{ClusterConfig, DEFAULT_BACKUP_WAL_TIMEOUT};
use crate::storage::PutOutcome;
use crate::wal::archive::Archive;

/// How often the WAL wait looks at the catalog.
const WAL_POLL: Duration = Duration::from_millis(500);

pub struct Job {
    pub archive: Archive,
    pub cluster: String,
    pub conninfo: String,
    pub cfg: ClusterConfig,
    pub fast_checkpoint: bool,
    pub backups: Backups,
    pub live: Arc<Mutex<BackupInfo>>,
    pub row: BackupRow,
}

/// The file being received and the archive it belongs to.
struct Current {
    tablespace: Option<u32>,
    splitter: TarSplitter,
    file: Option<(EntryMeta, ContentWriter)>,
}

impl Job {
    pub async fn run(mut self) {
        let mut current: Option<Current> = None;
        let mut manifest: Option<ContentWriter> = None;
        let result = self.take(&mut current, &mut manifest).await;
        if let Some((_, w)) = current.and_then(|c| c.file) {
            w.abort().await;
        }
        if let Some(m) = manifest {
            m.abort().await;
        }
        let result = match result {
            Ok(()) => self.wait_for_wal().await,
            Err(e) => Err(e),
        };
        // Recorded in storage, with its file list, before it is reported done: a catalog
        // rebuilt from storage has it, and so does one that lost its last commits.
        let result = match result {
            Ok(()) => {
                let mut done = self.row.clone();
                done.info.status = "done".into();
                done.info.reason = None;
                super::write_record(&self.archive, &done, true)
                    .await
                    .map_err(|e| format!("cannot record the backup in storage: {e}"))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.row.info.status = "done".into();
                self.row.info.reason = None;
                tracing::info!(cluster = %self.cluster, backup = %self.row.info.id,
                    size = self.row.info.size_bytes, stored = self.row.info.stored_bytes,
                    deduplicated = self.row.info.deduplicated_bytes, "backup done");
                self.save().await;
                crate::crash::point("backup.done");
            }
            Err(reason) => self.fail(reason).await,
        }
        self.backups.unregister(&self.cluster, &self.row.info.id);
    }

    fn id(&self) -> &str {
        &self.row.info.id
    }

    /// Publishes the row to the live view and the catalog.
    async fn save(&mut self) {
        self.publish_live();
        if let Err(e) = catalog::update(&self.archive.catalog, self.row.clone()).await {
            tracing::error!(cluster = %self.cluster, backup = %self.id(), "cannot record the backup's state: {e}");
        }
    }

    fn publish_live(&self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let progress = live.progress_bytes.max(self.row.info.progress_bytes);
        *live = self.row.info.clone();
        live.progress_bytes = progress;
    }

    /// Removes the backup's files (what other backups share stays), then records it failed:
    /// once a client sees `failed`, the objects are gone.
    async fn fail(&mut self, reason: String) {
        tracing::error!(cluster = %self.cluster, backup = %self.id(), "backup failed: {reason}");
        {
            let lock = self.backups.cluster_lock(&self.cluster);
            let _guard = lock.lock().await;
            match catalog::remove(
                &self.archive.catalog,
                &self.cluster,
                &self.row.info.id,
                true,
            )
            .await
            {
                Ok(keys) => {
                    super::delete_objects(&self.archive, &keys).await;
                }
                Err(e) => tracing::error!(cluster = %self.cluster, backup = %self.id(),
                    "cannot remove the failed backup's files now: {e}; the next start will"),
            }
        }
        self.row.manifest_key = None;
        self.row.manifest_sha256 = None;
        self.row.manifest_size = None;
        self.row.info.status = "failed".into();
        self.row.info.reason = Some(reason);
        if self.row.info.end_time.is_none() {
            self.row.info.end_time = Some(now_rfc3339());
        }
        if let Err(e) = super::write_record(&self.archive, &self.row, false).await {
            tracing::warn!(cluster = %self.cluster, backup = %self.id(),
                "cannot record the failed backup in storage: {e}");
        }
        self.save().await;
    }

    fn conninfo(&self) -> Result<ConnInfo, String> {
        let ci = ConnInfo::parse(&self.conninfo)
            .map_err(|e| format!("the conninfo of cluster {:?} is invalid: {e}", self.cluster))?;
        Ok(ci.with_password(self.cfg.password.clone()))
    }

    /// Streams the backup into storage; leaves the row `waiting_for_wal`.
    async fn take(
        &mut self,
        current: &mut Option<Current>,
        manifest: &mut Option<ContentWriter>,
    ) -> Result<(), String> {
        let ci = self.conninfo()?;
        let target = ci.target();
        let pg = |e: ReplError| describe_repl_error(&target, e);
        let mut conn = ReplicationConnection::connect(&ci).await.map_err(|e| {
            let hint = e
                .hint()
                .map(|h| format!(" (hint: {h})"))
                .unwrap_or_default();
            match e {
                ReplError::Connect { .. } | ReplError::Timeout { .. } => format!("{e}{hint}"),
                other => format!(
                    "PostgreSQL at {target} refused the replication connection: {other}{hint}"
                ),
            }
        })?;
        let system = conn.identify_system().await.map_err(pg)?;
        let size_text = conn.show("wal_segment_size").await.map_err(pg)?;
        let size = crate::streaming::receiver::parse_segment_size(&size_text)
            .map_err(|e| e.to_string())?;
        let version = conn.parameter("server_version").map(str::to_string);
        let major = version
            .as_deref()
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        match self
            .archive
            .bind_cluster(&self.cluster, system.system_identifier, size.bytes(), major)
            .await
            .map_err(|e| e.to_string())?
        {
            Binding::Ok => {}
            Binding::Mismatch {
                system_identifier,
                segment_size,
            } => {
                return Err(format!(
                    "PostgreSQL at {target} is database system {} with {} byte WAL segments, \
                     but cluster {:?} is bound to system {system_identifier} with {segment_size} \
                     byte segments: check the cluster's conninfo",
                    system.system_identifier,
                    size.bytes(),
                    self.cluster
                ))
            }
        }
        self.row.info.system_identifier = Some(system.system_identifier.to_string());
        self.row.info.pg_version = version;
        self.save().await;

        let names = tablespace_names(&ci).await;
        let mut opts =
            BaseBackupOptions::new(format!("wal-archive {} {}", self.cluster, self.id()));
        opts.progress = true;
        opts.checkpoint_fast = self.fast_checkpoint;
        opts.manifest = true;
        // No tablespace_map: the pg_tblspc/OID links travel as symlink entries of base.tar, so
        // a restore can point them anywhere (`--tablespace`). With a tablespace_map file,
        // PostgreSQL would re-create the links from it at start-up, to the original locations.
        opts.tablespace_map = false;
        let mut stream = conn.base_backup(opts).await.map_err(pg)?;
        // A spread checkpoint can take checkpoint_timeout * checkpoint_completion_target
        // before the first answer.
        stream.set_timeout(if self.fast_checkpoint {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(3600)
        });
        // The stream is read by a task of its own, up to READ_AHEAD messages ahead of the
        // hashing, compression and storing below: PostgreSQL keeps sending while a file is
        // being compressed, on the other core, instead of waiting for us between files.
        let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let reader = AbortOnDrop(tokio::spawn(async move {
            loop {
                let event = stream.next().await;
                let more = matches!(event, Ok(Some(_)));
                if tx.send(event).await.is_err() || !more {
                    return stream;
                }
            }
        }));
        let mut events = Vec::new();
        let mut in_manifest = false;
        let mut end: Option<(Lsn, u32)> = None;
        let mut start: Option<(Lsn, u32)> = None; // (LSN, timeline)
        while let Some(event) = rx
            .recv()
            .await
            .ok_or("the backup stream's reader stopped")?
            .map_err(pg)?
        {
            match event {
                BackupEvent::Start {
                    start_lsn,
                    timeline,
                } => {
                    start = Some((start_lsn, timeline));
                    self.row.info.begin_lsn = Some(start_lsn.to_string());
                    self.row.info.timeline = Some(timeline);
                    self.row.info.begin_wal = Some(
                        WalFileName::segment(timeline, size.segno_of(start_lsn), size).to_string(),
                    );
                    self.save().await;
                }
                BackupEvent::Tablespaces(list) => {
                    let estimated: i64 = list.iter().filter_map(|t| t.size_kb).sum();
                    self.row.info.estimated_bytes =
                        (estimated > 0).then(|| estimated as u64 * 1024);
                    self.row.info.tablespaces = list
                        .iter()
                        .filter_map(|t| {
                            let oid = t.oid?;
                            Some(BackupTablespace {
                                oid,
                                name: names.get(&oid).cloned(),
                                location: t.location.clone().unwrap_or_default(),
                            })
                        })
                        .collect();
                    self.save().await;
                }
                BackupEvent::Archive {
                    name,
                    tablespace_location: _,
                } => {
                    self.end_archive(current.take())?;
                    let tablespace = if name == "base.tar" {
                        None
                    } else {
                        Some(
                            name.strip_suffix(".tar")
                                .and_then(|n| n.parse::<u32>().ok())
                                .ok_or_else(|| {
                                    format!("PostgreSQL sent an archive named {name:?}, which is not base.tar or OID.tar")
                                })?,
                        )
                    };
                    *current = Some(Current {
                        tablespace,
                        splitter: TarSplitter::new(),
                        file: None,
                    });
                }
                BackupEvent::ManifestStart => {
                    self.end_archive(current.take())?;
                    in_manifest = true;
                    let key = store::manifest_key(&self.cluster, self.id());
                    *manifest = Some(
                        ContentWriter::new(self.cfg.compression_level, format!("{key}.incoming"))
                            .map_err(|e| e.to_string())?,
                    );
                }
                BackupEvent::Data(bytes) => {
                    if in_manifest {
                        if let Some(m) = manifest.as_mut() {
                            m.write(&*self.archive.blobs, &bytes)
                                .await
                                .map_err(|e| format!("storing the backup manifest: {e}"))?;
                        }
                        continue;
                    }
                    let cur = current
                        .as_mut()
                        .ok_or("PostgreSQL sent data before naming an archive")?;
                    events.clear();
                    cur.splitter
                        .feed(&bytes, &mut events)
                        .map_err(|e| format!("{e} (archive of tablespace {:?})", cur.tablespace))?;
                    for ev in events.drain(..) {
                        self.on_tar_event(cur, ev).await?;
                    }
                    self.publish_live();
                }
                BackupEvent::Progress(_) => {}
                BackupEvent::End { end_lsn, timeline } => end = Some((end_lsn, timeline)),
            }
        }
        self.end_archive(current.take())?;
        if let Ok(stream) = reader.join().await {
            if let Ok(conn) = stream.into_connection() {
                conn.close().await;
            }
        }
        let start_lsn = start
            .map(|(lsn, _)| lsn)
            .ok_or("BASE_BACKUP reported no start position")?;
        let (end_lsn, end_tli) = end.ok_or("BASE_BACKUP reported no end position")?;
        // The manifest.
        let m = manifest
            .take()
            .ok_or("PostgreSQL sent no backup manifest")?;
        let m = m.finish().map_err(|e| e.to_string())?;
        let key = store::manifest_key(&self.cluster, self.id());
        let (sha, msize, stored) = (m.sha256.clone(), m.size, m.stored_size);
        match m
            .publish(&*self.archive.blobs, &key)
            .await
            .map_err(|e| format!("storing the backup manifest: {e}"))?
        {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => {
                return Err(format!(
                    "the manifest object {key} exists already; remove it from storage"
                ))
            }
        }
        self.row.manifest_key = Some(key);
        self.row.manifest_sha256 = Some(sha);
        self.row.manifest_size = Some(msize);
        self.row.info.stored_bytes += stored;
        self.row.info.end_lsn = Some(end_lsn.to_string());
        self.row.info.end_wal = Some(end_segment(end_tli, start_lsn, end_lsn, size).to_string());
        self.row.info.end_time = Some(now_rfc3339());
        self.row.info.status = "waiting_for_wal".into();
        self.save().await;
        crate::crash::point("backup.streamed");
        tracing::info!(cluster = %self.cluster, backup = %self.id(), begin = %start_lsn, end = %end_lsn,
            "backup streamed; waiting for its WAL to be archived");
        Ok(())
    }

    fn end_archive(&mut self, cur: Option<Current>) -> Result<(), String> {
        if let Some(cur) = cur {
            cur.splitter
                .finish()
                .map_err(|e| format!("{e} (archive of tablespace {:?})", cur.tablespace))?;
            if cur.file.is_some() {
                return Err("an archive ended inside a file".into());
            }
        }
        Ok(())
    }

    async fn on_tar_event(&mut self, cur: &mut Current, ev: TarEvent) -> Result<(), String> {
        match ev {
            TarEvent::Entry(meta) => match meta.kind {
                EntryKind::File => {
                    let spill = format!(
                        "{}{}-{}",
                        store::incoming_prefix(&self.cluster),
                        self.id(),
                        self.row.info.file_count
                    );
                    let w = ContentWriter::new(self.cfg.compression_level, spill)
                        .map_err(|e| e.to_string())?;
                    cur.file = Some((meta, w));
                }
                EntryKind::Dir | EntryKind::Symlink => {
                    let file = BackupFile {
                        tablespace_oid: cur.tablespace,
                        path: meta.path,
                        kind: meta.kind.as_str().into(),
                        size: 0,
                        sha256: None,
                        mode: meta.mode,
                        mtime: meta.mtime,
                        link_target: meta.link_target,
                    };
                    catalog::record_file(
                        &self.archive.catalog,
                        &self.cluster,
                        self.id(),
                        file,
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
            },
            TarEvent::Data(d) => {
                let (meta, w) = cur.file.as_mut().ok_or("file data outside a file")?;
                self.row.info.progress_bytes += d.len() as u64;
                w.write(&*self.archive.blobs, &d)
                    .await
                    .map_err(|e| format!("storing {}: {e}", meta.path))?;
            }
            TarEvent::FileEnd => {
                let (meta, w) = cur.file.take().ok_or("end of a file that never began")?;
                let done = w
                    .finish()
                    .map_err(|e| format!("storing {}: {e}", meta.path))?;
                let (sha, size) = (done.sha256.clone(), done.size);
                let key = store::data_key(&self.cluster, &sha);
                let lock = self.backups.cluster_lock(&self.cluster);
                let _guard = lock.lock().await;
                let known = catalog::blob(&self.archive.catalog, &self.cluster, &sha)
                    .await
                    .map_err(|e| e.to_string())?;
                let new_blob = if known.is_some() {
                    done.discard(&*self.archive.blobs).await;
                    self.row.info.deduplicated_bytes += size;
                    None
                } else {
                    let stored = done.stored_size;
                    let outcome = done
                        .publish(&*self.archive.blobs, &key)
                        .await
                        .map_err(|e| format!("storing {}: {e}", meta.path))?;
                    let stored_size = match outcome {
                        PutOutcome::Created => {
                            self.row.info.stored_bytes += stored;
                            stored
                        }
                        PutOutcome::AlreadyExists => {
                            // An object no row knew of (left by a crash): same key, same content.
                            self.row.info.deduplicated_bytes += size;
                            self.archive
                                .blobs
                                .head(&key)
                                .await
                                .map_err(|e| e.to_string())?
                                .unwrap_or(stored)
                        }
                    };
                    Some(BlobRow {
                        sha256: sha.clone(),
                        size,
                        stored_size,
                        object_key: key,
                    })
                };
                let file = BackupFile {
                    tablespace_oid: cur.tablespace,
                    path: meta.path,
                    kind: "file".into(),
                    size,
                    sha256: Some(sha),
                    mode: meta.mode,
                    mtime: meta.mtime,
                    link_target: None,
                };
                catalog::record_file(
                    &self.archive.catalog,
                    &self.cluster,
                    self.id(),
                    file,
                    new_blob,
                )
                .await
                .map_err(|e| e.to_string())?;
                self.row.info.size_bytes += size;
                self.row.info.file_count += 1;
                if self.row.info.file_count == 1 {
                    crate::crash::point("backup.streaming");
                }
            }
        }
        Ok(())
    }

    /// Polls the catalog until every segment of the backup's WAL range is archived.
    async fn wait_for_wal(&mut self) -> Result<(), String> {
        let names = self.wal_names().await?;
        let timeout = Duration::from_secs(
            self.cfg
                .backup_wal_timeout
                .unwrap_or(DEFAULT_BACKUP_WAL_TIMEOUT),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let mut missing: Vec<String> = names;
        loop {
            let mut still = Vec::new();
            for name in missing {
                let row = self
                    .archive
                    .catalog
                    .wal(&self.cluster, &name)
                    .await
                    .map_err(|e| e.to_string())?;
                if row.is_none_or(|r| r.state != "ok") {
                    still.push(name);
                }
            }
            missing = still;
            let Some(first) = missing.first() else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the archive lacks {first} after {} s: check archive_command / streaming",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(WAL_POLL).await;
        }
    }

    async fn wal_names(&self) -> Result<Vec<String>, String> {
        let size = self
            .archive
            .catalog
            .cluster(&self.cluster)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|c| c.segment_size)
            .and_then(|z| SegmentSize::new(z).ok())
            .ok_or("the cluster has no segment size")?;
        let i = &self.row.info;
        let first: WalFileName = i
            .begin_wal
            .as_deref()
            .and_then(|n| n.parse().ok())
            .ok_or("the backup has no begin WAL file")?;
        let last: WalFileName = i
            .end_wal
            .as_deref()
            .and_then(|n| n.parse().ok())
            .ok_or("the backup has no end WAL file")?;
        wal_range(&first, &last, size).ok_or_else(|| format!("bad WAL range {first} .. {last}"))
    }
}

/// The segment holding the backup's last WAL byte (`end_lsn` is the end of its last record).
pub fn end_segment(tli: u32, start: Lsn, end: Lsn, size: SegmentSize) -> WalFileName {
    let segno = size.prev_segno_of(end).max(size.segno_of(start));
    WalFileName::segment(tli, segno, size)
}

/// Segment names from `first` to `last` inclusive, with the cluster's segment size; a timeline
/// change between them (a standby promoted during the backup) puts the segments before `last`
/// on the first one's timeline.
pub fn wal_range(
    first: &WalFileName,
    last: &WalFileName,
    size: SegmentSize,
) -> Option<Vec<String>> {
    let a = first.segno(size)?;
    let b = last.segno(size)?;
    if b < a {
        return None;
    }
    let (t1, t2) = (first.timeline(), last.timeline());
    Some(
        (a..=b)
            .map(|n| WalFileName::segment(if n == b { t2 } else { t1 }, n, size).to_string())
            .collect(),
    )
}

/// Messages of `BASE_BACKUP` read ahead of the storing (each at most one CopyData message).
const READ_AHEAD: usize = 256;

/// A task aborted when its handle is dropped (a backup that fails stops reading its stream).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tablespace names by OID, through an ordinary session (a walsender cannot run SELECT).
/// Names are a convenience for `restore --tablespace NAME=DIR`: when the look-up fails (the
/// role may not reach a database), the backup goes on without them.
async fn tablespace_names(ci: &ConnInfo) -> std::collections::HashMap<u32, String> {
    let mut names = std::collections::HashMap::new();
    let result = async {
        let mut conn = ReplicationConnection::connect_database(ci).await?;
        let sets = conn
            .query("SELECT oid, spcname FROM pg_catalog.pg_tablespace")
            .await;
        conn.close().await;
        sets
    }
    .await;
    match result {
        Ok(sets) => {
            for set in sets.iter().filter(|s| !s.columns.is_empty()) {
                for row in 0..set.rows.len() {
                    if let (Ok(Some(oid)), Ok(Some(name))) = (set.text(row, 0), set.text(row, 1)) {
                        if let Ok(oid) = oid.parse::<u32>() {
                            names.insert(oid, name.to_string());
                        }
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(target_host = %ci.target(), "cannot look up tablespace names (backups record OIDs and locations only): {e}")
        }
    }
    names
}

/// Error text for a failure talking to PostgreSQL, with its hint.
fn describe_repl_error(target: &str, e: ReplError) -> String {
    let hint = e
        .hint()
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default();
    format!("PostgreSQL at {target}: {e}{hint}")
}
