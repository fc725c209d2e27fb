//! Encryption at rest (DESIGN §5, `[encryption]`): [`EncryptedBlobs`] wraps any [`BlobStore`],
//! seals every object it writes and opens every object it reads, so that storage (a disk, a
//! bucket, a backup of either) never holds the archive's content in the clear.
//!
//! ## Object layout
//!
//! ```text
//! header (25 bytes): "WALAENC1" | format (1 byte, 1) | key id (8) | nonce prefix (8, random per object)
//! frame 0:           AES-256-GCM ciphertext of plaintext bytes 0..1 MiB    | 16-byte tag
//! frame 1:           ...                       1 MiB..2 MiB                | tag
//! last frame:        the rest (1 byte to 1 MiB; empty only for an empty object) | tag
//! ```
//!
//! - **Nonce** = nonce prefix ‖ frame index (u32, big endian). The prefix comes from the system's
//!   random source for each object, so no two frames sealed under one key share a nonce unless
//!   two objects draw the same 64-bit prefix (a chance of about n²/2⁶⁵ after n objects: one in
//!   a million after six million objects; rotate the key long before billions).
//! - **Associated data** = the header ‖ frame index (u32 BE) ‖ last-frame flag (1 byte). Each
//!   frame is bound to its object's header (its key id and nonce prefix cannot be swapped), to
//!   its place (frames cannot be reordered), and to whether it ends the object: dropping the last
//!   frames leaves a last frame that was sealed as "not last", appending one leaves the true
//!   last frame in the middle; either fails authentication.
//! - **Fixed frames** make plaintext offsets arithmetic: [`BlobStore::get_range`] reads and
//!   opens only the frames it needs (the server reads object trailers, the last 64 bytes, this
//!   way), and sizes convert both ways without reading anything but the header
//!   ([`plain_len`], [`sealed_len`]).
//! - **Key id** = the first 8 bytes of SHA-256("wal-archive key id\0" ‖ key): it names the key
//!   without revealing it, so an object says which key it needs, and reads pick that key among
//!   the current one and `old_key_files`. New objects are always sealed with the current key.
//!
//! ## What is and is not sealed
//!
//! Everything written through the wrapper is sealed: WAL and backup objects, records, the
//! archive's identity, the lease. Keys (object names) are not: they name WAL files and backups,
//! which listings need. Objects without the magic (written before encryption was turned on) are
//! read as they are, as DESIGN §5 promises ("objects written from now on are encrypted"), in a
//! store that held objects before encryption was turned on. A store sealed since its creation
//! says so in [`SEALED_STORE_KEY`] (written by [`BlobStore::prepare`] when it finds the store
//! new): there an object without the magic was not written by this server and is refused as
//! damaged.
//! Integrity of content does not rest on this layer alone: every WAL and backup object still
//! carries its SHA-256, checked against the catalog before anything is served.
//!
//! ## Errors
//!
//! - An object sealed with a key id this server does not have is [`StorageError::Key`]: a
//!   configuration problem, never "damaged"; nothing is served, quarantined or overwritten.
//! - A frame that fails authentication, or a sealed object whose size no sealed object can have,
//!   is [`StorageError::Damaged`]: never served.
//!
//! ## Costs
//!
//! Memory per upload and per read is about two frames (2 MiB), whatever the object's size.
//! In a store sealed since its creation, sizes are arithmetic: `list`, `head` and `stat` read
//! nothing more than the inner store's. In a mixed store, telling a sealed object from a
//! plaintext one takes its first 25 bytes: `head` and `stat` read them after the inner `stat`,
//! and `list` reads them for every listed object ([`LIST_PROBES`] at a time). `get_range`
//! reads them before the frames in either.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use super::{
    BlobMeta, BlobStore, BlobStream, BlobUpload, Precondition, PutOutcome, StorageError, Versioned,
};

/// Written (sealed) when encryption starts with the store: from then on every object of the
/// store is sealed.
pub const SEALED_STORE_KEY: &str = "meta/encryption";

/// The first bytes of every sealed object.
pub const MAGIC: &[u8; 8] = b"WALAENC1";
/// Format 1: AES-256-GCM, frames of [`FRAME_LEN`] plaintext bytes, the layout above.
const FORMAT: u8 = 1;
/// Magic, format, key id, nonce prefix.
pub const HEADER_LEN: usize = 8 + 1 + 8 + 8;
/// Plaintext bytes per frame (the last frame may hold fewer).
pub const FRAME_LEN: usize = 1 << 20;
/// The AES-GCM tag after each frame's ciphertext.
pub const TAG_LEN: usize = 16;
const SEALED_FRAME_LEN: usize = FRAME_LEN + TAG_LEN;
/// Headers read at once while a listing is converted to plaintext sizes.
pub const LIST_PROBES: usize = 16;
/// Domain separation of the key id, so that it is no other hash of the key.
const KEY_ID_CONTEXT: &[u8] = b"wal-archive key id\0";

/// The public name of a key: the first 8 bytes of SHA-256("wal-archive key id\0" ‖ key).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub fn of(key: &[u8; 32]) -> KeyId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(KEY_ID_CONTEXT);
        ctx.update(key);
        let digest = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        KeyId(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// One key: its id, where it came from (for messages), and the AEAD key itself.
struct KeyEntry {
    id: KeyId,
    source: String,
    aead: LessSafeKey,
}

/// The keys of `[encryption]`: the current one, which seals, and older ones, which only open.
/// Its `Debug` shows key ids and files, never key bytes.
pub struct Keyring {
    current: Arc<KeyEntry>,
    old: Vec<Arc<KeyEntry>>,
    /// Key files other users may read (warned about at start).
    exposed: Vec<PathBuf>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let old: Vec<String> = self
            .old
            .iter()
            .map(|k| format!("{} ({})", k.id, k.source))
            .collect();
        f.debug_struct("Keyring")
            .field(
                "current",
                &format!("{} ({})", self.current.id, self.current.source),
            )
            .field("old", &old)
            .finish()
    }
}

impl Keyring {
    /// Reads `key_file` (the key that seals) and `old_key_files` (keys that only open). Each
    /// holds 32 random bytes, or 64 hex digits with an optional trailing newline.
    pub fn load(key_file: &Path, old_key_files: &[PathBuf]) -> Result<Keyring, String> {
        let mut exposed = Vec::new();
        let mut read = |path: &Path, what: &str| -> Result<Arc<KeyEntry>, String> {
            let (key, others_may_read) = read_key_file(path)
                .map_err(|e| format!("[encryption] {what} = {}: {e}", path.display()))?;
            if others_may_read {
                exposed.push(path.to_path_buf());
            }
            entry(&key, path.display().to_string())
        };
        let current = read(key_file, "key_file")?;
        let mut old: Vec<Arc<KeyEntry>> = Vec::new();
        for path in old_key_files {
            let key = read(path, "old_key_files")?;
            // The current key listed again, or one key in two files: one entry is enough.
            if key.id != current.id && old.iter().all(|k| k.id != key.id) {
                old.push(key);
            }
        }
        Ok(Keyring {
            current,
            old,
            exposed,
        })
    }

