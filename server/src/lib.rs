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
pub mod meta;

pub mod metrics;
pub mod rebuild;
pub mod state;
pub mod status;
pub mod storage;
pub mod streaming;
pub mod wal;

use std::sync::Arc;

use anyhow::Context;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::http::auth::Authorizer;
use crate::state::AppState;
use crate::storage::BlobStore;
use crate::wal::archive::Archive;

/// What keeps a server the only one on its data directory and storage: the directory's
/// `flock` and, on a bucket, the storage lease. Dropping it lets another server in (a clean
/// stop releases the lease first).
pub struct Guard {
    _lock: std::fs::File,
    pub lease: Arc<storage::lease::Lease>,
}

/// Opens everything under `config.data_dir` and its storage, holding the directory's lock and
/// the storage's lease for as long as the returned guard lives; rebuilds the catalog from
/// storage when it is missing (or `--rebuild-catalog`); reconciles storage with the catalog.
pub async fn open(
    config: &Config,
    blobs: Option<Arc<dyn BlobStore>>,
) -> anyhow::Result<(Archive, Guard)> {
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
        None => storage::open(config).map_err(|e| anyhow::anyhow!("storage: {e}"))?,
    };
    // Nothing is written to storage before its lease is ours.
    let ttl = std::time::Duration::from_secs(
        config
            .storage
            .lease_seconds
            .unwrap_or(config::DEFAULT_LEASE_SECONDS)
            .max(3),
    );
    let lease =
        storage::lease::Lease::acquire(blobs.clone(), &config.data_dir, ttl, config.take_over)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    blobs
        .prepare()
        .await
        .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    let catalog_path = config.catalog_path();
    if config.rebuild_catalog && catalog_path.exists() {
        let aside = set_catalog_aside(&catalog_path)?;
        tracing::warn!(old = %aside.display(), "--rebuild-catalog: the catalog was set aside; rebuilding it from storage");
    }
    let fresh_catalog = !catalog_path.exists();
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
    if fresh_catalog
        && rebuild::storage_has_archive(&archive)
            .await
            .context("looking into storage")?
    {
        tracing::warn!(
            "the catalog is new but storage holds an archive: rebuilding the catalog from storage"
        );
        rebuild::rebuild(&archive)
            .await
            .context("rebuilding the catalog from storage")?;
    }
    // Before reconciliation: it would re-index the objects of WAL an interrupted retention run
    // planned to remove, or report as missing those it had removed already.
    jobs::retention::resume(&archive)
        .await
        .context("finishing an interrupted retention run")?;
    jobs::runs::fail_interrupted(&archive.catalog)
        .await
        .context("closing job runs interrupted by a restart")?;
    // A drill interrupted by a crash left a PostgreSQL running on a scratch copy: stopped and
    // removed before anything else runs.
    jobs::drill::startup(config, &archive)
        .await
        .map_err(|e| anyhow::anyhow!("cleaning up after interrupted drills: {e}"))?;
    wal::reconcile::reconcile(&archive)
        .await
        .context("reconciling storage with the catalog")?;
    backup::startup(&archive)
        .await
        .context("failing interrupted backups and removing their objects")?;
    Ok((
        archive,
        Guard {
            _lock: lock,
            lease: Arc::new(lease),
        },
    ))
}

/// Renames the catalog (and its -wal, -shm) to `NAME.before-rebuild-SECONDS`; returns the new
/// name of the catalog file.
fn set_catalog_aside(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".before-rebuild-{stamp}"));
    let aside = std::path::PathBuf::from(aside);
    for suffix in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        if std::path::Path::new(&from).exists() {
            std::fs::rename(&from, &to)
                .with_context(|| format!("setting {} aside", from.to_string_lossy()))?;
        }
    }
    std::fs::rename(path, &aside).with_context(|| format!("setting {} aside", path.display()))?;
    Ok(aside)
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
            store_on: tokio::runtime::Handle::current(),
        };
        tasks.push(r.spawn(shutdown.clone()));
        statuses.insert(name.clone(), status);
    }
    (statuses, tasks)
}

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let (archive, guard) = open(&config, None).await?;
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (receivers, receiver_tasks) = start_receivers(&config, &archive, &stop_rx);
    let state = Arc::new(AppState {
        archive,
        config: config.clone(),
        receivers,
        backups: Default::default(),
        jobs: Default::default(),
        drills: Default::default(),
    });
    let scheduler_tasks = jobs::scheduler::start(state.clone(), &stop_rx);
    // The lease is renewed while the server runs; lost to another server, it stops at once
    // (as abruptly as a crash, which the archive survives) rather than write anything more.
    let lease_task = tokio::spawn(guard.lease.clone().keep(stop_rx.clone(), || {
        eprintln!("wal-archive-server: the storage was taken over by another server; stopping");
        std::process::exit(1);
    }));
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
    let _ = lease_task.await;
    if let Err(e) = guard.lease.release().await {
        tracing::warn!(
            "cannot release the storage lease: {e}; another server can take it once it expires"
        );
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
