//! HTTP routes of recovery drills: start one (`POST …/drills`, a job answered 202 with its
//! run), list and show them (`GET …/drills`, `GET …/drills/{id}`); and the loopback endpoint a
//! drill's `restore_command` fetches WAL from ([`DrillWal`]).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgwal::api::{DrillReport, DrillRequest};

use super::auth::{Authorizer, Operation};
use super::{authorize, json_or_default, ApiError, HttpState};
use crate::config::{Role, TokenConfig};
use crate::jobs::drill::{self, DrillError, EndpointHandle, Served, WalEndpoint};
use crate::jobs::runs::{self, JobKind};
use crate::state::AppState;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route(
            "/v1/clusters/{cluster}/drills",
            post(start_drill).get(list_drills),
        )
        .route("/v1/clusters/{cluster}/drills/{id}", get(show_drill))
}

impl From<DrillError> for ApiError {
    fn from(e: DrillError) -> Self {
        let message = e.to_string();
        match e {
            DrillError::Backup(b) => ApiError::from(b),
            DrillError::Busy(_) => ApiError::new(StatusCode::CONFLICT, "drill_running", message),
            DrillError::BadRequest(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            DrillError::Setup(_) => ApiError::new(StatusCode::CONFLICT, "drill_refused", message),
            DrillError::Space(_) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "out_of_space", message)
            }
            DrillError::Catalog(c) => ApiError::from(c),
        }
    }
}

/// Starts a drill job (202 with its run); refused at once (409, 400, 507 with what to do) when
/// a drill of the cluster runs or this host cannot run it.
async fn start_drill(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let token = authorize(&state, &headers, &cluster, Operation::Admin)?;
    let req: DrillRequest = json_or_default(&body, "drill request")?;
    let lock = state.backups.job_lock(&cluster, JobKind::Drill.as_str());
    let guard = lock.try_lock_owned().map_err(|_| {
        DrillError::Busy(format!(
            "a drill of cluster {cluster:?} is running; one runs at a time (wal-archive jobs \
             --cluster {cluster} shows it)"
        ))
    })?;
    let plan = drill::plan(&state.app, &cluster, &req).await?;
    let backup_id = plan.backup_id().to_string();
    let run = runs::start(
        &state.app,
        &cluster,
        JobKind::Drill,
        Some(&backup_id),
        move |app, progress| async move {
            let _guard = guard;
            let report = drill::run(app, plan, Some(progress.id()), Some(&progress)).await;
            drill::finished(report)
        },
    )
    .await?;
    tracing::info!(cluster, backup = %backup_id, run = run.id,
        token = token.as_deref().unwrap_or("-"), "drill requested");
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    limit: Option<u32>,
}

async fn list_drills(
    State(state): State<Arc<HttpState>>,
    Path(cluster): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<DrillReport>>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(
        drill::catalog::list(&state.archive.catalog, &cluster, limit).await?,
    ))
}

async fn show_drill(
    State(state): State<Arc<HttpState>>,
    Path((cluster, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Json<DrillReport>, ApiError> {
    authorize(&state, &headers, &cluster, Operation::Read)?;
    drill::catalog::get(&state.archive.catalog, &cluster, id)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_drill",
                format!(
                    "cluster {cluster:?} has no drill {id} (GET /v1/clusters/{cluster}/drills)"
                ),
            )
        })
}

/// The endpoint a drill's `restore_command` reads: `GET`/`HEAD` of one cluster's WAL files,
/// the same handlers as the main listener (each file verified before it is sent), on
/// `127.0.0.1`, port chosen by the system, plain HTTP (nothing leaves the host), for one
/// token of role `reader` limited to that cluster, made for the drill and never stored. It
/// works whatever the main listener's address, TLS and tokens are.
pub struct DrillWal;

impl WalEndpoint for DrillWal {
    fn serve(
        &self,
        app: Arc<AppState>,
        cluster: &str,
        token_sha256: &str,
        served: Arc<Served>,
    ) -> std::io::Result<EndpointHandle> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let auth = Authorizer::new(&[TokenConfig {
            name: format!("drill of {cluster}"),
            secret_sha256: token_sha256.to_string(),
            role: Role::Reader,
            clusters: Some(vec![cluster.to_string()]),
        }]);
        let routes = Router::new()
            .route(
                "/v1/clusters/{cluster}/wal/{name}",
                get(super::wal::get_wal).head(super::wal::head_wal),
            )
            .layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    let served = served.clone();
                    async move {
                        let name = (req.method() == Method::GET)
                            .then(|| req.uri().path().rsplit('/').next().map(str::to_string))
                            .flatten();
                        let response = next.run(req).await;
                        if let Some(name) = name {
                            served.record(&name, response.status().as_u16());
                        }
                        response
                    }
                },
            ));
        let app = super::with_state(routes, app, auth, false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::warn!("a drill's WAL endpoint stopped: {e}");
            }
        });
        Ok(EndpointHandle {
            addr,
            stop: Some(stop),
        })
    }
}
