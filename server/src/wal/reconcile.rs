//! Start-up reconciliation of storage with the catalog (DESIGN §7.5).
//!
//! Storage is the truth and the catalog its index. After a crash the two can disagree in three
//! ways, each handled here before the server accepts requests:
//! - debris of interrupted uploads (staging objects, `NAME#N` temp files): removed;
//! - objects without a catalog row (the server died between the durable publish and the
//!   catalog insert): re-verified (trailer, checksum, WAL validation) and indexed, or moved to
//!   `quarantine/` if they are proven corrupt. A storage or catalog error while checking one is
//!   not proof: it is retried, and if it persists start-up stops with a message rather than
//!   quarantine an object that may be an acknowledged file;
//! - rows without an object (someone deleted files): marked `missing` and reported; they are not
//!   served, and `wal` lists them.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::StreamExt;
use pgwal::checksum::Sha256;
use pgwal::name::WalFileName;
use pgwal::page::{Expectations, SegmentValidator};
use pgwal::segment::SegmentSize;

use crate::catalog::{now_rfc3339, Binding, WalRow};
use crate::storage::StorageError;
use crate::wal::archive::{kind_str, parse_object_key, Archive, ArchiveError, SCRATCH_PREFIX};
use crate::wal::object_format::{Decompressor, Trailer, TRAILER_LEN};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub swept: u64,
    pub indexed: u64,
    pub quarantined: Vec<String>,
    pub missing: Vec<String>,
    pub recovered: u64,
}

/// Attempts at checking one object before a storage or catalog error stops start-up.
const ATTEMPTS: u32 = 4;

/// Why an object without a row was not indexed.
enum Unindexed {
    /// Proven not to be a good WAL object: quarantined.
    Corrupt(String),
    /// Could not be checked (storage or catalog unavailable): retried, never quarantined.
    Transient(String),
}

pub async fn reconcile(archive: &Archive) -> Result<ReconcileReport, ArchiveError> {
    let mut report = ReconcileReport {
        swept: archive
            .blobs
            .sweep_incomplete()
            .await
            .map_err(|e| ArchiveError::Storage(e.to_string()))?,
        ..Default::default()
    };
    for meta in archive
        .blobs
        .list(SCRATCH_PREFIX)
        .await
        .map_err(|e| ArchiveError::Storage(e.to_string()))?
    {
        archive
            .blobs
            .delete(&meta.key)
            .await
            .map_err(|e| ArchiveError::Storage(e.to_string()))?;
        report.swept += 1;
    }
    // One directory of WAL objects at a time (at most one log file's worth of segments, or a
    // cluster's history files), against the rows whose objects belong there: memory stays
    // bounded by a directory, and the work is a listing and an index range per directory;
    // only objects without a row are read.
    let mut dirs: BTreeSet<String> = archive.catalog.wal_dirs().await?.into_iter().collect();
    let storage = |e: crate::storage::StorageError| ArchiveError::Storage(e.to_string());
    for cluster_dir in archive.blobs.list_dirs("wal/").await.map_err(storage)? {
        dirs.extend(
            archive
                .blobs
                .list_dirs(&cluster_dir)
                .await
                .map_err(storage)?,
        );
    }
    for dir in dirs {
        reconcile_dir(archive, &dir, &mut report).await?;
    }
    tracing::info!(
        swept = report.swept,
        indexed = report.indexed,
        quarantined = report.quarantined.len(),
        missing = report.missing.len(),
        recovered = report.recovered,
        "storage reconciled with the catalog"
    );
    Ok(report)
}

/// Reconciles the objects of one directory (`wal/CLUSTER/DIR/`) with the rows that name them.
async fn reconcile_dir(
    archive: &Archive,
    dir: &str,
    report: &mut ReconcileReport,
) -> Result<(), ArchiveError> {
    let objects = archive
        .blobs
        .list(dir)
        .await
        .map_err(|e| ArchiveError::Storage(e.to_string()))?;
    let rows = archive.catalog.wal_under(dir).await?;
    let by_key: HashMap<&str, &WalRow> = rows.iter().map(|r| (r.object_key.as_str(), r)).collect();
    let present: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut states = Vec::new();
    for obj in &objects {
        if let Some(row) = by_key.get(obj.key.as_str()) {
            if row.state != "ok" {
                states.push((row.cluster.clone(), row.name.clone(), "ok"));
                report.recovered += 1;
            }
            continue;
        }
        index_with_retries(archive, &obj.key, obj.size, report).await?;
    }
    for row in &rows {
        if row.state == "ok" && !present.contains(row.object_key.as_str()) {
            tracing::error!(
                cluster = %row.cluster, file = %row.name, key = %row.object_key,
                "reconcile: the catalog lists this file but storage has no object for it; it will not be served"
            );
            states.push((row.cluster.clone(), row.name.clone(), "missing"));
            report.missing.push(format!("{}/{}", row.cluster, row.name));
        }
    }
    if !states.is_empty() {
        archive.catalog.set_wal_states(states).await?;
    }
    Ok(())
}

