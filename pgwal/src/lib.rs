//! PostgreSQL write-ahead log vocabulary for wal-archive: LSNs, segment sizes, WAL file names,
//! timeline history files, backup history files, XLOG page headers and the streaming segment
//! validator, plus the HTTP API types shared by the server and the helper.
//!
//! # Scope
//!
//! * **No I/O.** Every function here works on values, strings and byte slices handed in by the
//!   caller; reading files, sockets and object stores is the caller's business.
//! * **Little-endian WAL only.** WAL is written in the byte order of the server that produced it
//!   and PostgreSQL offers no portable format. This crate decodes page headers as little endian,
//!   which covers x86-64 and little-endian ARM/POWER, the platforms wal-archive supports. A
//!   big-endian segment is rejected as "not a WAL segment" (its magic reads byte-swapped).
//! * **PostgreSQL 13 to 17** page formats (see [`page::SUPPORTED_MAGICS`]).
//!
//! # Errors
//!
//! Every error type in this crate describes bad *input*: parsing is deterministic, so the same
//! bytes always give the same error and retrying can never help. Each error type has an
//! `is_retryable()` method that says so, so that callers can treat all crate errors uniformly.
//!
//! # PostgreSQL references
//!
//! Each module names the PostgreSQL source it follows; the main ones are
//! `src/include/access/xlog_internal.h` (file names, page headers, segment arithmetic),
//! `src/backend/access/transam/timeline.c` (history files),
//! `src/backend/access/transam/xlog.c` / `xlogbackup.c` (backup history files) and
//! `src/backend/access/transam/xlogreader.c` (page header validation).
#![forbid(unsafe_code)]

pub mod api;
pub mod backup_history;
pub mod checksum;
pub mod history;
pub mod lsn;
pub mod name;
pub mod page;
pub mod quote;
pub mod ranges;
pub mod segment;
pub mod synth;

pub use lsn::Lsn;
pub use name::{WalFileKind, WalFileName};
pub use segment::{SegmentSize, TimeLineId};
