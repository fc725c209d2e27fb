//! HTTP routes of base backups (the backup API contract): start, list, show, files, manifest,
//! blobs, verify, delete, keep. Names and ids are checked before anything touches storage;
//! stored content is re-verified before the first byte is sent, like WAL (DESIGN §7.3).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgwal::api::{BackupFiles, BackupInfo, BackupRequest, JobReport, KeepRequest};

use super::auth::Operation;
use super::{authorize, json_or_default, ApiError, HttpState};
use crate::backup::{self, catalog, BackupError};
use crate::jobs::runs::{self, JobKind};
use crate::wal::archive::ArchiveError;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route(
            "/v1/clusters/{cluster}/backups",
            get(list_backups).post(start_backup),
        )
        .route(
            "/v1/clusters/{cluster}/backups/{id}",
            get(show_backup).delete(delete_backup),
        )
        .route(
            "/v1/clusters/{cluster}/backups/{id}/files",
            get(backup_files),
        )
        .route(
            "/v1/clusters/{cluster}/backups/{id}/manifest",
            get(backup_manifest),
        )
        .route(
            "/v1/clusters/{cluster}/backups/{id}/verify",
            post(verify_backup),
        )
        .route(
            "/v1/clusters/{cluster}/backups/{id}/keep",
            post(keep_backup),
        )
        .route("/v1/clusters/{cluster}/blobs/{sha256}", get(get_blob))
}

async fn start_backup(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let token = authorize(&state, &headers, &cluster, Operation::Admin)?;
    let req: BackupRequest = json_or_default(&body, "backup request")?;
    let info = backup::start(&state.archive, &state.config, &state.backups, &cluster, req).await?;
    tracing::info!(cluster, backup = %info.id, token = token.as_deref().unwrap_or("-"), "backup requested");
    // Recorded as a job run too, like scheduled backups; the client follows the backup itself.
    let (c, id) = (cluster.clone(), info.id.clone());
    runs::start(
        &state.app,
        &cluster,
        JobKind::Backup,
        Some(&info.id),
        |app, _| async move {
            match crate::jobs::scheduler::backup_end(&app, &c, &id).await {
                Ok(detail) => runs::Finished {
                    result: "ok",
                    error: None,
                    detail: Some(detail),
                    report: None,
                },
                Err(e) => runs::Finished {
                    result: "failed",
                    error: Some(e),
                    detail: None,
                    report: None,
                },
            }
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(info)).into_response())
}

async fn list_backups(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<BackupInfo>>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let mut rows = catalog::list(&state.archive.catalog, &cluster)
        .await
        .map_err(BackupError::from)?;
    crate::jobs::retention::annotate(
        &state.config.cluster(&cluster),
        &mut rows,
        state.backups.now(),
    );
    let mut drills = crate::jobs::drill::catalog::last_per_backup(&state.archive.catalog, &cluster)
        .await
        .map_err(BackupError::from)?;
    Ok(Json(
        rows.into_iter()
            .map(|r| BackupInfo {
                last_drill: drills.remove(&r.info.id),
                ..state.backups.present(r)
            })
            .collect(),
    ))
}

async fn show_backup(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<BackupInfo>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let row = backup::find(&state.archive, &cluster, &id).await?;
    let mut rows = catalog::list(&state.archive.catalog, &cluster)
        .await
        .map_err(BackupError::from)?;
    crate::jobs::retention::annotate(
        &state.config.cluster(&cluster),
        &mut rows,
        state.backups.now(),
    );
    let retention = rows
        .into_iter()
        .find(|r| r.info.id == row.info.id)
        .and_then(|r| r.info.retention);
    let last_drill = crate::jobs::drill::catalog::last_per_backup(&state.archive.catalog, &cluster)
        .await
        .map_err(BackupError::from)?
        .remove(&row.info.id);
    Ok(Json(BackupInfo {
        retention,
        last_drill,
        ..state.backups.present(row)
    }))
}

async fn delete_backup(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<BackupInfo>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Admin)?;
    Ok(Json(
        backup::delete(&state.archive, &state.config, &state.backups, &cluster, &id).await?,
    ))
}

