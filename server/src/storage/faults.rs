//! A [`BlobStore`] wrapper that injects failures, for tests: out-of-space and I/O errors at
//! commit. Compiled always, so that end-to-end tests can reach it too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{
    BlobMeta, BlobStore, BlobStream, BlobUpload, Precondition, PutOutcome, StorageError, Versioned,
};

/// Failures a [`FaultyBlobs`] injects.
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Every commit fails with out-of-space.
    pub out_of_space: std::sync::atomic::AtomicBool,
    /// Every commit fails with an I/O error.
    pub io_error: std::sync::atomic::AtomicBool,
    /// Every read (`get`, `get_range`, `head`) of a key starting with `read_error_prefix`
    /// fails with an I/O error, as when storage is unreachable for a while.
    pub read_error: std::sync::atomic::AtomicBool,
    pub read_error_prefix: std::sync::Mutex<String>,
}

impl FaultPlan {
    fn read(&self, key: &str) -> Result<(), StorageError> {
        if self.read_error.load(Ordering::SeqCst)
            && self
                .read_error_prefix
                .lock()
                .map(|p| key.starts_with(p.as_str()))
                .unwrap_or(true)
        {
            return Err(StorageError::Io("injected read error".into()));
        }
        Ok(())
    }
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
        Box::pin(async move {
            self.plan.read(key)?;
            self.inner.get(key).await
        })
    }
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        Box::pin(async move {
            self.plan.read(key)?;
            self.inner.get_range(key, range).await
        })
    }
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move {
            self.plan.read(key)?;
            self.inner.head(key).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, StorageError>> {
        self.inner.list(prefix)
    }
    fn list_dirs<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        self.inner.list_dirs(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.delete(key)
    }
    fn sweep_incomplete(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.inner.sweep_incomplete()
    }
    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, StorageError>> {
        Box::pin(async move {
            self.plan.read(key)?;
            self.inner.stat(key).await
        })
    }
    fn replace<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.replace(key, data)
    }
    fn read_versioned<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>> {
        Box::pin(async move {
            self.plan.read(key)?;
            self.inner.read_versioned(key).await
        })
    }
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Precondition,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        self.inner.put_if(key, data, condition)
    }
    fn supports_versions(&self) -> bool {
        self.inner.supports_versions()
    }
    fn prepare(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.prepare()
    }
    fn move_aside<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            self.plan.read(from)?;
            self.inner.move_aside(from, to).await
        })
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
