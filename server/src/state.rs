//! The server's shared state: what the HTTP routes, the scheduler and the checks receive. It
//! holds the domain (archive, backups, receivers) and the configuration, and nothing of HTTP, so
//! that the domain modules never import the HTTP layer.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::wal::archive::Archive;

pub struct AppState {
    pub archive: Archive,
    pub config: Arc<Config>,
    /// Streaming receivers by cluster.
    pub receivers: HashMap<String, crate::streaming::receiver::SharedStatus>,
    /// Backups in progress and the per-cluster blob lock.
    pub backups: crate::backup::Backups,
    /// Progress of the jobs running here.
    pub jobs: crate::jobs::runs::LiveJobs,
    /// How recovery drills read the archive.
    pub drills: crate::jobs::drill::Drills,
}

impl AppState {
    /// The state of `cluster`'s streaming receiver (`disabled` when it has none).
    pub fn receiver_status(&self, cluster: &str) -> pgwal::api::ReceiverStatus {
        match self
            .receivers
            .get(cluster)
            .and_then(|s| s.lock().ok().map(|s| s.clone()))
        {
            Some(s) => s,
            None => pgwal::api::ReceiverStatus {
                state: "disabled".into(),
                ..Default::default()
            },
        }
    }
}
