//! Every run of a job (scheduled or requested backups, retention, verify, drills): its row in the `jobs`
//! table, and its progress while it runs. A long operation started through the API is a job:
//! the request answers 202 with the run, the work goes on in a task of its own (a client that
//! disconnects never interrupts it), and the client follows it with
//! `GET /v1/clusters/{cluster}/jobs/{id}`. Runs a restart interrupted are failed at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgwal::api::{JobProgress, JobReport, JobRun};
use rusqlite::{params, OptionalExtension};

use crate::catalog::{Catalog, CatalogError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Backup,
    Retention,
    Verify,
    Drill,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Retention => "retention",
            JobKind::Verify => "verify",
            JobKind::Drill => "drill",
        }
    }
}

/// How a run ended.
pub struct Finished {
    /// `ok`, `failed` or `skipped`.
    pub result: &'static str,
    pub error: Option<String>,
    pub detail: Option<String>,
    pub report: Option<JobReport>,
}

/// Records a run of `kind` and starts `work` in a task of its own; returns the run as it
/// starts. The run's end (and report) is recorded when `work` returns, whoever is still
/// listening; the progress handle given to `work` feeds `GET .../jobs/{id}` meanwhile.
pub async fn start<F, Fut>(
    app: &Arc<crate::state::AppState>,
    cluster: &str,
    kind: JobKind,
    backup_id: Option<&str>,
    work: F,
) -> Result<JobRun, CatalogError>
where
    F: FnOnce(Arc<crate::state::AppState>, Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Finished> + Send + 'static,
{
    let cat = &app.archive.catalog;
    let id = record_start(cat, cluster, kind, "api", None, backup_id).await?;
    let run = get(cat, cluster, id)
        .await?
        .ok_or_else(|| CatalogError::Task(format!("job run {id} vanished")))?;
    let progress = app.jobs.track(id);
    let (app2, cluster2) = (app.clone(), cluster.to_string());
    tokio::spawn(async move {
        let f = work(app2.clone(), progress).await;
        crate::metrics::record_job(&cluster2, kind.as_str(), f.result);
        match f.result {
            "ok" => tracing::info!(cluster = %cluster2, job = kind.as_str(), run = id,
                detail = f.detail.as_deref().unwrap_or(""), "job done"),
            result => tracing::warn!(cluster = %cluster2, job = kind.as_str(), run = id, result,
                "job {}", f.error.as_deref().unwrap_or("")),
        }
        let end = finish(
            &app2.archive,
            id,
            f.result,
            f.error,
            f.detail,
            f.report.as_ref(),
        )
        .await;
        if let Err(e) = end {
            tracing::error!(cluster = %cluster2, run = id, "cannot record the end of a job run: {e}");
        }
    });
    Ok(app.jobs.present(run))
}

/// The progress of the jobs running in this process, by run id.
#[derive(Clone, Default)]
pub struct LiveJobs {
    runs: Arc<Mutex<HashMap<i64, JobProgress>>>,
}

impl LiveJobs {
    /// Starts tracking run `id`; it is forgotten when the handle drops.
    pub fn track(&self, id: i64) -> Progress {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, JobProgress::default());
        Progress {
            id,
            live: self.clone(),
        }
    }

    /// Run `id` with its progress, when it runs here.
    pub fn present(&self, mut run: JobRun) -> JobRun {
        if run.result == "running" {
            run.progress = self
                .runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&run.id)
                .cloned();
        }
        run
    }
}

/// A running job's handle on its progress.
pub struct Progress {
    id: i64,
    live: LiveJobs,
}

