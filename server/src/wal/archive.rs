//! The WAL archive: accepting a file (validate, hash, compress, store durably, index) and serving
//! it back (verify, then stream). HTTP-agnostic; [`crate::http`] maps its errors to statuses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use pgwal::checksum::{Crc32c, Sha256, Xxh3};
use pgwal::name::WalFileName;
use pgwal::page::{Expectations, SegmentValidator, ValidationErrorKind};
use pgwal::segment::SegmentSize;

use crate::catalog::{now_rfc3339, Binding, Catalog, CatalogError, WalRow};
use crate::storage::{BlobStore, BlobStream, BlobUpload, PutOutcome, StorageError};
use crate::wal::object_format::{Compressor, Decompressor, Trailer, TRAILER_LEN};

/// Largest segment PostgreSQL can write (`--wal-segsize=1024`).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// `.history` and `.backup` files are a few hundred bytes; anything near this is not one.
pub const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;
/// A client that sends nothing for this long is disconnected (DESIGN §7.6: nothing hangs); the
/// default of `body_idle_timeout`.
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

    pub(crate) fn from_storage(e: StorageError) -> Self {
        match e {
            StorageError::OutOfSpace(m) => ArchiveError::OutOfSpace(format!(
                "the archive's storage is full ({m}); free space on the archive host, PostgreSQL will retry"
            )),
            StorageError::NotFound(m) => ArchiveError::MissingObject(m),
            StorageError::Io(m) | StorageError::Precondition(m) => ArchiveError::Storage(m),
            // A key the server lacks is configuration, not damage: 503 with the message that
            // says which key to add, and the object is never treated as damaged.
            StorageError::Key(m) => ArchiveError::Storage(m),
            // Sealed bytes that fail authentication are damaged, as a failed checksum is.
            StorageError::Damaged(m) => ArchiveError::Corrupt(m),
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
    /// The longest wait for the next piece of the body.
    pub idle_timeout: Duration,
}

#[derive(Clone)]
pub struct Archive {
    pub catalog: Catalog,
    pub blobs: Arc<dyn BlobStore>,
    /// This archive's identity, created with its storage ([`instance_identity`]).
    pub instance: Arc<str>,
}

/// Where the archive's identity is stored.
pub const INSTANCE_KEY: &str = crate::storage::INSTANCE_KEY;

/// The identity of the archive whose storage this is: read from [`INSTANCE_KEY`], or created
/// there (128 random bits, in hex) when storage has none, never overwritten. A server on new
/// storage, or on storage restored from an older copy without it, is another instance.
pub async fn instance_identity(blobs: &dyn BlobStore) -> Result<String, ArchiveError> {
    for _ in 0..3 {
        if blobs
            .head(INSTANCE_KEY)
            .await
            .map_err(ArchiveError::from_storage)?
            .is_some()
        {
            let mut stream = blobs
                .get(INSTANCE_KEY)
                .await
                .map_err(ArchiveError::from_storage)?;
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.map_err(ArchiveError::from_storage)?);
                if bytes.len() > 64 {
                    break;
                }
            }
            let id = String::from_utf8_lossy(&bytes).trim().to_string();
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ArchiveError::Corrupt(format!(
                    "{INSTANCE_KEY} in storage holds {id:?}, not an archive identity"
                )));
            }
            return Ok(id);
        }
        let mut random = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .map_err(|e| ArchiveError::Storage(format!("cannot read /dev/urandom: {e}")))?;
        let id = hex::encode(random);
        let mut up = blobs
            .begin_put(INSTANCE_KEY)
            .await
            .map_err(ArchiveError::from_storage)?;
        if let Err(e) = up.write(format!("{id}\n").as_bytes()).await {
            up.abort().await;
            return Err(ArchiveError::from_storage(e));
        }
        if up.commit().await.map_err(ArchiveError::from_storage)? == PutOutcome::Created {
            return Ok(id);
        }
        // Another server created it first: read that one.
    }
    Err(ArchiveError::Storage(format!(
        "cannot read or create {INSTANCE_KEY}"
    )))
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
    /// Bytes of the body as sent (compressed or not), and the most it may have.
    received: u64,
    body_limit: u64,
    compressor: Option<Compressor>,
    decompressor: Option<Decompressor>,
    /// Bytes to write to storage next.
    out: Vec<u8>,
    /// Bytes handed to storage so far.
    written: u64,
    /// When storage says the published object was written.
    stored_at: Option<std::time::SystemTime>,
    /// When false (identity check of an already stored name), nothing is written.
    store: bool,
}

