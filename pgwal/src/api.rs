//! Types exchanged over the HTTP API (DESIGN section 6), shared by the server and the helper so
//! that both sides agree on one definition.

use serde::{Deserialize, Serialize};

/// Header carrying the lowercase hex SHA-256 of a file's uncompressed bytes, in both directions.
pub const CONTENT_SHA256_HEADER: &str = "x-content-sha256";
/// Header carrying the uncompressed size of a file served by `GET`/`HEAD`.
pub const CONTENT_SIZE_HEADER: &str = "x-content-size";

/// The JSON body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A stable machine-readable kind, such as `conflict` or `wrong_system`.
    pub error: String,
    /// What happened and what to do, for a person.
    pub message: String,
}

/// One archived WAL file, as listed by `GET /v1/clusters/{cluster}/wal`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalEntry {
    pub name: String,
    /// `segment`, `partial`, `history` or `backup`.
    pub kind: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the uncompressed bytes.
    pub sha256: String,
    /// Size of the stored (compressed) object in bytes.
    pub stored_size: u64,
    /// RFC 3339 time at which the file was stored.
    pub archived_at: String,
}

/// The WAL catalog of one cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalListing {
    pub cluster: String,
    /// The PostgreSQL system identifier the cluster is bound to, as a decimal string
    /// (it does not fit in a JSON number without loss), or `None` before the first segment.
    pub system_identifier: Option<String>,
    /// WAL segment size in bytes, known once the first segment has arrived.
    pub segment_size: Option<u64>,
    pub files: Vec<WalEntry>,
    /// Files the catalog lists but storage no longer holds (found at start-up reconciliation).
    #[serde(default)]
    pub missing: Vec<String>,
}

/// Answer to a successful `PUT` of a WAL file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutResponse {
    pub name: String,
    /// `stored` (201) or `already_stored` (200).
    pub outcome: String,
    pub sha256: String,
    pub size: u64,
    pub stored_size: u64,
}

/// State of a cluster's streaming receiver, as `GET /v1/clusters/{cluster}/receiver` reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiverStatus {
    /// `disabled`, `starting`, `streaming`, `reconnecting` or `stopped`.
    pub state: String,
    /// Why it is not streaming (the last error), for `reconnecting`.
    pub reason: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    pub slot: Option<String>,
    /// True while the receiver holds the slot (streams from it).
    pub slot_active: bool,
    pub synchronous: bool,
    pub timeline: Option<u32>,
    /// End of the WAL received so far (`X/Y`).
    pub received_lsn: Option<String>,
    /// End of the WAL durably stored (reported to PostgreSQL as flushed).
    pub flushed_lsn: Option<String>,
    /// The server's WAL end, from its last message.
    pub server_lsn: Option<String>,
    /// `server_lsn - flushed_lsn` in bytes.
    pub lag_bytes: Option<u64>,
    /// The segment being received, kept durably as `NAME.partial`.
    pub partial_segment: Option<String>,
    /// The last segment stored from the stream.
    pub last_stored: Option<String>,
    /// RFC 3339 time of the last state change.
    pub since: String,
    /// Connection attempts that failed since the last success.
    pub failed_attempts: u64,
}

/// One line of `wal-archive check`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckItem {
    pub name: String,
    pub ok: bool,
    /// What was found.
    pub message: String,
    /// How to fix it, when failed.
    pub hint: Option<String>,
}

/// Answer of `GET /v1/clusters/{cluster}/check`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckReport {
    pub cluster: String,
    pub checks: Vec<CheckItem>,
}
