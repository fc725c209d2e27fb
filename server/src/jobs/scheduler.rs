//! Scheduled jobs (DESIGN §5): backups on `backup_schedule`, retention on
//! `retention_schedule` and recovery drills of the latest backup on `drill_schedule`, in the
//! server's own loop, one task per (cluster, job).
//!
//! - One run at a time per cluster and job ([`crate::backup::Backups::job_lock`]); a run that
//!   finds the previous one still going is recorded `skipped`, and so is a scheduled backup
//!   that finds a backup already running (one started through the API).
//! - A run missed while the server was down (the schedule's last fire time before now is later
//!   than the job's last recorded run) runs once at start, not once per missed fire. A job with
//!   no recorded run at all starts with the next fire time: a new installation does not take a
//!   backup the moment it starts.
//! - Every run is a row of the `jobs` table, served by `GET /v1/clusters/{c}/jobs`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use pgwal::api::{BackupRequest, JobRun};

use super::runs::{self, JobKind};
use crate::backup::{self, BackupError};
use crate::state::AppState;

/// A crontab: 5 fields (minute precision) or 6/7 with a leading seconds field. Weekdays are
/// crontab's (0 or 7 Sunday, 1 Monday ... 6 Saturday), translated to the `cron` crate's
/// numbering (1 Sunday ... 7 Saturday); names (`SUN`, `Mon-Fri`) are the same in both.
pub fn parse_schedule(spec: &str) -> Result<cron::Schedule, String> {
    let mut fields: Vec<String> = spec.split_whitespace().map(str::to_string).collect();
    if !(5..=7).contains(&fields.len()) {
        return Err(format!(
            "{} fields: a schedule has 5 (minute hour day month weekday) or 6 with leading seconds",
            fields.len()
        ));
    }
    if fields.len() == 5 {
        fields.insert(0, "0".into());
    }
    fields[5] = crontab_weekdays(&fields[5])?;
    cron::Schedule::from_str(&fields.join(" ")).map_err(|e| format!("not a crontab schedule: {e}"))
}

/// A crontab weekday field in the `cron` crate's numbering: each number `n` (0-7, 0 and 7
/// Sunday) becomes `n % 7 + 1`; a numeric range or step becomes the list of its days.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    let day = |t: &str| -> Result<Option<u32>, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        match t.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(Some(n)),
            _ => Err(format!("weekday {t} is not 0-7 (0 and 7 are Sunday)")),
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (item, None),
        };
        let step_n = match step {
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(format!("weekday step {s:?} is not a positive number")),
            },
            None => None,
        };
        let range = match base.split_once('-') {
            Some((a, b)) => match (day(a)?, day(b)?) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            },
            None => match day(base)? {
                Some(a) if step_n.is_some() => Some((a, 6)),
                Some(a) => {
                    out.push((a % 7 + 1).to_string());
                    continue;
                }
                None => None,
            },
        };
        let (base, step_n) = match (range, base) {
            (Some(r), _) => (r, step_n.unwrap_or(1)),
            (None, "*") if step_n.is_some() => ((0, 6), step_n.unwrap_or(1)),
            // Names, `*`, `?`: the same in both numberings.
            _ => {
                out.push(item.to_string());
                continue;
            }
        };
        let (a, b) = base;
        if a > b {
            return Err(format!("weekday range {a}-{b} runs backwards"));
        }
        let mut days: Vec<u32> = (a..=b)
            .step_by(step_n as usize)
            .map(|n| n % 7 + 1)
            .collect();
        days.sort_unstable();
        days.dedup();
        out.extend(days.iter().map(u32::to_string));
    }
    Ok(out.join(","))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Starts one task per scheduled job of every configured cluster; they stop when `shutdown`
