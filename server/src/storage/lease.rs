//! Ownership of storage: two servers must never write one storage at once (DESIGN §7.9). On
//! local files the data directory's `flock` keeps a second server out. A bucket has no such
//! lock, so the server that uses it holds a lease in the bucket itself, `meta/lease`: who holds
//! it (a random id of this process, its host and data directory) and until when. It is taken
//! and renewed only with conditional writes (`If-None-Match: *` to create, `If-Match` on the
//! version read to change), so of two servers that try at once exactly one wins.
//!
//! - At start a server takes the lease if there is none, if it has expired, if an earlier run
//!   of itself held it (same host and data directory, whose lock it now holds: a restart after
//!   a crash), or with `--take-over`; otherwise it refuses to start and says who holds it
//!   until when.
//! - It renews the lease every third of its length. A renewal that finds another holder means
//!   the storage was taken over: the server stops at once, before it writes anything more.
//!   Renewals that keep failing (the bucket unreachable) stop it too, while the lease is still
//!   its own, so that it never writes past its expiry.
//! - A clean stop releases it (expiry set to now), so a replacement can start at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{BlobStore, Precondition, StorageError};

pub const LEASE_KEY: &str = "meta/lease";

/// The lease as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// A random id of the holding server process.
    pub holder: String,
    pub host: String,
    pub data_dir: String,
    /// Unix seconds.
    pub acquired_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the storage is held by another wal-archive-server (on {host}, data directory \
         {data_dir}) until {until}: two servers must never write one storage at once. Stop \
         that server, or if its host is lost, wait until then or start this one with \
         --take-over"
    )]
    Held {
        host: String,
        data_dir: String,
        until: String,
    },
    #[error("another server took the storage over (lease {0}); this one stops writing")]
    Lost(String),
    #[error("the lease in storage is unreadable ({0}); remove meta/lease only if no server uses this storage")]
    Damaged(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// The lease this server holds (a no-op on stores without versions).
pub struct Lease {
    blobs: Arc<dyn BlobStore>,
    record: Mutex<LeaseRecord>,
    version: Mutex<Option<String>>,
    ttl: Duration,
    lost: AtomicBool,
    /// Until when the lease is ours for sure: the expiry of the last write that landed.
    confirmed_until: AtomicU64,
    active: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}

fn encode(r: &LeaseRecord) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(r).unwrap_or_default())
}

