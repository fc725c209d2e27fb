//! The HTTP layer (DESIGN §6): the router, one error type for every route, authorisation, and
//! the routes by topic. Handlers check names and authorisation before anything touches storage,
//! call the domain (archive, backups, retention, checks), and map its errors to statuses. Errors
//! are logged where they are handled: here, with the token name (never the secret).
//!
//! - `wal.rs`: WAL files (PUT/GET/HEAD, listing), the receiver's state and `check`;
//! - `backup.rs`: base backups, their files, manifests and blobs;
//! - `ops.rs`: retention, jobs, switch-wal;
//! - `drill.rs`: recovery drills, and the loopback endpoint their `restore_command` reads;
//! - `metrics.rs`: `/healthz` and Prometheus `/metrics`;
//! - `status.rs`: the status page (`/`) and its JSON (`/v1/status`), `status/page.rs` its HTML;
//! - `auth.rs`: tokens and roles; `tls.rs`: HTTPS.

pub mod auth;
mod backup;
mod drill;
mod metrics;
mod ops;
mod status;
pub mod tls;
mod wal;

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use pgwal::api::ErrorBody;

use crate::backup::BackupError;
use crate::catalog::CatalogError;
use crate::config::validate_cluster_name;
use crate::jobs::checks::SwitchError;
use crate::state::AppState;
use crate::wal::archive::ArchiveError;
use auth::{AuthError, Operation};

pub use wal::object_response;

/// What every handler receives: the server's state, who may do what, and the bound on uploads
/// in progress.
pub struct HttpState {
    pub app: Arc<AppState>,
    pub auth: auth::Authorizer,
    uploads: Arc<tokio::sync::Semaphore>,
    /// Whether fetches count in `/metrics`: not on a drill's endpoint, whose reads are the
    /// drill's own (its report counts them), not production recovery.
    pub count_fetches: bool,
}

impl std::ops::Deref for HttpState {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

pub fn router(app: Arc<AppState>, auth: auth::Authorizer) -> Router {
    // Drills serve WAL to their PostgreSQL through this layer.
    app.drills.serve_wal_with(Arc::new(drill::DrillWal));
    let routes = Router::new()
        .merge(metrics::routes())
        .merge(wal::routes())
        .merge(backup::routes())
        .merge(ops::routes())
        .merge(status::routes())
        .merge(drill::routes());
    with_state(routes, app, auth, true)
}

/// `routes` with their state, and the instance header on every answer.
fn with_state(
    routes: Router<Arc<HttpState>>,
    app: Arc<AppState>,
    auth: auth::Authorizer,
    count_fetches: bool,
) -> Router {
    let instance = axum::http::HeaderValue::from_str(&app.archive.instance)
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static("invalid"));
    let open = auth.is_open();
    let routes = routes
        .with_state(Arc::new(HttpState {
            uploads: Arc::new(tokio::sync::Semaphore::new(
                app.config.max_concurrent_uploads,
            )),
            app,
            auth,
            count_fetches,
        }))
        // Every answer names the archive instance that gave it (see `INSTANCE_HEADER`).
        .layer(axum::middleware::map_response(move |mut r: Response| {
            let instance = instance.clone();
            async move {
                r.headers_mut()
                    .insert(pgwal::api::INSTANCE_HEADER, instance);
                r
            }
        }));
    if open {
        routes.layer(axum::middleware::from_fn(loopback_host_only))
    } else {
        routes
    }
}

