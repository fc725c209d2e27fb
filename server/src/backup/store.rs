//! Storing one file of a backup as a content-addressed object, in one pass over its bytes.
//!
//! The object's key is the SHA-256 of the content, known only once the last byte went by, while
//! [`BlobStore::begin_put`] needs the key first. So the compressed bytes collect in memory up to
//! [`SPILL_BYTES`] (most files of a data directory are smaller): then the object is published
//! under its final key directly. A larger file spills into an `incoming/` object as it streams;
//! once hashed it is either dropped (its content is already stored: deduplicated) or given its
//! final key by the store's own copy ([`BlobStore::copy_new`]: a hard link on local files, a
//! server-side copy on S3), so its bytes are written once. Memory per file is bounded by `SPILL_BYTES` plus one storage part, whatever
//! the file's size. Objects have the WAL object format ([`crate::wal::object_format`]): zstd frames
//! and the checksum trailer.
//!
//! Hashing and compression of one file run side by side: bytes gather into batches of one zstd
//! frame ([`FRAME_BYTES`]), and each batch is SHA-256-hashed on a second thread while this one
//! compresses it, so a file costs the longer of the two instead of their sum.

use pgwal::checksum::Sha256;

use crate::storage::{BlobStore, BlobUpload, PutOutcome, StorageError};
use crate::wal::object_format::{Compressor, Trailer, FRAME_BYTES};

/// Compressed bytes kept in memory before a file spills into an `incoming/` object.
pub const SPILL_BYTES: usize = 4 << 20;

/// `backups/{cluster}/data/{sha[0..2]}/{sha}.zst`
pub fn data_key(cluster: &str, sha256: &str) -> String {
    format!("backups/{cluster}/data/{}/{sha256}.zst", &sha256[..2])
}

/// Where the backup_manifest of a backup is stored.
pub fn manifest_key(cluster: &str, id: &str) -> String {
    format!("backups/{cluster}/manifests/{id}.zst")
}

/// Prefix of spilled uploads in progress; anything under it at start is debris.
pub fn incoming_prefix(cluster: &str) -> String {
    format!("backups/{cluster}/incoming/")
}

/// A file being hashed and compressed.
pub struct ContentWriter {
    hasher: Sha256,
    compressor: Compressor,
    size: u64,
    /// Bytes not yet hashed nor compressed, less than one batch.
    batch: Vec<u8>,
    /// Compressed bytes not yet stored.
    buf: Vec<u8>,
    spill: Option<Box<dyn BlobUpload>>,
    spill_key: String,
    spilled: u64,
}

/// A file whose content is complete: its checksum is known, its bytes await publishing.
pub struct Finished {
    pub sha256: String,
    pub size: u64,
    /// Size of the object it makes (compressed, with trailer).
    pub stored_size: u64,
    buf: Vec<u8>,
    spill: Option<(String, Box<dyn BlobUpload>)>,
}

impl ContentWriter {
    /// `spill_key` is used only if the file outgrows [`SPILL_BYTES`].
    pub fn new(level: i32, spill_key: String) -> Result<Self, StorageError> {
        Ok(ContentWriter {
            hasher: Sha256::new(),
            compressor: Compressor::new(level)
                .map_err(|e| StorageError::Io(format!("cannot start compression: {e}")))?,
            size: 0,
            batch: Vec::new(),
            buf: Vec::new(),
            spill: None,
            spill_key,
            spilled: 0,
        })
    }

