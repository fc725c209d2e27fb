//! Storage of objects behind one narrow trait, [`BlobStore`].
//!
//! The server only ever needs: create an object that must not exist yet (streamed, in bounded
//! memory), read it back (streamed or by range), list, and delete; plus, for the few small
//! metadata objects that describe what the objects themselves do not (backups, cluster
//! bindings, the ownership lease), replace one whole, or write it only if it is still the
//! version last read.
//!
//! - [`ObjectStoreBlobs`] provides that over `object_store`: local files under the data
//!   directory (`objects.rs`), or an S3-compatible bucket (`s3.rs` builds the client);
//! - [`EncryptedBlobs`] wraps any store and seals what it stores (`encryption.rs`, when
//!   `[encryption]` is configured);
//! - [`FaultyBlobs`] wraps any store and injects failures for tests (`faults.rs`);
//! - `durability.rs` owns every fsync of the local backend.
//!
//! ## Durability (DESIGN §7.1)
//! See [`crate::storage::durability`] for which fsyncs happen on the local backend and why. The rule the
//! rest of the server relies on: [`BlobUpload::commit`] returns `Created` only once the object is
//! on stable storage under its final key, and never replaces an existing object.

pub mod durability;
pub mod encryption;
mod faults;
pub mod lease;
mod objects;
mod s3;

use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use encryption::{EncryptedBlobs, Keyring};
pub use faults::{FaultPlan, FaultyBlobs};
pub use objects::ObjectStoreBlobs;
pub use s3::S3Settings;

/// The storage `config` names: files under the data directory, or an S3-compatible bucket;
/// sealed by [`EncryptedBlobs`] when `[encryption]` is set.
pub fn open(config: &crate::config::Config) -> Result<std::sync::Arc<dyn BlobStore>, String> {
    let s = &config.storage;
    let blobs = match s.kind.as_str() {
        "s3" => {
            let mut settings = S3Settings::resolve(
                s.bucket.as_deref().unwrap_or(""),
                s.endpoint.as_deref(),
                s.region.as_deref(),
                s.prefix.as_deref(),
                &s3::CredentialSources {
                    credentials_file: s.credentials_file.clone(),
                    profile: s.profile.clone(),
                },
            )?;
            if let Some(secs) = s.request_timeout {
                settings.request_timeout = std::time::Duration::from_secs(secs.max(1));
            }
            let store = settings.build().map_err(|e| e.to_string())?;
            tracing::info!(bucket = %settings.bucket, endpoint = settings.endpoint.as_deref().unwrap_or("AWS"),
                prefix = %settings.prefix, "storage: S3-compatible bucket");
            ObjectStoreBlobs::s3(store)
        }
        _ => ObjectStoreBlobs::local(&config.storage_dir()).map_err(|e| e.to_string())?,
    };
    let Some(keys) = &config.encryption else {
        return Ok(std::sync::Arc::new(blobs));
    };
    let old: Vec<String> = keys.old_ids().iter().map(|id| id.to_string()).collect();
    tracing::info!(
        "encryption at rest: key id {} seals new objects; older key ids that still open: {}",
        keys.current_id(),
        if old.is_empty() {
            "none".to_string()
        } else {
            old.join(", ")
        }
    );
    for file in keys.exposed_files() {
        tracing::warn!(file = %file.display(),
            "encryption key file is readable by other users: chmod 600 it (or 640 for a group the server is in)");
    }
    Ok(std::sync::Arc::new(EncryptedBlobs::new(
        blobs,
        keys.clone(),
    )))
}

/// The archive's identity, the first object a server writes to a new store.
pub const INSTANCE_KEY: &str = "meta/instance";

/// Prefix of in-flight uploads; anything under it at start is debris of a crash.
pub const STAGING_PREFIX: &str = "staging";
/// Part size for streamed uploads: memory per upload is bounded by this (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 5 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("storage is out of space: {0}")]
    OutOfSpace(String),
    /// May succeed on retry (I/O error, network).
    #[error("storage error: {0}")]
    Io(String),
    /// A conditional write found the object not as expected (present, or another version).
    #[error("{0}")]
    Precondition(String),
    /// The object is sealed with an encryption key (or in a format) this server cannot open:
    /// configuration, not damage; a retry will not help until the configuration changes.
    #[error("{0}")]
    Key(String),
    /// The object's sealed bytes fail their authentication: damaged, never served.
    #[error("{0}")]
    Damaged(String),
}