impl Pipeline {
    /// Feeds one chunk of the request body.
    fn feed(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        self.received += chunk.len() as u64;
        if self.received > self.body_limit {
            return Err(ArchiveError::invalid(
                "too_long",
                format!(
                    "the body is longer than {} bytes, more than this file can take even \
                     compressed; nothing was stored",
                    self.body_limit
                ),
            ));
        }
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
    // The validator first: what is wrong with a segment (its header names another size or
    // system) says more than its length does.
    if let Some(v) = validator.as_mut() {
        v.update(plain).map_err(validation_error)?;
    }
    *size += plain.len() as u64;
    if *size > limit {
        return Err(ArchiveError::invalid(
            "too_long",
            format!("the file is longer than {limit} bytes, the most this kind of WAL file can be"),
        ));
    }
    hasher.update(plain);
    xxh3.update(plain);
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

/// What an upload is for, decided from what the name already holds before the body is read.
enum Target {
    /// Nothing is cataloged under the name: store it.
    New,
    /// The name is cataloged and its object is intact: compare, store nothing (a `.partial`
    /// is kept in a scratch object for a byte-wise comparison, see [`Archive::same_partial`]).
    Compare(WalRow),
    /// The name is cataloged but its object is missing (`damaged: None`) or fails its own
    /// checks (`damaged: Some(why)`): the same bytes repair it; different ones are a conflict.
    Repair {
        row: WalRow,
        damaged: Option<String>,
    },
}

/// What storage holds for a cataloged file.
enum ObjectState {
    Intact,
    Missing,
    Damaged(String),
}

/// Prefix of objects that exist only for the duration of one request (a second `.partial` kept
/// for comparison); anything under it at start is debris.
pub const SCRATCH_PREFIX: &str = "scratch";

impl Archive {
    /// Validates and stores one WAL file. Returns only once the object is durable and proven to
    /// hold exactly the validated bytes (DESIGN §7.1, §7.3), or an identical copy is known to be
    /// stored and intact.
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
        let key = object_key(cluster, name);
        let target = match self.catalog.wal(cluster, &name.to_string()).await? {
            None => Target::New,
            Some(row) => match self.object_state(&row).await? {
                ObjectState::Intact => Target::Compare(row),
                ObjectState::Missing => Target::Repair { row, damaged: None },
                ObjectState::Damaged(why) => Target::Repair {
                    row,
                    damaged: Some(why),
                },
            },
        };
        let segment_like = matches!(
            name,
            WalFileName::Segment { .. } | WalFileName::Partial { .. }
        );
        let segment_size = match cluster_row.as_ref().and_then(|c| c.segment_size) {
            Some(z) => Some(SegmentSize::new(z).map_err(|e| {
                ArchiveError::Storage(format!("catalog holds a bad segment size: {e}"))
            })?),
            None => None,
        };
        let validator = if segment_like {
            let expect = Expectations {
                system_identifier: cluster_row.as_ref().and_then(|c| c.system_identifier),
                segment_size,
            };
            Some(SegmentValidator::new(name, expect).map_err(validation_error)?)
        } else {
            None
        };
        let limit = if segment_like {
            segment_size.map_or(MAX_SEGMENT_BYTES, |z| z.bytes())
        } else {
            MAX_SMALL_FILE_BYTES
        };
        // A second `.partial` of a stored name may be the same WAL with other bytes after the
        // switch point: it is kept aside until compared.
        let scratch = matches!(
            (&target, name),
            (Target::Compare(_), WalFileName::Partial { .. })
        );
        let store = !matches!(target, Target::Compare(_)) || scratch;
        let mut pipeline =
            Pipeline {
                validator,
                small: (!segment_like).then(Vec::new),
                hasher: Sha256::new(),
                xxh3: Xxh3::new(),
                size: 0,
                limit,
                received: 0,
                body_limit: body_limit(limit),
                compressor: if store && !upload.zstd {
                    Some(Compressor::new(compression_level).map_err(|e| {
                        ArchiveError::Storage(format!("cannot start compression: {e}"))
                    })?)
                } else {
                    None
                },
                decompressor: if upload.zstd {
                    Some(Decompressor::for_upload().map_err(|e| {
                        ArchiveError::Storage(format!("cannot start decompression: {e}"))
                    })?)
                } else {
                    None
                },
                out: Vec::new(),
                written: 0,
                stored_at: None,
                store,
            };
        let put_key = if scratch {
            scratch_key(cluster, name)
        } else {
            key.clone()
        };
        let mut blob = if store {
            Some(
                self.blobs
                    .begin_put(&put_key)
                    .await
                    .map_err(ArchiveError::from_storage)?,
            )
        } else {
            None
        };
        let checked = match self
            .run_pipeline(&mut pipeline, upload, blob.as_deref_mut())
            .await
        {
            Ok(sums) => self
                .check_content(cluster, name, &mut pipeline)
                .await
                .map(|()| sums),
            Err(e) => Err(e),
        };
        let (sha256, xxh3, size) = match checked {
            Ok(v) => v,
            Err(e) => {
                if let Some(b) = blob {
                    b.abort().await;
                }
                return Err(e);
            }
        };
        crate::crash::point("ingest.received");
        let incoming = Incoming {
            name,
            sha256: &sha256,
            xxh3: &xxh3,
            size,
        };
        let row = match target {
            Target::Compare(row) => {
                if row.sha256 == sha256 || !scratch {
                    if let Some(b) = blob {
                        b.abort().await;
                    }
                    return same_or_conflict(&incoming, &row.sha256, row.stored_size);
                }
                let Some(blob) = blob else {
                    return Err(ArchiveError::Storage("upload not started".into()));
                };
                let result = self
                    .compare_partial(cluster, &row, &put_key, blob, &mut pipeline)
                    .await;
                let _ = self.blobs.delete(&put_key).await;
                return match result? {
                    true => Ok(IngestResult {
                        stored: Stored::AlreadyStored,
                        sha256,
                        xxh3,
                        size,
                        stored_size: row.stored_size,
                    }),
                    false => same_or_conflict(&incoming, &row.sha256, row.stored_size),
                };
            }
            Target::Repair { row, damaged } => {
                if row.sha256 != sha256 {
                    if let Some(b) = blob {
                        b.abort().await;
                    }
                    return same_or_conflict(&incoming, &row.sha256, row.stored_size);
                }
                if let Some(why) = damaged {
                    // Never overwritten: the damaged object is moved aside, then the good bytes
                    // take its name.
                    tracing::error!(cluster, file = %name, key = %key,
                        "the stored object is damaged ({why}); moving it to quarantine and storing the uploaded copy, which matches the catalog");
                    if let Err(e) = self.quarantine(&key).await {
                        if let Some(b) = blob {
                            b.abort().await;
                        }
                        return Err(e);
                    }
                }
                Some(row)
            }
            Target::New => None,
        };
        let repairing = row.is_some();
        let Some(blob) = blob else {
            return Err(ArchiveError::Storage("upload not started".into()));
        };
        match self
            .publish(&key, blob, &mut pipeline, &sha256, size)
            .await?
        {
            PutOutcome::Created => {
                crate::crash::point("ingest.published");
                let stored_size = pipeline.written;
                let new_row = WalRow {
                    cluster: cluster.to_string(),
                    name: name.to_string(),
                    kind: kind_str(name).to_string(),
                    timeline: name.timeline(),
                    size,
                    sha256: sha256.clone(),
                    xxh3: Some(xxh3.clone()),
                    stored_size,
                    object_key: key,
                    archived_at: pipeline
                        .stored_at
                        .map_or_else(now_rfc3339, crate::catalog::rfc3339),
                    state: "ok".into(),
                };
                if repairing {
                    self.catalog.repair_wal(new_row).await?;
                    tracing::info!(cluster, file = %name, "stored object repaired by a new upload of the same bytes");
                } else {
                    self.catalog.insert_wal(new_row).await?;
                }
                crate::crash::point("ingest.cataloged");
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
                let (trailer, stored_size) = match self.read_trailer(&key).await {
                    Ok(t) => t,
                    Err(ArchiveError::Corrupt(why)) => {
                        // An uncataloged, damaged object under the name: out of the way, and
                        // the client retries (503) with a free name.
                        tracing::error!(cluster, file = %name, key = %key, "{why}; moving it to quarantine");
                        self.quarantine(&key).await?;
                        return Err(ArchiveError::Storage(format!(
                            "a damaged object stood under {name}; it was moved to quarantine: retry"
                        )));
                    }
                    Err(e) => return Err(e),
                };
                let result = same_or_conflict(&incoming, &trailer.sha256_hex(), stored_size)?;
                let archived_at = match self.blobs.stat(&key).await {
                    Ok(Some(m)) => crate::catalog::rfc3339(m.last_modified),
                    _ => now_rfc3339(),
                };
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
                    archived_at,
                    state: "ok".into(),
                };
                if repairing {
                    self.catalog.repair_wal(row).await?;
                } else {
                    self.catalog.insert_wal(row).await?;
                }
                Ok(result)
            }
        }
    }

