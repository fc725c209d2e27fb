//! Records: what the catalog knows that the stored objects do not carry themselves, written to
//! storage as small objects, durably, before the server reports it (DESIGN §7.9), so that the
//! catalog can be rebuilt from storage alone ([`crate::rebuild`]).
//!
//! | key | what | written |
//! |---|---|---|
//! | `meta/clusters/{cluster}.json` | the system identifier, segment size and major version the cluster is bound to | once, create-only, before the catalog binds |
//! | `backups/{cluster}/meta/{id}.json` | a backup as `list`/`show` show it, its manifest, and once done its file list | replaced at `done`, `failed`, `keep`; removed first when the backup goes |
//! | `meta/retention/{cluster}.json` | a retention run's plan | before its first removal; removed at its end |
//! | `meta/jobs/{cluster}/{id}.json` | a job run, once it ended | at its end |
//! | `meta/drills/{cluster}/{id}.json` | a recovery drill's report | at its end, before its row says so |
//!
//! WAL and backup content need no record: each object's key names it and its trailer carries
//! its checksum and size. Every record is JSON in the object format (zstd frames and the
//! checksum trailer), so a damaged record is detected and never trusted.

use bytes::Bytes;
use pgwal::api::{BackupFile, BackupInfo, JobRun};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::storage::{BlobStore, Precondition, StorageError};
use crate::wal::object_format;

/// The binding of a cluster to one database system.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterRecord {
    /// Decimal, as the catalog keeps it (a u64 does not fit a JSON number safely).
    pub system_identifier: String,
    pub segment_size: u64,
    pub pg_major: u32,
}

/// Where a backup's `backup_manifest` is stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestRef {
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

/// A backup as the catalog holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackupRecord {
    pub info: BackupInfo,
    #[serde(default)]
    pub manifest: Option<ManifestRef>,
    /// Every entry, once the backup is done (empty for a failed one: its files are gone).
    #[serde(default)]
    pub files: Vec<BackupFile>,
}

/// What a retention run decided to remove.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionPlanRecord {
    pub backups: Vec<String>,
    pub wal: Vec<String>,
}

pub fn cluster_key(cluster: &str) -> String {
    format!("meta/clusters/{cluster}.json")
}

pub fn backup_key(cluster: &str, id: &str) -> String {
    format!("backups/{cluster}/meta/{id}.json")
}

/// The directory of a cluster's backup records.
pub fn backup_dir(cluster: &str) -> String {
    format!("backups/{cluster}/meta/")
}

pub fn retention_key(cluster: &str) -> String {
    format!("meta/retention/{cluster}.json")
}

pub fn job_key(cluster: &str, id: i64) -> String {
    format!("meta/jobs/{cluster}/{id:012}.json")
}

pub fn drill_key(cluster: &str, id: i64) -> String {
    format!("meta/drills/{cluster}/{id:012}.json")
}

/// Why a record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The record exists but is damaged or not what this version writes: never trusted.
    #[error("record {key} is unreadable: {why}")]
    Damaged { key: String, why: String },
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, RecordError> {
    let json = serde_json::to_vec(value).map_err(|e| RecordError::Damaged {
        key: String::new(),
        why: format!("cannot encode: {e}"),
    })?;
    Ok(Bytes::from(object_format::seal_small(&json).map_err(
        |e| RecordError::Storage(StorageError::Io(format!("cannot compress a record: {e}"))),
    )?))
}

fn decode<T: DeserializeOwned>(key: &str, stored: &[u8]) -> Result<T, RecordError> {
    let damaged = |why: String| RecordError::Damaged {
        key: key.to_string(),
        why,
    };
    let json = object_format::open_small(stored).map_err(damaged)?;
    serde_json::from_slice(&json).map_err(|e| damaged(e.to_string()))
}

/// Writes `value` at `key`, over what was there; durable when it returns.
pub async fn put<T: Serialize>(
    blobs: &dyn BlobStore,
    key: &str,
    value: &T,
) -> Result<(), RecordError> {
    blobs.replace(key, encode(value)?).await?;
    Ok(())
}

/// The record at `key`, if there is one.
pub async fn get<T: DeserializeOwned>(
    blobs: &dyn BlobStore,
    key: &str,
) -> Result<Option<T>, RecordError> {
    match blobs.read_versioned(key).await? {
        Some(v) => Ok(Some(decode(key, &v.data)?)),
        None => Ok(None),
    }
}

/// Writes `value` at `key` only if nothing is there; returns what is there afterwards (ours,
/// or the one that was first).
pub async fn create<T: Serialize + DeserializeOwned>(
    blobs: &dyn BlobStore,
    key: &str,
    value: T,
) -> Result<T, RecordError> {
    match blobs
        .put_if(key, encode(&value)?, Precondition::Absent)
        .await
    {
        Ok(_) => Ok(value),
        Err(StorageError::Precondition(_)) => {
            get(blobs, key).await?.ok_or_else(|| RecordError::Damaged {
                key: key.to_string(),
                why: "it existed a moment ago and is gone".into(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the record at `key` (absent is fine).
pub async fn remove(blobs: &dyn BlobStore, key: &str) -> Result<(), RecordError> {
    blobs.delete(key).await?;
    Ok(())
}

/// Every record under `prefix` (a directory ending in `/`), with its key; damaged ones are
/// returned as errors for the caller to report.
pub async fn list<T: DeserializeOwned>(
    blobs: &dyn BlobStore,
    prefix: &str,
) -> Result<Vec<(String, Result<T, RecordError>)>, StorageError> {
    let mut out = Vec::new();
    for meta in blobs.list(prefix).await? {
        if !meta.key.ends_with(".json") {
            continue;
        }
        let value = match blobs.read_versioned(&meta.key).await? {
            Some(v) => decode(&meta.key, &v.data),
            None => continue,
        };
        out.push((meta.key, value));
    }
    Ok(out)
}

/// A job run as it is recorded.
pub type JobRecord = JobRun;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let record = ClusterRecord {
            system_identifier: "7300000000000000001".into(),
            segment_size: 16 << 20,
            pg_major: 15,
        };
        let bytes = encode(&record).expect("encode");
        assert_eq!(
            decode::<ClusterRecord>("k", &bytes).expect("decode"),
            record
        );
        let mut damaged = bytes.to_vec();
        let n = damaged.len();
        damaged[n / 2] ^= 1;
        assert!(decode::<ClusterRecord>("k", &damaged).is_err());
    }
}