impl StorageError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Io(_))
    }

    pub(crate) fn from_object_store(err: object_store::Error) -> StorageError {
        if let object_store::Error::NotFound { path, .. } = &err {
            return StorageError::NotFound(path.clone());
        }
        if is_out_of_space(&err) {
            return StorageError::OutOfSpace(err.to_string());
        }
        StorageError::Io(err.to_string())
    }
}

/// True when an ENOSPC/EDQUOT is anywhere in the error's source chain.
fn is_out_of_space(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || io.raw_os_error() == Some(libc::ENOSPC)
                || io.raw_os_error() == Some(libc::EDQUOT)
            {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// Outcome of publishing an object that must not already exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
    /// When the object was written (second precision is what the catalog keeps).
    pub last_modified: std::time::SystemTime,
}

/// A small object read whole, with the version a conditional write can name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub data: Bytes,
    /// The store's version tag (an ETag); `None` where the store has none (local files).
    pub version: Option<String>,
}

/// What [`BlobStore::put_if`] requires of the object before it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// It does not exist.
    Absent,
    /// It is still at this version.
    Version(String),
}

pub type BlobStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// The narrow storage interface the server is written against.
pub trait BlobStore: Send + Sync + 'static {
    /// Starts a streamed upload that will be published under `key` only if `key` is still free.
    fn begin_put<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn BlobUpload>, StorageError>>;
    /// Streams the whole object.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<BlobStream, StorageError>>;
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, StorageError>>;
    /// Size of the object, or `None` when absent.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;
    /// Size and time of the object, or `None` when absent.
    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, StorageError>>;
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, StorageError>>;
    /// The "directories" right under `prefix` (which ends with `/`): each common prefix of the
    /// keys below it up to their next `/`, itself ending with `/`.
    fn list_dirs<'a>(&'a self, prefix: &'a str)
        -> BoxFuture<'a, Result<Vec<String>, StorageError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Removes the debris of uploads interrupted by a crash; returns how many were removed.
    fn sweep_incomplete(&self) -> BoxFuture<'_, Result<u64, StorageError>>;
    /// Writes a small object whole, over what was there: durable once it returns, and readers
    /// see the old bytes or the new ones, never a mix. Only for metadata objects (backup
    /// descriptions, cluster bindings), never for WAL or backup content.
    fn replace<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StorageError>>;
    /// A small object whole with its version, or `None` when absent.
    fn read_versioned<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>>;
    /// Writes a small object only if `condition` holds, atomically (S3 `If-None-Match: *` or
    /// `If-Match`); returns its new version. [`StorageError::Precondition`] when it does not.
    /// Stores without versions ([`BlobStore::supports_versions`] false) take only
    /// [`Precondition::Absent`].
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Precondition,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>>;
    /// Whether [`BlobStore::put_if`] can compare versions (S3: yes; local files: no, the data
    /// directory's lock keeps a second server out instead).
    fn supports_versions(&self) -> bool;
    /// Creates `to` with the stored bytes of `from` (as stored: sealed objects stay sealed),
    /// only if `to` does not exist yet. This default streams the bytes through; a backend that
    /// can copy by itself (a hard link, a server-side copy) does so without reading them.
    fn copy_new<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StorageError>> {
        Box::pin(async move {
            use futures::StreamExt;
            if self.head(to).await?.is_some() {
                return Ok(PutOutcome::AlreadyExists);
            }
            let mut stream = self.get(from).await?;
            let mut up = self.begin_put(to).await?;
            while let Some(chunk) = stream.next().await {
                let written = match chunk {
                    Ok(c) => up.write(&c).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    up.abort().await;
                    return Err(e);
                }
            }
            up.commit().await
        })
    }
    /// Moves the object `from` to `to` exactly as stored, without opening or checking it (a
    /// damaged object is moved as it is): a copy, then the removal of `from`. A copy already
    /// at `to` from an earlier move of the same object is kept.
    fn move_aside<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            self.copy_new(from, to).await?;
            self.delete(from).await
        })
    }
    /// Called once at start, after the lease is taken and before anything else is read or
    /// written: a wrapper settles what it needs to know about the store.
    fn prepare(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }
}

/// An upload in progress: bytes are written in order, then committed or aborted.
pub trait BlobUpload: Send {
    fn write(&mut self, data: &[u8]) -> BoxFuture<'_, Result<(), StorageError>>;
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<PutOutcome, StorageError>>;
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}
