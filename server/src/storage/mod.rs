//! Storage of objects behind one narrow trait, [`BlobStore`].
//!
//! The server only ever needs: create an object that must not exist yet (streamed, in bounded
//! memory), read it back (streamed or by range), list, and delete. [`ObjectStoreBlobs`] provides
//! that over `object_store` (local files today, S3 through the same crate); [`FaultyBlobs`] wraps
//! any store and injects failures for tests.
//!
//! ## Durability (DESIGN §7.1)
//! See [`crate::storage::durability`] for which fsyncs happen on the local backend and why. The rule the
//! rest of the server relies on: [`BlobUpload::commit`] returns `Created` only once the object is
//! on stable storage under its final key, and never replaces an existing object.

pub mod durability;
mod faults;
mod objects;

use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use faults::{FaultPlan, FaultyBlobs};
pub use objects::ObjectStoreBlobs;

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
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, StorageError>>;
    /// The "directories" right under `prefix` (which ends with `/`): each common prefix of the
    /// keys below it up to their next `/`, itself ending with `/`.
    fn list_dirs<'a>(&'a self, prefix: &'a str)
        -> BoxFuture<'a, Result<Vec<String>, StorageError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Removes the debris of uploads interrupted by a crash; returns how many were removed.
    fn sweep_incomplete(&self) -> BoxFuture<'_, Result<u64, StorageError>>;
}

/// An upload in progress: bytes are written in order, then committed or aborted.
pub trait BlobUpload: Send {
    fn write(&mut self, data: &[u8]) -> BoxFuture<'_, Result<(), StorageError>>;
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<PutOutcome, StorageError>>;
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}