    pub async fn write(
        &mut self,
        blobs: &dyn BlobStore,
        mut data: &[u8],
    ) -> Result<(), StorageError> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.batch.is_empty() && data.len() >= FRAME_BYTES {
                // A whole batch in the caller's buffer: no copy.
                let (whole, rest) = data.split_at(FRAME_BYTES);
                self.digest(whole)?;
                data = rest;
                continue;
            }
            let take = (FRAME_BYTES - self.batch.len()).min(data.len());
            self.batch.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.batch.len() == FRAME_BYTES {
                self.digest_batch()?;
            }
        }
        self.spill_if_full(blobs).await
    }

    /// Hashes and compresses the gathered batch.
    fn digest_batch(&mut self) -> Result<(), StorageError> {
        let batch = std::mem::take(&mut self.batch);
        let result = self.digest(&batch);
        self.batch = batch;
        self.batch.clear();
        result
    }

    /// Hashes and compresses `data`; a whole batch on two threads, the SHA-256 beside the zstd
    /// (on one, if no thread can be started).
    fn digest(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let (compressor, buf) = (&mut self.compressor, &mut self.buf);
        let (hashed, compressed) = if data.len() >= FRAME_BYTES {
            let mut side = self.hasher.clone();
            std::thread::scope(|s| {
                let thread = std::thread::Builder::new()
                    .name("backup-sha256".into())
                    .spawn_scoped(s, move || {
                        side.update(data);
                        side
                    });
                let compressed = compressor.write(data, buf);
                (thread.ok().and_then(|t| t.join().ok()), compressed)
            })
        } else {
            (None, compressor.write(data, buf))
        };
        match hashed {
            Some(h) => self.hasher = h,
            None => self.hasher.update(data),
        }
        compressed.map_err(|e| StorageError::Io(format!("compression failed: {e}")))
    }

    /// Stores the compressed bytes once they reach [`SPILL_BYTES`].
    async fn spill_if_full(&mut self, blobs: &dyn BlobStore) -> Result<(), StorageError> {
        if self.buf.len() >= SPILL_BYTES {
            if self.spill.is_none() {
                self.spill = Some(blobs.begin_put(&self.spill_key).await?);
            }
            if let Some(up) = self.spill.as_mut() {
                up.write(&self.buf).await?;
            }
            self.spilled += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Ends compression and appends the checksum trailer.
    pub fn finish(mut self) -> Result<Finished, StorageError> {
        self.digest_batch()?;
        self.compressor
            .finish(&mut self.buf)
            .map_err(|e| StorageError::Io(format!("compression failed: {e}")))?;
        let digest = std::mem::take(&mut self.hasher).finish();
        self.buf.extend_from_slice(
            &Trailer {
                sha256: digest,
                size: self.size,
            }
            .encode(),
        );
        Ok(Finished {
            sha256: hex::encode(digest),
            size: self.size,
            stored_size: self.spilled + self.buf.len() as u64,
            buf: self.buf,
            spill: self.spill.map(|s| (self.spill_key, s)),
        })
    }

    pub async fn abort(self) {
        if let Some(s) = self.spill {
            s.abort().await;
        }
    }
}

impl Finished {
    /// The content is already stored: drop what was written.
    pub async fn discard(self, blobs: &dyn BlobStore) {
        if let Some((key, up)) = self.spill {
            up.abort().await;
            let _ = blobs.delete(&key).await;
        }
    }

    /// Publishes the object under `key` (never replacing an existing one). `AlreadyExists`
    /// means an object of that key was there: with content-addressed keys, the same content.
    pub async fn publish(
        self,
        blobs: &dyn BlobStore,
        key: &str,
    ) -> Result<PutOutcome, StorageError> {
        match self.spill {
            None => {
                let mut up = blobs.begin_put(key).await?;
                if let Err(e) = up.write(&self.buf).await {
                    up.abort().await;
                    return Err(e);
                }
                up.commit().await
            }
            Some((temp, mut up)) => {
                if let Err(e) = up.write(&self.buf).await {
                    up.abort().await;
                    return Err(e);
                }
                if up.commit().await? == PutOutcome::AlreadyExists {
                    return Err(StorageError::Io(format!(
                        "the working object {temp} existed already"
                    )));
                }
                let result = blobs.copy_new(&temp, key).await;
                let _ = blobs.delete(&temp).await;
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectStoreBlobs;

    async fn stored(
        blobs: &dyn BlobStore,
        data: &[u8],
        chunk: usize,
        spill: &str,
    ) -> (Finished, String) {
        let mut w = ContentWriter::new(1, spill.to_string()).expect("writer");
        for chunk in data.chunks(chunk) {
            w.write(blobs, chunk).await.expect("write");
        }
        let f = w.finish().expect("finish");
        let key = data_key("main", &f.sha256);
        (f, key)
    }

    #[tokio::test]
    async fn small_and_spilled_files_publish_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = ObjectStoreBlobs::local(dir.path()).expect("store");
        let archive = crate::wal::archive::Archive {
            catalog: crate::catalog::Catalog::open(&dir.path().join("c.db")).expect("catalog"),
            blobs: std::sync::Arc::new(ObjectStoreBlobs::local(dir.path()).expect("store")),
            instance: "test".into(),
        };
        // Incompressible, so that it spills past SPILL_BYTES.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let big: Vec<u8> = (0..(SPILL_BYTES * 2 + 12345))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // Written in pieces smaller than a batch (gathered), and larger (hashed in place).
        let cases = [
            (&b"15\n"[..], 100_000, false),
            (&big[..], 100_000, true),
            (&big[1..], FRAME_BYTES + 4097, true),
        ];
        for (data, chunk, spills) in cases {
            let (f, key) = stored(&blobs, data, chunk, "backups/main/incoming/t-1").await;
            assert_eq!(f.spill.is_some(), spills);
            assert_eq!(f.size, data.len() as u64);
            let sha = f.sha256.clone();
            assert_eq!(sha, pgwal::checksum::sha256_hex(data));
            assert_eq!(
                f.publish(&blobs, &key).await.expect("publish"),
                PutOutcome::Created
            );
            let (got, size) = archive.hash_object(&key).await.expect("hash");
            assert_eq!((got, size), (sha, data.len() as u64));
            // The same content again: already there, and no working object is left.
            let (f, key) = stored(&blobs, data, chunk, "backups/main/incoming/t-2").await;
            assert_eq!(
                f.publish(&blobs, &key).await.expect("publish"),
                PutOutcome::AlreadyExists
            );
            assert!(blobs
                .list("backups/main/incoming")
                .await
                .expect("list")
                .is_empty());
        }
    }
}
