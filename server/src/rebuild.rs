//! Rebuilding the catalog from storage alone (DESIGN §1, §7.9): after the backup host or its
//! catalog is lost, a server started on the same storage with an empty catalog finds everything
//! the old one knew.
//!
//! - Clusters, from their binding records (`meta/clusters/`).
//! - WAL files, from a listing of `wal/` and each object's trailer (its SHA-256 and size): one
//!   small range read per object, never the content. The XXH3-128 recorded at ingest is not in
//!   the object; it is computed again the first time the file is served.
//! - Backups with their files, manifests and keep flags, from their records
//!   (`backups/CLUSTER/meta/`); the blobs they reference, from a listing of their objects.
//! - A retention run that was in progress, from its plan record: it is finished at start.
//! - Job runs and recovery drills, from their records.
//!
//! Start-up reconciliation runs after it, as after any start.

use std::collections::HashMap;

use futures::StreamExt;

use crate::backup::store::data_key;
use crate::catalog::WalRow;
use crate::meta::{self, BackupRecord, ClusterRecord, RetentionPlanRecord};
use crate::storage::BlobMeta;
use crate::wal::archive::{kind_str, parse_object_key, Archive, ArchiveError};

/// What a rebuild found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub clusters: usize,
    pub wal_files: usize,
    pub backups: usize,
    pub jobs: usize,
    pub drills: usize,
    /// Objects or records that could not be read (named, for a person to look at).
    pub skipped: Vec<String>,
}

/// Trailers read at once (one small range read each, the size coming from the listing): a
/// bucket's latency is paid once per this many objects.
const PARALLEL_READS: usize = 32;

