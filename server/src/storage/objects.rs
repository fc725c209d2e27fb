//! [`ObjectStoreBlobs`]: the [`BlobStore`] over an `object_store` backend, local files or an
//! S3-compatible bucket.
//!
//! Creating an object that must not exist yet takes one of two routes:
//! - **staged**: the bytes go to a multipart upload under `staging/`, which is completed there,
//!   then copied to the final key only if it is free (`copy_if_not_exists`: `link(2)` on local
//!   files; on S3 a multipart copy completed with `If-None-Match: *`), then the staging object
//!   is removed. Any size, memory bounded by one part. `object_store` 0.14 completes a multipart
//!   upload in overwrite mode, which is why the final key is never its target.
//! - **single conditional PUT** (S3 only): an object that stays under [`SINGLE_PUT_MAX`] is
//!   sent in one `PUT` with `If-None-Match: *` (`PutMode::Create`): one request instead of
//!   seven, which is what almost every compressed WAL segment is.
//!
//! A create that answers "already exists" may be our own earlier attempt that committed before
//! its answer was lost (object_store retries 5xx answers): callers compare what is stored with
//! what they sent before they call it a conflict.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{
    BlobMeta, BlobStore, BlobStream, BlobUpload, Precondition, PutOutcome, StorageError, Versioned,
    PART_SIZE, STAGING_PREFIX,
};

/// Largest object created with a single conditional `PUT` on S3; larger ones are staged.
/// Memory per upload is bounded by it.
pub const SINGLE_PUT_MAX: usize = 8 << 20;

/// [`BlobStore`] over any `object_store` backend.
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    /// Root directory for the local backend, where crash debris is swept by walking the tree.
    local_root: Option<std::path::PathBuf>,
    /// S3: small objects go in one conditional PUT, and versions (ETags) can be compared.
    s3: bool,
}

impl ObjectStoreBlobs {
    /// Local files under `root`, created if missing, with every write made durable
    /// (see [`crate::storage::durability::local_object_store`]).
    pub fn local(root: &std::path::Path) -> Result<Self, StorageError> {
        let store = crate::storage::durability::local_object_store(root).map_err(|e| {
            StorageError::Io(format!("cannot open storage at {}: {e}", root.display()))
        })?;
        Ok(ObjectStoreBlobs {
            store: Arc::new(store),
            local_root: Some(root.to_path_buf()),
            s3: false,
        })
    }

    /// An S3-compatible bucket (see [`super::S3Settings`]).
    pub fn s3(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreBlobs {
            store,
            local_root: None,
            s3: true,
        }
    }

    async fn staged_upload(&self, key: &str) -> Result<ObjectStoreUpload, StorageError> {
        let staging = ObjectPath::from(staging_key());
        let upload = self
            .store
            .put_multipart(&staging)
            .await
            .map_err(StorageError::from_object_store)?;
        Ok(ObjectStoreUpload {
            store: self.store.clone(),
            staging,
            dest: ObjectPath::from(key),
            upload: Some(upload),
            buffer: Vec::new(),
            parts: 0,
        })
    }
}

