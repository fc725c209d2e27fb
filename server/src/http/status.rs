//! The status page (`GET /`) and the report behind it (`GET /v1/status`,
//! `GET /v1/clusters/{cluster}/status`), with the read API's authorisation: a token that may
//! read sees the clusters of its list; no tokens (loopback only) sees all. The report is built by
//! [`crate::status`]; [`page`] only renders it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pgwal::api::StatusReport;

use super::auth::Operation;
use super::{authorize, ApiError, HttpState};

pub mod page;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/", get(status_page))
        .route("/v1/status", get(status_json))
        .route("/v1/clusters/{cluster}/status", get(cluster_status_json))
}

/// The report of every cluster the request may read.
async fn readable_report(state: &HttpState, headers: &HeaderMap) -> Result<StatusReport, ApiError> {
    let known = crate::status::known_clusters(state).await?;
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let clusters = state.auth.readable(authz, &known).map_err(|e| {
        let e = ApiError::from(e);
        tracing::warn!(status = e.status.as_u16(), "status refused: {}", e.message);
        e.logged()
    })?;
    Ok(crate::status::report(state, &clusters).await?)
}

async fn status_json(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
) -> Result<Json<StatusReport>, ApiError> {
    Ok(Json(readable_report(&state, &headers).await?))
}

async fn cluster_status_json(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Result<Json<StatusReport>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    if !crate::status::known_clusters(&state)
        .await?
        .contains(&cluster)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_cluster",
            format!("this archive has no cluster {cluster:?}"),
        )
        .about(&cluster));
    }
    Ok(Json(crate::status::report(&state, &[cluster]).await?))
}

async fn status_page(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let report = readable_report(&state, &headers).await?;
    let mut r = page::render(&report, page::REFRESH_SECONDS).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Everything is inline: no script, style or image from anywhere else.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
    );
    Ok(r)
}
