//! Storage of objects behind one narrow trait, [`BlobStore`].
//!
//! The server only ever needs: create an object that must not exist yet (streamed, in bounded
//! memory), read it back (streamed or by range), list, and delete. [`ObjectStoreBlobs`] provides
//! that over `object_store` (local files today, S3 through the same crate); [`FaultyBlobs`] wraps
//! any store and injects failures for tests.
//!
//! ## Durability (DESIGN §7.1)
//! See [`crate::durability`] for which fsyncs happen on the local backend and why. The rule the
//! rest of the server relies on: [`BlobUpload::commit`] returns `Created` only once the object is
//! on stable storage under its final key, and never replaces an existing object.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

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

    fn from_object_store(err: object_store::Error) -> StorageError {
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

/// [`BlobStore`] over any `object_store` backend.
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    /// Root directory for the local backend, where crash debris is swept by walking the tree.
    local_root: Option<std::path::PathBuf>,
}

impl ObjectStoreBlobs {
    /// Local files under `root`, created if missing, with every write made durable
    /// (see [`crate::durability::local_object_store`]).
    pub fn local(root: &std::path::Path) -> Result<Self, StorageError> {
        let store = crate::durability::local_object_store(root).map_err(|e| {
            StorageError::Io(format!("cannot open storage at {}: {e}", root.display()))
        })?;
        Ok(ObjectStoreBlobs {
            store: Arc::new(store),
            local_root: Some(root.to_path_buf()),
        })
    }
}

static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

