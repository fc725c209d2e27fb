//! Pulling WAL through a replication slot: one [`receiver::Receiver`] task per cluster with
//! `streaming = true`.

pub mod receiver;
