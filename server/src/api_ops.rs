//! HTTP routes for running the archive unattended: retention (`POST …/retention`), the job
//! history (`GET …/jobs`) and `POST …/switch-wal`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgwal::api::{ErrorBody, JobRun, RetentionReport, SwitchWalRequest, SwitchWalResponse};

use crate::api::AppState;
use crate::auth::{AuthError, Operation};
use crate::backup::BackupError;
use crate::config::validate_cluster_name;
use crate::pgcheck::SwitchError;
use crate::scheduler::{self, JobKind};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/clusters/{cluster}/retention", post(retention))
        .route("/v1/clusters/{cluster}/jobs", get(jobs))
        .route("/v1/clusters/{cluster}/switch-wal", post(switch_wal))
}

/// An error response: status, stable kind, message for a person.
pub struct OpsError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl OpsError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        OpsError {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                kind = self.kind,
                "{}",
                self.message
            );
        } else {
            tracing::warn!(
                status = self.status.as_u16(),
                kind = self.kind,
                "{}",
                self.message
            );
        }
        let body = ErrorBody {
            error: self.kind.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<BackupError> for OpsError {
    fn from(e: BackupError) -> Self {
        let status = match &e {
            BackupError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BackupError::InProgress(_) => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        OpsError::new(status, "retention_failed", e.to_string())
    }
}

impl From<SwitchError> for OpsError {
    fn from(e: SwitchError) -> Self {
        match e {
            SwitchError::NoConninfo(m) => OpsError::new(StatusCode::BAD_REQUEST, "no_conninfo", m),
            SwitchError::Postgres { message, hint } => OpsError::new(
                StatusCode::BAD_GATEWAY,
                "postgres_error",
                format!("{message} (hint: {hint})"),
            ),
            SwitchError::Timeout(m) => {
                OpsError::new(StatusCode::GATEWAY_TIMEOUT, "not_archived", m)
            }
        }
    }
}

fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    cluster: &str,
    op: Operation,
) -> Result<Option<String>, OpsError> {
    validate_cluster_name(cluster)
        .map_err(|m| OpsError::new(StatusCode::BAD_REQUEST, "bad_cluster", m))?;
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.auth.check(authz, cluster, op).map_err(|e| match e {
        AuthError::Unauthenticated(m) => OpsError::new(StatusCode::UNAUTHORIZED, "unauthorized", m),
        AuthError::Forbidden(m) => OpsError::new(StatusCode::FORBIDDEN, "forbidden", m),
    })
}

#[derive(serde::Deserialize, Default)]
struct RetentionQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Applies the retention policy now; a real run waits for a scheduled one in progress and is
/// recorded as a job.
async fn retention(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    Query(q): Query<RetentionQuery>,
    headers: HeaderMap,
) -> Result<Json<RetentionReport>, OpsError> {
    let token = authorize(&state, &headers, &cluster, Operation::Admin)?;
    let cfg = state.config.cluster(&cluster);
    if q.dry_run {
        return Ok(Json(
            crate::retention::apply(&state.archive, &state.backups, &cfg, &cluster, true).await?,
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
        crate::retention::apply(&state.archive, &state.backups, &cfg, &cluster, false).await;
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
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    Query(q): Query<JobsQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<JobRun>>, OpsError> {
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
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<SwitchWalResponse>, OpsError> {
    let token = authorize(&state, &headers, &cluster, Operation::Admin)?;
    let req: SwitchWalRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SwitchWalRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            OpsError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body is not a switch-wal request: {e}"),
            )
        })?
    };
    let cfg = state.config.cluster(&cluster);
    let segment = crate::pgcheck::switch_wal(&cfg, &cluster).await?;
    tracing::info!(cluster, segment = %segment, token = token.as_deref().unwrap_or("-"), "WAL switched");
    let mut archived = false;
    if req.archive {
        let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(DEFAULT_SWITCH_TIMEOUT));
        crate::pgcheck::wait_archived(&state, &cluster, &segment, timeout).await?;
        archived = true;
    }
    Ok(Json(SwitchWalResponse { segment, archived }))
}