impl Progress {
    /// The run this is the progress of.
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn update(&self, f: impl FnOnce(&mut JobProgress)) {
        if let Some(p) = self
            .live
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
        {
            f(p);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.live
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

const JOB_SELECT: &str = "SELECT id, cluster, kind, trigger, scheduled_at, started_at, ended_at, \
    result, error, detail, backup_id, report FROM jobs";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRun> {
    Ok(JobRun {
        id: r.get(0)?,
        cluster: r.get(1)?,
        kind: r.get(2)?,
        trigger: r.get(3)?,
        scheduled_at: r.get(4)?,
        started_at: r.get(5)?,
        ended_at: r.get(6)?,
        result: r.get(7)?,
        error: r.get(8)?,
        detail: r.get(9)?,
        backup_id: r.get(10)?,
        progress: None,
        report: r
            .get::<_, Option<String>>(11)?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

pub async fn record_start(
    cat: &Catalog,
    cluster: &str,
    kind: JobKind,
    trigger: &str,
    scheduled_at: Option<String>,
    backup_id: Option<&str>,
) -> Result<i64, CatalogError> {
    let (cluster, trigger) = (cluster.to_string(), trigger.to_string());
    let backup_id = backup_id.map(str::to_string);
    cat.call(move |c| {
        c.execute(
            "INSERT INTO jobs (cluster, kind, trigger, scheduled_at, started_at, result, backup_id)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
            params![
                cluster,
                kind.as_str(),
                trigger,
                scheduled_at,
                crate::catalog::now_rfc3339(),
                backup_id
            ],
        )?;
        Ok(c.last_insert_rowid())
    })
    .await
}

/// [`record_end`], then the run's record in storage, so that a catalog rebuilt from storage has
/// the job history too (a record that cannot be written is logged: the history is worth
/// keeping, not worth failing a job for).
pub async fn finish(
    archive: &crate::wal::archive::Archive,
    id: i64,
    result: &str,
    error: Option<String>,
    detail: Option<String>,
    report: Option<&JobReport>,
) -> Result<JobRun, CatalogError> {
    let run = record_end(&archive.catalog, id, result, error, detail, report).await?;
    let key = crate::meta::job_key(&run.cluster, run.id);
    if let Err(e) = crate::meta::put(&*archive.blobs, &key, &run).await {
        tracing::warn!(cluster = %run.cluster, run = run.id, "cannot record the job run in storage: {e}");
    }
    Ok(run)
}

/// A run from its record in storage (a rebuild); a run of that id already there is kept.
pub async fn restore(cat: &Catalog, run: JobRun) -> Result<(), CatalogError> {
    let report = run
        .report
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| CatalogError::Task(format!("encoding a job report: {e}")))?;
    cat.call(move |c| {
        c.execute(
            "INSERT OR IGNORE INTO jobs (id, cluster, kind, trigger, scheduled_at, started_at,
                 ended_at, result, error, detail, backup_id, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                run.id,
                run.cluster,
                run.kind,
                run.trigger,
                run.scheduled_at,
                run.started_at,
                run.ended_at,
                run.result,
                run.error,
                run.detail,
                run.backup_id,
                report
            ],
        )?;
        Ok(())
    })
    .await
}

pub async fn record_end(
    cat: &Catalog,
    id: i64,
    result: &str,
    error: Option<String>,
    detail: Option<String>,
    report: Option<&JobReport>,
) -> Result<JobRun, CatalogError> {
    let result = result.to_string();
    let report = report
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| CatalogError::Task(format!("encoding a job report: {e}")))?;
    cat.call(move |c| {
        c.execute(
            "UPDATE jobs SET ended_at = ?2, result = ?3, error = ?4, detail = ?5, report = ?6
             WHERE id = ?1",
            params![
                id,
                crate::catalog::now_rfc3339(),
                result,
                error,
                detail,
                report
            ],
        )?;
        Ok(c.query_row(
            &format!("{JOB_SELECT} WHERE id = ?1"),
            params![id],
            job_from_row,
        )?)
    })
    .await
}

/// The newest recorded run of a job.
pub async fn last_run(
    cat: &Catalog,
    cluster: &str,
    kind: JobKind,
) -> Result<Option<JobRun>, CatalogError> {
    let cluster = cluster.to_string();
    cat.call(move |c| {
        Ok(c.query_row(
            &format!("{JOB_SELECT} WHERE cluster = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1"),
            params![cluster, kind.as_str()],
            job_from_row,
        )
        .optional()?)
    })
    .await
}

/// The newest run of `kind` (e.g. `drill`) for each backup of `cluster` that has one, by
/// backup id (the `jobs_by_cluster` index; one row per backup).
pub async fn last_per_backup(
    cat: &Catalog,
    cluster: &str,
    kind: &'static str,
) -> Result<std::collections::HashMap<String, JobRun>, CatalogError> {
    let cluster = cluster.to_string();
    cat.read(move |c| {
        let mut stmt = c.prepare_cached(&format!(
            "{JOB_SELECT} WHERE id IN (SELECT max(id) FROM jobs WHERE cluster = ?1 AND kind = ?2 \
             AND backup_id IS NOT NULL GROUP BY backup_id)"
        ))?;
        let rows = stmt.query_map(params![cluster, kind], job_from_row)?;
        let mut out = std::collections::HashMap::new();
        for run in rows {
            let run = run?;
            if let Some(id) = run.backup_id.clone() {
                out.insert(id, run);
            }
        }
        Ok(out)
    })
    .await
}

/// Run `id` of `cluster`.
pub async fn get(cat: &Catalog, cluster: &str, id: i64) -> Result<Option<JobRun>, CatalogError> {
    let cluster = cluster.to_string();
    cat.read(move |c| {
        Ok(c.query_row(
            &format!("{JOB_SELECT} WHERE cluster = ?1 AND id = ?2"),
            params![cluster, id],
            job_from_row,
        )
        .optional()?)
    })
    .await
}

/// The runs of a cluster's jobs, newest first (at most `limit`).
pub async fn list(cat: &Catalog, cluster: &str, limit: u32) -> Result<Vec<JobRun>, CatalogError> {
    let cluster = cluster.to_string();
    cat.call(move |c| {
        let mut stmt = c.prepare(&format!(
            "{JOB_SELECT} WHERE cluster = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![cluster, limit], job_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

/// Start-up: runs still marked `running` were interrupted by the server stopping.
pub async fn fail_interrupted(cat: &Catalog) -> Result<usize, CatalogError> {
    cat.call(move |c| {
        Ok(c.execute(
            "UPDATE jobs SET result = 'failed', ended_at = ?1,
                 error = 'interrupted: the server stopped during the run'
             WHERE result = 'running'",
            params![crate::catalog::now_rfc3339()],
        )?)
    })
    .await
}
