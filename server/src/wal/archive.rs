//! The WAL archive: accepting a file (validate, hash, compress, store durably, index) and serving
//! it back (verify, then stream). HTTP-agnostic; [`crate::http`] maps its errors to statuses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use pgwal::checksum::{Sha256, Xxh3};
use pgwal::name::WalFileName;
use pgwal::page::{Expectations, SegmentValidator, ValidationErrorKind};
use pgwal::segment::SegmentSize;

use crate::catalog::{now_rfc3339, Binding, Catalog, CatalogError, WalRow};
use crate::storage::{BlobStore, BlobUpload, PutOutcome, StorageError};
use crate::wal::object_format::{Compressor, Decompressor, Trailer, TRAILER_LEN};

/// Largest segment PostgreSQL can write (`--wal-segsize=1024`).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// `.history` and `.backup` files are a few hundred bytes; anything near this is not one.
pub const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;
/// A client that sends nothing for this long is disconnected (DESIGN §7.6: nothing hangs).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Compressed output is handed to storage in pieces of about this size.
const OUTPUT_FLUSH_BYTES: usize = 1 << 20;

/// Why a file was not accepted, or could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    BadName(String),
    #[error("{message}")]
    Invalid {
        /// `not_wal`, `wrong_system`, `wrong_segment_size`, `name_mismatch`, `truncated`,
        /// `too_long`, `bad_history`, `bad_backup_history`, `checksum_mismatch`, `bad_encoding`.
        kind: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    OutOfSpace(String),
    /// A stored object failed its checksum or could not be decoded: never served.
    #[error("{0}")]
    Corrupt(String),
    /// The catalog lists the file but storage has no object for it.
    #[error("{0}")]
    MissingObject(String),
    #[error("{0}")]
    Body(String),
    #[error("{0}")]
    Storage(String),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
}

impl ArchiveError {
    fn invalid(kind: &'static str, message: impl Into<String>) -> Self {
        ArchiveError::Invalid {
            kind,
            message: message.into(),
        }
    }

