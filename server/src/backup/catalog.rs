//! The backup tables of the catalog (`migrations/0002_backups.sql`).
//!
//! Reference rule: a `backup_blobs` row is inserted in the same transaction as the first
//! `backup_files` row that references it, and removed in the same transaction as the last one.
//! Objects are deleted only after that transaction, so a crash leaves at worst an unreferenced
//! object, which start-up cleanup removes; never a reference to a missing object.

use std::collections::HashSet;

use pgwal::api::{BackupFile, BackupInfo, BackupTablespace};
use rusqlite::{params, Connection, OptionalExtension};

use crate::catalog::{now_rfc3339, Catalog, CatalogError};

/// A backups row: what the API shows plus where the manifest is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupRow {
    pub info: BackupInfo,
    pub manifest_key: Option<String>,
    pub manifest_sha256: Option<String>,
    pub manifest_size: Option<u64>,
}

/// A stored content blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRow {
    pub sha256: String,
    pub size: u64,
    pub stored_size: u64,
    pub object_key: String,
}

/// Why a backup could not be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// Another backup of the cluster is in progress (its id).
    InProgress(String),
    /// A backup with this id exists already (two starts in one second).
    IdTaken,
}

const SELECT: &str = "SELECT cluster, id, status, reason, system_identifier, timeline, begin_lsn, \
    end_lsn, begin_wal, end_wal, begin_time, end_time, pg_version, size_bytes, stored_bytes, \
    deduplicated_bytes, file_count, estimated_bytes, tablespaces, keep, manifest_key, \
    manifest_sha256, manifest_size, deleting FROM backups";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BackupRow> {
    let tablespaces: String = r.get(18)?;
    let tablespaces: Vec<BackupTablespace> = serde_json::from_str(&tablespaces).unwrap_or_default();
    let mut status: String = r.get(2)?;
    // Retention has decided to remove it (and may have been interrupted doing so): never
    // shown as a usable backup.
    if r.get::<_, i64>(23)? != 0 {
        status = "deleting".into();
    }
    let size_bytes: u64 = r.get(13)?;
    Ok(BackupRow {
        info: BackupInfo {
            cluster: r.get(0)?,
            id: r.get(1)?,
            progress_bytes: if status == "running" { 0 } else { size_bytes },
            status,
            reason: r.get(3)?,
            system_identifier: r.get(4)?,
            timeline: r.get(5)?,
            begin_lsn: r.get(6)?,
            end_lsn: r.get(7)?,
            begin_wal: r.get(8)?,
            end_wal: r.get(9)?,
            begin_time: r.get(10)?,
            end_time: r.get(11)?,
            pg_version: r.get(12)?,
            size_bytes,
            stored_bytes: r.get(14)?,
            deduplicated_bytes: r.get(15)?,
            file_count: r.get(16)?,
            estimated_bytes: r.get(17)?,
            tablespaces,
            keep: r.get::<_, i64>(19)? != 0,
            retention: None,
            last_drill: None,
        },
        manifest_key: r.get(20)?,
        manifest_sha256: r.get(21)?,
        manifest_size: r.get(22)?,
    })
}

fn get_row(c: &Connection, cluster: &str, id: &str) -> Result<Option<BackupRow>, CatalogError> {
    Ok(c.query_row(
        &format!("{SELECT} WHERE cluster = ?1 AND id = ?2"),
        params![cluster, id],
        from_row,
    )
    .optional()?)
}

/// Registers a new backup as `running`, unless one is in progress or the id is taken.
pub async fn start(
    cat: &Catalog,
    cluster: &str,
    id: &str,
    begin_time: &str,
) -> Result<StartOutcome, CatalogError> {
    let (cluster, id, begin_time) = (cluster.to_string(), id.to_string(), begin_time.to_string());
    cat.call(move |c| {
        let tx = c.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO clusters (name, created_at) VALUES (?1, ?2)",
            params![cluster, now_rfc3339()],
        )?;
        let running: Option<String> = tx
            .query_row(
                "SELECT id FROM backups WHERE cluster = ?1 AND status IN ('running', 'waiting_for_wal')",
                params![cluster],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = running {
            return Ok(StartOutcome::InProgress(other));
        }
        let n = tx.execute(
            "INSERT OR IGNORE INTO backups (cluster, id, status, begin_time) VALUES (?1, ?2, 'running', ?3)",
            params![cluster, id, begin_time],
        )?;
        tx.commit()?;
        Ok(if n == 1 {
            StartOutcome::Started
        } else {
            StartOutcome::IdTaken
        })
    })
    .await
}

