//! Recovery drills (DESIGN §1, scenario 7): proof that a backup and the archived WAL really
//! restore. A drill runs on the server host, as a job (one at a time per cluster, bounded by
//! `drill_timeout`):
//!
//! 1. [`plan`] refuses up front what cannot work, with what to do: a backup that is not done,
//!    PostgreSQL binaries missing or of another major version ([`postgres::find_binaries`]), a
//!    root server whose `drill_user` cannot reach `drill_dir`, a scratch file system without
//!    room for the backup and the WAL to replay.
//! 2. The backup is written from storage into `DRILL_DIR/drill-ID-TAG/pgdata`
//!    ([`restore::write_backup`], every file checked against its SHA-256).
//! 3. A throwaway PostgreSQL ([`postgres::Throwaway`]) starts on it in standby mode, reachable
//!    only through a Unix socket in the scratch directory, with `archive_mode = off`. Its
//!    `restore_command` is the real `wal-archive fetch`, against a loopback endpoint of this
//!    server that serves this cluster's WAL, read-only, to the holder of a token made for this
//!    drill ([`WalEndpoint`], provided by the HTTP layer); the endpoint notes every file it
//!    served ([`Served`]), so the drill knows which WAL was replayed and why a file could not
//!    be had.
//! 4. It replays up to the newest segment archived when the drill started (or the recovery
//!    target, where it pauses). The startup process's title says which file it replays or
//!    waits for: waiting for a file past the end of the archive is the end; waiting for one
//!    inside it is a failure naming that segment. A sanity query (`pg_is_in_recovery()`,
//!    `count(*) FROM pg_class`, the replay LSN against the expected one) closes it.
//! 5. PostgreSQL is stopped, the scratch directory removed, also when the drill fails or times
//!    out; a server killed during a drill does it at its next start ([`startup`]).
//!
//! The result (times to consistency and to the end, the WAL replayed) is a row of the `drills`
//! table and a record in storage ([`catalog`]); `list`/`show` show each backup's newest drill,
//! `check` fails on a failed or too old one, `/metrics` exports the newest per cluster.

pub mod catalog;
pub mod postgres;
pub mod restore;
pub mod scratch;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwal::api::{DrillReport, DrillRequest, JobReport};
use pgwal::name::WalFileName;
use pgwal::quote::shell_word;
use pgwal::{Lsn, SegmentSize};

use crate::backup::catalog::BackupRow;
use crate::backup::BackupError;
use crate::catalog::CatalogError;
use crate::config::Config;
use crate::jobs::runs::{Finished, Progress};
use crate::state::AppState;
use crate::wal::archive::Archive;
use postgres::{Binaries, Startup, Throwaway};
use scratch::{RunAs, Scratch};

/// Room kept on the scratch file system beyond the backup and the WAL (PostgreSQL's own
/// files, the prefetch spool, the log).
const HEADROOM_BYTES: u64 = 64 << 20;
/// How often a running drill looks at its PostgreSQL.
const POLL: Duration = Duration::from_millis(100);
/// How long the startup process may wait for a file the archive should have before the drill
/// fails: PostgreSQL asks again every `wal_retrieve_retry_interval` (5 s), so twice.
const STALL: Duration = Duration::from_secs(12);
/// How long the drill waits for a connection once replay reached its end.
const CONNECT_AFTER_END: Duration = Duration::from_secs(30);

/// Why a drill cannot start. Each maps to one API status.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The backup is unknown or not done.
    #[error("{0}")]
    Backup(#[from] BackupError),
    /// A drill of the cluster is running. Retry later.
    #[error("{0}")]
    Busy(String),
    /// The request is wrong (a recovery target that does not parse).
    #[error("{0}")]
    BadRequest(String),
    /// This host cannot run the drill as configured (binaries, user, directories): fix the
    /// configuration. Not retryable.
    #[error("{0}")]
    Setup(String),
    /// The scratch file system lacks the room. Retry once there is room.
    #[error("{0}")]
    Space(String),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
}

/// How a drill's PostgreSQL reads the archive: a loopback HTTP endpoint serving `GET
/// /v1/clusters/{cluster}/wal/{name}` of one cluster to the holder of one token, until the
/// handle drops. The HTTP layer provides it ([`Drills::serve_wal_with`]), so that this module
/// never depends on it.
pub trait WalEndpoint: Send + Sync {
    fn serve(
        &self,
        app: Arc<AppState>,
        cluster: &str,
        token_sha256: &str,
        served: Arc<Served>,
    ) -> std::io::Result<EndpointHandle>;
}

/// A running drill endpoint: where it listens; it stops when this drops.
pub struct EndpointHandle {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for EndpointHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The WAL files a drill's endpoint answered: served (200), or refused with a status.
#[derive(Default)]
pub struct Served {
    inner: Mutex<ServedInner>,
}

#[derive(Default)]
struct ServedInner {
    ok: BTreeSet<String>,
    failed: BTreeMap<String, u16>,
}

impl Served {
    pub fn record(&self, name: &str, status: u16) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if status == 200 {
            s.ok.insert(name.to_string());
            s.failed.remove(name);
        } else {
            s.failed.insert(name.to_string(), status);
        }
    }

    fn snapshot(&self) -> (BTreeSet<String>, BTreeMap<String, u16>) {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (s.ok.clone(), s.failed.clone())
    }
}

/// The drills' share of the server's state: how their PostgreSQL gets WAL.
#[derive(Default)]
pub struct Drills {
    wal: Mutex<Option<Arc<dyn WalEndpoint>>>,
}

