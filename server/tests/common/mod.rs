//! Shared by the in-process server tests that drive real PostgreSQL 15 (retention, scheduler,
//! checks): an in-process server on a data directory, and requests to its router.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use wal_archive_e2e::{toml_string, Pg};
use wal_archive_server::config::{Config, Overrides};
use wal_archive_server::http::auth::Authorizer;
use wal_archive_server::{http::router, state::AppState};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Env {
    pub state: Arc<AppState>,
    pub storage: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _lock: wal_archive_server::Guard,
}

impl Env {
    /// Stops the receivers and waits for them, so that another server can take the data dir.
    pub async fn shut_down(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub fn conninfo(pg: &Pg) -> Result<String> {
    Ok(format!(
        "host=127.0.0.1 port={} user={} sslmode=disable connect_timeout=10",
        pg.port(),
        pg.superuser()?
    ))
}

/// A server with `[clusters.main]` holding `section`; see [`server_with_config`].
pub async fn server(data_dir: &Path, section: &str, streaming: bool) -> Result<Env> {
    server_with_config(
        data_dir,
        &format!("[clusters.main]\n{section}\n"),
        streaming,
    )
    .await
}

/// An in-process server on `data_dir` with configuration `text`, its receivers started; with
/// `streaming`, returns once cluster `main`'s receiver streams.
pub async fn server_with_config(data_dir: &Path, text: &str, streaming: bool) -> Result<Env> {
    let config = Config::from_toml(
        text,
        &Overrides {
            data_dir: Some(data_dir.to_path_buf()),
            ..Default::default()
        },
    )?;
    let (archive, lock) = wal_archive_server::open(&config, None).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (receivers, tasks) = wal_archive_server::start_receivers(&config, &archive, &stop_rx);
    let state = Arc::new(AppState {
        archive,
        config: Arc::new(config.clone()),
        receivers,
        backups: Default::default(),
        jobs: Default::default(),
        drills: Default::default(),
    });
    let env = Env {
        state,
        storage: config.storage_dir(),
        stop,
        tasks,
        _lock: lock,
    };
    if streaming {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let s = env
                .state
                .receivers
                .get("main")
                .and_then(|s| s.lock().ok().map(|s| s.state.clone()));
            if s.as_deref() == Some("streaming") {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the receiver never started streaming: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(env)
}

pub fn pg_section(pg: &Pg, streaming: bool, extra: &str) -> Result<String> {
    Ok(format!(
        "conninfo = {}\nstreaming = {streaming}\nreconnect_max_delay = 1\n{extra}",
        toml_string(&conninfo(pg)?)
    ))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("{}: {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn error(&self) -> Result<pgwal::api::ErrorBody> {
        self.json()
    }
}

/// Starts a job with `POST path` (202 and its run) and follows it until it ends; returns the
/// ended run.
pub async fn run_job(env: &Env, path: &str) -> Result<pgwal::api::JobRun> {
    let r = call(env, "POST", path, "").await?;
    if r.status != StatusCode::ACCEPTED {
        bail!(
            "POST {path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let mut run: pgwal::api::JobRun = r.json()?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while run.result == "running" {
        if tokio::time::Instant::now() > deadline {
            bail!("job {} of {path} still running after {DEADLINE:?}", run.id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        run = call(
            env,
            "GET",
            &format!("/v1/clusters/{}/jobs/{}", run.cluster, run.id),
            "",
        )
        .await?
        .json()?;
    }
    Ok(run)
}

/// `verify` of backup `id` of cluster `main`, as a job; its report.
pub async fn verify(env: &Env, id: &str) -> Result<pgwal::api::VerifyReport> {
    let run = run_job(env, &format!("/v1/clusters/main/backups/{id}/verify")).await?;
    match run.report {
        Some(pgwal::api::JobReport::Verify(r)) => Ok(r),
        other => bail!(
            "verify job {} ended {} with {other:?}: {:?}",
            run.id,
            run.result,
            run.error
        ),
    }
}

pub async fn call_bytes(env: &Env, method: &str, path: &str, body: Vec<u8>) -> Result<Reply> {
    let mut req = Request::builder().method(method).uri(path);
    if body.first() == Some(&b'{') {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Body::from(body))?;
    let resp = router(env.state.clone(), Authorizer::new(&[]))
        .oneshot(req)
        .await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub async fn call(env: &Env, method: &str, path: &str, body: &str) -> Result<Reply> {
    call_bytes(env, method, path, body.as_bytes().to_vec()).await
}