/// A backup from its record in storage (a rebuild): its row, keep flag and manifest, its files,
/// and a blob row for each content `blob_of` finds stored (object key and stored size). A
/// backup of that id already there is left as it is.
pub async fn restore_record(
    cat: &Catalog,
    record: &crate::meta::BackupRecord,
    blob_of: &dyn Fn(&str) -> Option<(String, u64)>,
) -> Result<(), CatalogError> {
    let mut blobs: Vec<BlobRow> = Vec::new();
    let mut seen = HashSet::new();
    for f in &record.files {
        let Some(sha) = f.sha256.as_deref() else {
            continue;
        };
        if !seen.insert(sha.to_string()) {
            continue;
        }
        if let Some((object_key, stored_size)) = blob_of(sha) {
            blobs.push(BlobRow {
                sha256: sha.to_string(),
                size: f.size,
                stored_size,
                object_key,
            });
        }
    }
    let record = record.clone();
    cat.call(move |c| {
        let tx = c.transaction()?;
        let i = &record.info;
        tx.execute(
            "INSERT OR IGNORE INTO clusters (name, created_at) VALUES (?1, ?2)",
            params![i.cluster, now_rfc3339()],
        )?;
        let tablespaces =
            serde_json::to_string(&i.tablespaces).map_err(|e| CatalogError::Task(e.to_string()))?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO backups (cluster, id, status, reason, system_identifier,
                 timeline, begin_lsn, end_lsn, begin_wal, end_wal, begin_time, end_time,
                 pg_version, size_bytes, stored_bytes, deduplicated_bytes, file_count,
                 estimated_bytes, tablespaces, keep, manifest_key, manifest_sha256, manifest_size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21, ?22, ?23)",
            params![
                i.cluster,
                i.id,
                i.status,
                i.reason,
                i.system_identifier,
                i.timeline,
                i.begin_lsn,
                i.end_lsn,
                i.begin_wal,
                i.end_wal,
                i.begin_time,
                i.end_time,
                i.pg_version,
                i.size_bytes,
                i.stored_bytes,
                i.deduplicated_bytes,
                i.file_count,
                i.estimated_bytes,
                tablespaces,
                i.keep as i64,
                record.manifest.as_ref().map(|m| m.key.clone()),
                record.manifest.as_ref().map(|m| m.sha256.clone()),
                record.manifest.as_ref().map(|m| m.size),
            ],
        )?;
        if n == 1 {
            for b in &blobs {
                tx.execute(
                    "INSERT OR IGNORE INTO backup_blobs (cluster, sha256, size, stored_size,
                         object_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        i.cluster,
                        b.sha256,
                        b.size,
                        b.stored_size,
                        b.object_key,
                        now_rfc3339()
                    ],
                )?;
            }
            for f in &record.files {
                tx.execute(
                    "INSERT INTO backup_files (cluster, backup_id, tablespace_oid, path, kind, size,
                         sha256, mode, mtime, link_target)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        i.cluster,
                        i.id,
                        f.tablespace_oid,
                        f.path,
                        f.kind,
                        f.size,
                        f.sha256,
                        f.mode,
                        f.mtime,
                        f.link_target
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    })
    .await
}

/// Writes every field of `row` except the id, keep flag and begin time.
pub async fn update(cat: &Catalog, row: BackupRow) -> Result<(), CatalogError> {
    cat.call(move |c| {
        let i = &row.info;
        let tablespaces =
            serde_json::to_string(&i.tablespaces).map_err(|e| CatalogError::Task(e.to_string()))?;
        c.execute(
            "UPDATE backups SET status = ?3, reason = ?4, system_identifier = ?5, timeline = ?6,
                begin_lsn = ?7, end_lsn = ?8, begin_wal = ?9, end_wal = ?10, end_time = ?11,
                pg_version = ?12, size_bytes = ?13, stored_bytes = ?14, deduplicated_bytes = ?15,
                file_count = ?16, estimated_bytes = ?17, tablespaces = ?18, manifest_key = ?19,
                manifest_sha256 = ?20, manifest_size = ?21
             WHERE cluster = ?1 AND id = ?2",
            params![
                i.cluster,
                i.id,
                i.status,
                i.reason,
                i.system_identifier,
                i.timeline,
                i.begin_lsn,
                i.end_lsn,
                i.begin_wal,
                i.end_wal,
                i.end_time,
                i.pg_version,
                i.size_bytes,
                i.stored_bytes,
                i.deduplicated_bytes,
                i.file_count,
                i.estimated_bytes,
                tablespaces,
                row.manifest_key,
                row.manifest_sha256,
                row.manifest_size
            ],
        )?;
        Ok(())
    })
    .await
}

pub async fn get(
    cat: &Catalog,
    cluster: &str,
    id: &str,
) -> Result<Option<BackupRow>, CatalogError> {
    let (cluster, id) = (cluster.to_string(), id.to_string());
    cat.call(move |c| get_row(c, &cluster, &id)).await
}