    fn from_storage(e: StorageError) -> Self {
        match e {
            StorageError::OutOfSpace(m) => ArchiveError::OutOfSpace(format!(
                "the archive's storage is full ({m}); free space on the archive host, PostgreSQL will retry"
            )),
            StorageError::NotFound(m) => ArchiveError::MissingObject(m),
            StorageError::Io(m) => ArchiveError::Storage(m),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// 201: newly stored.
    Created,
    /// 200: an identical copy was already stored.
    AlreadyStored,
}

#[derive(Clone, Debug)]
pub struct IngestResult {
    pub stored: Stored,
    pub sha256: String,
    pub xxh3: String,
    pub size: u64,
    pub stored_size: u64,
}

/// What the client sent.
pub struct Upload<S> {
    pub body: S,
    /// The body is a zstd stream (stored as sent, after verification).
    pub zstd: bool,
    /// `X-Content-Sha256` as claimed by the client, lowercase hex.
    pub claimed_sha256: Option<String>,
    /// `X-Content-Xxh3` as claimed by the client, lowercase hex.
    pub claimed_xxh3: Option<String>,
}

#[derive(Clone)]
pub struct Archive {
    pub catalog: Catalog,
    pub blobs: Arc<dyn BlobStore>,
}

/// The storage key of a WAL file: segments grouped 256 MiB..4 GiB per directory by their
/// timeline+log id, history files apart.
pub fn object_key(cluster: &str, name: &WalFileName) -> String {
    let text = name.to_string();
    match name {
        WalFileName::History { .. } => format!("wal/{cluster}/history/{text}.zst"),
        _ => format!("wal/{cluster}/{}/{text}.zst", &text[..16]),
    }
}

/// Parses a storage key back into (cluster, WAL name); `None` for keys that are not WAL objects.
pub fn parse_object_key(key: &str) -> Option<(String, WalFileName)> {
    let rest = key.strip_prefix("wal/")?;
    let (cluster, rest) = rest.split_once('/')?;
    let file = rest.rsplit('/').next()?;
    let name: WalFileName = file.strip_suffix(".zst")?.parse().ok()?;
    if crate::config::validate_cluster_name(cluster).is_err() || object_key(cluster, &name) != key {
        return None;
    }
    Some((cluster.to_string(), name))
}

pub fn kind_str(name: &WalFileName) -> &'static str {
    match name {
        WalFileName::Segment { .. } => "segment",
        WalFileName::Partial { .. } => "partial",
        WalFileName::History { .. } => "history",
        WalFileName::Backup { .. } => "backup",
    }
}

/// Per-upload state: validation, hashing and (re)compression in one pass over the bytes.
struct Pipeline {
    validator: Option<SegmentValidator>,
    small: Option<Vec<u8>>,
    hasher: Sha256,
    xxh3: Xxh3,
    size: u64,
    limit: u64,
    compressor: Option<Compressor>,
    decompressor: Option<Decompressor>,
    /// Bytes to write to storage next.
    out: Vec<u8>,
    /// When false (identity check of an already stored name), nothing is written.
    store: bool,
}

impl Pipeline {
    /// Feeds one chunk of the request body.
    fn feed(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        match self.decompressor.as_mut() {
            Some(dec) => {
                if self.store {
                    // Client-compressed bytes are stored as sent.
                    self.out.extend_from_slice(chunk);
                }
                let (validator, small, hashers, size, limit) = (
                    &mut self.validator,
                    &mut self.small,
                    (&mut self.hasher, &mut self.xxh3),
                    &mut self.size,
                    self.limit,
                );
                dec.write(chunk, |plain| {
                    absorb(
                        validator,
                        small,
                        (&mut *hashers.0, &mut *hashers.1),
                        size,
                        limit,
                        plain,
                    )
                    .map_err(|e| std::io::Error::other(e.to_string()))
                })
                .map_err(|e| {
                    ArchiveError::invalid(
                        "bad_encoding",
                        format!("the zstd-encoded body could not be decoded: {e}"),
                    )
                })
            }
            None => {
                absorb(
                    &mut self.validator,
                    &mut self.small,
                    (&mut self.hasher, &mut self.xxh3),
                    &mut self.size,
                    self.limit,
                    chunk,
                )?;
                if let Some(c) = self.compressor.as_mut() {
                    c.write(chunk, &mut self.out)
                        .map_err(|e| ArchiveError::Storage(format!("compression failed: {e}")))?;
                }
                Ok(())
            }
        }
    }
}

fn absorb(
    validator: &mut Option<SegmentValidator>,
    small: &mut Option<Vec<u8>>,
    (hasher, xxh3): (&mut Sha256, &mut Xxh3),
    size: &mut u64,
    limit: u64,
    plain: &[u8],
) -> Result<(), ArchiveError> {
    *size += plain.len() as u64;
    if *size > limit {
        return Err(ArchiveError::invalid(
            "too_long",
            format!("the file is longer than {limit} bytes, the most this kind of WAL file can be"),
        ));
    }
    hasher.update(plain);
    xxh3.update(plain);
    if let Some(v) = validator.as_mut() {
        v.update(plain).map_err(validation_error)?;
    }
    if let Some(buf) = small.as_mut() {
        buf.extend_from_slice(plain);
    }
    Ok(())
}

fn validation_error(e: pgwal::page::ValidationError) -> ArchiveError {
    let kind = match e.kind() {
        ValidationErrorKind::NotWal => "not_wal",
        ValidationErrorKind::WrongSystem => "wrong_system",
        ValidationErrorKind::WrongSegmentSize => "wrong_segment_size",
        ValidationErrorKind::NameMismatch => "name_mismatch",
        ValidationErrorKind::Truncated => "truncated",
        ValidationErrorKind::TooLong => "too_long",
    };
    ArchiveError::invalid(kind, e.to_string())
}

impl Archive {
    /// Validates and stores one WAL file. Returns only once the object is durable
    /// (DESIGN §7.1) or an identical copy is known to be stored.
    pub async fn ingest<S, E>(
        &self,
        cluster: &str,
        name: &WalFileName,
        upload: Upload<S>,
        compression_level: i32,
    ) -> Result<IngestResult, ArchiveError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let cluster_row = self.catalog.cluster(cluster).await?;
        let existing = self.catalog.wal(cluster, &name.to_string()).await?;
        let segment_like = matches!(
            name,
            WalFileName::Segment { .. } | WalFileName::Partial { .. }
        );
        let validator = if segment_like {
            let segment_size = match cluster_row.as_ref().and_then(|c| c.segment_size) {
                Some(z) => Some(SegmentSize::new(z).map_err(|e| {
                    ArchiveError::Storage(format!("catalog holds a bad segment size: {e}"))
                })?),
                None => None,
            };
            let expect = Expectations {
                system_identifier: cluster_row.as_ref().and_then(|c| c.system_identifier),
                segment_size,
            };
            Some(SegmentValidator::new(name, expect).map_err(validation_error)?)
        } else {
            None
        };
        // A row whose object was lost (state `missing`) may be repaired by pushing the same
        // bytes again; anything else already cataloged is only compared.
        let repair = existing.as_ref().filter(|r| r.state != "ok").cloned();
        let existing = existing.filter(|r| r.state == "ok");
        let store = existing.is_none();
        let mut pipeline =
            Pipeline {
                validator,
                small: (!segment_like).then(Vec::new),
                hasher: Sha256::new(),
                xxh3: Xxh3::new(),
                size: 0,
                limit: if segment_like {
                    MAX_SEGMENT_BYTES
                } else {
                    MAX_SMALL_FILE_BYTES
                },
                compressor: if store && !upload.zstd {
                    Some(Compressor::new(compression_level).map_err(|e| {
                        ArchiveError::Storage(format!("cannot start compression: {e}"))
                    })?)
                } else {
                    None
                },
                decompressor: if upload.zstd {
                    Some(Decompressor::new().map_err(|e| {
                        ArchiveError::Storage(format!("cannot start decompression: {e}"))
                    })?)
                } else {
                    None
                },
                out: Vec::new(),
                store,
            };