/// Open mode (no tokens, a loopback listener) answers only requests addressed to a loopback
/// name. A web page from anywhere can make a browser send requests to 127.0.0.1 under the
/// page's own domain once that domain resolves there (DNS rebinding), and read the answers; the
/// `Host` header still names that domain. A request without `Host` (no browser sends one)
/// passes.
async fn loopback_host_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match req.headers().get(header::HOST) {
        Some(host) if !host.to_str().is_ok_and(is_loopback_host) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_loopback",
            format!(
                "this server runs without tokens (open mode) and answers only requests \
                 addressed to a loopback name (127.0.0.1, [::1] or localhost), not {:?}: use \
                 one of those, or configure [[tokens]] to serve other names",
                String::from_utf8_lossy(host.as_bytes())
            ),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Whether a `Host` header value (`name[:port]`, `[v6][:port]`) names the loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || is_port(port) => ip,
            _ => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `:PORT`, or just `PORT` after a name.
fn is_port(text: &str) -> bool {
    let digits = text.strip_prefix(':').unwrap_or(text);
    !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// An error response: status, stable kind, message for a person.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// The cluster the error is about, sent in the body (see `ErrorBody::cluster`).
    cluster: Option<String>,
    /// Already logged by the handler, with more context than this type has.
    logged: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            cluster: None,
            logged: false,
        }
    }

    fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    fn about(mut self, cluster: &str) -> Self {
        self.cluster = Some(cluster.to_string());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if !self.logged {
            if self.status.is_server_error() {
                tracing::error!(
                    status = self.status.as_u16(),
                    kind = self.kind,
                    "{}",
                    self.message
                );
            } else if self.status != StatusCode::NOT_FOUND {
                tracing::warn!(
                    status = self.status.as_u16(),
                    kind = self.kind,
                    "{}",
                    self.message
                );
            }
        }
        let body = ErrorBody {
            error: self.kind.to_string(),
            message: self.message,
            cluster: self.cluster,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
            }
            AuthError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
        }
    }
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        let message = e.to_string();
        match e {
            ArchiveError::BadName(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_name", message),
            ArchiveError::Invalid { kind, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, kind, message)
            }
            ArchiveError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ArchiveError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ArchiveError::OutOfSpace(_) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "out_of_space", message)
            }
            ArchiveError::Corrupt(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", message)
            }
            ArchiveError::MissingObject(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "missing_object", message)
            }
            ArchiveError::Body(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_body", message),
            ArchiveError::Storage(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_error", message)
            }
            ArchiveError::Catalog(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "catalog_error", message)
            }
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        ApiError::from(ArchiveError::Catalog(e))
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        let message = e.to_string();
        let (status, kind) = match &e {
            BackupError::NoConninfo(_) => (StatusCode::BAD_REQUEST, "no_conninfo"),
            BackupError::InProgress(_) => (StatusCode::CONFLICT, "backup_running"),
            BackupError::NotFound(_) => (StatusCode::NOT_FOUND, "unknown_backup"),
            BackupError::NotDone(_) => (StatusCode::CONFLICT, "backup_not_done"),
            BackupError::Kept(_) => (StatusCode::CONFLICT, "kept"),
            BackupError::Deleting(_) => (StatusCode::CONFLICT, "deleting"),
            BackupError::MinimumRedundancy(_) => (StatusCode::CONFLICT, "minimum_redundancy"),
            BackupError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            BackupError::Archive(ArchiveError::Corrupt(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "corrupt")
            }
            BackupError::Archive(ArchiveError::MissingObject(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "missing_object")
            }
            BackupError::Archive(ArchiveError::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            BackupError::Archive(_) | BackupError::Storage(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_error")
            }
            BackupError::Catalog(_) => (StatusCode::SERVICE_UNAVAILABLE, "catalog_error"),
        };
        ApiError::new(status, kind, message)
    }
}

impl From<SwitchError> for ApiError {
    fn from(e: SwitchError) -> Self {
        match e {
            SwitchError::NoConninfo(m) => ApiError::new(StatusCode::BAD_REQUEST, "no_conninfo", m),
            SwitchError::Postgres { message, hint } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "postgres_error",
                format!("{message} (hint: {hint})"),
            ),
            SwitchError::Timeout(m) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_archived", m)
            }
        }
    }
}

/// Checks the cluster name and that the request's token may do `op` on it; returns the token's
/// name (`None` in open mode). Refusals are logged here.
fn authorize(
    state: &HttpState,
    headers: &HeaderMap,
    cluster: &str,
    op: Operation,
) -> Result<Option<String>, ApiError> {
    validate_cluster_name(cluster)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_cluster", m))?;
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.auth.check(authz, cluster, op).map_err(|e| {
        let e = ApiError::from(e);
        tracing::warn!(
            cluster,
            status = e.status.as_u16(),
            "refused: {}",
            e.message
        );
        e.logged()
    })
}

/// A JSON request body, or the default when the body is empty.
fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not a {what}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8420",
            "127.1.2.3:1",
            "localhost",
            "LOCALHOST:8420",
            "[::1]",
            "[::1]:8420",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8420",
            "localhost.evil.example:8420",
            "127.0.0.1.evil.example",
            "10.0.0.1:8420",
            "[::2]:8420",
            "[::1]x",
            "127.0.0.1:80:80",
            "127.0.0.1:",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
