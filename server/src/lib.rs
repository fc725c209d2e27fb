//! The wal-archive server: HTTP API over a checksummed, durable WAL store with a SQLite catalog.
//!
//! Start at [`run`]: it takes the data directory's lock, opens storage and the catalog,
//! reconciles them, then serves [`http::router`] until SIGTERM/SIGINT.

pub mod backup;
pub mod catalog;
pub mod config;
pub mod crash;
pub mod http;
pub mod jobs;

pub mod metrics;
pub mod state;
pub mod storage;
pub mod streaming;
pub mod wal;

use std::sync::Arc;

use anyhow::Context;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::http::auth::Authorizer;
use crate::state::AppState;
use crate::storage::{BlobStore, ObjectStoreBlobs};
use crate::wal::archive::Archive;

/// Opens everything under `config.data_dir`, holding its lock for as long as the returned
/// guard lives, and reconciles storage with the catalog.
pub async fn open(
    config: &Config,
    blobs: Option<Arc<dyn BlobStore>>,
) -> anyhow::Result<(Archive, std::fs::File)> {
    storage::durability::create_dir_all_durable(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (set --data-dir or data_dir to a writable place)",
            config.data_dir.display()
        )
    })?;
    match storage::durability::make_private(&config.data_dir) {
        Ok(None) => {}
        Ok(Some(mode)) => tracing::warn!(
            data_dir = %config.data_dir.display(),
            "the data directory was open to other accounts (mode {mode:o}); it is now 0700: \
             the archive holds every WAL record and base backup, pg_authid included"
        ),
        Err(e) => anyhow::bail!(
            "cannot make the data directory {} owner-only: {e}; run the server as its owner",
            config.data_dir.display()
        ),
    }
    let lock_path = config.data_dir.join("wal-archive.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another wal-archive-server is already using {}: two servers must never share a data directory",
            config.data_dir.display()
        )
    })?;
    let blobs = match blobs {
        Some(b) => b,
        None => Arc::new(ObjectStoreBlobs::local(&config.storage_dir())?) as Arc<dyn BlobStore>,
    };
    let catalog = Catalog::open(&config.catalog_path()).with_context(|| {
        format!(
            "cannot open the catalog {}",
            config.catalog_path().display()
        )
    })?;
    let instance = wal::archive::instance_identity(&*blobs)
        .await
        .context("reading the archive's identity from storage")?;
    let archive = Archive {
        catalog,
        blobs,
        instance: instance.into(),
    };
    // Before reconciliation: it would re-index the objects of WAL an interrupted retention run
    // planned to remove, or report as missing those it had removed already.
    jobs::retention::resume(&archive)
        .await
        .context("finishing an interrupted retention run")?;
    jobs::runs::fail_interrupted(&archive.catalog)
        .await
        .context("closing job runs interrupted by a restart")?;
    wal::reconcile::reconcile(&archive)
        .await
        .context("reconciling storage with the catalog")?;
    backup::startup(&archive)
        .await
        .context("failing interrupted backups and removing their objects")?;
    Ok((archive, lock))
}

/// Starts one receiver task per cluster with `streaming = true`; returns their shared statuses
/// and join handles. They stop when `shutdown` turns true.
pub fn start_receivers(
    config: &Config,
    archive: &Archive,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> (
    std::collections::HashMap<String, streaming::receiver::SharedStatus>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let mut statuses = std::collections::HashMap::new();
    let mut tasks = Vec::new();
    for (name, cluster) in &config.clusters {
        if !cluster.streaming {
            continue;
        }
        let status = streaming::receiver::SharedStatus::default();
        let r = streaming::receiver::Receiver {
            cluster: name.clone(),
            config: cluster.clone(),
            archive: archive.clone(),
            work_dir: config.receiver_dir(name),
            status: status.clone(),
        };
        tasks.push(tokio::spawn(r.run(shutdown.clone())));
        statuses.insert(name.clone(), status);
    }
    (statuses, tasks)
}

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let (archive, _lock) = open(&config, None).await?;
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (receivers, receiver_tasks) = start_receivers(&config, &archive, &stop_rx);
    let state = Arc::new(AppState {
        archive,
        config: config.clone(),
        receivers,
        backups: Default::default(),
        jobs: Default::default(),
    });
    let scheduler_tasks = jobs::scheduler::start(state.clone(), &stop_rx);
    let auth = Authorizer::new(&config.tokens);
    let tls = match &config.tls {
        Some(t) => Some(http::tls::server_config(t)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        auth = if auth.is_open() { "open (loopback only)" } else { "tokens" },
        scheme = if tls.is_some() { "https" } else { "http" },
        "wal-archive-server ready"
    );
    let app = http::router(state, auth);
    match tls {
        Some(tls) => axum::serve(http::tls::TlsListener::new(listener, tls)?, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTPS")?,
        // TCP_NODELAY: responses are written in a few pieces (headers, then body chunks); with
        // Nagle's algorithm and the client's delayed ACK, each request on a kept-alive connection
        // would wait ~40 ms.
        None => axum::serve(
            axum::serve::ListenerExt::tap_io(listener, |t| {
                let _ = t.set_nodelay(true);
            }),
            app,
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?,
    }
    let _ = stop_tx.send(true);
    for t in scheduler_tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
    }
    for t in receiver_tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
    }
    tracing::info!("wal-archive-server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}
