//! HTTP routes for running the archive unattended: retention (`POST …/retention`), the job
//! history (`GET …/jobs`) and `POST …/switch-wal`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use pgwal::api::{JobRun, RetentionReport, SwitchWalRequest, SwitchWalResponse};

use super::auth::Operation;
use super::{authorize, json_or_default, ApiError, HttpState};
use crate::backup::BackupError;
use crate::jobs::scheduler::{self, JobKind};

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v1/clusters/{cluster}/retention", post(retention))
        .route("/v1/clusters/{cluster}/jobs", get(jobs))
        .route("/v1/clusters/{cluster}/switch-wal", post(switch_wal))
}

#[derive(serde::Deserialize, Default)]
struct RetentionQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Applies the retention policy now; a real run waits for a scheduled one in progress and is
/// recorded as a job.
async fn retention(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    Query(q): Query<RetentionQuery>,
    headers: HeaderMap,
) -> Result<Json<RetentionReport>, ApiError> {
    let token = authorize(&state, &headers, &cluster, Operation::Admin)?;
    let cfg = state.config.cluster(&cluster);
    if q.dry_run {
        return Ok(Json(
            crate::jobs::retention::apply(&state.archive, &state.backups, &cfg, &cluster, true)
                .await?,
        ));
    }
    let lock = state
        .backups
        .job_lock(&cluster, JobKind::Retention.as_str());
    let _guard = lock.lock().await;
    let cat = &state.archive.catalog;
    let id = scheduler::record_start(cat, &cluster, JobKind::Retention, "api", None)
        .await
        .map_err(BackupError::from)?;
    let result =
        crate::jobs::retention::apply(&state.archive, &state.backups, &cfg, &cluster, false).await;
    let (outcome, error, detail) = match &result {
        Ok(r) => (
            "ok",
            None,
            Some(format!(
                "removed {} backups and {} WAL files",
                r.removed_backups.len(),
                r.removed_wal.len()
            )),
        ),
        Err(e) => ("failed", Some(e.to_string()), None),
    };
    crate::metrics::record_job(&cluster, JobKind::Retention.as_str(), outcome);
    if let Err(e) = scheduler::record_end(cat, id, outcome, error, detail).await {
        tracing::error!(cluster, "cannot record the end of a retention run: {e}");
    }
    let report = result?;
    tracing::info!(
        cluster,
        token = token.as_deref().unwrap_or("-"),
        backups = report.removed_backups.len(),
        wal = report.removed_wal.len(),
        "retention run by request"
    );
    Ok(Json(report))
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
    let runs = scheduler::list(
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