        let key = object_key(cluster, name);
        let mut blob = if store {
            Some(
                self.blobs
                    .begin_put(&key)
                    .await
                    .map_err(ArchiveError::from_storage)?,
            )
        } else {
            None
        };
        let result = self
            .run_pipeline(&mut pipeline, upload, blob.as_deref_mut())
            .await;
        let (sha256, xxh3, size) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(b) = blob {
                    b.abort().await;
                }
                return Err(e);
            }
        };
        let checked = self.check_content(cluster, name, &mut pipeline).await;
        if let Err(e) = checked {
            if let Some(b) = blob {
                b.abort().await;
            }
            return Err(e);
        }

        if let Some(row) = existing {
            return same_or_conflict(name, &row.sha256, &sha256, &xxh3, size, row.stored_size);
        }
        if let Some(row) = &repair {
            if row.sha256 != sha256 {
                if let Some(b) = blob {
                    b.abort().await;
                }
                return same_or_conflict(name, &row.sha256, &sha256, &xxh3, size, row.stored_size);
            }
        }
        let Some(mut blob) = blob else {
            return Err(ArchiveError::Storage("upload not started".into()));
        };
        // Trailer: checksum and size travel with the object (see object_format).
        let mut tail = std::mem::take(&mut pipeline.out);
        if let Some(c) = pipeline.compressor.as_mut() {
            c.finish(&mut tail)
                .map_err(|e| ArchiveError::Storage(format!("compression failed: {e}")))?;
        }
        let digest: [u8; 32] = hex::decode(&sha256)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ArchiveError::Storage("internal: bad digest".into()))?;
        tail.extend_from_slice(
            &Trailer {
                sha256: digest,
                size,
            }
            .encode(),
        );
        if let Err(e) = blob.write(&tail).await {
            blob.abort().await;
            return Err(ArchiveError::from_storage(e));
        }
        match blob.commit().await.map_err(ArchiveError::from_storage)? {
            PutOutcome::Created => {
                let stored_size = self
                    .blobs
                    .head(&key)
                    .await
                    .map_err(ArchiveError::from_storage)?
                    .unwrap_or(0);
                let row = WalRow {
                    cluster: cluster.to_string(),
                    name: name.to_string(),
                    kind: kind_str(name).to_string(),
                    timeline: name.timeline(),
                    size,
                    sha256: sha256.clone(),
                    xxh3: Some(xxh3.clone()),
                    stored_size,
                    object_key: key,
                    archived_at: now_rfc3339(),
                    state: "ok".into(),
                };
                if repair.is_some() {
                    self.catalog.set_wal_state(cluster, &row.name, "ok").await?;
                    tracing::info!(cluster, file = %row.name, "missing object restored by a new upload");
                } else {
                    self.catalog.insert_wal(row).await?;
                }
                Ok(IngestResult {
                    stored: Stored::Created,
                    sha256,
                    xxh3,
                    size,
                    stored_size,
                })
            }
            PutOutcome::AlreadyExists => {
                // Another upload of the same name won the race (or the catalog lost its row in
                // a crash): the stored object's own trailer says what it holds.
                let trailer = self.read_trailer(&key).await?;
                let stored_size = self.blobs.head(&key).await.ok().flatten().unwrap_or(0);
                let result = same_or_conflict(
                    name,
                    &trailer.sha256_hex(),
                    &sha256,
                    &xxh3,
                    size,
                    stored_size,
                )?;
                let row = WalRow {
                    cluster: cluster.to_string(),
                    name: name.to_string(),
                    kind: kind_str(name).to_string(),
                    timeline: name.timeline(),
                    size,
                    sha256,
                    xxh3: Some(xxh3),
                    stored_size,
                    object_key: key,
                    archived_at: now_rfc3339(),
                    state: "ok".into(),
                };
                self.catalog.insert_wal(row).await?;
                Ok(result)
            }
        }
    }

    async fn run_pipeline<S, E>(
        &self,
        p: &mut Pipeline,
        upload: Upload<S>,
        mut blob: Option<&mut (dyn BlobUpload + '_)>,
    ) -> Result<(String, String, u64), ArchiveError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut body = upload.body;
        loop {
            let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next())
                .await
                .map_err(|_| {
                    ArchiveError::Body(format!(
                        "no data received for {}s; upload abandoned",
                        BODY_IDLE_TIMEOUT.as_secs()
                    ))
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| ArchiveError::Body(format!("reading the body: {e}")))?;
            p.feed(&chunk)?;
            if p.out.len() >= OUTPUT_FLUSH_BYTES {
                if let Some(b) = blob.as_deref_mut() {
                    b.write(&p.out).await.map_err(ArchiveError::from_storage)?;
                }
                p.out.clear();
            }
        }
        let sha256 = std::mem::take(&mut p.hasher).finish_hex();
        if let Some(claimed) = upload.claimed_sha256 {
            if !claimed.eq_ignore_ascii_case(&sha256) {
                return Err(ArchiveError::invalid(
                    "checksum_mismatch",
                    format!(
                        "the body's SHA-256 is {sha256} but X-Content-Sha256 says {claimed}: \
                         the file changed or was damaged in transit"
                    ),
                ));
            }
        }
        let xxh3 = p.xxh3.finish_hex();
        if let Some(claimed) = upload.claimed_xxh3 {
            if !claimed.eq_ignore_ascii_case(&xxh3) {
                return Err(ArchiveError::invalid(
                    "checksum_mismatch",
                    format!(
                        "the body's XXH3-128 is {xxh3} but X-Content-Xxh3 says {claimed}: the \
                         file changed or was damaged in transit"
                    ),
                ));
            }
        }
        Ok((sha256, xxh3, p.size))
    }

    /// Final content checks once the whole body is in: segment completeness and cluster binding,
    /// or the form of a `.history` / `.backup` file.
    async fn check_content(
        &self,
        cluster: &str,
        name: &WalFileName,
        p: &mut Pipeline,
    ) -> Result<(), ArchiveError> {
        if let Some(v) = p.validator.take() {
            let info = v.finish().map_err(validation_error)?;
            match self
                .catalog
                .bind_cluster(
                    cluster,
                    info.system_identifier,
                    info.segment_size.bytes(),
                    info.pg_major,
                )
                .await?
            {
                Binding::Ok => Ok(()),
                Binding::Mismatch {
                    system_identifier,
                    segment_size,
                } => {
                    if system_identifier != info.system_identifier {
                        Err(ArchiveError::invalid(
                            "wrong_system",
                            format!(
                                "{name} belongs to database system {}, but cluster {cluster:?} \
                                 is bound to system {system_identifier}: check that \
                                 archive_command names the right --cluster",
                                info.system_identifier
                            ),
                        ))
                    } else {
                        Err(ArchiveError::invalid(
                            "wrong_segment_size",
                            format!(
                                "{name} has {} byte segments, cluster {cluster:?} has {segment_size}",
                                info.segment_size.bytes()
                            ),
                        ))
                    }
                }
            }
        } else {
            let data = p.small.take().unwrap_or_default();
            match name {
                WalFileName::History { tli } => {
                    pgwal::history::parse_history_bytes(*tli, &data).map_err(|e| {
                        ArchiveError::invalid(
                            "bad_history",
                            format!("{name} is not a valid timeline history file: {e}"),
                        )
                    })?;
                    Ok(())
                }
                WalFileName::Backup { .. } => {
                    let text = std::str::from_utf8(&data).map_err(|_| {
                        ArchiveError::invalid(
                            "bad_backup_history",
                            format!("{name} is not text, so not a backup history file"),
                        )
                    })?;
                    let h = pgwal::backup_history::parse_backup_history(text).map_err(|e| {
                        ArchiveError::invalid(
                            "bad_backup_history",
                            format!("{name} is not a valid backup history file: {e}"),
                        )
                    })?;
                    let size = self
                        .catalog
                        .cluster(cluster)
                        .await?
                        .and_then(|c| c.segment_size)
                        .and_then(|z| SegmentSize::new(z).ok());
                    pgwal::backup_history::check_backup_history_name(name, &h, size).map_err(
                        |e| {
                            ArchiveError::invalid(
                                "bad_backup_history",
                                format!("{name} does not match its content: {e}"),
                            )
                        },
                    )?;
                    Ok(())
                }
                _ => Err(ArchiveError::BadName(format!("{name}: unexpected kind"))),
            }
        }
    }

    async fn read_trailer(&self, key: &str) -> Result<Trailer, ArchiveError> {
        let size = self
            .blobs
            .head(key)
            .await
            .map_err(ArchiveError::from_storage)?
            .ok_or_else(|| ArchiveError::MissingObject(format!("object {key} is missing")))?;
        if size < TRAILER_LEN as u64 {
            return Err(ArchiveError::Corrupt(format!(
                "object {key} is {size} bytes, too short to be a stored WAL file"
            )));
        }
        let bytes = self
            .blobs
            .get_range(key, size - TRAILER_LEN as u64..size)
            .await
            .map_err(ArchiveError::from_storage)?;
        Trailer::decode(&bytes)
            .ok_or_else(|| ArchiveError::Corrupt(format!("object {key} has no valid trailer")))
    }

    /// Looks a file up and re-verifies the stored object end to end (decompress + SHA-256)
    /// before anything is served (DESIGN §7.3).
    pub async fn verified(
        &self,
        cluster: &str,
        name: &WalFileName,
    ) -> Result<WalRow, ArchiveError> {
        let row = self
            .catalog
            .wal(cluster, &name.to_string())
            .await?
            .ok_or_else(|| {
                ArchiveError::NotFound(format!(
                    "{name} is not in the archive of cluster {cluster:?}"
                ))
            })?;
        if row.state != "ok" {
            return Err(ArchiveError::MissingObject(format!(
                "{name} is cataloged but its object {} is missing from storage",
                row.object_key
            )));
        }
        let (sha, size) = self.hash_object(&row.object_key).await?;
        if sha != row.sha256 || size != row.size {
            return Err(ArchiveError::Corrupt(format!(
                "stored {name} fails its checksum: expected SHA-256 {} ({} bytes), read {sha} \
                 ({size} bytes); the object {} is damaged and will not be served",
                row.sha256, row.size, row.object_key
            )));
        }
        Ok(row)
    }

    /// Decompresses and hashes a stored object.
    pub async fn hash_object(&self, key: &str) -> Result<(String, u64), ArchiveError> {
        let mut stream = self
            .blobs
            .get(key)
            .await
            .map_err(ArchiveError::from_storage)?;
        let mut dec = Decompressor::new()
            .map_err(|e| ArchiveError::Storage(format!("cannot start decompression: {e}")))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(ArchiveError::from_storage)?;
            dec.write(&chunk, |plain| {
                size += plain.len() as u64;
                hasher.update(plain);
                Ok(())
            })
            .map_err(|e| {
                ArchiveError::Corrupt(format!("stored object {key} cannot be decompressed: {e}"))
            })?;
        }
        Ok((hasher.finish_hex(), size))
    }
}

