//! The scheduler, in-process against real PostgreSQL 15.
//!
//! - `schedule_takes_backups_one_at_a_time`: a 6-field schedule firing every 3 seconds takes
//!   backups, each run recorded in `jobs`; fire times that find the previous run still going,
//!   and a scheduled backup that finds one started through the API, are recorded `skipped`
//!   with the reason.
//! - `retention_runs_on_its_schedule`: `retention_schedule` (6 fields) runs retention, each
//!   run at its own fire time.
//! - `missed_run_runs_once_at_start`: the last recorded run is two days old and the daily
//!   schedule fired since: one `missed` run at start, not one per missed day.

use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use axum::http::StatusCode;
use pgwal::api::{BackupInfo, JobRun};
use wal_archive_e2e::{Pg, PgOptions, TestDir};
use wal_archive_server::jobs::runs::{self, JobKind};
use wal_archive_server::jobs::scheduler;

mod common;
use common::*;

/// Waits until backup `id` has ended; returns it.
async fn wait_backup(env: &Env, id: &str) -> Result<BackupInfo> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let info: BackupInfo = call(env, "GET", &format!("/v1/clusters/main/backups/{id}"), "")
            .await?
            .json()?;
        match info.status.as_str() {
            "done" | "failed" => return Ok(info),
            _ if tokio::time::Instant::now() > deadline => bail!("backup never ended: {info:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn jobs(env: &Env) -> Result<Vec<JobRun>> {
    call(env, "GET", "/v1/clusters/main/jobs", "").await?.json()
}

/// Polls the job history until `pred` holds.
async fn wait_jobs(env: &Env, what: &str, pred: impl Fn(&[JobRun]) -> bool) -> Result<Vec<JobRun>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let j = jobs(env).await?;
        if pred(&j) {
            return Ok(j);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: jobs are {j:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_takes_backups_one_at_a_time() -> Result<()> {
    let dir = TestDir::new("srv-scheduler-every")?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.start()?;
    let data = tempfile::tempdir()?;

    // First, without a schedule: a scheduled backup that finds one started through the API
    // is skipped with that reason.
    let env = server(data.path(), &pg_section(&pg, true, "")?, true).await?;
    let r = call(&env, "POST", "/v1/clusters/main/backups", "{}").await?;
    ensure!(
        r.status == StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let api_backup: BackupInfo = r.json()?;
    let run = scheduler::run_once(
        &env.state,
        "main",
        JobKind::Backup,
        "schedule",
        Some(SystemTime::now()),
    )
    .await
    .context("not recorded")?;
    assert_eq!(run.result, "skipped", "{run:?}");
    assert!(
        run.error
            .as_deref()
            .is_some_and(|e| e.contains(&api_backup.id)),
        "{run:?}"
    );
    assert_eq!(wait_backup(&env, &api_backup.id).await?.status, "done");
    env.shut_down().await;

    let env = server(
        data.path(),
        &pg_section(&pg, true, "backup_schedule = \"*/3 * * * * *\"")?,
        true,
    )
    .await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = scheduler::start(env.state.clone(), &stop_rx);
    assert_eq!(tasks.len(), 1);
    let j = wait_jobs(&env, "two scheduled backups", |j| {
        j.iter()
            .filter(|r| r.kind == "backup" && r.trigger == "schedule" && r.result == "ok")
            .count()
            >= 2
    })
    .await?;
    let _ = stop.send(true);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t).await??;
    }
    for r in j.iter().filter(|r| r.trigger == "schedule") {
        assert!(r.scheduled_at.is_some(), "{r:?}");
        match r.result.as_str() {
            "ok" => assert!(
                r.detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with("backup ")),
                "{r:?}"
            ),
            "skipped" => assert!(
                r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("in progress")),
                "{r:?}"
            ),
            "running" => {}
            _ => bail!("unexpected run {r:?}"),
        }
    }
    // Each ok run names a done backup.
    let backups: Vec<BackupInfo> = call(&env, "GET", "/v1/clusters/main/backups", "")
        .await?
        .json()?;
    for r in j.iter().filter(|r| r.result == "ok") {
        let id = r
            .detail
            .as_deref()
            .unwrap_or("")
            .trim_start_matches("backup ");
        assert!(
            backups.iter().any(|b| b.id == id && b.status == "done"),
            "{id} not done: {backups:?}"
        );
    }
    // Never two backups at once: a scheduled run's backup starts after the previous ended.
    let mut done: Vec<&BackupInfo> = backups.iter().filter(|b| b.status == "done").collect();
    done.sort_by(|a, b| a.id.cmp(&b.id));
    for w in done.windows(2) {
        assert!(
            w[0].end_time.as_deref().unwrap_or("") <= w[1].begin_time.as_str(),
            "overlapping backups {w:?}"
        );
    }
    env.shut_down().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_run_runs_once_at_start() -> Result<()> {
    let dir = TestDir::new("srv-scheduler-missed")?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.start()?;
    let data = tempfile::tempdir()?;
    // The daily schedule (03:00) fired within the last day, after the run recorded two days
    // ago, and once more the day before: one missed run all the same.
    let env = server(
        data.path(),
        &pg_section(&pg, true, "backup_schedule = \"0 3 * * *\"")?,
        true,
    )
    .await?;
    let two_days_ago =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(2 * 86_400))
            .to_string();
    let cat = &env.state.archive.catalog;
    let id = runs::record_start(
        cat,
        "main",
        JobKind::Backup,
        "schedule",
        Some(two_days_ago),
        None,
    )
    .await?;
    runs::record_end(
        cat,
        id,
        "ok",
        None,
        Some("backup 20000101T000000".into()),
        None,
    )
    .await?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = scheduler::start(env.state.clone(), &stop_rx);
    let j = wait_jobs(&env, "the missed run", |j| {
        j.iter()
            .any(|r| r.trigger == "missed" && r.result != "running")
    })
    .await?;
    let missed: Vec<&JobRun> = j.iter().filter(|r| r.trigger == "missed").collect();
    assert_eq!(missed.len(), 1, "{j:#?}");
    assert_eq!(missed[0].result, "ok", "{j:#?}");
    let backups: Vec<BackupInfo> = call(&env, "GET", "/v1/clusters/main/backups", "")
        .await?
        .json()?;
    assert_eq!(backups.len(), 1, "{backups:?}");
    let _ = stop.send(true);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t).await??;
    }

    // Started again: the last run is the missed one, after the last fire time: nothing runs.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = scheduler::start(env.state.clone(), &stop_rx);
    let _ = stop.send(true);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t).await??;
    }
    assert_eq!(jobs(&env).await?.len(), 2);
    env.shut_down().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_runs_on_its_schedule() -> Result<()> {
    let data = tempfile::tempdir()?;
    let env = server(
        data.path(),
        "retention = \"redundancy 1\"\nretention_schedule = \"*/2 * * * * *\"",
        false,
    )
    .await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = scheduler::start(env.state.clone(), &stop_rx);
    assert_eq!(tasks.len(), 1, "one retention task, no backup task");
    let j = wait_jobs(&env, "two scheduled retention runs", |j| {
        j.iter()
            .filter(|r| r.kind == "retention" && r.trigger == "schedule" && r.result == "ok")
            .count()
            >= 2
    })
    .await?;
    let _ = stop.send(true);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t).await??;
    }
    let ok: Vec<&JobRun> = j.iter().filter(|r| r.result == "ok").collect();
    assert!(
        ok.iter()
            .all(|r| r.detail.as_deref() == Some("removed 0 backups and 0 WAL files")),
        "{ok:?}"
    );
    // Distinct fire times, two seconds apart at least.
    let mut at: Vec<&str> = ok
        .iter()
        .filter_map(|r| r.scheduled_at.as_deref())
        .collect();
    at.dedup();
    assert_eq!(at.len(), ok.len(), "{ok:?}");
    env.shut_down().await;
    Ok(())
}