impl Lease {
    /// Takes the lease of `blobs` for `ttl`: when none is held, when it expired, or with
    /// `take_over`. On stores without versions (local files), a no-op.
    pub async fn acquire(
        blobs: Arc<dyn BlobStore>,
        data_dir: &std::path::Path,
        ttl: Duration,
        take_over: bool,
    ) -> Result<Lease, LeaseError> {
        let mut random = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .map_err(|e| StorageError::Io(format!("cannot read /dev/urandom: {e}")))?;
        let now = now_secs();
        let record = LeaseRecord {
            holder: hex::encode(random),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown host".into()),
            data_dir: data_dir.display().to_string(),
            acquired_at: now,
            expires_at: now + ttl.as_secs(),
        };
        let active = blobs.supports_versions();
        let lease = Lease {
            blobs,
            record: Mutex::new(record.clone()),
            version: Mutex::new(None),
            ttl,
            lost: AtomicBool::new(false),
            confirmed_until: AtomicU64::new(record.expires_at),
            active,
        };
        if !active {
            return Ok(lease);
        }
        for _ in 0..5 {
            let condition = match lease.blobs.read_versioned(LEASE_KEY).await? {
                None => Precondition::Absent,
                Some(current) => {
                    let held: LeaseRecord = serde_json::from_slice(&current.data)
                        .map_err(|e| LeaseError::Damaged(e.to_string()))?;
                    let expired = held.expires_at <= now_secs();
                    // The same host and data directory: an earlier run of this server (the
                    // data directory's lock, held now, proves that run has ended).
                    let ours = held.host == record.host && held.data_dir == record.data_dir;
                    if !expired && !take_over && !ours {
                        return Err(LeaseError::Held {
                            host: held.host,
                            data_dir: held.data_dir,
                            until: rfc3339(held.expires_at),
                        });
                    }
                    let why = if ours {
                        "an earlier run of this server on this host and data directory"
                    } else if expired {
                        "its lease expired"
                    } else {
                        "--take-over"
                    };
                    tracing::warn!(
                        host = %held.host, data_dir = %held.data_dir,
                        expired_at = %rfc3339(held.expires_at),
                        "taking the storage over from another server ({why})"
                    );
                    match current.version {
                        Some(v) => Precondition::Version(v),
                        None => {
                            return Err(LeaseError::Damaged("the store gave no version".into()))
                        }
                    }
                }
            };
            match lease
                .blobs
                .put_if(LEASE_KEY, encode(&record), condition)
                .await
            {
                Ok(version) => {
                    *lease.version.lock().unwrap_or_else(|p| p.into_inner()) = version;
                    tracing::info!(holder = %record.holder, until = %rfc3339(record.expires_at), "storage lease taken");
                    return Ok(lease);
                }
                // Another server wrote it between our read and our write: look again.
                Err(StorageError::Precondition(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Lost(
            "other servers keep taking it at the same time".into(),
        ))
    }

    /// Whether the lease was lost to another server (writes must stop).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Extends the lease by its length from now.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.write(now_secs() + self.ttl.as_secs()).await
    }

    /// Ends the lease now (a clean stop), so another server can take the storage at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        self.write(now_secs()).await
    }

    async fn write(&self, expires_at: u64) -> Result<(), LeaseError> {
        if !self.active {
            return Ok(());
        }
        if self.is_lost() {
            return Err(LeaseError::Lost("already".into()));
        }
        let record = {
            let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
            r.expires_at = expires_at;
            r.clone()
        };
        let version = self
            .version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| LeaseError::Damaged("no version of our own lease".into()))?;
        match self
            .blobs
            .put_if(LEASE_KEY, encode(&record), Precondition::Version(version))
            .await
        {
            Ok(v) => {
                *self.version.lock().unwrap_or_else(|p| p.into_inner()) = v;
                self.confirmed_until.store(expires_at, Ordering::SeqCst);
                Ok(())
            }
            Err(StorageError::Precondition(e)) => {
                // object_store retries a 5xx: our own write may have landed before the answer
                // was lost. The lease is still ours if it names us.
                if let Ok(Some(current)) = self.blobs.read_versioned(LEASE_KEY).await {
                    if let Ok(held) = serde_json::from_slice::<LeaseRecord>(&current.data) {
                        if held == record {
                            *self.version.lock().unwrap_or_else(|p| p.into_inner()) =
                                current.version;
                            self.confirmed_until.store(expires_at, Ordering::SeqCst);
                            return Ok(());
                        }
                    }
                }
                self.lost.store(true, Ordering::SeqCst);
                Err(LeaseError::Lost(e))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Renews the lease every third of its length until `stop`; calls `on_lost` (once) if
    /// another server took the storage over, or if renewals kept failing (storage unreachable)
    /// until the lease may have expired: from then on another server may take it, so this one
    /// must not write any more.
    pub async fn keep(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        on_lost: impl FnOnce(),
    ) {
        if !self.active {
            return;
        }
        let every = (self.ttl / 3).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // A renewal still unanswered when the lease runs out counts as failed: a slow
            // store must not keep this server writing past its lease.
            let left = self
                .confirmed_until
                .load(Ordering::SeqCst)
                .saturating_sub(now_secs());
            let renewed = match tokio::time::timeout(Duration::from_secs(left), self.renew()).await
            {
                Ok(r) => r,
                Err(_) => Err(LeaseError::Storage(StorageError::Io(format!(
                    "no answer to the renewal within the {left} s left of the lease"
                )))),
            };
            match renewed {
                Ok(()) => {}
                Err(LeaseError::Lost(why)) => {
                    tracing::error!("storage lease lost: {why}; stopping");
                    on_lost();
                    return;
                }
                Err(e) => {
                    // Stop while the lease is still ours: by the next turn it may have expired
                    // and another server may have taken the storage over.
                    let confirmed_until = self.confirmed_until.load(Ordering::SeqCst);
                    if now_secs() + every.as_secs() >= confirmed_until {
                        tracing::error!(
                            "cannot renew the storage lease ({e}) and it expires before the \
                             next try: another server may then take the storage over, so this \
                             one stops writing; stopping"
                        );
                        self.lost.store(true, Ordering::SeqCst);
                        on_lost();
                        return;
                    }
                    tracing::warn!("cannot renew the storage lease now: {e}");
                }
            }
        }
    }
}
