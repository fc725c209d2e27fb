//! What PostgreSQL runs: `push` (archive_command) with its look-ahead, `fetch`
//! (restore_command) with its prefetch spool and worker, and the private state directory they
//! keep outside the data directory.

pub mod fetch;
pub mod lookahead;
pub mod push;
pub mod spool;
pub mod state;
pub mod worker;