    /// Writes what is left of the object (the end of the compressed stream and the checksum
    /// trailer) and publishes it under `key`, never over an existing object. `Created` is
    /// returned only once the object is durable and its size is exactly what was written: with
    /// the frames already proven whole while they were decoded or made, that proves it decodes
    /// to exactly the validated bytes.
    async fn publish(
        &self,
        key: &str,
        mut blob: Box<dyn BlobUpload>,
        pipeline: &mut Pipeline,
        sha256: &str,
        size: u64,
    ) -> Result<PutOutcome, ArchiveError> {
        let mut tail = std::mem::take(&mut pipeline.out);
        if let Some(c) = pipeline.compressor.as_mut() {
            if let Err(e) = c.finish(&mut tail) {
                blob.abort().await;
                return Err(ArchiveError::Storage(format!("compression failed: {e}")));
            }
        }
        let Some(digest) = hex::decode(sha256)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
        else {
            blob.abort().await;
            return Err(ArchiveError::Storage("internal: bad digest".into()));
        };
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
        pipeline.written += tail.len() as u64;
        let outcome = blob.commit().await.map_err(ArchiveError::from_storage)?;
        if outcome == PutOutcome::Created {
            let meta = self
                .blobs
                .stat(key)
                .await
                .map_err(ArchiveError::from_storage)?;
            let stored = meta.as_ref().map(|m| m.size);
            // The catalog's time of the file is the object's own, which a rebuild reads back.
            pipeline.stored_at = meta.map(|m| m.last_modified);
            if stored != Some(pipeline.written) {
                tracing::error!(key, written = pipeline.written, stored = ?stored,
                    "the published object does not have the size written; moving it to quarantine");
                let _ = self.quarantine(key).await;
                return Err(ArchiveError::Storage(format!(
                    "storage holds {stored:?} bytes for {key} after {} were written; nothing \
                     was acknowledged: retry",
                    pipeline.written
                )));
            }
        }
        Ok(outcome)
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
        let idle = upload.idle_timeout;
        loop {
            let next = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
                ArchiveError::Body(format!(
                    "no data received for {}s; upload abandoned, nothing stored",
                    idle.as_secs()
                ))
            })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| ArchiveError::Body(format!("reading the body: {e}")))?;
            p.feed(&chunk)?;
            if p.out.len() >= OUTPUT_FLUSH_BYTES {
                if let Some(b) = blob.as_deref_mut() {
                    b.write(&p.out).await.map_err(ArchiveError::from_storage)?;
                    p.written += p.out.len() as u64;
                }
                p.out.clear();
            }
        }
        if let Some(dec) = &p.decompressor {
            // What is stored is what was decoded: it must be whole frames, so that it decodes
            // again to exactly these bytes (DESIGN §7.3).
            if !dec.is_complete() {
                return Err(ArchiveError::invalid(
                    "bad_encoding",
                    "the zstd-encoded body does not end with a complete frame (it was cut \
                     short, or bytes follow its last frame); nothing was stored",
                ));
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

    async fn check_content(
        &self,
        cluster: &str,
        name: &WalFileName,
        p: &mut Pipeline,
    ) -> Result<(), ArchiveError> {
        if let Some(v) = p.validator.take() {
            let info = v.finish().map_err(validation_error)?;
            match self
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

    /// The stored object's trailer and the object's size, read without the object's content.
    pub(crate) async fn read_trailer(&self, key: &str) -> Result<(Trailer, u64), ArchiveError> {
        let size = self
            .blobs
            .head(key)
            .await
            .map_err(ArchiveError::from_storage)?
            .ok_or_else(|| ArchiveError::MissingObject(format!("object {key} is missing")))?;
        self.read_trailer_at(key, size).await
    }

    /// [`Archive::read_trailer`] of an object whose size a listing gave: one read.
    pub(crate) async fn read_trailer_at(
        &self,
        key: &str,
        size: u64,
    ) -> Result<(Trailer, u64), ArchiveError> {
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
        let trailer = Trailer::decode(&bytes)
            .ok_or_else(|| ArchiveError::Corrupt(format!("object {key} has no valid trailer")))?;
        Ok((trailer, size))
    }

    /// Whether storage still holds the object of a cataloged file, as ingested: present, of the
    /// cataloged size, its trailer naming the cataloged checksum and length. Enough to tell an
    /// object that was removed, truncated, replaced or rotted in its last bytes from an intact
    /// one without reading it whole; a transient storage error is an error, never "damaged".
    async fn object_state(&self, row: &WalRow) -> Result<ObjectState, ArchiveError> {
        let (trailer, size) = match self.read_trailer(&row.object_key).await {
            Ok(t) => t,
            Err(ArchiveError::MissingObject(_)) => return Ok(ObjectState::Missing),
            Err(ArchiveError::Corrupt(why)) => return Ok(ObjectState::Damaged(why)),
            Err(e) => return Err(e),
        };
        if trailer.sha256_hex() != row.sha256 || trailer.size != row.size {
            return Ok(ObjectState::Damaged(format!(
                "its trailer says SHA-256 {} ({} bytes), the catalog {} ({} bytes)",
                trailer.sha256_hex(),
                trailer.size,
                row.sha256,
                row.size
            )));
        }
        if size != row.stored_size {
            return Ok(ObjectState::Damaged(format!(
                "it is {size} bytes, the catalog says {}",
                row.stored_size
            )));
        }
        if row.state != "ok" {
            // Reconciliation found it missing; it is back, intact.
            self.catalog
                .set_wal_state(&row.cluster, &row.name, "ok")
                .await?;
        }
        Ok(ObjectState::Intact)
    }

    /// Moves an object out of the archive's namespace to `quarantine/<key>` for a person to
    /// inspect. Copy first, then delete: the bytes are never only in flight.
    pub async fn quarantine(&self, key: &str) -> Result<(), ArchiveError> {
        // As stored: a sealed object that fails authentication is moved all the same.
        self.blobs
            .move_aside(key, &format!("quarantine/{key}"))
            .await
            .map_err(ArchiveError::from_storage)
    }

    /// Whether a second `.partial` of a stored name holds the same WAL (DESIGN §7.8): PostgreSQL
    /// and the streaming receiver both write `NAME.partial` at a promotion, with the same WAL up
    /// to the switch point and other bytes after it (recycled WAL in PostgreSQL's, zeros in the
    /// receiver's). They are the same WAL when they agree up to the switch point, which a
    /// timeline history of the cluster names; without one, up to the point after which either
    /// copy holds only zeros. The uploaded copy was stored at `scratch` (this commits it); the
    /// caller removes it.
    async fn compare_partial(
        &self,
        cluster: &str,
        row: &WalRow,
        scratch: &str,
        mut blob: Box<dyn BlobUpload>,
        pipeline: &mut Pipeline,
    ) -> Result<bool, ArchiveError> {
        let mut tail = std::mem::take(&mut pipeline.out);
        if let Some(c) = pipeline.compressor.as_mut() {
            if let Err(e) = c.finish(&mut tail) {
                blob.abort().await;
                return Err(ArchiveError::Storage(format!("compression failed: {e}")));
            }
        }
        if let Err(e) = blob.write(&tail).await {
            blob.abort().await;
            return Err(ArchiveError::from_storage(e));
        }
        blob.commit().await.map_err(ArchiveError::from_storage)?;
        let name: WalFileName = row
            .name
            .parse()
            .map_err(|e| ArchiveError::Storage(format!("catalog holds a bad name: {e}")))?;
        let switch = self.switch_offset(cluster, &name).await?;
        let cmp = compare_objects(&*self.blobs, &row.object_key, scratch).await?;
        let agree_to = match switch {
            Some(offset) => offset,
            None => cmp.zero_tail.0.min(cmp.zero_tail.1),
        };
        let same = cmp.first_difference.is_none_or(|d| d >= agree_to);
        tracing::warn!(cluster, file = %row.name, switch_offset = ?switch,
            first_difference = ?cmp.first_difference, same,
            "a second copy of a .partial segment with other bytes was compared with the stored one");
        Ok(same)
    }

    /// The offset in `partial`'s segment where its timeline ended, from the cluster's timeline
    /// history files; the smallest when several branches left it in that segment.
    async fn switch_offset(
        &self,
        cluster: &str,
        partial: &WalFileName,
    ) -> Result<Option<u64>, ArchiveError> {
        let Some(size) = self
            .catalog
            .cluster(cluster)
            .await?
            .and_then(|c| c.segment_size)
            .and_then(|z| SegmentSize::new(z).ok())
        else {
            return Ok(None);
        };
        let Some(segno) = partial.segno(size) else {
            return Ok(None);
        };
        let mut best: Option<u64> = None;
        for row in self.catalog.list_wal_kind(cluster, "history").await? {
            let Ok(WalFileName::History { tli }) = row.name.parse::<WalFileName>() else {
                continue;
            };
            let Ok(bytes) = self.read_small(&row.object_key).await else {
                continue;
            };
            let Ok(entries) = pgwal::history::parse_history_bytes(tli, &bytes) else {
                continue;
            };
            for e in entries
                .iter()
                .filter(|e| e.parent_tli == partial.timeline())
            {
                if size.segno_of(e.switchpoint) == segno {
                    let offset = size.offset_in_segment(e.switchpoint);
                    best = Some(best.map_or(offset, |b| b.min(offset)));
                }
            }
        }
        Ok(best)
    }

    /// The content of a small stored object (a history file), decompressed and checked.
    pub async fn read_small(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        let mut stream = self
            .blobs
            .get(key)
            .await
            .map_err(ArchiveError::from_storage)?;
        let mut dec = Decompressor::new()
            .map_err(|e| ArchiveError::Storage(format!("cannot start decompression: {e}")))?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(ArchiveError::from_storage)?;
            dec.write(&chunk, |plain| {
                if out.len() + plain.len() > MAX_SMALL_FILE_BYTES as usize {
                    return Err(std::io::Error::other("longer than a small file can be"));
                }
                out.extend_from_slice(plain);
                Ok(())
            })
            .map_err(|e| ArchiveError::Corrupt(format!("stored object {key}: {e}")))?;
        }
        Ok(out)
    }

    /// Binds `cluster` to a database system, in storage first (a create-only record, so that a
    /// catalog rebuilt from storage knows it) and then in the catalog; afterwards says whether
    /// a segment's system and size match it.
    pub async fn bind_cluster(
        &self,
        cluster: &str,
        system_identifier: u64,
        segment_size: u64,
        pg_major: u32,
    ) -> Result<Binding, ArchiveError> {
        if let Some(row) = self.catalog.cluster(cluster).await? {
            if let (Some(s), Some(z)) = (row.system_identifier, row.segment_size) {
                return Ok(if s == system_identifier && z == segment_size {
                    Binding::Ok
                } else {
                    Binding::Mismatch {
                        system_identifier: s,
                        segment_size: z,
                    }
                });
            }
        }
        let record = crate::meta::create(
            &*self.blobs,
            &crate::meta::cluster_key(cluster),
            crate::meta::ClusterRecord {
                system_identifier: system_identifier.to_string(),
                segment_size,
                pg_major,
            },
        )
        .await
        .map_err(|e| ArchiveError::Storage(format!("recording the cluster's binding: {e}")))?;
        let bound: u64 = record.system_identifier.parse().map_err(|_| {
            ArchiveError::Corrupt(format!(
                "the binding record of cluster {cluster:?} names system {:?}",
                record.system_identifier
            ))
        })?;
        // The catalog takes the recorded binding, which may be another system's than this
        // file's if another server (or an earlier life of this one) bound the cluster first.
        match self
            .catalog
            .bind_cluster(cluster, bound, record.segment_size, record.pg_major)
            .await?
        {
            Binding::Ok if bound == system_identifier && record.segment_size == segment_size => {
                Ok(Binding::Ok)
            }
            Binding::Ok => Ok(Binding::Mismatch {
                system_identifier: bound,
                segment_size: record.segment_size,
            }),
            mismatch => Ok(mismatch),
        }
    }

    /// The row of a file the archive holds now: cataloged, its object present and intact by its
    /// trailer and size (as before a 200 to a `PUT`). `None` when it is not cataloged; an error
    /// when its object is missing or damaged.
    pub async fn held(
        &self,
        cluster: &str,
        name: &WalFileName,
    ) -> Result<Option<WalRow>, ArchiveError> {
        let Some(row) = self.catalog.wal(cluster, &name.to_string()).await? else {
            return Ok(None);
        };
        match self.object_state(&row).await? {
            ObjectState::Intact => Ok(Some(row)),
            ObjectState::Missing => Err(ArchiveError::MissingObject(format!(
                "{name} is cataloged but its object {} is missing from storage",
                row.object_key
            ))),
            ObjectState::Damaged(why) => Err(ArchiveError::Corrupt(format!(
                "the stored object of {name} is damaged: {why}"
            ))),
        }
    }

    /// Looks a file up and re-verifies the stored object end to end before anything is served
    /// (DESIGN §7.3): decompressed and hashed with the XXH3-128 recorded at ingest, or, for a row
    /// that has none (rebuilt from storage), with the SHA-256, recording the XXH3-128 then.
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
        let sums = self
            .hash_object_with(&row.object_key, row.xxh3.is_none(), false)
            .await?;
        let damaged = |what: &str, expected: &str, read: &str| {
            ArchiveError::Corrupt(format!(
                "stored {name} fails its checksum: expected {what} {expected} ({} bytes), read \
                 {read} ({} bytes); the object {} is damaged and will not be served",
                row.size, sums.size, row.object_key
            ))
        };
        match (&row.xxh3, &sums.sha256) {
            (Some(recorded), _) => {
                if *recorded != sums.xxh3 || sums.size != row.size {
                    return Err(damaged("XXH3-128", recorded, &sums.xxh3));
                }
                Ok(row)
            }
            (None, Some(sha)) => {
                if *sha != row.sha256 || sums.size != row.size {
                    return Err(damaged("SHA-256", &row.sha256, sha));
                }
                // A row rebuilt from storage (the object carries only its SHA-256): the XXH3-128
                // of the content just verified is recorded, and checked and sent from now on.
                self.catalog
                    .set_wal_xxh3(cluster, &row.name, sums.xxh3.clone())
                    .await?;
                Ok(WalRow {
                    xxh3: Some(sums.xxh3),
                    ..row
                })
            }
            (None, None) => unreachable!("the SHA-256 is computed when the row has no XXH3-128"),
        }
    }

    /// Decompresses and hashes a stored object: SHA-256 and size.
    pub async fn hash_object(&self, key: &str) -> Result<(String, u64), ArchiveError> {
        let sums = self.hash_object_with(key, true, false).await?;
        Ok((sums.sha256.unwrap_or_default(), sums.size))
    }

    /// Every checksum of a stored object's content (`verify`: the SHA-256 the catalog holds and
    /// the CRC-32C a `backup_manifest` may list).
    pub async fn content_sums(&self, key: &str) -> Result<ContentSums, ArchiveError> {
        self.hash_object_with(key, true, true).await
    }

    /// Decompresses a stored object and hashes its content: always the XXH3-128, the SHA-256
    /// and the CRC-32C only when asked (SHA-256 costs several times more per byte on CPUs
    /// without SHA extensions).
    async fn hash_object_with(
        &self,
        key: &str,
        sha256: bool,
        crc32c: bool,
    ) -> Result<ContentSums, ArchiveError> {
        let mut stream = self
            .blobs
            .get(key)
            .await
            .map_err(ArchiveError::from_storage)?;
        let mut dec = Decompressor::new()
            .map_err(|e| ArchiveError::Storage(format!("cannot start decompression: {e}")))?;
        let mut hasher = sha256.then(Sha256::new);
        let mut crc = crc32c.then(Crc32c::new);
        let mut xxh3 = Xxh3::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(ArchiveError::from_storage)?;
            dec.write(&chunk, |plain| {
                size += plain.len() as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(plain);
                }
                if let Some(c) = crc.as_mut() {
                    c.update(plain);
                }
                xxh3.update(plain);
                Ok(())
            })
            .map_err(|e| {
                ArchiveError::Corrupt(format!("stored object {key} cannot be decompressed: {e}"))
            })?;
        }
        if !dec.is_complete() {
            return Err(ArchiveError::Corrupt(format!(
                "stored object {key} ends inside a zstd frame: it was cut short"
            )));
        }
        Ok(ContentSums {
            sha256: hasher.map(|h| h.finish_hex()),
            xxh3: xxh3.finish_hex(),
            crc32c: crc,
            size,
        })
    }
}

