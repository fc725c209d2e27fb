//! HTTP routes for running the archive unattended: retention (`POST …/retention`), the job
//! history (`GET …/jobs`) and `POST …/switch-wal`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgwal::api::{JobReport, JobRun, SwitchWalRequest, SwitchWalResponse};

use super::auth::Operation;
use super::{authorize, json_or_default, ApiError, HttpState};
use crate::backup::BackupError;
use crate::jobs::runs::{self, JobKind};

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v1/clusters/{cluster}/retention", post(retention))
        .route("/v1/clusters/{cluster}/jobs", get(jobs))
        .route("/v1/clusters/{cluster}/jobs/{id}", get(job))
        .route("/v1/clusters/{cluster}/switch-wal", post(switch_wal))
}

#[derive(serde::Deserialize, Default)]
struct RetentionQuery {
    #[serde(default)]
    dry_run: bool,
}

/// `?dry_run=true`: what the retention policy would remove, now (200). Otherwise a retention
/// job is started (202 with its run): it waits for a scheduled run in progress, and its report
/// is in the run once it ends.
async fn retention(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    Query(q): Query<RetentionQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = authorize(&state, &headers, &cluster, Operation::Admin)?;
    let cfg = state.config.cluster(&cluster);
    if q.dry_run {
        let report =
            crate::jobs::retention::apply(&state.archive, &state.backups, &cfg, &cluster, true)
                .await?;
        return Ok(Json(report).into_response());
    }
    let c = cluster.clone();
    let run = runs::start(
        &state.app,
        &cluster,
        JobKind::Retention,
        None,
        |app, progress| async move {
            let lock = app.backups.job_lock(&c, JobKind::Retention.as_str());
            progress.update(|p| p.step = "waiting for a retention run in progress".into());
            let _guard = lock.lock().await;
            progress.update(|p| p.step = "applying the policy".into());
            let cfg = app.config.cluster(&c);
            match crate::jobs::retention::apply(&app.archive, &app.backups, &cfg, &c, false).await {
                Ok(r) => runs::Finished {
                    result: "ok",
                    error: None,
                    detail: Some(format!(
                        "removed {} backups and {} WAL files",
                        r.removed_backups.len(),
                        r.removed_wal.len()
                    )),
                    report: Some(JobReport::Retention(r)),
                },
                Err(e) => runs::Finished {
                    result: "failed",
                    error: Some(e.to_string()),
                    detail: None,
                    report: None,
                },
            }
        },
    )
    .await?;
    tracing::info!(
        cluster,
        token = token.as_deref().unwrap_or("-"),
        run = run.id,
        "retention run requested"
    );
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

/// One run of a job, with its progress while it runs and its report once it ended.
async fn job(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Json<JobRun>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let run = runs::get(&state.archive.catalog, &cluster, id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_job",
                format!("cluster {cluster:?} has no job run {id} (wal-archive jobs --cluster {cluster})"),
            )
        })?;
    Ok(Json(state.jobs.present(run)))
}

#[derive(serde::Deserialize, Default)]
struct JobsQuery {
    limit: Option<u32>,
}

async fn jobs(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    Query(q): Query<JobsQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<JobRun>>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let runs = runs::list(
        &state.archive.catalog,
        &cluster,
        q.limit.unwrap_or(100).min(10_000),
    )
    .await
    .map_err(BackupError::from)?;
    Ok(Json(runs))
}

const DEFAULT_SWITCH_TIMEOUT: u64 = 60;

async fn switch_wal(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<SwitchWalResponse>, ApiError> {
    let token = authorize(&state, &headers, &cluster, Operation::Admin)?;
    let req: SwitchWalRequest = json_or_default(&body, "switch-wal request")?;
    let cfg = state.config.cluster(&cluster);
    let segment = crate::jobs::checks::switch_wal(&cfg, &cluster).await?;
    tracing::info!(cluster, segment = %segment, token = token.as_deref().unwrap_or("-"), "WAL switched");
    let mut archived = false;
    if req.archive {
        let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(DEFAULT_SWITCH_TIMEOUT));
        crate::jobs::checks::wait_archived(&state, &cluster, &segment, timeout).await?;
        archived = true;
    }
    Ok(Json(SwitchWalResponse { segment, archived }))
}
