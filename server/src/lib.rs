//! The wal-archive server: HTTP API over a checksummed, durable WAL store with a SQLite catalog.
//!
//! Start at [`run`]: it takes the data directory's lock, opens storage and the catalog,
//! reconciles them, then serves [`api::router`] until SIGTERM/SIGINT.

pub mod api;
pub mod archive;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod durability;
pub mod object_format;
pub mod reconcile;
pub mod storage;
pub mod tls;

use std::sync::Arc;

use anyhow::Context;

use crate::api::AppState;
use crate::archive::Archive;
use crate::auth::Authorizer;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::storage::{BlobStore, ObjectStoreBlobs};

/// Opens everything under `config.data_dir`, holding its lock for as long as the returned
/// guard lives, and reconciles storage with the catalog.
pub async fn open(
    config: &Config,
    blobs: Option<Arc<dyn BlobStore>>,
) -> anyhow::Result<(Archive, std::fs::File)> {
    durability::create_dir_all_durable(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (set --data-dir or data_dir to a writable place)",
            config.data_dir.display()
        )
    })?;
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
    let archive = Archive { catalog, blobs };
    reconcile::reconcile(&archive)
        .await
        .context("reconciling storage with the catalog")?;
    Ok((archive, lock))
}

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let (archive, _lock) = open(&config, None).await?;
    let config = Arc::new(config);
    let state = Arc::new(AppState {
        archive,
        auth: Authorizer::new(&config.tokens),
        config: config.clone(),
    });
    let tls = match &config.tls {
        Some(t) => Some(tls::server_config(t)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        auth = if state.auth.is_open() { "open (loopback only)" } else { "tokens" },
        scheme = if tls.is_some() { "https" } else { "http" },
        "wal-archive-server ready"
    );
    let app = api::router(state);
    match tls {
        Some(tls) => axum::serve(tls::TlsListener::new(listener, tls)?, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTPS")?,
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")?,
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
