//! `/healthz` and Prometheus `/metrics`: the counters and histograms [`crate::metrics`] records
//! as requests and jobs happen, and state gauges computed at each scrape: from the catalog and
//! the receivers, and, for a cluster with `conninfo`, its primary's physical slots and standbys.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{ApiError, HttpState};

/// The longest a scrape waits for one cluster's PostgreSQL.
const PG_SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus text format. Open like `/healthz` unless `metrics_require_token` (it names
/// clusters and WAL files, never data). It reads one aggregate row per cluster (no scan of the
/// WAL catalog) on the catalog's reading connection, so a scrape costs the same with a million
/// WAL files as with ten and never holds up ingest; a cluster with `conninfo` adds one bounded
/// query of its primary's slots and standbys.
async fn metrics_text(
    State(state): State<Arc<HttpState>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if state.config.metrics_require_token {
        let authz = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state.auth.authenticate(authz)?;
    }
    let Some(handle) = crate::metrics::handle() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder is installed in this process",
        ));
    };
    let stats = state
        .archive
        .catalog
        .wal_stats()
        .await
        .map_err(ApiError::from)?;
    let mut clusters: std::collections::BTreeSet<String> =
        stats.iter().map(|s| s.cluster.clone()).collect();
    clusters.extend(state.receivers.keys().cloned());
    for cluster in &clusters {
        let s = stats.iter().find(|s| &s.cluster == cluster);
        let receiver = state
            .receivers
            .get(cluster)
            .and_then(|r| r.lock().ok().map(|r| r.clone()));
        let last_at = s
            .and_then(|s| s.last_archived_at.as_deref())
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        crate::metrics::set_cluster_gauges(&crate::metrics::ClusterGauges {
            cluster,
            wal_files: s.map_or(0, |s| s.files),
            wal_bytes: s.map_or(0, |s| s.bytes),
            stored_bytes: s.map_or(0, |s| s.stored_bytes),
            last_archived: s.and_then(|s| s.last_segment.as_deref()).zip(last_at),
            receiver_lag_bytes: receiver.as_ref().and_then(|r| r.lag_bytes),
            receiver_streaming: receiver.as_ref().map(|r| r.state == "streaming"),
        });
        set_backup_gauges(&state, cluster).await;
        if let Ok((ended, passed)) =
            crate::jobs::drill::catalog::newest_ended(&state.archive.catalog, cluster).await
        {
            let success = passed
                .as_ref()
                .and_then(|d| d.ended_at.as_deref())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64());
            crate::metrics::set_drill_gauges(cluster, ended.as_ref(), success);
        }
    }
    // Slots and standbys of every cluster with a conninfo, each bounded in time so that an
    // unreachable primary slows a scrape by at most that much.
    for (cluster, cfg) in &state.config.clusters {
        if cfg.conninfo.is_some() {
            let seen = crate::jobs::replication::observe(cfg, cluster, PG_SCRAPE_TIMEOUT).await;
            if let Err(e) = &seen {
                tracing::warn!(cluster, "/metrics: cannot read replication state: {e}");
            }
            crate::metrics::set_replication_gauges(cluster, &seen);
        }
    }
    let mut r = handle.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// Backup gauges of one cluster (counts per status, the newest done backup's age and sizes).
async fn set_backup_gauges(state: &HttpState, cluster: &str) {
    let Ok(rows) = crate::backup::catalog::list(&state.archive.catalog, cluster).await else {
        return;
    };
    if rows.is_empty() {
        return;
    }
    let mut by_status: std::collections::BTreeMap<String, u64> = Default::default();
    for r in &rows {
        *by_status.entry(r.info.status.clone()).or_default() += 1;
    }
    let by_status: Vec<(String, u64)> = by_status.into_iter().collect();
    let newest = rows.iter().find(|r| r.info.status == "done");
    let age = newest
        .and_then(|r| r.info.end_time.as_deref())
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| state.backups.now().duration_since(t).ok())
        .map(|d| d.as_secs_f64());
    crate::metrics::set_backup_gauges(&crate::metrics::BackupGauges {
        cluster,
        by_status: &by_status,
        newest_done_age_seconds: age,
        newest_done_sizes: newest.map(|r| (r.info.size_bytes, r.info.stored_bytes)),
    });
}