fn staging_key() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{STAGING_PREFIX}/{}-{}-{}",
        std::process::id(),
        nanos,
        UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl BlobStore for ObjectStoreBlobs {
    fn begin_put<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn BlobUpload>, StorageError>> {
        Box::pin(async move {
            let staging = ObjectPath::from(staging_key());
            let upload = self
                .store
                .put_multipart(&staging)
                .await
                .map_err(StorageError::from_object_store)?;
            Ok(Box::new(ObjectStoreUpload {
                store: self.store.clone(),
                staging,
                dest: ObjectPath::from(key),
                upload: Some(upload),
                buffer: Vec::new(),
                parts: 0,
            }) as Box<dyn BlobUpload>)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<BlobStream, StorageError>> {
        Box::pin(async move {
            let res = self
                .store
                .get(&ObjectPath::from(key))
                .await
                .map_err(StorageError::from_object_store)?;
            Ok(match res.payload {
                // `GetResult::into_stream` reads a local file in 8 KiB pieces, each on its own
                // blocking task: about a thousand hand-offs for one segment. Read it in
                // READ_CHUNK pieces instead.
                object_store::GetResultPayload::File(file, _) => file_stream(file, res.range),
                object_store::GetResultPayload::Stream(s) => {
                    s.map_err(StorageError::from_object_store).boxed()
                }
            })
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        Box::pin(async move {
            self.store
                .get_range(&ObjectPath::from(key), range)
                .await
                .map_err(StorageError::from_object_store)
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move {
            match self.store.head(&ObjectPath::from(key)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(StorageError::from_object_store(e)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, StorageError>> {
        Box::pin(async move {
            let prefix = ObjectPath::from(prefix);
            self.store
                .list(Some(&prefix))
                .map_ok(|m| BlobMeta {
                    key: m.location.to_string(),
                    size: m.size,
                })
                .map_err(StorageError::from_object_store)
                .try_collect()
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            match self.store.delete(&ObjectPath::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StorageError::from_object_store(e)),
            }
        })
    }

    fn sweep_incomplete(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            let mut removed = 0;
            for meta in self.list(STAGING_PREFIX).await? {
                self.delete(&meta.key).await?;
                removed += 1;
            }
            if let Some(root) = &self.local_root {
                let root = root.clone();
                removed += tokio::task::spawn_blocking(move || {
                    crate::durability::remove_local_upload_debris(&root)
                })
                .await
                .map_err(|e| StorageError::Io(e.to_string()))?
                .map_err(|e| StorageError::Io(e.to_string()))?;
            }
            Ok(removed)
        })
    }
}

/// Reads of local objects are handed to the blocking pool in pieces of this size.
const READ_CHUNK: u64 = 1 << 20;

/// `range` of a local file as a stream of chunks of at most [`READ_CHUNK`] bytes, each read on
/// the blocking pool.
fn file_stream(file: std::fs::File, range: Range<u64>) -> BlobStream {
    futures::stream::try_unfold(
        (Some(file), range.start, range.end),
        |(file, pos, end)| async move {
            let Some(file) = file else { return Ok(None) };
            if pos >= end {
                return Ok(None);
            }
            let want = (end - pos).min(READ_CHUNK);
            let (file, buf) = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; want as usize];
                let mut got = 0usize;
                while got < buf.len() {
                    match file.read_at(&mut buf[got..], pos + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(StorageError::Io(e.to_string())),
                    }
                }
                buf.truncate(got);
                Ok((file, buf))
            })
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
            if buf.is_empty() {
                return Err(StorageError::Io(format!(
                    "object ended at byte {pos}, before its size of {end} bytes"
                )));
            }
            let next = pos + buf.len() as u64;
            Ok(Some((Bytes::from(buf), (Some(file), next, end))))
        },
    )
    .boxed()
}

struct ObjectStoreUpload {
    store: Arc<dyn ObjectStore>,
    staging: ObjectPath,
    dest: ObjectPath,
    upload: Option<Box<dyn object_store::MultipartUpload>>,
    buffer: Vec<u8>,
    parts: usize,
}

impl ObjectStoreUpload {
    async fn flush_part(&mut self) -> Result<(), StorageError> {
        let data = Bytes::from(std::mem::take(&mut self.buffer));
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| StorageError::Io("upload already finished".into()))?;
        upload
            .put_part(data.into())
            .await
            .map_err(StorageError::from_object_store)?;
        self.parts += 1;
        Ok(())
    }

    async fn commit_inner(&mut self) -> Result<PutOutcome, StorageError> {
        if !self.buffer.is_empty() || self.parts == 0 {
            self.flush_part().await?;
        }
        let mut upload = self
            .upload
            .take()
            .ok_or_else(|| StorageError::Io("upload already finished".into()))?;
        upload
            .complete()
            .await
            .map_err(StorageError::from_object_store)?;
        // Publish: create the final key only if it does not exist (a hard link on local
        // storage), so a stored object is never replaced.
        let outcome = match self
            .store
            .copy_if_not_exists(&self.staging, &self.dest)
            .await
        {
            Ok(()) => PutOutcome::Created,
            Err(object_store::Error::AlreadyExists { .. }) => PutOutcome::AlreadyExists,
            Err(e) => return Err(StorageError::from_object_store(e)),
        };
        Ok(outcome)
    }
}

impl BlobUpload for ObjectStoreUpload {
    fn write(&mut self, data: &[u8]) -> BoxFuture<'_, Result<(), StorageError>> {
        self.buffer.extend_from_slice(data);
        Box::pin(async move {
            if self.buffer.len() >= PART_SIZE {
                self.flush_part().await?;
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<PutOutcome, StorageError>> {
        Box::pin(async move {
            let result = self.commit_inner().await;
            if let Some(mut upload) = self.upload.take() {
                let _ = upload.abort().await;
            }
            // The staging object is only a name for the same bytes now; remove it either way.
            let _ = self.store.delete(&self.staging).await;
            result
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(mut upload) = self.upload.take() {
                let _ = upload.abort().await;
            }
            let _ = self.store.delete(&self.staging).await;
        })
    }
}

/// Failures a [`FaultyBlobs`] injects.
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Every commit fails with out-of-space.
    pub out_of_space: std::sync::atomic::AtomicBool,
    /// Every commit fails with an I/O error.
    pub io_error: std::sync::atomic::AtomicBool,
}

/// Wraps a store and injects the failures of its [`FaultPlan`] (tests only, but compiled always so
/// that end-to-end tests can reach it through configuration if needed).
pub struct FaultyBlobs<S> {
    pub inner: S,
    pub plan: Arc<FaultPlan>,
}

impl<S: BlobStore> BlobStore for FaultyBlobs<S> {
    fn begin_put<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn BlobUpload>, StorageError>> {
        Box::pin(async move {
            let inner = self.inner.begin_put(key).await?;
            Ok(Box::new(FaultyUpload {
                inner,
                plan: self.plan.clone(),
            }) as Box<dyn BlobUpload>)
        })
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<BlobStream, StorageError>> {
        self.inner.get(key)
    }
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        self.inner.get_range(key, range)
    }
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        self.inner.head(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, StorageError>> {
        self.inner.list(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.delete(key)
    }
    fn sweep_incomplete(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.inner.sweep_incomplete()
    }
}

struct FaultyUpload {
    inner: Box<dyn BlobUpload>,
    plan: Arc<FaultPlan>,
}

impl BlobUpload for FaultyUpload {
    fn write(&mut self, data: &[u8]) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.write(data)
    }
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<PutOutcome, StorageError>> {
        Box::pin(async move {
            let injected = if self.plan.out_of_space.load(Ordering::SeqCst) {
                Some(StorageError::OutOfSpace(
                    "injected: no space left on device".into(),
                ))
            } else if self.plan.io_error.load(Ordering::SeqCst) {
                Some(StorageError::Io("injected I/O error".into()))
            } else {
                None
            };
            match injected {
                Some(err) => {
                    self.inner.abort().await;
                    Err(err)
                }
                None => self.inner.commit().await,
            }
        })
    }
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.inner.abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_objects_read_back_whole_in_large_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = ObjectStoreBlobs::local(dir.path()).expect("store");
        // Larger than two read chunks and not a multiple of one.
        let data: Vec<u8> = (0..(2 * READ_CHUNK + 12_345) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut up = blobs.begin_put("a/b").await.expect("begin");
        up.write(&data).await.expect("write");
        assert_eq!(up.commit().await.expect("commit"), PutOutcome::Created);
        let chunks: Vec<Bytes> = blobs
            .get("a/b")
            .await
            .expect("get")
            .try_collect()
            .await
            .expect("read");
        assert_eq!(chunks.len(), 3, "1 MiB chunks, not 8 KiB ones");
        assert_eq!(chunks.concat(), data);
        assert_eq!(
            blobs.get_range("a/b", 10..20).await.expect("range"),
            &data[10..20]
        );
    }
}
