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