    /// A keyring from key bytes (tests; `source` of each is "key N").
    pub fn from_keys(current: &[u8; 32], old: &[[u8; 32]]) -> Result<Keyring, String> {
        Ok(Keyring {
            current: entry(current, "key 0".into())?,
            old: old
                .iter()
                .enumerate()
                .map(|(i, k)| entry(k, format!("key {}", i + 1)))
                .collect::<Result<_, _>>()?,
            exposed: Vec::new(),
        })
    }

    /// The id of the key new objects are sealed with.
    pub fn current_id(&self) -> KeyId {
        self.current.id
    }

    /// The ids of the keys that only open.
    pub fn old_ids(&self) -> Vec<KeyId> {
        self.old.iter().map(|k| k.id).collect()
    }

    /// Key files that users other than the owner may read.
    pub fn exposed_files(&self) -> &[PathBuf] {
        &self.exposed
    }

    fn find(&self, id: KeyId) -> Option<&Arc<KeyEntry>> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == id)
    }

    /// What to say when `object` needs a key this keyring does not have.
    fn unknown(&self, object: &str, id: KeyId) -> StorageError {
        let old: Vec<String> = self
            .old
            .iter()
            .map(|k| format!("{} ({})", k.id, k.source))
            .collect();
        StorageError::Key(format!(
            "object {object} is sealed with encryption key id {id}, which this server does not \
             have (key_file: {} ({}); old_key_files: {}): add the key file that sealed it to \
             old_key_files in [encryption] and restart the server; nothing of it is served",
            self.current.id,
            self.current.source,
            if old.is_empty() {
                "none".to_string()
            } else {
                old.join(", ")
            }
        ))
    }
}

fn entry(key: &[u8; 32], source: String) -> Result<Arc<KeyEntry>, String> {
    let unbound =
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| format!("{source}: not an AES-256 key"))?;
    Ok(Arc::new(KeyEntry {
        id: KeyId::of(key),
        source,
        aead: LessSafeKey::new(unbound),
    }))
}

/// The key in `path`, and whether users other than its owner may read the file.
fn read_key_file(path: &Path) -> Result<([u8; 32], bool), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    // A key file is tiny; anything large is the wrong file, not read whole.
    if meta.len() > 128 {
        return Err(format!(
            "{} bytes is not a key file: {KEY_FILE_HINT}",
            meta.len()
        ));
    }
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let key = parse_key(&bytes);
    // Best effort: the file's bytes do not linger in freed memory.
    bytes.fill(0);
    let key = key?;
    let others_may_read = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o007 != 0;
    Ok((key, others_may_read))
}

const KEY_FILE_HINT: &str = "a key file holds 32 random bytes (head -c 32 /dev/urandom > FILE) \
                             or 64 hex digits";

/// 32 raw bytes, or 64 hex digits optionally followed by a newline.
fn parse_key(bytes: &[u8]) -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    if bytes.len() == 32 {
        key.copy_from_slice(bytes);
    } else {
        let text = bytes
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(bytes);
        if text.len() != 64 || hex::decode_to_slice(text, &mut key).is_err() {
            return Err(format!(
                "it holds {} bytes that are neither 32 raw bytes nor 64 hex digits: {KEY_FILE_HINT}",
                bytes.len()
            ));
        }
    }
    if key.iter().all(|&b| b == key[0]) {
        return Err(format!(
            "it holds one byte repeated, not a random key: {KEY_FILE_HINT}"
        ));
    }
    Ok(key)
}

/// The plaintext size of a sealed object of `sealed` bytes; `None` when no sealed object can
/// have that size (cut short or extended by a partial frame).
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER_LEN as u64)?;
    let full = body / SEALED_FRAME_LEN as u64;
    let rest = body % SEALED_FRAME_LEN as u64;
    let tag = TAG_LEN as u64;
    match (full, rest) {
        (0, 0) => None,
        (n, 0) => Some(n * FRAME_LEN as u64),
        // An empty object is one empty last frame; otherwise a last frame holds a byte or more.
        (0, r) if r >= tag => Some(r - tag),
        (n, r) if r > tag => Some(n * FRAME_LEN as u64 + r - tag),
        _ => None,
    }
}

/// The stored size of an object of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER_LEN as u64 + plain + frame_count(plain) * TAG_LEN as u64
}

/// Frames of an object of `plain` bytes: at least one, the last one possibly short.
fn frame_count(plain: u64) -> u64 {
    plain.div_ceil(FRAME_LEN as u64).max(1)
}

/// The parsed header of a sealed object.
#[derive(Clone, Copy)]
struct Header {
    key_id: KeyId,
    prefix: [u8; 8],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8] = FORMAT;
        out[9..17].copy_from_slice(&self.key_id.0);
        out[17..25].copy_from_slice(&self.prefix);
        out
    }
}

/// What the first bytes of an object say.
enum Kind {
    /// No magic: written before encryption was turned on; served as it is.
    Plain,
    Sealed(Header),
}

/// Classifies an object by its first bytes (`start`, up to [`HEADER_LEN`] of them; fewer only
/// when the object is shorter).
fn kind_of(object: &str, start: &[u8]) -> Result<Kind, StorageError> {
    if start.len() < MAGIC.len() || &start[..MAGIC.len()] != MAGIC {
        return Ok(Kind::Plain);
    }
    if start.len() < HEADER_LEN {
        return Err(StorageError::Damaged(format!(
            "object {object} is cut short inside its encryption header; nothing of it is served"
        )));
    }
    if start[8] != FORMAT {
        return Err(StorageError::Key(format!(
            "object {object} is sealed in encryption format {}, which this version of \
             wal-archive-server cannot open (it knows format {FORMAT}): run the version that \
             wrote it, or a newer one",
            start[8]
        )));
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&start[9..17]);
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&start[17..25]);
    Ok(Kind::Sealed(Header {
        key_id: KeyId(key_id),
        prefix,
    }))
}

/// An object without the header in a store sealed since its creation: not written by this
/// server, never served.
fn not_sealed(object: &str) -> StorageError {
    StorageError::Damaged(format!(
        "object {object} is not sealed, though every object of this storage has been sealed \
         since it was created ({SEALED_STORE_KEY}): something else wrote it; nothing of it is \
         served"
    ))
}