/// Indexes an object without a row, or quarantines it when proven corrupt; retries a storage
/// or catalog error, then stops start-up rather than quarantine an object it could not check.
async fn index_with_retries(
    archive: &Archive,
    key: &str,
    size: u64,
    report: &mut ReconcileReport,
) -> Result<(), ArchiveError> {
    let mut attempt = 1;
    loop {
        match index_object(archive, key, size).await {
            Ok(()) => {
                tracing::info!(key = %key, "reconcile: indexed an object the catalog did not list");
                report.indexed += 1;
            }
            Err(Unindexed::Corrupt(why)) => {
                tracing::error!(key = %key, "reconcile: quarantining object: {why}");
                archive.quarantine(key).await?;
                report.quarantined.push(key.to_string());
            }
            Err(Unindexed::Transient(why)) if attempt < ATTEMPTS => {
                let pause = std::time::Duration::from_millis(250 << attempt);
                tracing::warn!(key = %key, attempt, "reconcile: cannot check object now ({why}); retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                attempt += 1;
                continue;
            }
            Err(Unindexed::Transient(why)) => {
                return Err(ArchiveError::Storage(format!(
                    "cannot check the uncataloged object {key} ({why}) after {ATTEMPTS} \
                     attempts; start-up stopped rather than quarantine what may be an \
                     acknowledged file: make storage and the catalog reachable and start the \
                     server again"
                )));
            }
        }
        return Ok(());
    }
}

/// A read of an object that failed: damaged when its sealed bytes fail authentication (as a
/// failed checksum), otherwise perhaps a passing failure of storage.
fn unreadable(e: StorageError) -> Unindexed {
    match e {
        StorageError::Damaged(why) => Unindexed::Corrupt(why),
        other => Unindexed::Transient(other.to_string()),
    }
}

/// Verifies an uncatalogued object fully and adds its row. Errors say why it is not acceptable.
async fn index_object(archive: &Archive, key: &str, size: u64) -> Result<(), Unindexed> {
    use Unindexed::{Corrupt, Transient};
    let transient = |e: &dyn std::fmt::Display| Transient(e.to_string());
    let (cluster, name) =
        parse_object_key(key).ok_or_else(|| Corrupt("not a WAL object key".into()))?;
    if size < TRAILER_LEN as u64 {
        return Err(Corrupt(format!("{size} bytes is too short")));
    }
    let tail = archive
        .blobs
        .get_range(key, size - TRAILER_LEN as u64..size)
        .await
        .map_err(unreadable)?;
    let trailer = Trailer::decode(&tail).ok_or_else(|| Corrupt("no valid trailer".into()))?;

    let cluster_row = archive
        .catalog
        .cluster(&cluster)
        .await
        .map_err(|e| transient(&e))?;
    let mut validator = match &name {
        WalFileName::Segment { .. } | WalFileName::Partial { .. } => {
            let expect = Expectations {
                system_identifier: cluster_row.as_ref().and_then(|c| c.system_identifier),
                segment_size: cluster_row
                    .as_ref()
                    .and_then(|c| c.segment_size)
                    .and_then(|z| SegmentSize::new(z).ok()),
            };
            Some(SegmentValidator::new(&name, expect).map_err(|e| Corrupt(e.to_string()))?)
        }
        _ => None,
    };
    let mut small = Vec::new();
    let mut stream = archive.blobs.get(key).await.map_err(unreadable)?;
    let mut dec = Decompressor::new().map_err(|e| transient(&e))?;
    let mut hasher = Sha256::new();
    let mut xxh3 = pgwal::checksum::Xxh3::new();
    let mut plain_size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(unreadable)?;
        dec.write(&chunk, |plain| {
            plain_size += plain.len() as u64;
            hasher.update(plain);
            xxh3.update(plain);
            if let Some(v) = validator.as_mut() {
                v.update(plain)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            } else if small.len() < 1 << 20 {
                small.extend_from_slice(plain);
            }
            Ok(())
        })
        .map_err(|e| Corrupt(format!("content: {e}")))?;
    }
    if !dec.is_complete() {
        return Err(Corrupt("it ends inside a zstd frame".into()));
    }
    let sha = hasher.finish_hex();
    if sha != trailer.sha256_hex() || plain_size != trailer.size {
        return Err(Corrupt(format!(
            "checksum mismatch: trailer says {} ({} bytes), content is {sha} ({plain_size} bytes)",
            trailer.sha256_hex(),
            trailer.size
        )));
    }
    match validator {
        Some(v) => {
            let info = v.finish().map_err(|e| Corrupt(e.to_string()))?;
            let binding = archive
                .bind_cluster(
                    &cluster,
                    info.system_identifier,
                    info.segment_size.bytes(),
                    info.pg_major,
                )
                .await
                .map_err(|e| transient(&e))?;
            if binding != Binding::Ok {
                return Err(Corrupt(format!("belongs to another system: {binding:?}")));
            }
        }
        None => {
            if let WalFileName::History { tli } = name {
                pgwal::history::parse_history_bytes(tli, &small)
                    .map_err(|e| Corrupt(e.to_string()))?;
            }
        }
    }
    archive
        .catalog
        .insert_wal(WalRow {
            cluster,
            name: name.to_string(),
            kind: kind_str(&name).to_string(),
            timeline: name.timeline(),
            size: plain_size,
            sha256: sha,
            xxh3: Some(xxh3.finish_hex()),
            stored_size: size,
            object_key: key.to_string(),
            archived_at: match archive.blobs.stat(key).await {
                Ok(Some(m)) => crate::catalog::rfc3339(m.last_modified),
                _ => now_rfc3339(),
            },
            state: "ok".into(),
        })
        .await
        .map_err(|e| transient(&e))?;
    Ok(())
}