fn meta_of(m: object_store::ObjectMeta) -> BlobMeta {
    BlobMeta {
        key: m.location.to_string(),
        size: m.size,
        last_modified: m.last_modified.into(),
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
            if self.s3 {
                return Ok(Box::new(S3Upload {
                    blobs: Arc::new(ObjectStoreBlobs {
                        store: self.store.clone(),
                        local_root: None,
                        s3: true,
                    }),
                    key: key.to_string(),
                    buffer: Vec::new(),
                    staged: None,
                }) as Box<dyn BlobUpload>);
            }
            Ok(Box::new(self.staged_upload(key).await?) as Box<dyn BlobUpload>)
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
        Box::pin(async move { Ok(self.stat(key).await?.map(|m| m.size)) })
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, StorageError>> {
        Box::pin(async move {
            match self.store.head(&ObjectPath::from(key)).await {
                Ok(meta) => Ok(Some(meta_of(meta))),
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
                .map_ok(meta_of)
                .map_err(StorageError::from_object_store)
                .try_collect()
                .await
        })
    }

    fn list_dirs<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let result = self
                .store
                .list_with_delimiter(Some(&ObjectPath::from(prefix)))
                .await
                .map_err(StorageError::from_object_store)?;
            Ok(result
                .common_prefixes
                .into_iter()
                .map(|p| format!("{p}/"))
                .collect())
        })
    }

    fn copy_new<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StorageError>> {
        Box::pin(async move {
            // A hard link on local files, a server-side copy completed with `If-None-Match: *`
            // on S3: the bytes are not read again.
            match self
                .store
                .copy_if_not_exists(&ObjectPath::from(from), &ObjectPath::from(to))
                .await
            {
                Ok(()) => Ok(PutOutcome::Created),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(StorageError::from_object_store(e)),
            }
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

    fn replace<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            // Local: a staged file renamed over the old one, file and directory fsynced; S3: a
            // PUT, which is atomic and durable once answered.
            self.store
                .put_opts(
                    &ObjectPath::from(key),
                    PutPayload::from(data),
                    PutMode::Overwrite.into(),
                )
                .await
                .map_err(StorageError::from_object_store)?;
            Ok(())
        })
    }

    fn read_versioned<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>> {
        Box::pin(async move {
            let res = match self.store.get(&ObjectPath::from(key)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(StorageError::from_object_store(e)),
            };
            let version = res.meta.e_tag.clone();
            let data = res.bytes().await.map_err(StorageError::from_object_store)?;
            Ok(Some(Versioned { data, version }))
        })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Precondition,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(async move {
            let mode = match condition {
                Precondition::Absent => PutMode::Create,
                Precondition::Version(e_tag) if self.s3 => PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag),
                    version: None,
                }),
                Precondition::Version(_) => {
                    return Err(StorageError::Io(
                        "local storage cannot compare object versions".into(),
                    ))
                }
            };
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&ObjectPath::from(key), PutPayload::from(data), opts)
                .await
            {
                Ok(r) => Ok(r.e_tag),
                Err(
                    e @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => Err(StorageError::Precondition(format!("{key}: {e}"))),
                Err(e) => Err(StorageError::from_object_store(e)),
            }
        })
    }

    fn supports_versions(&self) -> bool {
        self.s3
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
                    crate::storage::durability::remove_local_upload_debris(&root)
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

/// An upload to S3: held in memory while it stays under [`SINGLE_PUT_MAX`] and sent in one
/// conditional PUT; moved to a staged multipart upload as soon as it grows past it.
struct S3Upload {
    blobs: Arc<ObjectStoreBlobs>,
    key: String,
    buffer: Vec<u8>,
    staged: Option<ObjectStoreUpload>,
}

impl BlobUpload for S3Upload {
    fn write(&mut self, data: &[u8]) -> BoxFuture<'_, Result<(), StorageError>> {
        let data = data.to_vec();
        Box::pin(async move {
            if let Some(staged) = self.staged.as_mut() {
                return staged.write(&data).await;
            }
            self.buffer.extend_from_slice(&data);
            if self.buffer.len() > SINGLE_PUT_MAX {
                let mut staged = self.blobs.staged_upload(&self.key).await?;
                let held = std::mem::take(&mut self.buffer);
                staged.write(&held).await?;
                self.staged = Some(staged);
            }
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<PutOutcome, StorageError>> {
        Box::pin(async move {
            let S3Upload {
                blobs,
                key,
                buffer,
                staged,
            } = *self;
            if let Some(staged) = staged {
                return Box::new(staged).commit().await;
            }
            match blobs
                .put_if(&key, Bytes::from(buffer), Precondition::Absent)
                .await
            {
                Ok(_) => Ok(PutOutcome::Created),
                Err(StorageError::Precondition(_)) => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(e),
            }
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(staged) = self.staged {
                Box::new(staged).abort().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

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

    /// A create-only copy on local storage is a hard link: the same bytes under the new key
    /// (same inode, nothing rewritten); onto a taken key it is refused, which keeps its content.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_copies_are_links_and_never_replace() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = ObjectStoreBlobs::local(dir.path()).expect("store");
        for (key, data) in [("a/one", &b"first"[..]), ("a/two", &b"second"[..])] {
            let mut up = blobs.begin_put(key).await.expect("begin");
            up.write(data).await.expect("write");
            assert_eq!(up.commit().await.expect("commit"), PutOutcome::Created);
        }
        assert_eq!(
            blobs.copy_new("a/one", "b/copy").await.expect("copy"),
            PutOutcome::Created
        );
        let ino = |k: &str| std::fs::metadata(dir.path().join(k)).expect("stat").ino();
        assert_eq!(ino("b/copy"), ino("a/one"));
        assert_eq!(
            blobs.copy_new("a/one", "a/two").await.expect("copy"),
            PutOutcome::AlreadyExists
        );
        let two: Vec<Bytes> = blobs
            .get("a/two")
            .await
            .expect("get")
            .try_collect()
            .await
            .expect("read");
        assert_eq!(two.concat(), b"second");
    }
}