/// turns true.
pub fn start(
    state: Arc<AppState>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (cluster, cfg) in &state.config.clusters {
        let mut jobs = Vec::new();
        if let Some(spec) = &cfg.backup_schedule {
            jobs.push((JobKind::Backup, spec.clone()));
        }
        if cfg.retention.is_some() {
            let spec = cfg
                .retention_schedule
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_RETENTION_SCHEDULE.to_string());
            jobs.push((JobKind::Retention, spec));
        }
        if let Some(spec) = &cfg.drill_schedule {
            jobs.push((JobKind::Drill, spec.clone()));
        }
        for (kind, spec) in jobs {
            match parse_schedule(&spec) {
                Ok(schedule) => {
                    tracing::info!(cluster = %cluster, job = kind.as_str(), schedule = %spec, "job scheduled");
                    tasks.push(tokio::spawn(run_schedule(
                        state.clone(),
                        cluster.clone(),
                        kind,
                        schedule,
                        shutdown.clone(),
                    )));
                }
                Err(e) => {
                    tracing::error!(cluster = %cluster, job = kind.as_str(), "schedule {spec:?} ignored: {e}")
                }
            }
        }
    }
    tasks
}

async fn run_schedule(
    state: Arc<AppState>,
    cluster: String,
    kind: JobKind,
    schedule: cron::Schedule,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let now: DateTime<Utc> = state.backups.now().into();
    let previous = schedule.after(&now).next_back();
    match runs::last_run(&state.archive.catalog, &cluster, kind).await {
        Ok(Some(last)) => {
            let last_at = last
                .scheduled_at
                .as_deref()
                .unwrap_or(&last.started_at)
                .to_string();
            let last_at = humantime::parse_rfc3339_weak(&last_at)
                .map(DateTime::<Utc>::from)
                .ok();
            if let (Some(prev), Some(last_at)) = (previous, last_at) {
                if prev > last_at {
                    tracing::info!(cluster = %cluster, job = kind.as_str(), missed = %prev, "running a job missed while the server was down");
                    run_once(&state, &cluster, kind, "missed", Some(prev.into())).await;
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(cluster = %cluster, job = kind.as_str(), "cannot read the job history: {e}")
        }
    }
    let mut after: DateTime<Utc> = state.backups.now().into();
    loop {
        let now: DateTime<Utc> = state.backups.now().into();
        if now > after {
            after = now;
        }
        let Some(next) = schedule.after(&after).next() else {
            tracing::info!(cluster = %cluster, job = kind.as_str(), "the schedule never fires again");
            return;
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        after = next;
        let state = state.clone();
        let cluster2 = cluster.clone();
        // Runs beside the loop, so that a long backup does not hide the next fire time: that
        // one finds the job lock taken and is recorded `skipped`.
        tokio::spawn(async move {
            run_once(&state, &cluster2, kind, "schedule", Some(next.into())).await;
        });
    }
}

/// Runs `kind` of `cluster` once and records it; returns the recorded run.
pub async fn run_once(
    state: &Arc<AppState>,
    cluster: &str,
    kind: JobKind,
    trigger: &str,
    scheduled_at: Option<SystemTime>,
) -> Option<JobRun> {
    let cat = &state.archive.catalog;
    let scheduled = scheduled_at.map(rfc3339);
    let id = match runs::record_start(cat, cluster, kind, trigger, scheduled.clone(), None).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(
                cluster,
                job = kind.as_str(),
                "cannot record the job run: {e}"
            );
            return None;
        }
    };
    let lock = state.backups.job_lock(cluster, kind.as_str());
    let mut report = None;
    let outcome = match lock.try_lock() {
        Err(_) => Outcome::Skipped(format!(
            "the previous {} run of cluster {cluster:?} is still in progress",
            kind.as_str()
        )),
        Ok(_guard) => match kind {
            JobKind::Backup => run_backup(state, cluster).await,
            JobKind::Retention => {
                let cfg = state.config.cluster(cluster);
                match crate::jobs::retention::apply(
                    &state.archive,
                    &state.backups,
                    &cfg,
                    cluster,
                    false,
                )
                .await
                {
                    Ok(r) => Outcome::Ok(format!(
                        "removed {} backups and {} WAL files",
                        r.removed_backups.len(),
                        r.removed_wal.len()
                    )),
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
            JobKind::Verify => Outcome::Failed("verify runs are never scheduled".into()),
            JobKind::Drill => {
                let req = pgwal::api::DrillRequest::default();
                match crate::jobs::drill::plan(state, cluster, &req).await {
                    Ok(plan) => {
                        let f = crate::jobs::drill::finished(
                            crate::jobs::drill::run(state.clone(), plan, Some(id), None).await,
                        );
                        report = f.report;
                        match f.error {
                            None => Outcome::Ok(f.detail.unwrap_or_default()),
                            Some(e) => Outcome::Failed(e),
                        }
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
        },
    };
    let (result, error, detail) = match outcome {
        Outcome::Ok(d) => ("ok", None, Some(d)),
        Outcome::Failed(e) => ("failed", Some(e), None),
        Outcome::Skipped(e) => ("skipped", Some(e), None),
    };
    match result {
        "ok" => tracing::info!(
            cluster,
            job = kind.as_str(),
            trigger,
            detail = detail.as_deref().unwrap_or(""),
            "job done"
        ),
        _ => tracing::warn!(
            cluster,
            job = kind.as_str(),
            trigger,
            result,
            "job {}",
            error.as_deref().unwrap_or("")
        ),
    }
    crate::metrics::record_job(cluster, kind.as_str(), result);
    match runs::finish(&state.archive, id, result, error, detail, report.as_ref()).await {
        Ok(run) => Some(run),
        Err(e) => {
            tracing::error!(
                cluster,
                job = kind.as_str(),
                "cannot record the job's end: {e}"
            );
            None
        }
    }
}

enum Outcome {
    Ok(String),
    Failed(String),
    Skipped(String),
}

/// Starts a backup and waits for it to end (the job lock is held meanwhile).
async fn run_backup(state: &AppState, cluster: &str) -> Outcome {
    let info = match backup::start(
        &state.archive,
        &state.config,
        &state.backups,
        cluster,
        BackupRequest::default(),
    )
    .await
    {
        Ok(info) => info,
        Err(BackupError::InProgress(m)) => return Outcome::Skipped(m),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    match backup_end(state, cluster, &info.id).await {
        Ok(detail) => Outcome::Ok(detail),
        Err(e) => Outcome::Failed(e),
    }
}

/// Waits until backup `id` of `cluster` ends: `Ok` with what to record when it is done, `Err`
/// with why it is not.
pub async fn backup_end(state: &AppState, cluster: &str, id: &str) -> Result<String, String> {
    loop {
        match backup::catalog::get(&state.archive.catalog, cluster, id).await {
            Ok(Some(row)) if row.info.status == "done" => return Ok(format!("backup {id}")),
            Ok(Some(row)) if row.info.status == "failed" => {
                return Err(format!(
                    "backup {id} failed: {}",
                    row.info.reason.unwrap_or_default()
                ))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("backup {id} vanished")),
            Err(e) => return Err(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_schedules() {
        assert!(parse_schedule("0 3 * * *").is_ok());
        assert!(parse_schedule("*/3 * * * * *").is_ok());
        assert!(parse_schedule("0 17 * * * *").is_ok());
        assert!(parse_schedule("every day").is_err());
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_schedule("0 5 * * 8").is_err());
    }

    #[test]
    fn weekdays_are_crontab_s() {
        assert_eq!(crontab_weekdays("0").as_deref(), Ok("1"));
        assert_eq!(crontab_weekdays("7").as_deref(), Ok("1"));
        assert_eq!(crontab_weekdays("1-5").as_deref(), Ok("2,3,4,5,6"));
        assert_eq!(crontab_weekdays("5-7").as_deref(), Ok("1,6,7"));
        assert_eq!(crontab_weekdays("*/2").as_deref(), Ok("1,3,5,7"));
        assert_eq!(crontab_weekdays("*").as_deref(), Ok("*"));
        assert_eq!(crontab_weekdays("Mon-Fri").as_deref(), Ok("Mon-Fri"));
        // Sunday 2026-12-06 05:00 UTC is the first fire of "every Sunday at 5" after a Tuesday.
        let s = parse_schedule("0 5 * * 0").expect("valid");
        let after = chrono::DateTime::parse_from_rfc3339("2026-12-01T13:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let next = s.after(&after).next().expect("fires");
        assert_eq!(next.to_rfc3339(), "2026-12-06T05:00:00+00:00");
    }

    #[test]
    fn previous_fire_time() {
        let s = parse_schedule("0 3 * * *").expect("valid");
        let now: DateTime<Utc> = "2026-01-02T10:00:00Z".parse().expect("time");
        let prev = s.after(&now).next_back().expect("prev");
        assert_eq!(prev.to_rfc3339(), "2026-01-02T03:00:00+00:00");
    }
}