/// The checksums of a stored object's content (those asked for).
pub struct ContentSums {
    pub sha256: Option<String>,
    pub xxh3: String,
    pub crc32c: Option<Crc32c>,
    pub size: u64,
}

/// What was uploaded, for the answer about a name already stored.
struct Incoming<'a> {
    name: &'a WalFileName,
    sha256: &'a str,
    xxh3: &'a str,
    size: u64,
}

fn same_or_conflict(
    new: &Incoming<'_>,
    stored_sha: &str,
    stored_size: u64,
) -> Result<IngestResult, ArchiveError> {
    if stored_sha == new.sha256 {
        Ok(IngestResult {
            stored: Stored::AlreadyStored,
            sha256: new.sha256.to_string(),
            xxh3: new.xxh3.to_string(),
            size: new.size,
            stored_size,
        })
    } else {
        Err(ArchiveError::Conflict(format!(
            "{} is already archived with different content (stored SHA-256 {stored_sha}, \
             this file {}); the stored copy is kept. Two servers may be archiving to the \
             same cluster name, or this cluster was re-initialised: use a new --cluster name",
            new.name, new.sha256
        )))
    }
}

/// The most bytes a body may have for a file of at most `limit` bytes: zstd's worst-case
/// expansion of incompressible data (RFC 8878: a raw block costs 3 bytes per 128 KiB) with room
/// to spare; skippable frames count against it like anything else.
fn body_limit(limit: u64) -> u64 {
    limit + limit / 64 + (1 << 20)
}