fn nonce(prefix: &[u8; 8], index: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(prefix);
    n[8..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Associated data of frame `index`: the header, the index and whether it is the last frame.
fn aad(header: &[u8; HEADER_LEN], index: u32, last: bool) -> [u8; HEADER_LEN + 5] {
    let mut out = [0u8; HEADER_LEN + 5];
    out[..HEADER_LEN].copy_from_slice(header);
    out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&index.to_be_bytes());
    out[HEADER_LEN + 4] = u8::from(last);
    out
}

fn frame_index(index: u64) -> Result<u32, StorageError> {
    u32::try_from(index).map_err(|_| {
        StorageError::Io(format!(
            "an encrypted object holds at most {} frames of 1 MiB",
            u64::from(u32::MAX) + 1
        ))
    })
}

fn damaged_frame(object: &str, index: u64) -> StorageError {
    StorageError::Damaged(format!(
        "frame {index} of object {object} fails authentication: the object is damaged or \
         sealed with another key; nothing of it is served"
    ))
}

/// Seals the frames of one object under the current key.
struct Sealer {
    key: Arc<KeyEntry>,
    header: [u8; HEADER_LEN],
    prefix: [u8; 8],
    next: u64,
}

impl Sealer {
    fn new(key: Arc<KeyEntry>) -> Result<Sealer, StorageError> {
        let mut prefix = [0u8; 8];
        SystemRandom::new()
            .fill(&mut prefix)
            .map_err(|_| StorageError::Io("the system's random source failed".into()))?;
        let header = Header {
            key_id: key.id,
            prefix,
        }
        .encode();
        Ok(Sealer {
            key,
            header,
            prefix,
            next: 0,
        })
    }

    /// Appends the next frame, sealed, to `out`.
    fn seal_into(
        &mut self,
        plain: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let index = frame_index(self.next)?;
        self.next += 1;
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .aead
            .seal_in_place_separate_tag(
                nonce(&self.prefix, index),
                Aad::from(aad(&self.header, index, last)),
                &mut out[start..],
            )
            .map_err(|_| StorageError::Io("sealing a frame failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// A whole small object, sealed.
    fn seal_whole(mut self, plain: &[u8]) -> Result<Bytes, StorageError> {
        let mut out = Vec::with_capacity(sealed_len(plain.len() as u64) as usize);
        out.extend_from_slice(&self.header);
        let mut frames = plain.chunks(FRAME_LEN).peekable();
        if frames.peek().is_none() {
            self.seal_into(&[], true, &mut out)?;
        }
        while let Some(frame) = frames.next() {
            let last = frames.peek().is_none();
            self.seal_into(frame, last, &mut out)?;
        }
        Ok(Bytes::from(out))
    }
}

/// Opens the frames of one sealed object.
struct Opener {
    key: Arc<KeyEntry>,
    header: [u8; HEADER_LEN],
    prefix: [u8; 8],
}

impl Opener {
    /// Opens frame `index` (ciphertext and tag) in place; returns its plaintext length.
    fn open(
        &self,
        object: &str,
        index: u64,
        last: bool,
        frame: &mut [u8],
    ) -> Result<usize, StorageError> {
        let i = frame_index(index)?;
        self.key
            .aead
            .open_in_place(
                nonce(&self.prefix, i),
                Aad::from(aad(&self.header, i, last)),
                frame,
            )
            .map(|plain| plain.len())
            .map_err(|_| damaged_frame(object, index))
    }
}

/// A [`BlobStore`] that seals what it writes and opens what it reads (see the module comment).
pub struct EncryptedBlobs<S> {
    inner: S,
    keys: Arc<Keyring>,
    /// Every object of this store has been sealed since it was created ([`SEALED_STORE_KEY`]
    /// says so): sizes are arithmetic, and an object without the header is refused.
    sealed_store: AtomicBool,
}

/// What a look at an object's header found.
enum Probe {
    Plain,
    Sealed { header: Header, plain_len: u64 },
}

impl<S: BlobStore> EncryptedBlobs<S> {
    pub fn new(inner: S, keys: Arc<Keyring>) -> Self {
        EncryptedBlobs {
            inner,
            keys,
            sealed_store: AtomicBool::new(false),
        }
    }

    fn sealed_store(&self) -> bool {
        self.sealed_store.load(Ordering::SeqCst)
    }

    /// Whether the store holds nothing yet but the lease: sealing starts with the store.
    async fn store_is_new(&self) -> Result<bool, StorageError> {
        if self.inner.stat(super::INSTANCE_KEY).await?.is_some() {
            return Ok(false);
        }
        for prefix in ["wal/", "backups/"] {
            if !self.inner.list_dirs(prefix).await?.is_empty() {
                return Ok(false);
            }
        }
        Ok(self
            .inner
            .list("meta/")
            .await?
            .iter()
            .all(|m| m.key == super::lease::LEASE_KEY || m.key == SEALED_STORE_KEY))
    }

    /// The wrapped store, which holds the sealed bytes.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn opener(&self, object: &str, header: &Header) -> Result<Opener, StorageError> {
        let key = self
            .keys
            .find(header.key_id)
            .ok_or_else(|| self.keys.unknown(object, header.key_id))?;
        Ok(Opener {
            key: key.clone(),
            header: header.encode(),
            prefix: header.prefix,
        })
    }

    /// Reads the header of the object `key`, which the inner store says is `size` bytes.
    async fn probe(&self, key: &str, size: u64) -> Result<Probe, StorageError> {
        if size < MAGIC.len() as u64 {
            return Ok(Probe::Plain);
        }
        let start = self
            .inner
            .get_range(key, 0..size.min(HEADER_LEN as u64))
            .await?;
        match kind_of(key, &start)? {
            Kind::Plain if self.sealed_store() => Err(not_sealed(key)),
            Kind::Plain => Ok(Probe::Plain),
            Kind::Sealed(header) => {
                let plain_len = plain_len(size).ok_or_else(|| {
                    StorageError::Damaged(format!(
                        "object {key} is {size} bytes, which no sealed object can be: it was cut \
                         short or extended; nothing of it is served"
                    ))
                })?;
                Ok(Probe::Sealed { header, plain_len })
            }
        }
    }

    /// The plaintext view of an entry of the inner store; `None` when it vanished meanwhile.
    async fn plain_meta(&self, meta: BlobMeta) -> Result<Option<BlobMeta>, StorageError> {
        if self.sealed_store() {
            // Every object is sealed: the size says the plaintext size, nothing is read.
            let size = plain_len(meta.size).ok_or_else(|| {
                StorageError::Damaged(format!(
                    "object {} is {} bytes, which no sealed object can be; nothing of it is \
                     served",
                    meta.key, meta.size
                ))
            })?;
            return Ok(Some(BlobMeta { size, ..meta }));
        }
        match self.probe(&meta.key, meta.size).await {
            Ok(Probe::Plain) => Ok(Some(meta)),
            Ok(Probe::Sealed { plain_len, .. }) => Ok(Some(BlobMeta {
                size: plain_len,
                ..meta
            })),
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a whole small object (`data` as stored).
    fn open_whole(&self, object: &str, data: Bytes) -> Result<Bytes, StorageError> {
        let Kind::Sealed(header) = kind_of(object, &data[..data.len().min(HEADER_LEN)])? else {
            if self.sealed_store() {
                return Err(not_sealed(object));
            }
            return Ok(data);
        };
        let opener = self.opener(object, &header)?;
        let plain_len = plain_len(data.len() as u64).ok_or_else(|| {
            StorageError::Damaged(format!(
                "object {object} is {} bytes, which no sealed object can be; nothing of it is \
                 served",
                data.len()
            ))
        })?;
        let mut body = BytesMut::from(&data[HEADER_LEN..]);
        let mut out = BytesMut::with_capacity(plain_len as usize);
        let frames = frame_count(plain_len);
        for index in 0..frames {
            let take = body.len().min(SEALED_FRAME_LEN);
            let mut frame = body.split_to(take);
            let n = opener.open(object, index, index + 1 == frames, &mut frame)?;
            out.extend_from_slice(&frame[..n]);
        }
        Ok(out.freeze())
    }
}

impl<S: BlobStore> BlobStore for EncryptedBlobs<S> {
    fn begin_put<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn BlobUpload>, StorageError>> {
        Box::pin(async move {
            let sealer = Sealer::new(self.keys.current.clone())?;
            let inner = self.inner.begin_put(key).await?;
            Ok(Box::new(SealingUpload {
                inner,
                sealer,
                pending: Vec::with_capacity(FRAME_LEN),
                header_written: false,
            }) as Box<dyn BlobUpload>)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<BlobStream, StorageError>> {
        Box::pin(async move {
            let inner = self.inner.get(key).await?;
            open_stream(key, self.keys.clone(), inner, self.sealed_store()).await
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        Box::pin(async move {
            let size = self
                .inner
                .head(key)
                .await?
                .ok_or_else(|| StorageError::NotFound(key.to_string()))?;
            let (header, plain_len) = match self.probe(key, size).await? {
                Probe::Plain => return self.inner.get_range(key, range).await,
                Probe::Sealed { header, plain_len } => (header, plain_len),
            };
            let opener = self.opener(key, &header)?;
            if range.start > range.end || range.end > plain_len {
                return Err(StorageError::Io(format!(
                    "range {}..{} is outside object {key} of {plain_len} bytes",
                    range.start, range.end
                )));
            }
            if range.is_empty() {
                return Ok(Bytes::new());
            }
            let frame = FRAME_LEN as u64;
            let sealed_frame = SEALED_FRAME_LEN as u64;
            let frames = frame_count(plain_len);
            let first = range.start / frame;
            let last = (range.end - 1) / frame;
            let from = HEADER_LEN as u64 + first * sealed_frame;
            let to = (HEADER_LEN as u64 + (last + 1) * sealed_frame).min(size);
            let stored = self.inner.get_range(key, from..to).await?;
            if stored.len() as u64 != to - from {
                return Err(StorageError::Io(format!(
                    "storage returned {} bytes of object {key} for {} asked",
                    stored.len(),
                    to - from
                )));
            }
            let mut stored = BytesMut::from(&stored[..]);
            let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
            for index in first..=last {
                let take = stored.len().min(SEALED_FRAME_LEN);
                let mut sealed = stored.split_to(take);
                let n = opener.open(key, index, index + 1 == frames, &mut sealed)?;
                let begins = index * frame;
                let lo = (range.start.max(begins) - begins) as usize;
                let hi = (range.end.min(begins + n as u64) - begins) as usize;
                out.extend_from_slice(&sealed[lo..hi]);
            }
            Ok(out.freeze())
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move { Ok(self.stat(key).await?.map(|m| m.size)) })
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, StorageError>> {
        Box::pin(async move {
            match self.inner.stat(key).await? {
                Some(meta) => self.plain_meta(meta).await,
                None => Ok(None),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, StorageError>> {
        Box::pin(async move {
            let listed = self.inner.list(prefix).await?;
            let metas: Vec<Option<BlobMeta>> = futures::stream::iter(listed)
                .map(|meta| async move {
                    let stored = meta.clone();
                    match self.plain_meta(meta).await {
                        // One object whose header is damaged or of an unknown format does not
                        // hide the others: it is listed with its stored size, and any read of
                        // it reports the problem.
                        Err(StorageError::Damaged(_) | StorageError::Key(_)) => Ok(Some(stored)),
                        other => other,
                    }
                })
                .buffered(LIST_PROBES)
                .try_collect()
                .await?;
            Ok(metas.into_iter().flatten().collect())
        })
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

    fn replace<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let sealed = Sealer::new(self.keys.current.clone())?.seal_whole(&data)?;
            self.inner.replace(key, sealed).await
        })
    }

    fn read_versioned<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>> {
        Box::pin(async move {
            match self.inner.read_versioned(key).await? {
                Some(Versioned { data, version }) => Ok(Some(Versioned {
                    data: self.open_whole(key, data)?,
                    version,
                })),
                None => Ok(None),
            }
        })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Precondition,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(async move {
            let sealed = Sealer::new(self.keys.current.clone())?.seal_whole(&data)?;
            self.inner.put_if(key, sealed, condition).await
        })
    }

    fn supports_versions(&self) -> bool {
        self.inner.supports_versions()
    }

    fn copy_new<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StorageError>> {
        // The sealed bytes as they are: nothing in a sealed object names its key.
        self.inner.copy_new(from, to)
    }

    fn move_aside<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // The sealed bytes as they are: an object that fails authentication moves too.
        self.inner.move_aside(from, to)
    }

    /// Settles whether every object is sealed: so when [`SEALED_STORE_KEY`] says so, or when
    /// the store is new (it is then written). A store that held objects before encryption was
    /// turned on keeps reading their headers to tell them apart.
    fn prepare(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            // Sealed like every other object: only a holder of the key can write it.
            let marker = match self.read_versioned(SEALED_STORE_KEY).await? {
                Some(found) => Some(found.data),
                None if self.store_is_new().await? => {
                    let data = Bytes::from_static(b"{\"sealed_since_creation\":true}\n");
                    match self
                        .put_if(SEALED_STORE_KEY, data.clone(), Precondition::Absent)
                        .await
                    {
                        Ok(_) | Err(StorageError::Precondition(_)) => Some(data),
                        Err(e) => return Err(e),
                    }
                }
                None => None,
            };
            let sealed = marker.is_some_and(|data| {
                serde_json::from_slice::<serde_json::Value>(&data)
                    .is_ok_and(|v| v["sealed_since_creation"] == true)
            });
            self.sealed_store.store(sealed, Ordering::SeqCst);
            if !sealed {
                tracing::info!(
                    "encryption at rest: this storage holds objects written before encryption \
                     was turned on; they are read as they are, and listings read each \
                     object's first bytes to tell them apart"
                );
            }
            Ok(())
        })
    }
}

/// An upload that seals frames as bytes arrive. A full frame is held back until a byte after it
/// arrives, because only then is it known not to be the last one.
struct SealingUpload {
    inner: Box<dyn BlobUpload>,
    sealer: Sealer,
    /// Plaintext of the frame being filled: at most [`FRAME_LEN`] bytes.
    pending: Vec<u8>,
    header_written: bool,
}

impl SealingUpload {
    /// Takes `data` in; returns the sealed bytes that are ready for the inner upload (the header
    /// first, then every frame known not to be the last).
    fn absorb(&mut self, mut data: &[u8]) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        if !self.header_written {
            out.extend_from_slice(&self.sealer.header);
            self.header_written = true;
        }
        while !data.is_empty() {
            if self.pending.len() == FRAME_LEN {
                self.sealer.seal_into(&self.pending, false, &mut out)?;
                self.pending.clear();
            }
            let take = (FRAME_LEN - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(out)
    }

    /// The header if nothing was written yet, and the last frame.
    fn finish(&mut self) -> Result<Vec<u8>, StorageError> {
        let mut out = self.absorb(&[])?;
        self.sealer.seal_into(&self.pending, true, &mut out)?;
        self.pending.clear();
        Ok(out)
    }
}

impl BlobUpload for SealingUpload {
    fn write(&mut self, data: &[u8]) -> BoxFuture<'_, Result<(), StorageError>> {
        let sealed = self.absorb(data);
        Box::pin(async move {
            let sealed = sealed?;
            if sealed.is_empty() {
                return Ok(());
            }
            self.inner.write(&sealed).await
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<PutOutcome, StorageError>> {
        Box::pin(async move {
            let written = match self.finish() {
                Ok(tail) => self.inner.write(&tail).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => self.inner.commit().await,
                Err(e) => {
                    self.inner.abort().await;
                    Err(e)
                }
            }
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.inner.abort()
    }
}

/// The plaintext of `inner`, the stored bytes of `object`, as a stream. The header is read
/// before the stream is handed out, so that a missing key is the answer to `get` itself rather
/// than the first item of its stream.
async fn open_stream(
    object: &str,
    keys: Arc<Keyring>,
    inner: BlobStream,
    refuse_plain: bool,
) -> Result<BlobStream, StorageError> {
    let mut opening = Opening {
        object: object.to_string(),
        keys,
        inner,
        refuse_plain,
        buf: BytesMut::new(),
        ended: false,
        mode: Mode::Probe,
    };
    opening.decide().await?;
    Ok(futures::stream::try_unfold(opening, |mut o| async move {
        Ok(o.next_piece().await?.map(|piece| (piece, o)))
    })
    .boxed())
}

/// The state of a streamed read.
struct Opening {
    object: String,
    keys: Arc<Keyring>,
    inner: BlobStream,
    /// An object without the header is refused (a store sealed since its creation).
    refuse_plain: bool,
    /// Bytes received and not yet handed on: the header while probing, then at most one sealed
    /// frame beyond the one being opened.
    buf: BytesMut,
    ended: bool,
    mode: Mode,
}

enum Mode {
    /// The header is not read yet.
    Probe,
    /// Not sealed: bytes pass through.
    Plain,
    Sealed {
        opener: Opener,
        index: u64,
    },
    Done,
}

impl Opening {
    /// Receives one more piece into `buf`; false once the inner stream has ended. Never called
    /// after that: a stream polled past its end may panic.
    async fn fill(&mut self) -> Result<bool, StorageError> {
        match self.inner.next().await {
            Some(piece) => {
                self.buf.extend_from_slice(&piece?);
                Ok(true)
            }
            None => {
                self.ended = true;
                Ok(false)
            }
        }
    }

    /// Reads as much of the start as it takes to tell a sealed object from a plaintext one.
    async fn decide(&mut self) -> Result<(), StorageError> {
        self.probe_header().await?;
        if matches!(self.mode, Mode::Plain) && self.refuse_plain {
            return Err(not_sealed(&self.object));
        }
        Ok(())
    }

    async fn probe_header(&mut self) -> Result<(), StorageError> {
        while matches!(self.mode, Mode::Probe) {
            let n = self.buf.len();
            let could_be_sealed = self.buf[..n.min(MAGIC.len())] == MAGIC[..n.min(MAGIC.len())];
            if !could_be_sealed || (self.ended && n < MAGIC.len()) {
                self.mode = Mode::Plain;
            } else if n >= HEADER_LEN || self.ended {
                let header = match kind_of(&self.object, &self.buf[..n.min(HEADER_LEN)])? {
                    Kind::Plain => {
                        self.mode = Mode::Plain;
                        return Ok(());
                    }
                    Kind::Sealed(header) => header,
                };
                let key = self
                    .keys
                    .find(header.key_id)
                    .ok_or_else(|| self.keys.unknown(&self.object, header.key_id))?
                    .clone();
                let _ = self.buf.split_to(HEADER_LEN);
                self.mode = Mode::Sealed {
                    opener: Opener {
                        key,
                        header: header.encode(),
                        prefix: header.prefix,
                    },
                    index: 0,
                };
            } else {
                self.fill().await?;
            }
        }
        Ok(())
    }

    /// The next piece of plaintext, `None` at the end.
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StorageError> {
        loop {
            match &mut self.mode {
                Mode::Probe => self.decide().await?,
                Mode::Plain => {
                    if !self.buf.is_empty() {
                        return Ok(Some(self.buf.split().freeze()));
                    }
                    if self.ended {
                        self.mode = Mode::Done;
                        return Ok(None);
                    }
                    match self.inner.next().await {
                        Some(piece) => return piece.map(Some),
                        None => {
                            self.mode = Mode::Done;
                            return Ok(None);
                        }
                    }
                }
                Mode::Sealed { opener, index } => {
                    // More than a frame received: the first one is not the last.
                    let last = if self.buf.len() > SEALED_FRAME_LEN {
                        false
                    } else if self.ended {
                        true
                    } else {
                        self.fill().await?;
                        continue;
                    };
                    let i = *index;
                    if last && self.buf.len() < TAG_LEN {
                        return Err(StorageError::Damaged(format!(
                            "object {} ends inside frame {i}: it was cut short; nothing of it \
                             is served",
                            self.object
                        )));
                    }
                    let take = self.buf.len().min(SEALED_FRAME_LEN);
                    let mut frame = self.buf.split_to(take);
                    let n = opener.open(&self.object, i, last, &mut frame)?;
                    frame.truncate(n);
                    *index += 1;
                    if last {
                        self.mode = Mode::Done;
                        if frame.is_empty() {
                            return Ok(None);
                        }
                    }
                    return Ok(Some(frame.freeze()));
                }
                Mode::Done => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectStoreBlobs;

    const KEY_A: [u8; 32] = *b"key A: 32 bytes, not at random!!";
    const KEY_B: [u8; 32] = *b"key B: 32 bytes, not at random!!";

    fn keys(current: [u8; 32], old: &[[u8; 32]]) -> Arc<Keyring> {
        Arc::new(Keyring::from_keys(&current, old).expect("keys"))
    }

    /// An encrypted store over local files in `dir`.
    fn sealed(dir: &Path, keys: Arc<Keyring>) -> EncryptedBlobs<ObjectStoreBlobs> {
        EncryptedBlobs::new(ObjectStoreBlobs::local(dir).expect("store"), keys)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Writes `data` through `blobs` in pieces of `piece` bytes.
    async fn put(blobs: &dyn BlobStore, key: &str, data: &[u8], piece: usize) {
        let mut up = blobs.begin_put(key).await.expect("begin");
        for chunk in data.chunks(piece.max(1)) {
            up.write(chunk).await.expect("write");
        }
        assert_eq!(up.commit().await.expect("commit"), PutOutcome::Created);
    }

    async fn get(blobs: &dyn BlobStore, key: &str) -> Result<Vec<u8>, StorageError> {
        let chunks: Vec<Bytes> = blobs.get(key).await?.try_collect().await?;
        Ok(chunks.concat())
    }

    /// The stored bytes, replaced by `change(bytes)`.
    async fn tamper(inner: &ObjectStoreBlobs, key: &str, change: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = get(inner, key).await.expect("raw");
        change(&mut bytes);
        inner.delete(key).await.expect("delete");
        put(inner, key, &bytes, usize::MAX).await;
    }

    #[test]
    fn sizes_convert_both_ways() {
        for plain in [
            0,
            1,
            15,
            16,
            17,
            FRAME_LEN as u64 - 1,
            FRAME_LEN as u64,
            FRAME_LEN as u64 + 1,
            3 * FRAME_LEN as u64,
            3 * FRAME_LEN as u64 + 12_345,
        ] {
            assert_eq!(plain_len(sealed_len(plain)), Some(plain), "{plain}");
        }
        let frame = SEALED_FRAME_LEN as u64;
        let header = HEADER_LEN as u64;
        for impossible in [
            0,
            header,
            header + 15,
            header + frame + 16,
            header + frame + 3,
        ] {
            assert_eq!(plain_len(impossible), None, "{impossible}");
        }
    }

    #[test]
    fn key_ids_and_key_files() {
        // The id is the documented hash, so that another implementation can compute it.
        let key = [0x42u8; 32];
        let mut input = b"wal-archive key id\0".to_vec();
        input.extend_from_slice(&key);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        assert_eq!(KeyId::of(&key).0, digest.as_ref()[..8]);
        assert_eq!(KeyId::of(&key).to_string().len(), 16);

        let raw: Vec<u8> = (0..32).collect();
        assert_eq!(parse_key(&raw).expect("raw").to_vec(), raw);
        let hex_text = format!("{}\n", hex::encode(&raw));
        assert_eq!(parse_key(hex_text.as_bytes()).expect("hex").to_vec(), raw);
        assert_eq!(
            parse_key(hex::encode(&raw).as_bytes())
                .expect("hex")
                .to_vec(),
            raw
        );
        for bad in [
            &raw[..31],
            &[0u8; 32][..],
            b"zz".repeat(32).as_slice(),
            format!("{hex_text}\n").as_bytes(),
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let current = dir.path().join("current.key");
        std::fs::write(&current, &raw).expect("write");
        let old = dir.path().join("old.key");
        std::fs::write(&old, format!("{}\n", hex::encode(KEY_B))).expect("write");
        std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        std::fs::set_permissions(
            &current,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let ring =
            Keyring::load(&current, &[old.clone(), current.clone(), old.clone()]).expect("keyring");
        let raw_key: [u8; 32] = raw.clone().try_into().expect("32");
        assert_eq!(ring.current_id(), KeyId::of(&raw_key));
        assert_eq!(
            ring.old_ids(),
            vec![KeyId::of(&KEY_B)],
            "duplicates dropped"
        );
        assert_eq!(ring.exposed_files(), &[old.clone(), old]);
        let shown = format!("{ring:?}");
        assert!(shown.contains(&ring.current_id().to_string()), "{shown}");
        assert!(!shown.contains(&hex::encode(&raw)) && !shown.contains(&hex::encode(KEY_B)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trips_of_every_size_in_odd_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = sealed(dir.path(), keys(KEY_A, &[]));
        let sizes = [0, 1, FRAME_LEN, FRAME_LEN + 1, 3 * FRAME_LEN + 12_345];
        for (i, &len) in sizes.iter().enumerate() {
            let want = data(len);
            for (j, piece) in [7_777, FRAME_LEN, usize::MAX].into_iter().enumerate() {
                let key = format!("d/{i}-{j}");
                put(&blobs, &key, &want, piece).await;
                assert_eq!(
                    get(&blobs, &key).await.expect("get"),
                    want,
                    "{len} by {piece}"
                );
                assert_eq!(blobs.head(&key).await.expect("head"), Some(len as u64));
                let stat = blobs.stat(&key).await.expect("stat").expect("present");
                assert_eq!(stat.size, len as u64);
                let raw = blobs.inner().head(&key).await.expect("raw head");
                assert_eq!(raw, Some(sealed_len(len as u64)), "stored size of {len}");
            }
        }
        // An empty object is a header and one empty last frame.
        assert_eq!(
            blobs.inner().head("d/0-0").await.expect("head"),
            Some((HEADER_LEN + TAG_LEN) as u64)
        );
        // Listings give plaintext sizes.
        let listed = blobs.list("d").await.expect("list");
        assert_eq!(listed.len(), sizes.len() * 3);
        for meta in listed {
            let i: usize = meta.key["d/".len()..meta.key.len() - 2]
                .parse()
                .expect("index");
            assert_eq!(meta.size, sizes[i] as u64, "{}", meta.key);
        }
        // A large object streams in frames, not whole.
        let pieces: Vec<Bytes> = blobs
            .get("d/4-2")
            .await
            .expect("get")
            .try_collect()
            .await
            .expect("read");
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|p| p.len() <= FRAME_LEN));
        // A name is still created once.
        let up = blobs.begin_put("d/1-0").await.expect("begin");
        assert_eq!(
            up.commit().await.expect("commit"),
            PutOutcome::AlreadyExists
        );
        assert_eq!(get(&blobs, "d/1-0").await.expect("get"), data(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_open_only_the_frames_they_cover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = sealed(dir.path(), keys(KEY_A, &[]));
        let len = 3 * FRAME_LEN + 100;
        let want = data(len);
        put(&blobs, "r", &want, 65_536).await;
        let f = FRAME_LEN as u64;
        let n = len as u64;
        for range in [
            0..1,
            0..n,
            f - 10..f + 10,
            f..2 * f,
            f - 1..3 * f + 1,
            3 * f..n,
            n - 64..n,
            n - 1..n,
            17..17,
        ] {
            let got = blobs.get_range("r", range.clone()).await.expect("range");
            assert_eq!(
                &got[..],
                &want[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
        assert!(blobs.get_range("r", n - 1..n + 1).await.is_err());
        // The trailer of an object that ends on a frame boundary.
        put(&blobs, "exact", &want[..2 * FRAME_LEN], 1 << 20).await;
        let tail = blobs
            .get_range("exact", 2 * f - 64..2 * f)
            .await
            .expect("tail");
        assert_eq!(&tail[..], &want[2 * FRAME_LEN - 64..2 * FRAME_LEN]);
        assert!(matches!(
            blobs.get_range("absent", 0..1).await,
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(blobs.head("absent").await.expect("head"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_key_is_a_clear_error_and_old_keys_still_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with_a = sealed(dir.path(), keys(KEY_A, &[]));
        let want = data(FRAME_LEN + 5);
        put(&with_a, "old", &want, 4096).await;
        with_a
            .replace("meta/record", Bytes::from_static(b"{\"a\":1}"))
            .await
            .expect("replace");
        let id_a = keys(KEY_A, &[]).current_id();

        // Only another key: every read says which key is missing and what to do; sizes, which
        // need no key, are still known.
        let with_b = sealed(dir.path(), keys(KEY_B, &[]));
        let expect_missing = |e: StorageError| {
            let text = e.to_string();
            assert!(matches!(e, StorageError::Key(_)), "{text}");
            assert!(text.contains(&id_a.to_string()), "{text}");
            assert!(text.contains("old_key_files"), "{text}");
        };
        expect_missing(with_b.get("old").await.err().expect("refused"));
        expect_missing(with_b.get_range("old", 0..10).await.expect_err("refused"));
        expect_missing(
            with_b
                .read_versioned("meta/record")
                .await
                .expect_err("refused"),
        );
        assert_eq!(
            with_b.head("old").await.expect("head"),
            Some(want.len() as u64)
        );

        // The new key with the old one listed: old objects open, new ones use the new key.
        let rotated = sealed(dir.path(), keys(KEY_B, &[KEY_A]));
        assert_eq!(get(&rotated, "old").await.expect("old object"), want);
        assert_eq!(
            rotated
                .read_versioned("meta/record")
                .await
                .expect("read")
                .expect("present")
                .data,
            Bytes::from_static(b"{\"a\":1}")
        );
        put(&rotated, "new", b"after the rotation", 3).await;
        let header = rotated.inner().get_range("new", 0..25).await.expect("raw");
        assert_eq!(&header[..8], MAGIC);
        assert_eq!(&header[9..17], &keys(KEY_B, &[]).current_id().0);
        let header = rotated.inner().get_range("old", 0..25).await.expect("raw");
        assert_eq!(&header[9..17], &id_a.0);
        // And the old key alone cannot read the new object.
        expect_missing_key_b(with_a.get("new").await.err().expect("refused"));
    }

    fn expect_missing_key_b(e: StorageError) {
        assert!(matches!(e, StorageError::Key(_)), "{e}");
        assert!(e
            .to_string()
            .contains(&keys(KEY_B, &[]).current_id().to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampering_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = sealed(dir.path(), keys(KEY_A, &[]));
        let len = 2 * FRAME_LEN + 1000;
        let want = data(len);
        let damaged = |r: Result<Vec<u8>, StorageError>, what: &str| match r {
            Err(StorageError::Damaged(m)) => {
                assert!(
                    m.contains("damaged") || m.contains("cut short"),
                    "{what}: {m}"
                )
            }
            other => panic!("{what}: expected damage, got {other:?}"),
        };

        // A flipped byte in the middle frame.
        put(&blobs, "flip", &want, 1 << 16).await;
        tamper(blobs.inner(), "flip", |b| {
            b[HEADER_LEN + SEALED_FRAME_LEN + 7] ^= 1
        })
        .await;
        damaged(get(&blobs, "flip").await, "flip");
        damaged(
            blobs
                .get_range("flip", FRAME_LEN as u64..FRAME_LEN as u64 + 1)
                .await
                .map(|b| b.to_vec()),
            "flip, range",
        );
        // A flipped byte in the header (the nonce prefix) breaks every frame.
        put(&blobs, "header", &want, 1 << 16).await;
        tamper(blobs.inner(), "header", |b| b[20] ^= 1).await;
        damaged(get(&blobs, "header").await, "header");

        // The last frame dropped: the frame now last was sealed as not last.
        put(&blobs, "cut", &want, 1 << 16).await;
        tamper(blobs.inner(), "cut", |b| {
            b.truncate(HEADER_LEN + 2 * SEALED_FRAME_LEN)
        })
        .await;
        assert_eq!(
            blobs.head("cut").await.expect("head"),
            Some(2 * FRAME_LEN as u64)
        );
        damaged(get(&blobs, "cut").await, "cut");
        damaged(
            blobs
                .get_range("cut", 2 * FRAME_LEN as u64 - 64..2 * FRAME_LEN as u64)
                .await
                .map(|b| b.to_vec()),
            "cut, trailer",
        );
        // Cut inside a frame.
        put(&blobs, "cut2", &want, 1 << 16).await;
        tamper(blobs.inner(), "cut2", |b| b.truncate(b.len() - 100)).await;
        damaged(get(&blobs, "cut2").await, "cut inside a frame");

        // A frame appended to an object of two full frames, sealed with the right key, nonce
        // prefix and next index: the former last frame, now in the middle, was sealed as last.
        let two = data(2 * FRAME_LEN);
        put(&blobs, "grown", &two, 1 << 16).await;
        let header = blobs.inner().get_range("grown", 0..25).await.expect("raw");
        let mut forger = Sealer::new(blobs.keys.current.clone()).expect("sealer");
        forger.header.copy_from_slice(&header);
        forger.prefix.copy_from_slice(&header[17..25]);
        forger.next = 2;
        let mut extra = Vec::new();
        forger
            .seal_into(b"appended", true, &mut extra)
            .expect("seal");
        tamper(blobs.inner(), "grown", |b| b.extend_from_slice(&extra)).await;
        let f = FRAME_LEN as u64;
        assert_eq!(
            blobs.head("grown").await.expect("head"),
            Some(2 * f + 8),
            "the size says the frame is there"
        );
        damaged(get(&blobs, "grown").await, "grown");
        damaged(
            blobs
                .get_range("grown", f..f + 10)
                .await
                .map(|b| b.to_vec()),
            "grown, the former last frame",
        );

        // Two frames swapped.
        put(&blobs, "swap", &want, 1 << 16).await;
        tamper(blobs.inner(), "swap", |b| {
            let (first, second) = (HEADER_LEN, HEADER_LEN + SEALED_FRAME_LEN);
            let a = b[first..second].to_vec();
            let c = b[second..second + SEALED_FRAME_LEN].to_vec();
            b[first..first + SEALED_FRAME_LEN].copy_from_slice(&c);
            b[second..second + SEALED_FRAME_LEN].copy_from_slice(&a);
        })
        .await;
        damaged(get(&blobs, "swap").await, "swap");

        // A size no sealed object can have.
        put(&blobs, "odd", &want, 1 << 16).await;
        tamper(blobs.inner(), "odd", |b| {
            b.truncate(HEADER_LEN + SEALED_FRAME_LEN + 3)
        })
        .await;
        assert!(matches!(
            blobs.head("odd").await,
            Err(StorageError::Damaged(_))
        ));
        damaged(get(&blobs, "odd").await, "odd size");
        // Listed all the same, with its stored size, so that the others are not hidden.
        assert!(blobs
            .list("")
            .await
            .expect("list")
            .iter()
            .any(|m| m.key == "odd"));
    }

    /// `bytes` in pieces of `piece` bytes, as a stream that panics if polled past its end (as
    /// some network streams do).
    fn strict_stream(bytes: &[u8], piece: usize) -> BlobStream {
        let pieces: Vec<Bytes> = bytes.chunks(piece).map(Bytes::copy_from_slice).collect();
        futures::stream::unfold(pieces.into_iter(), |mut rest| async move {
            rest.next().map(|p| (Ok(p), rest))
        })
        .boxed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_reads_take_any_piece_sizes_and_stop_at_the_end() {
        let keys = keys(KEY_A, &[]);
        let big = data(2 * FRAME_LEN + 3);
        for plain in [&b""[..], b"x", b"WALA", b"WALAENC", &big[..4096], &big[..]] {
            let sealed = Sealer::new(keys.current.clone())
                .expect("sealer")
                .seal_whole(plain)
                .expect("seal");
            for piece in [1, 7, 25, 26, 100_003, usize::MAX] {
                if piece < 25 && plain.len() > 4096 {
                    continue;
                }
                for (what, stored) in [("sealed", &sealed[..]), ("plain", plain)] {
                    let stream =
                        open_stream("o", keys.clone(), strict_stream(stored, piece), false)
                            .await
                            .expect("open");
                    let got: Vec<Bytes> = stream.try_collect().await.expect("read");
                    assert_eq!(
                        got.concat(),
                        plain,
                        "{what} object of {} bytes in pieces of {piece}",
                        plain.len()
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_store_sealed_since_its_creation_refuses_plaintext_and_lists_by_arithmetic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = sealed(dir.path(), keys(KEY_A, &[]));
        blobs.prepare().await.expect("prepare");
        assert!(blobs.sealed_store());
        let marker = blobs
            .inner()
            .read_versioned(SEALED_STORE_KEY)
            .await
            .expect("read")
            .expect("written");
        assert!(marker.data.starts_with(MAGIC), "the marker is sealed too");
        let want = data(FRAME_LEN + 9);
        put(&blobs, "wal/a", &want, 4096).await;

        // Sizes without reading a byte of the objects: a sealed object whose header was
        // overwritten still lists its plaintext size (its reads report the damage).
        tamper(blobs.inner(), "wal/a", |b| b[0] ^= 0xFF).await;
        let listed = blobs.list("wal/").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, want.len() as u64);
        assert!(get(&blobs, "wal/a").await.is_err());

        // An object without the header, written underneath: refused, never served.
        put(
            blobs.inner(),
            "wal/planted",
            b"plain bytes of somebody else",
            100,
        )
        .await;
        for result in [
            get(&blobs, "wal/planted").await.map(|_| ()),
            blobs.get_range("wal/planted", 0..4).await.map(|_| ()),
        ] {
            match result {
                Err(StorageError::Damaged(why)) => assert!(why.contains("not sealed"), "{why}"),
                other => panic!("a plaintext object was not refused: {other:?}"),
            }
        }
        blobs
            .inner()
            .replace("meta/planted", Bytes::from_static(b"{}"))
            .await
            .expect("replace");
        assert!(matches!(
            blobs.read_versioned("meta/planted").await,
            Err(StorageError::Damaged(_))
        ));

        // The next start finds the marker.
        let again = sealed(dir.path(), keys(KEY_A, &[]));
        again.prepare().await.expect("prepare");
        assert!(again.sealed_store());
    }

    #[tokio::test]
    async fn a_store_that_held_objects_before_encryption_keeps_reading_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = ObjectStoreBlobs::local(dir.path()).expect("store");
        plain
            .replace(super::super::INSTANCE_KEY, Bytes::from_static(b"{}"))
            .await
            .expect("identity");
        put(&plain, "wal/old", b"written in the clear", 100).await;
        let blobs = sealed(dir.path(), keys(KEY_A, &[]));
        blobs.prepare().await.expect("prepare");
        assert!(!blobs.sealed_store());
        assert!(blobs
            .inner()
            .read_versioned(SEALED_STORE_KEY)
            .await
            .expect("read")
            .is_none());
        assert_eq!(
            get(&blobs, "wal/old").await.expect("get"),
            b"written in the clear"
        );
        put(&blobs, "wal/new", b"sealed", 100).await;
        let sizes: Vec<u64> = blobs
            .list("wal/")
            .await
            .expect("list")
            .iter()
            .map(|m| m.size)
            .collect();
        assert_eq!(sizes, vec![6, 20]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_written_before_encryption_pass_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = sealed(dir.path(), keys(KEY_A, &[]));
        let inner = blobs.inner();
        let big = data(FRAME_LEN + 77);
        for (key, bytes) in [
            ("plain/empty", &b""[..]),
            ("plain/short", &b"WALA"[..]),
            ("plain/text", &b"0123456789abcdef0123456789abcdef\n"[..]),
            ("plain/big", &big[..]),
        ] {
            put(inner, key, bytes, 1000).await;
            assert_eq!(get(&blobs, key).await.expect("get"), bytes, "{key}");
            assert_eq!(
                blobs.head(key).await.expect("head"),
                Some(bytes.len() as u64)
            );
            if !bytes.is_empty() {
                let tail = bytes.len() as u64;
                let got = blobs
                    .get_range(key, tail.saturating_sub(3)..tail)
                    .await
                    .expect("range");
                assert_eq!(&got[..], &bytes[bytes.len().saturating_sub(3)..]);
            }
            assert_eq!(
                blobs
                    .read_versioned(key)
                    .await
                    .expect("read")
                    .expect("present")
                    .data,
                bytes
            );
        }
        let sizes: Vec<(String, u64)> = blobs
            .list("plain")
            .await
            .expect("list")
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect();
        assert!(sizes.contains(&("plain/big".to_string(), big.len() as u64)));
        assert!(sizes.contains(&("plain/empty".to_string(), 0)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stored_bytes_never_hold_the_plaintext() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = sealed(dir.path(), keys(KEY_A, &[]));
        let marker = b"marker-5f0c3b0c1de6a1f0b2c4d9e8a7b6c5d4";
        let mut body = data(FRAME_LEN + 4096);
        for at in [0, 1000, FRAME_LEN - 10, FRAME_LEN + 2000] {
            body[at..at + marker.len()].copy_from_slice(marker);
        }
        put(&blobs, "wal/x", &body, 10_000).await;
        blobs
            .replace("meta/replaced", Bytes::from_static(marker))
            .await
            .expect("replace");
        blobs
            .put_if(
                "meta/created",
                Bytes::from_static(marker),
                Precondition::Absent,
            )
            .await
            .expect("put_if");
        assert!(matches!(
            blobs
                .put_if(
                    "meta/created",
                    Bytes::from_static(b"x"),
                    Precondition::Absent
                )
                .await,
            Err(StorageError::Precondition(_))
        ));
        for file in walk(dir.path()) {
            let bytes = std::fs::read(&file).expect("read");
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{} holds the plaintext",
                file.display()
            );
            assert!(bytes.starts_with(MAGIC), "{} is not sealed", file.display());
        }
        for key in ["meta/replaced", "meta/created"] {
            let read = blobs
                .read_versioned(key)
                .await
                .expect("read")
                .expect("present");
            assert_eq!(read.data, Bytes::from_static(marker));
            let stored = blobs
                .inner()
                .read_versioned(key)
                .await
                .expect("raw")
                .expect("raw");
            assert_eq!(read.version, stored.version, "versions pass through");
        }
        assert_eq!(get(&blobs, "wal/x").await.expect("get"), body);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
