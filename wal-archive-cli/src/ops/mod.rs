//! What operators run: backups (`backup`, `list`, `show`, `verify`, `delete`, `keep`),
//! `restore` (and `restore --delta`), `drill`, `check`, `status`, `wal`, and the jobs
//! (`retention`, `jobs`, `switch-wal`), with the progress
//! bars they show on a terminal.

pub mod backup;
pub mod check;
pub mod delta;
pub mod drill;
pub mod jobs;
pub mod manifest;
pub mod progress;
pub mod restore;
pub mod status;
pub mod wal;