/// Newest first.
pub async fn list(cat: &Catalog, cluster: &str) -> Result<Vec<BackupRow>, CatalogError> {
    let cluster = cluster.to_string();
    cat.call(move |c| {
        let mut stmt = c.prepare(&format!("{SELECT} WHERE cluster = ?1 ORDER BY id DESC"))?;
        let rows = stmt.query_map(params![cluster], from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

pub async fn set_keep(
    cat: &Catalog,
    cluster: &str,
    id: &str,
    keep: bool,
) -> Result<(), CatalogError> {
    let (cluster, id) = (cluster.to_string(), id.to_string());
    cat.call(move |c| {
        c.execute(
            "UPDATE backups SET keep = ?3 WHERE cluster = ?1 AND id = ?2",
            params![cluster, id, keep as i64],
        )?;
        Ok(())
    })
    .await
}

/// The blob of this content, if the cluster has one.
pub async fn blob(
    cat: &Catalog,
    cluster: &str,
    sha256: &str,
) -> Result<Option<BlobRow>, CatalogError> {
    let (cluster, sha256) = (cluster.to_string(), sha256.to_string());
    cat.call(move |c| {
        Ok(c.query_row(
            "SELECT sha256, size, stored_size, object_key FROM backup_blobs
             WHERE cluster = ?1 AND sha256 = ?2",
            params![cluster, sha256],
            |r| {
                Ok(BlobRow {
                    sha256: r.get(0)?,
                    size: r.get(1)?,
                    stored_size: r.get(2)?,
                    object_key: r.get(3)?,
                })
            },
        )
        .optional()?)
    })
    .await
}

/// One entry of a backup, with the blob it created if it is the first of its content.
pub async fn record_file(
    cat: &Catalog,
    cluster: &str,
    backup_id: &str,
    file: BackupFile,
    new_blob: Option<BlobRow>,
) -> Result<(), CatalogError> {
    let (cluster, backup_id) = (cluster.to_string(), backup_id.to_string());
    cat.call(move |c| {
        let tx = c.transaction()?;
        if let Some(b) = &new_blob {
            tx.execute(
                "INSERT OR IGNORE INTO backup_blobs (cluster, sha256, size, stored_size, object_key, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![cluster, b.sha256, b.size, b.stored_size, b.object_key, now_rfc3339()],
            )?;
        }
        tx.execute(
            "INSERT INTO backup_files (cluster, backup_id, tablespace_oid, path, kind, size, sha256, mode, mtime, link_target)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                cluster,
                backup_id,
                file.tablespace_oid,
                file.path,
                file.kind,
                file.size,
                file.sha256,
                file.mode,
                file.mtime,
                file.link_target
            ],
        )?;
        tx.commit()?;
        Ok(())
    })
    .await
}

/// Every entry of a backup, main directory first, then by tablespace and path.
pub async fn files(
    cat: &Catalog,
    cluster: &str,
    id: &str,
) -> Result<Vec<BackupFile>, CatalogError> {
    let (cluster, id) = (cluster.to_string(), id.to_string());
    cat.call(move |c| {
        let mut stmt = c.prepare(
            "SELECT tablespace_oid, path, kind, size, sha256, mode, mtime, link_target
             FROM backup_files WHERE cluster = ?1 AND backup_id = ?2
             ORDER BY tablespace_oid IS NOT NULL, tablespace_oid, path",
        )?;
        let rows = stmt.query_map(params![cluster, id], |r| {
            Ok(BackupFile {
                tablespace_oid: r.get(0)?,
                path: r.get(1)?,
                kind: r.get(2)?,
                size: r.get(3)?,
                sha256: r.get(4)?,
                mode: r.get(5)?,
                mtime: r.get(6)?,
                link_target: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

/// A blob of `cluster` that some backup of it references.
pub async fn referenced_blob(
    cat: &Catalog,
    cluster: &str,
    sha256: &str,
) -> Result<Option<BlobRow>, CatalogError> {
    let b = blob(cat, cluster, sha256).await?;
    let Some(b) = b else { return Ok(None) };
    let (cluster, sha256) = (cluster.to_string(), sha256.to_string());
    let used = cat
        .call(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM backup_files WHERE cluster = ?1 AND sha256 = ?2)",
                params![cluster, sha256],
                |r| r.get::<_, bool>(0),
            )?)
        })
        .await?;
    Ok(used.then_some(b))
}

/// Removes the blob rows no file row references any more; returns their object keys.
fn drop_orphan_blobs(tx: &Connection, cluster: Option<&str>) -> Result<Vec<String>, CatalogError> {
    let mut stmt = tx.prepare(
        "SELECT b.cluster, b.sha256, b.object_key FROM backup_blobs b
         WHERE (?1 IS NULL OR b.cluster = ?1)
           AND NOT EXISTS (SELECT 1 FROM backup_files f WHERE f.cluster = b.cluster AND f.sha256 = b.sha256)",
    )?;
    let orphans = stmt
        .query_map(params![cluster], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (c, sha, _) in &orphans {
        tx.execute(
            "DELETE FROM backup_blobs WHERE cluster = ?1 AND sha256 = ?2",
            params![c, sha],
        )?;
    }
    Ok(orphans.into_iter().map(|(_, _, k)| k).collect())
}

/// Deletes a backup's rows (and with `keep_row`, only its files) in one transaction; returns
/// the keys of the objects nothing references any more (blobs, and its manifest).
pub async fn remove(
    cat: &Catalog,
    cluster: &str,
    id: &str,
    keep_row: bool,
) -> Result<Vec<String>, CatalogError> {
    let (cluster, id) = (cluster.to_string(), id.to_string());
    cat.call(move |c| {
        let tx = c.transaction()?;
        let manifest: Option<String> = tx
            .query_row(
                "SELECT manifest_key FROM backups WHERE cluster = ?1 AND id = ?2",
                params![cluster, id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        tx.execute(
            "DELETE FROM backup_files WHERE cluster = ?1 AND backup_id = ?2",
            params![cluster, id],
        )?;
        if keep_row {
            tx.execute(
                "UPDATE backups SET manifest_key = NULL, manifest_sha256 = NULL, manifest_size = NULL
                 WHERE cluster = ?1 AND id = ?2",
                params![cluster, id],
            )?;
        } else {
            tx.execute(
                "DELETE FROM backups WHERE cluster = ?1 AND id = ?2",
                params![cluster, id],
            )?;
        }
        let mut keys = drop_orphan_blobs(&tx, Some(&cluster))?;
        tx.commit()?;
        keys.extend(manifest);
        Ok(keys)
    })
    .await
}

/// Backups marked in progress (`running`, `waiting_for_wal`).
pub async fn in_progress(cat: &Catalog) -> Result<Vec<BackupRow>, CatalogError> {
    cat.call(move |c| {
        let mut stmt = c.prepare(&format!(
            "{SELECT} WHERE status IN ('running', 'waiting_for_wal')"
        ))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

/// Start-up: every backup still marked in progress was interrupted. Marks them failed and
/// returns their (cluster, id).
pub async fn fail_interrupted(
    cat: &Catalog,
    reason: &str,
) -> Result<Vec<(String, String)>, CatalogError> {
    let reason = reason.to_string();
    cat.call(move |c| {
        let tx = c.transaction()?;
        let ids = {
            let mut stmt = tx.prepare(
                "SELECT cluster, id FROM backups WHERE status IN ('running', 'waiting_for_wal')",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<Vec<(String, String)>, _>>()?
        };
        tx.execute(
            "UPDATE backups SET status = 'failed', reason = ?1, end_time = COALESCE(end_time, ?2)
             WHERE status IN ('running', 'waiting_for_wal')",
            params![reason, now_rfc3339()],
        )?;
        tx.commit()?;
        Ok(ids)
    })
    .await
}

/// Clusters that have at least one backup row.
pub async fn clusters_with_backups(cat: &Catalog) -> Result<HashSet<String>, CatalogError> {
    cat.call(move |c| {
        let mut stmt = c.prepare("SELECT DISTINCT cluster FROM backups")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<HashSet<_>, _>>()?)
    })
    .await
}

/// Object keys that the backup catalog references (blobs and manifests), for start-up cleanup.
pub async fn referenced_keys(cat: &Catalog) -> Result<HashSet<String>, CatalogError> {
    cat.call(move |c| {
        let tx = c.transaction()?;
        drop_orphan_blobs(&tx, None)?;
        let mut keys = HashSet::new();
        {
            let mut stmt = tx.prepare("SELECT object_key FROM backup_blobs")?;
            for k in stmt.query_map([], |r| r.get::<_, String>(0))? {
                keys.insert(k?);
            }
            let mut stmt =
                tx.prepare("SELECT manifest_key FROM backups WHERE manifest_key IS NOT NULL")?;
            for k in stmt.query_map([], |r| r.get::<_, String>(0))? {
                keys.insert(k?);
            }
        }
        tx.commit()?;
        Ok(keys)
    })
    .await
}

/// Backups marked `deleting` whose removal has not finished: (cluster, id).
pub async fn deleting(cat: &Catalog) -> Result<Vec<(String, String)>, CatalogError> {
    cat.call(move |c| {
        let mut stmt = c.prepare("SELECT cluster, id FROM backups WHERE deleting = 1")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}
