//! Routes of WAL files (`PUT`/`GET`/`HEAD` of one file, the listing, the dry run of a push), of
//! the streaming receiver's state and of `check`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use pgwal::api::{
    PushTestResponse, PutResponse, WalEntry, WalListing, WalSummary, CONTENT_SHA256_HEADER,
    CONTENT_SIZE_HEADER, CONTENT_XXH3_HEADER,
};
use pgwal::name::WalFileName;

use super::auth::Operation;
use super::{authorize, ApiError, HttpState};
use crate::wal::archive::{ArchiveError, Stored, Upload};
use crate::wal::object_format::Decompressor;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v1/clusters/{cluster}/wal", get(list_wal))
        .route("/v1/clusters/{cluster}/timelines", get(timelines))
        .route("/v1/clusters/{cluster}/receiver", get(receiver_status))
        .route("/v1/clusters/{cluster}/check", get(check))
        .route("/v1/clusters/{cluster}/wal-test", post(push_test))
        .route(
            "/v1/clusters/{cluster}/wal/{name}",
            get(get_wal).put(put_wal).head(head_wal),
        )
}

fn parse_name(name: &str) -> Result<WalFileName, ApiError> {
    name.parse::<WalFileName>().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!("{name:?} is not a WAL file name: {e}"),
        )
    })
}

/// Logs a failed request once, at the level its cause deserves.
fn log_failure(cluster: &str, name: &str, op: &str, e: &ApiError) {
    if e.status.is_server_error() {
        tracing::error!(
            cluster,
            file = name,
            op,
            status = e.status.as_u16(),
            kind = e.kind,
            "{}",
            e.message
        );
    } else if e.status != StatusCode::NOT_FOUND {
        tracing::warn!(
            cluster,
            file = name,
            op,
            status = e.status.as_u16(),
            kind = e.kind,
            "{}",
            e.message
        );
    }
}

async fn put_wal(
    State(state): State<Arc<HttpState>>,
    Path((cluster, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut body = body.into_data_stream();
    let token = match authorize(&state, &headers, &cluster, Operation::Push) {
        Ok(t) => t,
        Err(e) => {
            drain_body(&mut body).await;
            return Err(e);
        }
    };
    // Bounded: beyond `max_concurrent_uploads`, 503 with Retry-After (push retries it).
    let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
        drain_body(&mut body).await;
        crate::metrics::record_push(&cluster, "busy", 0, std::time::Duration::ZERO);
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{} uploads are in progress, the most this server takes at once \
                 (max_concurrent_uploads); retry",
                state.config.max_concurrent_uploads
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(r);
    };
    let started = std::time::Instant::now();
    let result = put_wal_inner(&state, &cluster, &name, &headers, &mut body).await;
    if result.is_err() {
        drain_body(&mut body).await;
    }
    match &result {
        Ok((_, r)) => crate::metrics::record_push(&cluster, &r.outcome, r.size, started.elapsed()),
        Err(e) => crate::metrics::record_push(&cluster, e.kind, 0, started.elapsed()),
    }
    match &result {
        Ok((status, r)) => tracing::info!(
            cluster, file = %name, token = token.as_deref().unwrap_or("-"),
            status = status.as_u16(), size = r.size, stored_size = r.stored_size, "{}", r.outcome
        ),
        Err(e) => log_failure(&cluster, &name, "put", e),
    }
    result
        .map(|(status, r)| (status, Json(r)).into_response())
        .map_err(ApiError::logged)
}

/// `wal-archive push --test`: the authorisation of a WAL upload to `cluster` (its name, the
/// token, the token's role and clusters), exactly as [`put_wal`] runs it, and then what the
/// archive knows of the cluster. Nothing is read from a body, stored or bound.
async fn push_test(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PushTestResponse>, ApiError> {
    let token = authorize(&state, &headers, &cluster, Operation::Push)?;
    let row = state.archive.catalog.cluster(&cluster).await?;
    tracing::info!(
        cluster,
        token = token.as_deref().unwrap_or("-"),
        "push test: this token may push WAL of this cluster"
    );
    Ok(Json(PushTestResponse {
        instance: state.archive.instance.to_string(),
        token,
        system_identifier: row.and_then(|r| r.system_identifier).map(|s| s.to_string()),
        cluster,
    }))
}

async fn put_wal_inner(
    state: &HttpState,
    cluster: &str,
    name: &str,
    headers: &HeaderMap,
    body: &mut axum::body::BodyDataStream,
) -> Result<(StatusCode, PutResponse), ApiError> {
    let wal_name = parse_name(name)?;
    let zstd = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("zstd") => true,
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => false,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_encoding",
                "Content-Encoding must be zstd or absent",
            ))
        }
    };
    let claimed_sha256 = match headers.get(CONTENT_SHA256_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_checksum_header",
                "X-Content-Sha256 must be 64 hex digits",
            ))
        }
    };
    let claimed_xxh3 = match headers.get(CONTENT_XXH3_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_checksum_header",
                "X-Content-Xxh3 must be 32 hex digits",
            ))
        }
    };
    let level = state.config.cluster(cluster).compression_level;
    let upload = Upload {
        body,
        zstd,
        claimed_sha256,
        claimed_xxh3,
        idle_timeout: state.config.body_idle_timeout,
    };
    let r = state
        .archive
        .ingest(cluster, &wal_name, upload, level)
        .await?;
    let (status, outcome) = match r.stored {
        Stored::Created => (StatusCode::CREATED, "stored"),
        Stored::AlreadyStored => (StatusCode::OK, "already_stored"),
    };
    Ok((
        status,
        PutResponse {
            name: name.to_string(),
            outcome: outcome.into(),
            sha256: r.sha256,
            xxh3: Some(r.xxh3),
            size: r.size,
            stored_size: r.stored_size,
        },
    ))
}