impl Drills {
    /// Called by the HTTP layer when it builds its router.
    pub fn serve_wal_with(&self, endpoint: Arc<dyn WalEndpoint>) {
        *self.wal.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoint);
    }

    fn endpoint(&self) -> Option<Arc<dyn WalEndpoint>> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The newest segment archived when the drill started.
    End,
    Time(String),
    Lsn(Lsn),
    Xid(String),
    Name(String),
    Immediate,
}

impl Target {
    fn from_request(req: &DrillRequest) -> Result<Target, DrillError> {
        let mut targets = Vec::new();
        if let Some(t) = &req.target_time {
            targets.push(Target::Time(t.clone()));
        }
        if let Some(l) = &req.target_lsn {
            let lsn = l.parse::<Lsn>().map_err(|e| {
                DrillError::BadRequest(format!("target LSN {l:?} is not an LSN: {e}"))
            })?;
            targets.push(Target::Lsn(lsn));
        }
        if let Some(x) = &req.target_xid {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(DrillError::BadRequest(format!(
                    "target xid {x:?} is not a transaction id"
                )));
            }
            targets.push(Target::Xid(x.clone()));
        }
        if let Some(n) = &req.target_name {
            targets.push(Target::Name(n.clone()));
        }
        if req.target_immediate {
            targets.push(Target::Immediate);
        }
        match targets.len() {
            0 => Ok(Target::End),
            1 => Ok(targets.remove(0)),
            _ => Err(DrillError::BadRequest(
                "give one recovery target at most (time, LSN, xid, name or immediate)".into(),
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::End => "end of archive".into(),
            Target::Time(t) => format!("time {t}"),
            Target::Lsn(l) => format!("lsn {l}"),
            Target::Xid(x) => format!("xid {x}"),
            Target::Name(n) => format!("name {n}"),
            Target::Immediate => "immediate".into(),
        }
    }

    /// The recovery target setting, if any. Only ours is set: PostgreSQL refuses a start
    /// where a second target is set, even to an empty string ("multiple recovery targets
    /// specified"), so one left in the backup's `postgresql.auto.conf` is removed from it
    /// instead ([`strip_recovery_targets`]).
    fn settings(&self) -> Vec<(String, String)> {
        let (k, v) = match self {
            Target::End => return Vec::new(),
            Target::Time(t) => ("recovery_target_time", t.clone()),
            Target::Lsn(l) => ("recovery_target_lsn", l.to_string()),
            Target::Xid(x) => ("recovery_target_xid", x.clone()),
            Target::Name(n) => ("recovery_target_name", n.clone()),
            Target::Immediate => ("recovery_target", "immediate".into()),
        };
        vec![(k.to_string(), v)]
    }
}

/// `postgresql.auto.conf` without its recovery target lines (`recovery_target`,
/// `recovery_target_time`, ...; `recovery_target_timeline` and `_action`, `_inclusive` stay,
/// the command line sets what matters of them).
fn strip_recovery_targets(text: &str) -> String {
    const TARGETS: [&str; 5] = [
        "recovery_target",
        "recovery_target_time",
        "recovery_target_lsn",
        "recovery_target_xid",
        "recovery_target_name",
    ];
    text.lines()
        .filter(|line| {
            let key = line
                .split(|c: char| c == '=' || c.is_whitespace())
                .find(|w| !w.is_empty())
                .unwrap_or_default();
            !TARGETS.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A drill that can run: everything [`plan`] checked.
pub struct Plan {
    cluster: String,
    backup: BackupRow,
    bins: Binaries,
    run_as: RunAs,
    wal_archive: PathBuf,
    target: Target,
    timeline: String,
    segment_size: SegmentSize,
    /// The newest segment archived when the drill was planned.
    newest: WalFileName,
    timeout: Duration,
}

impl Plan {
    pub fn backup_id(&self) -> &str {
        &self.backup.info.id
    }
}

/// The `wal-archive` binary the drill's `restore_command` runs.
fn find_wal_archive(config: &Config) -> Result<PathBuf, String> {
    if let Some(p) = &config.wal_archive_path {
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(format!(
                "wal_archive_path = {:?} does not exist: point it at the wal-archive binary",
                p.display().to_string()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("wal-archive")))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("wal-archive"))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        "cannot find the wal-archive binary a drill's restore_command runs: install it next to \
         wal-archive-server or on PATH, or set wal_archive_path in the server configuration"
            .to_string()
    })
}

/// The major version of a backup (`15.18` → 15).
fn major_of(version: &str) -> Option<u32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Checks that a drill of `req` can run on this host now, and says what to do when not.
pub async fn plan(app: &AppState, cluster: &str, req: &DrillRequest) -> Result<Plan, DrillError> {
    let archive = &app.archive;
    let wanted = req.backup.as_deref().unwrap_or("latest");
    let backup = crate::backup::find(archive, cluster, wanted).await?;
    if backup.info.status != "done" {
        return Err(BackupError::NotDone(format!(
            "backup {} is {}: only a done backup can be drilled",
            backup.info.id, backup.info.status
        ))
        .into());
    }
    let target = Target::from_request(req)?;
    let timeline = req
        .target_timeline
        .clone()
        .unwrap_or_else(|| "latest".into());
    if !(timeline == "latest"
        || timeline == "current"
        || (!timeline.is_empty() && timeline.bytes().all(|b| b.is_ascii_digit())))
    {
        return Err(DrillError::BadRequest(format!(
            "target timeline {timeline:?}: use latest, current or a number"
        )));
    }
    let bound = archive.catalog.cluster(cluster).await?;
    let major = backup
        .info
        .pg_version
        .as_deref()
        .and_then(major_of)
        .or(bound.as_ref().and_then(|c| c.pg_major))
        .ok_or_else(|| {
            DrillError::Setup(format!(
                "backup {} does not say which PostgreSQL version took it",
                backup.info.id
            ))
        })?;
    let segment_size = bound
        .as_ref()
        .and_then(|c| c.segment_size)
        .and_then(|s| SegmentSize::new(s).ok())
        .ok_or_else(|| {
            DrillError::Setup(format!(
                "cluster {cluster:?} has no WAL segment size yet: nothing was archived"
            ))
        })?;

    let config = app.config.clone();
    let cfg = config.cluster(cluster);
    let cluster2 = cluster.to_string();
    let (bins, run_as, wal_archive) = tokio::task::spawn_blocking(move || {
        let bins = postgres::find_binaries(cfg.pg_bin_dir.as_deref(), major, &cluster2)?;
        let run_as = RunAs::resolve(&config.drill_user)?;
        let wal_archive = find_wal_archive(&config)?;
        check_reachable(&config, &run_as, &wal_archive)?;
        Ok::<_, String>((bins, run_as, wal_archive))
    })
    .await
    .map_err(|e| DrillError::Setup(format!("drill preparation task: {e}")))?
    .map_err(DrillError::Setup)?;

    // The newest segment (the end of the archive for this drill) and the WAL to replay, from
    // the stored runs of consecutive segments: bounded by the archive's gaps, not its size.
    let runs = archive.catalog.wal_summary(cluster).await?.runs;
    let begin_segno = backup
        .info
        .begin_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok())
        .map(|l| segment_size.segno_of(l))
        .unwrap_or(0);
    let wal_bytes = runs
        .iter()
        .filter(|r| r.last >= begin_segno)
        .map(|r| r.last - r.first.max(begin_segno) + 1)
        .sum::<u64>()
        * segment_size.bytes();
    let Some(newest) = runs
        .iter()
        .max_by_key(|r| (r.timeline, r.last))
        .map(|r| WalFileName::segment(r.timeline, r.last, segment_size))
    else {
        return Err(DrillError::Setup(format!(
            "cluster {cluster:?} has no archived WAL segment to replay"
        )));
    };
    let need = backup.info.size_bytes + wal_bytes + HEADROOM_BYTES;
    let free = crate::jobs::checks::free_space(&app.config.drill_dir).map_err(|e| {
        DrillError::Setup(format!(
            "cannot read the free space of {}: {e}",
            app.config.drill_dir.display()
        ))
    })?;
    if free < need {
        return Err(DrillError::Space(space_message(
            &backup.info.id,
            &app.config.drill_dir,
            backup.info.size_bytes,
            wal_bytes,
            free,
        )));
    }
    Ok(Plan {
        cluster: cluster.to_string(),
        backup,
        bins,
        run_as,
        wal_archive,
        target,
        timeline,
        segment_size,
        newest,
        timeout: app.config.drill_timeout(cluster),
    })
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

fn space_message(backup: &str, dir: &Path, backup_bytes: u64, wal_bytes: u64, free: u64) -> String {
    format!(
        "a drill of backup {backup} needs about {} in {} (the backup {}, the WAL to replay {}, \
         {} of headroom), and {} is free there: free space, or set drill_dir to a larger file \
         system",
        mib(backup_bytes + wal_bytes + HEADROOM_BYTES),
        dir.display(),
        mib(backup_bytes),
        mib(wal_bytes),
        mib(HEADROOM_BYTES),
        mib(free)
    )
}

/// `drill_dir` exists, and the user PostgreSQL runs as can reach it and run `wal-archive`.
fn check_reachable(config: &Config, run_as: &RunAs, wal_archive: &Path) -> Result<(), String> {
    if let RunAs::User { name, .. } = run_as {
        let inside = |a: &Path, b: &Path| {
            let a = std::fs::canonicalize(a).unwrap_or_else(|_| a.to_path_buf());
            let b = std::fs::canonicalize(b).unwrap_or_else(|_| b.to_path_buf());
            a.starts_with(b)
        };
        let parent = config.drill_dir.parent().unwrap_or(&config.drill_dir);
        if inside(parent, &config.data_dir) || inside(&config.drill_dir, &config.data_dir) {
            return Err(format!(
                "the server runs as root, so a drill's PostgreSQL runs as {name} (drill_user), \
                 which cannot enter the owner-only data directory {}; set drill_dir to a \
                 directory outside it that {name} can reach (e.g. /var/lib/wal-archive-drills), \
                 or run the server as its own user (the packaged service does)",
                config.data_dir.display()
            ));
        }
    }
    scratch::prepare_drill_dir(&config.drill_dir, run_as)
        .map_err(|e| format!("drill_dir cannot be used: {e}"))?;
    if let RunAs::User { name, .. } = run_as {
        if !run_as.can("-x", &config.drill_dir) {
            return Err(format!(
                "{name} (drill_user) cannot reach drill_dir {}: every directory above it must \
                 be searchable by {name} (chmod o+x), or choose another drill_dir",
                config.drill_dir.display()
            ));
        }
        if !run_as.can("-x", wal_archive) {
            return Err(format!(
                "{name} (drill_user) cannot run {}, which the drill's restore_command runs: \
                 install wal-archive where {name} can run it, or set wal_archive_path",
                wal_archive.display()
            ));
        }
    }
    Ok(())
}

/// What a drill's job reports: its result, a one-line detail, the report.
pub fn finished(report: DrillReport) -> Finished {
    let ok = report.result == "ok";
    Finished {
        result: if ok { "ok" } else { "failed" },
        error: report.error.clone(),
        detail: Some(if ok {
            format!(
                "backup {}: recovered to {} in {:.1} s ({} WAL files)",
                report.backup_id,
                report.target,
                report.recovery_seconds.unwrap_or_default(),
                report.wal_files
            )
        } else {
            format!("backup {}: drill {} failed", report.backup_id, report.id)
        }),
        report: Some(JobReport::Drill(Box::new(report))),
    }
}

/// The drill's running parts, owned outside the bounded part so that they are stopped and
/// removed whatever happened inside it.
struct Running {
    scratch: Option<Scratch>,
    pg: Option<Throwaway>,
    endpoint: Option<EndpointHandle>,
}

/// Runs a planned drill to its end and records it; returns its report. `job_id` is the run
/// that runs it; `progress` is fed while it runs.
pub async fn run(
    app: Arc<AppState>,
    plan: Plan,
    job_id: Option<i64>,
    progress: Option<&Progress>,
) -> DrillReport {
    let t0 = Instant::now();
    let mut report = DrillReport {
        cluster: plan.cluster.clone(),
        backup_id: plan.backup.info.id.clone(),
        job_id,
        result: "running".into(),
        started_at: crate::catalog::now_rfc3339(),
        target: plan.target.describe(),
        postgres_version: Some(plan.bins.version.clone()),
        ..Default::default()
    };
    match catalog::insert(&app.archive.catalog, &report).await {
        Ok(id) => report.id = id,
        Err(e) => {
            report.result = "failed".into();
            report.error = Some(format!("cannot record the drill in the catalog: {e}"));
            report.ended_at = Some(crate::catalog::now_rfc3339());
            return report;
        }
    }
    tracing::info!(cluster = %plan.cluster, drill = report.id, backup = %report.backup_id,
        target = %report.target, "drill started");
    let served = Arc::new(Served::default());
    let mut running = Running {
        scratch: None,
        pg: None,
        endpoint: None,
    };
    let step = |text: String| {
        if let Some(p) = progress {
            p.update(|p| p.step = text);
        }
    };
    let outcome = tokio::time::timeout(
        plan.timeout,
        drive(
            &app,
            &plan,
            &mut report,
            &mut running,
            &served,
            t0,
            progress,
        ),
    )
    .await;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!(
            "the drill did not finish within drill_timeout = {} (it had {}); raise \
             [clusters.{}] drill_timeout for a cluster this large, or look at the drill's \
             PostgreSQL log in the server log",
            humantime::format_duration(plan.timeout),
            match (&report.reached_lsn, report.restore_seconds) {
                (Some(lsn), _) => format!("replayed up to {lsn}"),
                (None, Some(_)) => "restored the backup, not reached consistency".into(),
                (None, None) => "not finished restoring the backup".into(),
            },
            plan.cluster
        )),
    };
    if let Some(pg) = running.pg.as_mut() {
        if error.is_some() {
            tracing::warn!(cluster = %plan.cluster, drill = report.id,
                "the drill's PostgreSQL log ends with:\n{}", pg.log_tail(20));
        }
    }
    step("stopping PostgreSQL and removing the scratch directory".into());
    let (pg, endpoint, scratch) = (
        running.pg.take(),
        running.endpoint.take(),
        running.scratch.take(),
    );
    let cleanup = tokio::task::spawn_blocking(move || {
        if let Some(mut pg) = pg {
            pg.stop(Duration::from_secs(10));
        }
        drop(endpoint);
        match scratch {
            Some(s) => s.remove().map(|_| ()).map_err(|e| {
                format!(
                    "cannot remove the drill's scratch directory {}: {e}",
                    s.root.display()
                )
            }),
            None => Ok(()),
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("cleanup task: {e}")));
    report.duration_seconds = Some(t0.elapsed().as_secs_f64());
    report.ended_at = Some(crate::catalog::now_rfc3339());
    report.error = match (error, cleanup) {
        (None, Ok(())) => None,
        (Some(e), Ok(())) => Some(e),
        (None, Err(c)) => Some(c),
        (Some(e), Err(c)) => Some(format!("{e}; {c}")),
    };
    report.result = if report.error.is_none() {
        "ok"
    } else {
        "failed"
    }
    .into();
    match report.result.as_str() {
        "ok" => tracing::info!(cluster = %plan.cluster, drill = report.id,
            backup = %report.backup_id, recovery_seconds = report.recovery_seconds.unwrap_or_default(),
            wal_files = report.wal_files, "drill passed"),
        _ => tracing::warn!(cluster = %plan.cluster, drill = report.id,
            backup = %report.backup_id, "drill failed: {}", report.error.as_deref().unwrap_or("")),
    }
    if let Err(e) = catalog::finish(&app.archive, &report).await {
        tracing::error!(cluster = %plan.cluster, drill = report.id, "{e}");
        report.result = "failed".into();
        report.error = Some(e);
    }
    report
}

/// Restore, start, replay, check. Fills `report` as it goes.
async fn drive(
    app: &Arc<AppState>,
    plan: &Plan,
    report: &mut DrillReport,
    running: &mut Running,
    served: &Arc<Served>,
    t0: Instant,
    progress: Option<&Progress>,
) -> Result<(), String> {
    let update = |f: &dyn Fn(&mut pgwal::api::JobProgress)| {
        if let Some(p) = progress {
            p.update(|p| f(p));
        }
    };
    let info = &plan.backup.info;
    let tag = scratch::tag(&app.config.data_dir);
    let scratch = Scratch::new(&app.config.drill_dir, report.id, &tag);
    {
        let (s, r) = (scratch.clone(), plan.run_as.clone());
        tokio::task::spawn_blocking(move || s.create(&r))
            .await
            .map_err(|e| format!("scratch task: {e}"))?
            .map_err(|e| {
                format!(
                    "cannot create the scratch directory {}: {e}",
                    scratch.root.display()
                )
            })?;
    }
    running.scratch = Some(scratch.clone());

    // 1. The backup.
    let total = info.size_bytes;
    update(&|p| {
        p.step = format!("restoring backup {}", info.id);
        p.done_bytes = 0;
        p.total_bytes = Some(total);
    });
    let written = restore::write_backup(&app.archive, &plan.backup, &scratch, &plan.run_as, &|n| {
        update(&|p| p.done_bytes = n)
    })
    .await?;
    report.restored_files = written.files;
    report.restored_bytes = written.bytes;
    report.restore_seconds = Some(t0.elapsed().as_secs_f64());

    // 2. Its configuration, and the endpoint its restore_command reads.
    let token = random_hex()?;
    let endpoint = app
        .drills
        .endpoint()
        .ok_or("this server has no HTTP layer to serve the drill its WAL")?;
    let handle = endpoint
        .serve(
            app.clone(),
            &plan.cluster,
            &pgwal::checksum::sha256_hex(token.as_bytes()),
            served.clone(),
        )
        .map_err(|e| format!("cannot open the drill's WAL endpoint on 127.0.0.1: {e}"))?;
    let url = format!("http://{}", handle.addr);
    running.endpoint = Some(handle);
    let mut settings = {
        let (s, p) = (scratch.clone(), plan_files(plan, &url, &token, report.id));
        let (bins, run_as) = (plan.bins.clone(), plan.run_as.clone());
        tokio::task::spawn_blocking(move || write_configuration(&s, &bins, &run_as, p))
            .await
            .map_err(|e| format!("configuration task: {e}"))??
    };
    settings.extend(plan.target.settings());

    // 3. PostgreSQL.
    update(&|p| p.step = format!("starting PostgreSQL {}", plan.bins.version));
    running.pg = Some(Throwaway::start(
        &plan.bins,
        &plan.run_as,
        &scratch,
        &settings,
    )?);
    let begin = info
        .begin_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok())
        .unwrap_or(Lsn(0));
    let newest_segno = plan.newest.segno(plan.segment_size).unwrap_or(0);
    let newest_start = plan.segment_size.segment_start(newest_segno);
    let newest_end = plan.segment_size.segment_start(newest_segno + 1);
    let expected = match &plan.target {
        Target::End => Some(newest_start),
        Target::Lsn(l) => Some(*l),
        _ => None,
    };
    report.expected_lsn = expected.map(|l| l.to_string());
    let goal = match &plan.target {
        Target::Lsn(l) => *l,
        _ => newest_end,
    };
    let candidates = role_candidates(app, plan);
    let mut conn: Option<pgrepl::ReplicationConnection> = None;
    let mut waiting_since: Option<(String, Instant)> = None;
    let mut ended_at: Option<Instant> = None;
    let mut crashed_here = false;
    let mut last_connect_error: Option<String> = None;
    let outcome: Result<(), String> = loop {
        let pg = running.pg.as_mut().ok_or("PostgreSQL handle lost")?;
        if let Some(status) = pg.exited() {
            break Err(format!(
                "the drill's PostgreSQL {} stopped ({status}){}; its log ends with:\n{}",
                plan.bins.version,
                served_failures(served),
                pg.log_tail(15)
            ));
        }
        let startup = pg.postmaster().and_then(postgres::startup_activity);
        if conn.is_none() {
            match postgres::connect(&scratch.socket(), &candidates).await {
                Ok(c) => {
                    conn = Some(c);
                    report.consistent_seconds = Some(t0.elapsed().as_secs_f64());
                    update(&|p| p.step = "replaying WAL (consistent, read-only)".into());
                    if !crashed_here {
                        crashed_here = true;
                        crate::crash::point("drill.postgres_running");
                    }
                }
                // Not consistent yet ("the database system is starting up"), or not up yet;
                // kept, to say why if it never answers.
                Err(e) if e.sqlstate() == Some("57P03") || e.sqlstate().is_none() => {
                    last_connect_error = Some(e.to_string());
                }
                Err(e) => {
                    break Err(format!(
                        "cannot connect to the drill's PostgreSQL as any of {}: {e}",
                        candidates.join(", ")
                    ))
                }
            }
        }
        let mut replay = None;
        if let Some(c) = conn.as_mut() {
            match postgres::replay(c).await {
                Ok(r) => replay = Some(r),
                Err(_) => conn = None,
            }
        }
        let replayed = replay.as_ref().and_then(|r| r.replay_lsn).or_else(|| {
            // Before consistency: the start of the segment being replayed.
            match &startup {
                Some(Startup::Recovering(n)) | Some(Startup::Restoring(n)) => n
                    .parse::<WalFileName>()
                    .ok()
                    .and_then(|n| n.segno(plan.segment_size))
                    .map(|s| plan.segment_size.segment_start(s)),
                _ => None,
            }
        });
        if let Some(l) = replayed {
            report.reached_lsn = Some(l.to_string());
            let (done, all) = (l.0.saturating_sub(begin.0), goal.0.saturating_sub(begin.0));
            update(&|p| {
                p.done_bytes = done.min(all);
                p.total_bytes = Some(all);
            });
        }
        let paused = replay.as_ref().is_some_and(|r| r.paused);
        let waiting_for = match &startup {
            Some(Startup::Waiting(n)) => n.parse::<WalFileName>().ok(),
            _ => None,
        };
        let beyond_end = waiting_for
            .as_ref()
            .and_then(|n| n.segno(plan.segment_size))
            .is_some_and(|s| s > newest_segno);
        let reached = match &plan.target {
            Target::End => {
                beyond_end
                    || replay
                        .as_ref()
                        .and_then(|r| r.replay_lsn)
                        .is_some_and(|l| l >= newest_end)
            }
            _ => paused,
        };
        if reached {
            ended_at.get_or_insert_with(Instant::now);
            if let Some(c) = conn.as_mut() {
                // Recovered: replay is at the end and the copy answers queries (never before
                // it is consistent, so the time to consistency is never the later one).
                if report.recovery_seconds.is_none() {
                    report.recovery_seconds = Some(t0.elapsed().as_secs_f64());
                }
                break sanity(c, plan, report, expected).await;
            }
            if ended_at.is_some_and(|t| t.elapsed() > CONNECT_AFTER_END) {
                break Err(format!(
                    "replay reached the end of the archive, but the drill's PostgreSQL never \
                     accepted a connection (last attempt: {}); its log ends with:\n{}",
                    last_connect_error.as_deref().unwrap_or("none made"),
                    pg.log_tail(15)
                ));
            }
        } else if let Some(name) = waiting_for {
            if beyond_end {
                // A target not met before the end of what the archive holds.
                break Err(format!(
                    "the recovery target ({}) was not reached: replay went to the end of the \
                     archive ({}, {}) without meeting it",
                    plan.target.describe(),
                    plan.newest,
                    report.reached_lsn.as_deref().unwrap_or("?")
                ));
            }
            let key = name.to_string();
            let since = match &waiting_since {
                Some((n, t)) if *n == key => *t,
                _ => {
                    waiting_since = Some((key.clone(), Instant::now()));
                    Instant::now()
                }
            };
            if since.elapsed() >= STALL {
                break Err(stalled(app, plan, served, &key, report).await);
            }
        } else {
            waiting_since = None;
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(c) = conn.take() {
        c.close().await;
    }
    wal_applied(app, plan, served, report).await;
    outcome
}

/// What the scratch directory's configuration is made of.
struct Files {
    /// `url` and `token` of the drill's endpoint, as TOML lines.
    client_config: String,
    wal_archive: PathBuf,
    cluster: String,
    timeline: String,
    /// PostgreSQL's `cluster_name`: in the title of each of its processes.
    cluster_name: String,
}

fn plan_files(plan: &Plan, url: &str, token: &str, id: i64) -> Files {
    let client_config = format!(
        "url = {}\ntoken = {}\n",
        toml_string(url),
        toml_string(token)
    );
    Files {
        client_config,
        wal_archive: plan.wal_archive.clone(),
        cluster: plan.cluster.clone(),
        timeline: plan.timeline.clone(),
        cluster_name: format!("drill-{id}"),
    }
}

/// Writes `standby.signal`, the client configuration of `restore_command`, and PostgreSQL's
/// own configuration files; returns the settings PostgreSQL starts with.
fn write_configuration(
    scratch: &Scratch,
    bins: &Binaries,
    run_as: &RunAs,
    files: Files,
) -> Result<Vec<(String, String)>, String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let pgdata = scratch.pgdata();
    for stale in ["postmaster.pid", "postmaster.opts", "recovery.signal"] {
        let p = pgdata.join(stale);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &p, e)),
        }
    }
    let auto = pgdata.join("postgresql.auto.conf");
    match std::fs::read_to_string(&auto) {
        Ok(text) => {
            let kept = strip_recovery_targets(&text);
            if kept != text {
                std::fs::write(&auto, kept).map_err(|e| io("cannot rewrite", &auto, e))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot read", &auto, e)),
    }
    for dir in [pgdata.join("pg_wal"), pgdata.join("pg_wal/archive_status")] {
        if !dir.exists() {
            std::fs::create_dir(&dir).map_err(|e| io("cannot create", &dir, e))?;
            run_as
                .own(&dir)
                .map_err(|e| io("cannot give away", &dir, e))?;
        }
    }
    let signal = pgdata.join("standby.signal");
    if !signal.exists() {
        scratch
            .write(&signal, b"", run_as)
            .map_err(|e| io("cannot write", &signal, e))?;
    }
    let client = scratch.client_config();
    let mut client_text = files.client_config.clone();
    client_text.push_str(&format!(
        "spool_dir = {}\n",
        toml_string(&scratch.spool().display().to_string())
    ));
    scratch
        .write(&client, client_text.as_bytes(), run_as)
        .map_err(|e| io("cannot write", &client, e))?;
    let conf = scratch.root.join("postgresql.conf");
    scratch
        .write(
            &conf,
            b"# A wal-archive recovery drill: every setting is on the command line.\n",
            run_as,
        )
        .map_err(|e| io("cannot write", &conf, e))?;
    let hba = scratch.root.join("pg_hba.conf");
    scratch
        .write(
            &hba,
            b"# Only the Unix socket, in a directory only the drill's user can enter.\nlocal all all trust\n",
            run_as,
        )
        .map_err(|e| io("cannot write", &hba, e))?;
    let ident = scratch.root.join("pg_ident.conf");
    scratch
        .write(&ident, b"", run_as)
        .map_err(|e| io("cannot write", &ident, e))?;

    let restore_command = format!(
        "{} --config {} fetch --cluster {} %f %p",
        shell_word(&files.wal_archive.display().to_string()),
        shell_word(&client.display().to_string()),
        shell_word(&files.cluster),
    );
    let mut settings: Vec<(String, String)> = postgres::control_settings(bins, &pgdata)?;
    let path = |p: PathBuf| p.display().to_string();
    for (k, v) in [
        ("config_file", path(conf)),
        ("hba_file", path(hba)),
        ("ident_file", path(ident)),
        ("listen_addresses", String::new()),
        ("port", postgres::PORT.to_string()),
        ("unix_socket_directories", path(scratch.socket())),
        ("unix_socket_group", String::new()),
        ("unix_socket_permissions", "0700".into()),
        ("cluster_name", files.cluster_name.clone()),
        // Nothing of the drill ever reaches the archive.
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_library", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("hot_standby", "on".into()),
        ("restore_command", restore_command),
        ("recovery_target_timeline", files.timeline.clone()),
        ("recovery_target_action", "pause".into()),
        ("shared_preload_libraries", String::new()),
        // Commands and libraries the backup's own settings may name run on this host, as the
        // drill's user: none of them (archive_cleanup_command could delete an archive here).
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("session_preload_libraries", String::new()),
        ("local_preload_libraries", String::new()),
        ("ssl", "off".into()),
        ("huge_pages", "try".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("log_line_prefix", "%m [%p] ".into()),
    ] {
        settings.push((k.to_string(), v));
    }
    Ok(settings)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(hex::encode(bytes))
}

/// Role names to connect to the throwaway PostgreSQL as, before the bootstrap superuser's is
/// known: the cluster's conninfo user, `postgres`, the user it runs as.
fn role_candidates(app: &AppState, plan: &Plan) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(ci) = app
        .config
        .cluster(&plan.cluster)
        .conninfo
        .as_deref()
        .and_then(|c| pgrepl::ConnInfo::parse(c).ok())
    {
        names.push(ci.user);
    }
    names.push("postgres".into());
    if let RunAs::User { name, .. } = &plan.run_as {
        names.push(name.clone());
    }
    if let Ok(user) = std::env::var("USER") {
        names.push(user);
    }
    let mut seen = BTreeSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

/// The sanity query at the end, and the replay position against the expected one.
async fn sanity(
    conn: &mut pgrepl::ReplicationConnection,
    plan: &Plan,
    report: &mut DrillReport,
    expected: Option<Lsn>,
) -> Result<(), String> {
    let replay = postgres::replay(conn)
        .await
        .map_err(|e| format!("the replay position query failed: {e}"))?;
    if let Some(l) = replay.replay_lsn {
        report.reached_lsn = Some(l.to_string());
    }
    let (in_recovery, classes) = postgres::sanity(conn)
        .await
        .map_err(|e| format!("the sanity query failed: {e}"))?;
    report.in_recovery = Some(in_recovery);
    report.pg_class_count = Some(classes);
    if !in_recovery {
        return Err(
            "the drill's PostgreSQL left recovery: it must stay a standby (standby.signal)".into(),
        );
    }
    if classes == 0 {
        return Err("pg_class is empty in the restored copy".into());
    }
    if let (Some(want), Some(got)) = (expected, replay.replay_lsn) {
        if got < want {
            return Err(format!(
                "replay stopped at {got}, before {want} ({}): the archive's newest WAL was not \
                 replayed",
                plan.newest
            ));
        }
    }
    if expected.is_some() && replay.replay_lsn.is_none() {
        return Err("the drill's PostgreSQL reports no replay position".into());
    }
    Ok(())
}

/// Why replay stopped waiting for `name`, a file inside the archive's range.
async fn stalled(
    app: &AppState,
    plan: &Plan,
    served: &Served,
    name: &str,
    report: &DrillReport,
) -> String {
    let at = report.reached_lsn.as_deref().unwrap_or("?");
    let (_, failed) = served.snapshot();
    let why = match failed.get(name) {
        Some(404) | None => match app.archive.catalog.wal(&plan.cluster, name).await {
            Ok(None) => format!("segment {name} is not in the archive"),
            Ok(Some(row)) if row.state != "ok" => format!(
                "segment {name} is cataloged but its object {} is missing from storage",
                row.object_key
            ),
            Ok(Some(_)) => format!("segment {name} could not be fetched"),
            Err(e) => format!("segment {name} could not be fetched (the catalog: {e})"),
        },
        Some(status) => {
            let detail = match name.parse::<WalFileName>() {
                Ok(n) => match app.archive.verified(&plan.cluster, &n).await {
                    Err(e) => e.to_string(),
                    Ok(_) => "it reads back intact now".into(),
                },
                Err(_) => String::new(),
            };
            format!("segment {name} could not be served by the archive ({status}): {detail}")
        }
    };
    format!(
        "replay stopped at {at} waiting for WAL: {why}. The archive holds WAL up to {} (the \
         newest segment), so recovery from backup {} cannot pass {name}: find the segment \
         (the primary's pg_wal may still have it: wal-archive push it), or take a new backup \
         (wal-archive backup --cluster {})",
        plan.newest, plan.backup.info.id, plan.cluster
    )
}

/// The endpoint's refusals, for a failure message.
fn served_failures(served: &Served) -> String {
    let (_, failed) = served.snapshot();
    let bad: Vec<String> = failed
        .iter()
        .filter(|(_, s)| **s != 404)
        .map(|(n, s)| format!("{n} ({s})"))
        .collect();
    if bad.is_empty() {
        String::new()
    } else {
        format!("; the archive could not serve {}", bad.join(", "))
    }
}

/// Fills the WAL part of the report: the files served up to the segment replay reached.
async fn wal_applied(app: &AppState, plan: &Plan, served: &Served, report: &mut DrillReport) {
    let (ok, _) = served.snapshot();
    let last_segno = report
        .reached_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok())
        .map(|l| plan.segment_size.prev_segno_of(l));
    let mut segments: Vec<(u64, u32, String)> = Vec::new();
    let mut histories = Vec::new();
    for name in &ok {
        match name.parse::<WalFileName>() {
            Ok(n @ WalFileName::Segment { .. }) => {
                if let Some(s) = n.segno(plan.segment_size) {
                    if last_segno.is_none_or(|l| s <= l) {
                        segments.push((s, n.timeline(), name.clone()));
                    }
                }
            }
            Ok(WalFileName::History { .. }) => histories.push(name.clone()),
            _ => {}
        }
    }
    segments.sort();
    report.wal_first = segments.first().map(|s| s.2.clone());
    report.wal_last = segments.last().map(|s| s.2.clone());
    report.wal_files = (segments.len() + histories.len()) as u64;
    let mut bytes = 0;
    for name in segments.iter().map(|s| &s.2).chain(histories.iter()) {
        if let Ok(Some(row)) = app.archive.catalog.wal(&plan.cluster, name).await {
            bytes += row.size;
        }
    }
    report.wal_bytes = bytes;
}

/// At start, before serving: every scratch directory a stopped server left is emptied of
/// processes (its PostgreSQL first) and removed, and drills still marked running are failed:
/// their record first, then their row.
pub async fn startup(config: &Config, archive: &Archive) -> Result<(), String> {
    let (dir, tag) = (config.drill_dir.clone(), scratch::tag(&config.data_dir));
    let removed = tokio::task::spawn_blocking(move || scratch::clean_leftovers(&dir, &tag))
        .await
        .map_err(|e| format!("drill cleanup task: {e}"))?
        .map_err(|e| {
            format!(
                "cannot clean the drill directory {}: {e}",
                config.drill_dir.display()
            )
        })?;
    for (path, stopped) in removed {
        tracing::warn!(scratch = %path.display(), stopped = %stopped.join(", "),
            "removed the scratch directory of a drill interrupted by a stop of the server");
    }
    let interrupted = catalog::running(&archive.catalog)
        .await
        .map_err(|e| e.to_string())?;
    for mut report in interrupted {
        report.result = "failed".into();
        report.error = Some(
            "interrupted: the server stopped during the drill; its PostgreSQL and scratch \
             directory were removed at the next start. Run it again"
                .into(),
        );
        report.ended_at = Some(crate::catalog::now_rfc3339());
        tracing::warn!(cluster = %report.cluster, drill = report.id, "drill interrupted by a restart; marked failed");
        catalog::finish(archive, &report).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_exclude_each_other() {
        let end = Target::from_request(&DrillRequest::default()).expect("end");
        assert_eq!(end, Target::End);
        assert!(end.settings().is_empty());
        let lsn = Target::from_request(&DrillRequest {
            target_lsn: Some("0/3000060".into()),
            ..Default::default()
        })
        .expect("lsn");
        assert_eq!(lsn.describe(), "lsn 0/3000060");
        assert!(lsn
            .settings()
            .contains(&("recovery_target_lsn".into(), "0/3000060".into())));
        for bad in [
            DrillRequest {
                target_lsn: Some("nope".into()),
                ..Default::default()
            },
            DrillRequest {
                target_xid: Some("12a".into()),
                ..Default::default()
            },
            DrillRequest {
                target_time: Some("2026-01-01".into()),
                target_immediate: true,
                ..Default::default()
            },
        ] {
            assert!(Target::from_request(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recovery_targets_are_stripped_from_auto_conf() {
        let text = "# Do not edit\nprimary_conninfo = 'x'\nrecovery_target_time = '2026-01-01'\n\
                    recovery_target = 'immediate'\nrecovery_target_timeline = 'latest'\n";
        assert_eq!(
            strip_recovery_targets(text),
            "# Do not edit\nprimary_conninfo = 'x'\nrecovery_target_timeline = 'latest'\n"
        );
    }

    #[test]
    fn the_space_message_has_the_numbers() {
        let m = space_message("B1", Path::new("/d"), 900 << 20, 300 << 20, 500 << 20);
        assert!(m.contains("1264.0 MiB"), "{m}");
        assert!(m.contains("the backup 900.0 MiB"), "{m}");
        assert!(m.contains("the WAL to replay 300.0 MiB"), "{m}");
        assert!(m.contains("500.0 MiB is free"), "{m}");
        assert!(m.contains("drill_dir"), "{m}");
    }

    #[test]
    fn majors() {
        assert_eq!(major_of("15.18"), Some(15));
        assert_eq!(major_of("17beta1"), Some(17));
        assert_eq!(major_of("x"), None);
    }
}
