//! `pgrepl`: a small PostgreSQL physical-replication client on `postgres-protocol` and tokio.
//!
//! No maintained crate speaks physical replication, and the archive must own the flush-position
//! feedback it gives the server (DESIGN.md section 7.1: a streamed flush position is confirmed
//! only once the bytes are durable), so this crate implements the few pieces needed:
//!
//! - [`conninfo`]: libpq connection strings (key=value and URI) and `.pgpass` ([`pgpass`]).
//! - [`conn`]: connecting (TCP / Unix socket, TLS per `sslmode`, trust / password / md5 /
//!   SCRAM-SHA-256(-PLUS) authentication) and the replication commands (`IDENTIFY_SYSTEM`,
//!   `READ_REPLICATION_SLOT`, `CREATE_REPLICATION_SLOT`, `TIMELINE_HISTORY`, `SHOW`, ...).
//! - [`stream`]: `START_REPLICATION ... PHYSICAL`, status updates, the end-of-timeline handshake.
//! - [`basebackup`]: `BASE_BACKUP` (PostgreSQL 15+ wire format), streamed, never collected.
//! - [`frames`]: pure, fuzzed parsers of every message the server sends.
//! - [`error`]: [`ReplError`], which says whether a retry can help and what a DBA should fix.
//!
//! Every network operation has a timeout. References in comments are to the PostgreSQL 15
//! documentation, chapter "Frontend/Backend Protocol", unless they say otherwise.
#![forbid(unsafe_code)]
// ReplError::Server carries the ErrorResponse fields inline so callers can match on them by
// name; errors are the cold path, a larger Result is fine here.
#![allow(clippy::result_large_err)]

pub mod basebackup;
pub mod conn;
pub mod conninfo;
pub mod error;
pub mod frames;
pub mod pgpass;
pub mod stream;
mod tls;
mod wire;

pub use basebackup::{BackupEvent, BaseBackupOptions, BaseBackupStream, Tablespace};
pub use conn::{
    IdentifySystem, ReplicationConnection, ResultSet, SlotInfo, DEFAULT_COMMAND_TIMEOUT,
};
pub use conninfo::{ChannelBindingMode, ConnInfo, Endpoint, SslMode};
pub use error::ReplError;
pub use stream::{ReplicationStream, StreamEvent};
