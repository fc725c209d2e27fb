//! The WAL archive: accepting and serving WAL files ([`archive`]), the format of every stored
//! object ([`object_format`]), and start-up reconciliation of storage with the catalog
//! ([`reconcile`]).

pub mod archive;
pub mod object_format;
pub mod reconcile;