/// Reads and discards what is left of a refused upload's body, at most a segment's worth and
/// for at most 10 s. A client still sending when the server answers and closes gets a reset
/// connection instead of the answer, and would retry a permanent refusal (401, 409, 422) as if
/// the server were unreachable.
async fn drain_body(body: &mut axum::body::BodyDataStream) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut drained = 0u64;
    while drained <= crate::wal::archive::MAX_SEGMENT_BYTES {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len() as u64,
            _ => return,
        }
    }
}

pub(crate) fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().map(str::trim) == Some("zstd"))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[derive(serde::Deserialize, Default)]
pub(super) struct GetQuery {
    /// When the archive has no complete segment of this name, serve the receiver's segment in
    /// progress (zero-filled after its last durable byte), as point-in-time recovery to the last
    /// streamed byte needs.
    #[serde(default)]
    partial: bool,
}

pub(super) async fn get_wal(
    State(state): State<Arc<HttpState>>,
    Path((cluster, name)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<GetQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Fetch)?;
    let started = std::time::Instant::now();
    let mut result = get_wal_inner(&state, &cluster, &name, &headers).await;
    if query.partial {
        if let Err(e) = &result {
            if e.status == StatusCode::NOT_FOUND {
                if let Some(r) = serve_in_progress(&state, &cluster, &name).await {
                    result = r;
                }
            }
        }
    }
    match &result {
        Ok(r) => {
            let size = r
                .headers()
                .get(CONTENT_SIZE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if state.count_fetches {
                crate::metrics::record_fetch(&cluster, "served", size, started.elapsed());
            }
        }
        Err(e) => {
            let outcome = if e.status == StatusCode::NOT_FOUND {
                "not_found"
            } else {
                e.kind
            };
            if state.count_fetches {
                crate::metrics::record_fetch(&cluster, outcome, 0, started.elapsed());
            }
            log_failure(&cluster, &name, "get", e);
        }
    }
    result.map_err(ApiError::logged)
}

async fn get_wal_inner(
    state: &HttpState,
    cluster: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let wal_name = parse_name(name)?;
    // Verified before the first byte is sent: a damaged object is never served (DESIGN §7.3).
    let row = match state.archive.verified(cluster, &wal_name).await {
        Ok(row) => row,
        Err(ArchiveError::NotFound(m)) => return Err(not_in_archive(state, cluster, m).await),
        Err(e) => return Err(e.into()),
    };
    let stream = state
        .archive
        .blobs
        .get(&row.object_key)
        .await
        .map_err(|e| ApiError::from(ArchiveError::Storage(e.to_string())))?;
    object_response(
        stream,
        accepts_zstd(headers),
        row.stored_size,
        row.size,
        &row.sha256,
        row.xxh3.as_deref(),
    )
    .map_err(|e| ApiError::from(ArchiveError::Storage(e.to_string())))
}

/// The 404 for a file the archive does not hold: `not_found` for a cluster this archive knows
/// (which `fetch` turns into "no such file"), `unknown_cluster` otherwise, so that a mistyped
/// `--cluster` never ends a recovery early.
async fn not_in_archive(state: &HttpState, cluster: &str, message: String) -> ApiError {
    let known = state.config.clusters.contains_key(cluster)
        || matches!(state.archive.catalog.cluster(cluster).await, Ok(Some(_)));
    if known {
        ApiError::new(StatusCode::NOT_FOUND, pgwal::api::NOT_IN_ARCHIVE, message).about(cluster)
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_cluster",
            format!(
                "this archive has no cluster {cluster:?}: check --cluster (and the URL) in \
                 restore_command"
            ),
        )
        .about(cluster)
    }
}