/// Where a second copy of `name` waits for a comparison.
fn scratch_key(cluster: &str, name: &WalFileName) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{SCRATCH_PREFIX}/{cluster}/{name}.{nanos}.zst")
}

/// How two stored objects' contents differ.
struct Comparison {
    /// The first offset where they differ (a length difference counts), `None` if equal.
    first_difference: Option<u64>,
    /// For each, the offset after which it holds only zeros.
    zero_tail: (u64, u64),
}

/// Decompresses two objects side by side, in bounded memory.
async fn compare_objects(
    blobs: &dyn BlobStore,
    a: &str,
    b: &str,
) -> Result<Comparison, ArchiveError> {
    let mut sa = PlainStream::open(blobs, a).await?;
    let mut sb = PlainStream::open(blobs, b).await?;
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    let (mut pa, mut pb) = (0usize, 0usize);
    let mut offset = 0u64;
    let mut first_difference = None;
    let mut zero_tail = (0u64, 0u64);
    loop {
        if pa == ba.len() {
            ba = sa.next().await?.unwrap_or_default();
            pa = 0;
        }
        if pb == bb.len() {
            bb = sb.next().await?.unwrap_or_default();
            pb = 0;
        }
        let (ra, rb) = (&ba[pa..], &bb[pb..]);
        if ra.is_empty() || rb.is_empty() {
            // One ended: the rest of the other decides its zero tail and any difference.
            let (rest, stream, which) = if ra.is_empty() {
                (rb.to_vec(), &mut sb, 1)
            } else {
                (ra.to_vec(), &mut sa, 0)
            };
            let mut chunk = rest;
            let mut at = offset;
            if !chunk.is_empty() && first_difference.is_none() {
                first_difference = Some(offset);
            }
            loop {
                if chunk.is_empty() {
                    match stream.next().await? {
                        Some(c) => chunk = c,
                        None => break,
                    }
                    continue;
                }
                if let Some(i) = chunk.iter().rposition(|&x| x != 0) {
                    if which == 0 {
                        zero_tail.0 = at + i as u64 + 1;
                    } else {
                        zero_tail.1 = at + i as u64 + 1;
                    }
                }
                at += chunk.len() as u64;
                chunk.clear();
            }
            return Ok(Comparison {
                first_difference,
                zero_tail,
            });
        }
        let n = ra.len().min(rb.len());
        let (xa, xb) = (&ra[..n], &rb[..n]);
        if first_difference.is_none() {
            if let Some(i) = xa.iter().zip(xb).position(|(x, y)| x != y) {
                first_difference = Some(offset + i as u64);
            }
        }
        if let Some(i) = xa.iter().rposition(|&x| x != 0) {
            zero_tail.0 = offset + i as u64 + 1;
        }
        if let Some(i) = xb.iter().rposition(|&x| x != 0) {
            zero_tail.1 = offset + i as u64 + 1;
        }
        offset += n as u64;
        pa += n;
        pb += n;
    }
}

/// A stored object's content, decompressed a piece at a time.
struct PlainStream {
    key: String,
    stream: BlobStream,
    dec: Decompressor,
}

impl PlainStream {
    async fn open(blobs: &dyn BlobStore, key: &str) -> Result<PlainStream, ArchiveError> {
        Ok(PlainStream {
            key: key.to_string(),
            stream: blobs.get(key).await.map_err(ArchiveError::from_storage)?,
            dec: Decompressor::new()
                .map_err(|e| ArchiveError::Storage(format!("cannot start decompression: {e}")))?,
        })
    }

    /// The next piece of content; `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
        while let Some(chunk) = self.stream.next().await {
            let chunk = chunk.map_err(ArchiveError::from_storage)?;
            let mut out = Vec::new();
            self.dec
                .write(&chunk, |plain| {
                    out.extend_from_slice(plain);
                    Ok(())
                })
                .map_err(|e| {
                    ArchiveError::Corrupt(format!(
                        "stored object {} cannot be decoded: {e}",
                        self.key
                    ))
                })?;
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
        Ok(None)
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