async fn keep_backup(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(req): Json<KeepRequest>,
) -> Result<Json<BackupInfo>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Admin)?;
    Ok(Json(
        backup::set_keep(&state.archive, &state.backups, &cluster, &id, req.keep).await?,
    ))
}

async fn backup_files(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<BackupFiles>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Fetch)?;
    let row = backup::find(&state.archive, &cluster, &id).await?;
    if row.info.status != "done" {
        return Err(BackupError::NotDone(format!(
            "backup {} is {}; its files are listed once it is done",
            row.info.id, row.info.status
        ))
        .into());
    }
    let files = catalog::files(&state.archive.catalog, &cluster, &row.info.id)
        .await
        .map_err(BackupError::from)?;
    Ok(Json(BackupFiles {
        id: row.info.id,
        files,
    }))
}

async fn backup_manifest(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Fetch)?;
    let row = backup::find(&state.archive, &cluster, &id).await?;
    let (Some(key), Some(sha), Some(size)) =
        (row.manifest_key, row.manifest_sha256, row.manifest_size)
    else {
        return Err(BackupError::NotFound(format!(
            "backup {} has no stored backup_manifest ({})",
            row.info.id, row.info.status
        ))
        .into());
    };
    serve_verified(&state, &key, &sha, size, &headers).await
}

async fn get_blob(
    State(state): State<Arc<HttpState>>,
    Path((cluster, sha)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Fetch)?;
    if sha.len() != 64
        || !sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!("{sha:?} is not a lowercase hex SHA-256"),
        ));
    }
    let blob = catalog::referenced_blob(&state.archive.catalog, &cluster, &sha)
        .await
        .map_err(BackupError::from)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no backup of cluster {cluster:?} holds content {sha}"),
            )
        })?;
    serve_verified(&state, &blob.object_key, &blob.sha256, blob.size, &headers).await
}

/// Starts a verify job of the backup (202 with its run): every stored file re-hashed, its WAL
/// checked. The report is in the run once it ends; `wal-archive verify` follows it.
async fn verify_backup(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let row = backup::find(&state.archive, &cluster, &id).await?;
    let backup_id = row.info.id.clone();
    let run = runs::start(
        &state.app,
        &cluster,
        JobKind::Verify,
        Some(&backup_id),
        |app, progress| async move {
            match backup::verify::verify(&app.archive, &row, Some(&progress)).await {
                Ok(report) => {
                    let problems = report.problems.len();
                    runs::Finished {
                        result: if report.ok { "ok" } else { "failed" },
                        error: (!report.ok).then(|| {
                            format!(
                                "{problems} problems, the first: {}",
                                report.problems.first().map_or("", String::as_str)
                            )
                        }),
                        detail: Some(format!(
                            "backup {}: {} files, {} bytes checked",
                            report.id, report.files_checked, report.bytes_checked
                        )),
                        report: Some(JobReport::Verify(report)),
                    }
                }
                Err(e) => runs::Finished {
                    result: "failed",
                    error: Some(format!("verifying backup {}: {e}", row.info.id)),
                    detail: None,
                    report: None,
                },
            }
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

/// Re-verifies the object end to end, then streams it (zstd as stored when the client accepts
/// it, else decompressed).
async fn serve_verified(
    state: &HttpState,
    key: &str,
    sha: &str,
    size: u64,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (got, got_size) = state
        .archive
        .hash_object(key)
        .await
        .map_err(BackupError::from)?;
    if got != sha || got_size != size {
        return Err(BackupError::Archive(ArchiveError::Corrupt(format!(
            "stored object {key} fails its checksum: expected SHA-256 {sha} ({size} bytes), read \
             {got} ({got_size} bytes); it will not be served"
        )))
        .into());
    }
    let stream = state
        .archive
        .blobs
        .get(key)
        .await
        .map_err(BackupError::from)?;
    let stored = state
        .archive
        .blobs
        .head(key)
        .await
        .map_err(BackupError::from)?
        .unwrap_or(0);
    super::wal::object_response(
        stream,
        super::wal::accepts_zstd(headers),
        stored,
        size,
        sha,
        None,
    )
    .map_err(|e| BackupError::Archive(ArchiveError::Storage(e.to_string())).into())
}