/// Whether storage holds an archive (anything but its identity and lease).
pub async fn storage_has_archive(archive: &Archive) -> Result<bool, ArchiveError> {
    let storage = |e: crate::storage::StorageError| ArchiveError::Storage(e.to_string());
    for prefix in ["wal/", "backups/", "meta/clusters/"] {
        if !archive
            .blobs
            .list_dirs(prefix)
            .await
            .map_err(storage)?
            .is_empty()
            || !archive
                .blobs
                .list(prefix)
                .await
                .map_err(storage)?
                .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fills an empty catalog from storage.
pub async fn rebuild(archive: &Archive) -> Result<RebuildReport, ArchiveError> {
    let storage = |e: crate::storage::StorageError| ArchiveError::Storage(e.to_string());
    let blobs = &*archive.blobs;
    let mut report = RebuildReport::default();

    // Clusters.
    for (key, record) in meta::list::<ClusterRecord>(blobs, "meta/clusters/")
        .await
        .map_err(storage)?
    {
        let Some(cluster) = key
            .strip_prefix("meta/clusters/")
            .and_then(|k| k.strip_suffix(".json"))
        else {
            continue;
        };
        match record {
            Ok(r) => {
                let sysid: u64 = r.system_identifier.parse().map_err(|_| {
                    ArchiveError::Corrupt(format!(
                        "{key}: system identifier {:?}",
                        r.system_identifier
                    ))
                })?;
                archive
                    .catalog
                    .bind_cluster(cluster, sysid, r.segment_size, r.pg_major)
                    .await?;
                report.clusters += 1;
            }
            Err(e) => report.skipped.push(e.to_string()),
        }
    }

    // WAL: one directory at a time, trailers read in parallel.
    for cluster_dir in blobs.list_dirs("wal/").await.map_err(storage)? {
        for dir in blobs.list_dirs(&cluster_dir).await.map_err(storage)? {
            let objects = blobs.list(&dir).await.map_err(storage)?;
            let rows: Vec<Result<WalRow, String>> = futures::stream::iter(objects)
                .map(|obj| async move { wal_row(archive, obj).await })
                .buffer_unordered(PARALLEL_READS)
                .collect()
                .await;
            let mut good = Vec::with_capacity(rows.len());
            for row in rows {
                match row {
                    Ok(r) => good.push(r),
                    Err(why) => report.skipped.push(why),
                }
            }
            report.wal_files += good.len();
            archive.catalog.insert_wal_rows(good).await?;
        }
    }

    // Backups.
    for cluster_dir in blobs.list_dirs("backups/").await.map_err(storage)? {
        let cluster = cluster_dir
            .trim_start_matches("backups/")
            .trim_end_matches('/')
            .to_string();
        let blob_sizes: HashMap<String, u64> = blobs
            .list(&format!("backups/{cluster}/data/"))
            .await
            .map_err(storage)?
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect();
        for (key, record) in meta::list::<BackupRecord>(blobs, &meta::backup_dir(&cluster))
            .await
            .map_err(storage)?
        {
            match record {
                Ok(r) => {
                    let blobs_of = |sha: &str| {
                        let key = data_key(&cluster, sha);
                        blob_sizes.get(&key).map(|size| (key, *size))
                    };
                    crate::backup::catalog::restore_record(&archive.catalog, &r, &blobs_of).await?;
                    report.backups += 1;
                }
                Err(e) => report.skipped.push(format!("{key}: {e}")),
            }
        }
    }

    // A retention run in progress.
    for (key, plan) in meta::list::<RetentionPlanRecord>(blobs, "meta/retention/")
        .await
        .map_err(storage)?
    {
        let Some(cluster) = key
            .strip_prefix("meta/retention/")
            .and_then(|k| k.strip_suffix(".json"))
        else {
            continue;
        };
        match plan {
            Ok(p) => {
                crate::jobs::retention::record_plan(&archive.catalog, cluster, p.backups, p.wal)
                    .await?
            }
            Err(e) => report.skipped.push(e.to_string()),
        }
    }

    // Job runs.
    for cluster_dir in blobs.list_dirs("meta/jobs/").await.map_err(storage)? {
        for (key, run) in meta::list::<meta::JobRecord>(blobs, &cluster_dir)
            .await
            .map_err(storage)?
        {
            match run {
                Ok(run) => {
                    crate::jobs::runs::restore(&archive.catalog, run).await?;
                    report.jobs += 1;
                }
                Err(e) => report.skipped.push(format!("{key}: {e}")),
            }
        }
    }
    // Recovery drills.
    for cluster_dir in blobs.list_dirs("meta/drills/").await.map_err(storage)? {
        for (key, drill) in meta::list::<pgwal::api::DrillReport>(blobs, &cluster_dir)
            .await
            .map_err(storage)?
        {
            match drill {
                Ok(drill) => {
                    crate::jobs::drill::catalog::restore(&archive.catalog, drill).await?;
                    report.drills += 1;
                }
                Err(e) => report.skipped.push(format!("{key}: {e}")),
            }
        }
    }
    for skipped in &report.skipped {
        tracing::warn!("rebuild: skipped {skipped}");
    }
    tracing::info!(
        clusters = report.clusters,
        wal_files = report.wal_files,
        backups = report.backups,
        jobs = report.jobs,
        drills = report.drills,
        skipped = report.skipped.len(),
        "catalog rebuilt from storage"
    );
    Ok(report)
}

/// The catalog row of a WAL object, from its key, its listing and its trailer.
async fn wal_row(archive: &Archive, obj: BlobMeta) -> Result<WalRow, String> {
    let (cluster, name) =
        parse_object_key(&obj.key).ok_or_else(|| format!("{}: not a WAL object key", obj.key))?;
    let (trailer, size) = archive
        .read_trailer_at(&obj.key, obj.size)
        .await
        .map_err(|e| format!("{}: {e}", obj.key))?;
    Ok(WalRow {
        cluster,
        name: name.to_string(),
        kind: kind_str(&name).to_string(),
        timeline: name.timeline(),
        size: trailer.size,
        sha256: trailer.sha256_hex(),
        xxh3: None,
        stored_size: size,
        object_key: obj.key,
        archived_at: crate::catalog::rfc3339(obj.last_modified),
        state: "ok".into(),
    })
}