/// The response for a stored object already verified by the caller: the zstd object as stored
/// when the client accepts zstd (`stored_size` bytes), else decompressed on the fly (`size`
/// bytes), with the checksum headers (`xxh3` when recorded).
pub fn object_response(
    stream: crate::storage::BlobStream,
    zstd: bool,
    stored_size: u64,
    size: u64,
    sha256: &str,
    xxh3: Option<&str>,
) -> std::io::Result<Response> {
    let mut response = if zstd {
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        r.headers_mut().insert(
            header::CONTENT_LENGTH,
            header_value(&stored_size.to_string()),
        );
        r
    } else {
        let mut dec = Decompressor::new()?;
        let plain = stream.map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            let mut out = Vec::new();
            dec.write(&chunk, |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
            Ok::<_, std::io::Error>(bytes::Bytes::from(out))
        });
        let mut r = Response::new(Body::from_stream(plain));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, header_value(&size.to_string()));
        r
    };
    set_file_headers(response.headers_mut(), sha256, xxh3, size);
    Ok(response)
}

fn set_file_headers(h: &mut HeaderMap, sha256: &str, xxh3: Option<&str>, size: u64) {
    h.insert(CONTENT_SHA256_HEADER, header_value(sha256));
    if let Some(x) = xxh3 {
        h.insert(CONTENT_XXH3_HEADER, header_value(x));
    }
    h.insert(CONTENT_SIZE_HEADER, header_value(&size.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
}

pub(super) async fn head_wal(
    State(state): State<Arc<HttpState>>,
    Path((cluster, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Fetch)?;
    let wal_name = parse_name(&name)?;
    // As strong as a 200 to a PUT: the helper exits 0 on it for a file it sent earlier.
    match state.archive.held(&cluster, &wal_name).await? {
        Some(row) => {
            let mut r = StatusCode::OK.into_response();
            set_file_headers(r.headers_mut(), &row.sha256, row.xxh3.as_deref(), row.size);
            Ok(r)
        }
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// What `wal-archive wal` shows: timelines, ranges, gaps and missing files, from the catalog's
/// aggregates (a few rows however many files are stored).
async fn timelines(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Result<Json<WalSummary>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let catalog = &state.archive.catalog;
    let row = known_cluster(catalog, &cluster).await?;
    let summary = catalog
        .wal_summary(&cluster)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(WalSummary {
        cluster,
        system_identifier: row.system_identifier.map(|s| s.to_string()),
        segment_size: row.segment_size,
        files: summary.files,
        timelines: summary.timelines,
        missing_files: summary.missing_files,
        missing: summary.missing,
    }))
}

/// The cluster's catalog row, or 404 `unknown_cluster`.
async fn known_cluster(
    catalog: &crate::catalog::Catalog,
    cluster: &str,
) -> Result<crate::catalog::ClusterRow, ApiError> {
    catalog
        .cluster(cluster)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_cluster",
                format!("cluster {cluster:?} has no WAL in this archive yet"),
            )
        })
}

async fn list_wal(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Result<Json<WalListing>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let catalog = &state.archive.catalog;
    let row = known_cluster(catalog, &cluster).await?;
    let rows = catalog.list_wal(&cluster).await.map_err(ApiError::from)?;
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for r in rows {
        if r.state == "ok" {
            files.push(WalEntry {
                name: r.name,
                kind: r.kind,
                size: r.size,
                sha256: r.sha256,
                stored_size: r.stored_size,
                archived_at: r.archived_at,
            });
        } else {
            missing.push(r.name);
        }
    }
    Ok(Json(WalListing {
        cluster,
        system_identifier: row.system_identifier.map(|s| s.to_string()),
        segment_size: row.segment_size,
        files,
        missing,
    }))
}

/// The receiver's segment in progress, if it is `name`: its durable prefix, zero-filled to the
/// segment size. Hashed in a first pass, streamed in a second (the file only grows meanwhile,
/// and only the durable prefix is read).
async fn serve_in_progress(
    state: &HttpState,
    cluster: &str,
    name: &str,
) -> Option<Result<Response, ApiError>> {
    let wal_name: WalFileName = name.parse().ok()?;
    let WalFileName::Segment { .. } = wal_name else {
        return None;
    };
    let status = state.receivers.get(cluster)?.lock().ok()?.clone();
    if status.partial_segment.as_deref() != Some(&format!("{name}.partial")) {
        return None;
    }
    let size = pgwal::SegmentSize::new(
        state
            .archive
            .catalog
            .cluster(cluster)
            .await
            .ok()??
            .segment_size?,
    )
    .ok()?;
    let flushed: pgwal::Lsn = status.flushed_lsn?.parse().ok()?;
    let start = wal_name.segno(size).map(|n| size.segment_start(n))?;
    let valid = flushed.0.checked_sub(start.0)?.min(size.bytes());
    let path = state
        .config
        .receiver_dir(cluster)
        .join(format!("{name}.partial"));
    let result = async {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(&path).await?;
        let mut hasher = pgwal::checksum::Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = valid;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = file.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(std::io::Error::other(
                    "the working file is shorter than its durable prefix",
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let zeros = vec![0u8; 64 * 1024];
        let mut pad = size.bytes() - valid;
        while pad > 0 {
            let n = pad.min(zeros.len() as u64) as usize;
            hasher.update(&zeros[..n]);
            pad -= n as u64;
        }
        let sha = hasher.finish_hex();
        let file = tokio::fs::File::open(&path).await?.take(valid);
        let body = tokio_util::io::ReaderStream::new(file).chain(futures::stream::iter(
            (0..(size.bytes() - valid).div_ceil(65536)).map(move |i| {
                let n = (size.bytes() - valid - i * 65536).min(65536) as usize;
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; n]))
            }),
        ));
        let mut r = Response::new(Body::from_stream(body));
        r.headers_mut().insert(
            header::CONTENT_LENGTH,
            header_value(&size.bytes().to_string()),
        );
        set_file_headers(r.headers_mut(), &sha, None, size.bytes());
        r.headers_mut()
            .insert("x-wal-partial", HeaderValue::from_static("true"));
        Ok::<_, std::io::Error>(r)
    }
    .await;
    tracing::info!(
        cluster,
        file = name,
        valid,
        "served the segment in progress"
    );
    Some(result.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "partial_unavailable",
            e.to_string(),
        )
    }))
}

async fn receiver_status(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Result<Json<pgwal::api::ReceiverStatus>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    Ok(Json(state.receiver_status(&cluster)))
}

async fn check(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Result<Json<pgwal::api::CheckReport>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let (checks, _) = crate::jobs::checks::run(&state, &cluster).await?;
    Ok(Json(pgwal::api::CheckReport { cluster, checks }))
}