fn same_or_conflict(
    name: &WalFileName,
    stored_sha: &str,
    new_sha: &str,
    new_xxh3: &str,
    size: u64,
    stored_size: u64,
) -> Result<IngestResult, ArchiveError> {
    if stored_sha == new_sha {
        Ok(IngestResult {
            stored: Stored::AlreadyStored,
            sha256: new_sha.to_string(),
            xxh3: new_xxh3.to_string(),
            size,
            stored_size,
        })
    } else {
        Err(ArchiveError::Conflict(format!(
            "{name} is already archived with different content (stored SHA-256 {stored_sha}, \
             this file {new_sha}); the stored copy is kept. Two servers may be archiving to the \
             same cluster name, or this cluster was re-initialised: use a new --cluster name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip() {
        for n in [
            "000000010000000000000001",
            "00000002.history",
            "000000010000000A000000FF.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            let name: WalFileName = n.parse().expect("valid");
            let key = object_key("main", &name);
            assert_eq!(parse_object_key(&key), Some(("main".to_string(), name)));
        }
        assert_eq!(parse_object_key("wal/main/x.zst"), None);
        assert_eq!(parse_object_key("staging/1"), None);
        assert_eq!(
            parse_object_key("wal/main/0000000100000000/000000020000000000000001.zst"),
            None
        );
    }
}
