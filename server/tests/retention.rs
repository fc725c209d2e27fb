//! Retention (DESIGN §7.4, acceptance scenario 6), in-process against real PostgreSQL 15 with
//! the WAL arriving through the server's streaming receiver.
//!
//! - `redundancy_keep_minimum_and_resume`: three backups with WAL between them. With
//!   `minimum_redundancy = 3` nothing goes; with `redundancy 2` a kept oldest backup survives and
//!   only WAL outside every retained range goes; released, the oldest backup and the WAL only it
//!   needed go — through a run interrupted after deleting some objects, finished at the next
//!   start — while the remaining oldest backup's WAL stays intact in catalog and storage and it
//!   still verifies.
//! - `recovery_window_with_a_moved_clock`: the window keeps the newest backup before it and
//!   everything after; moving the injectable clock 30 days on leaves only the newest.
//! - `timelines_and_history_files_are_kept`: synthetic WAL on two timelines; everything from
//!   the oldest retained backup's begin segment stays on both, `.history` always.
//! - `keep_and_delete_decide_under_one_lock`: a keep requested while retention has planned but
//!   not recorded its plan, or while a delete has decided but not removed, is refused (the
//!   backup is going) rather than reported and then ignored; pause points put the requests
//!   between each other's steps deterministically.
//! - `long_operations_are_jobs_a_client_follows`: verify and retention answer 202 with a job
//!   run at once; the work goes on with nobody following; its progress and report are in the
//!   run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use axum::http::StatusCode;
use pgwal::api::{BackupInfo, JobRun, RetentionReport, WalListing};
use pgwal::name::WalFileName;
use pgwal::SegmentSize;
use wal_archive_e2e::{Pg, PgOptions, TestDir};

mod common;
use common::*;

/// Takes a backup and waits until it is done.
async fn backup_done(env: &Env) -> Result<BackupInfo> {
    let r = call(env, "POST", "/v1/clusters/main/backups", "{}").await?;
    ensure!(
        r.status == StatusCode::ACCEPTED,
        "POST backups: {}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json::<BackupInfo>()?.id;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let info: BackupInfo = call(env, "GET", &format!("/v1/clusters/main/backups/{id}"), "")
            .await?
            .json()?;
        match info.status.as_str() {
            "done" => return Ok(info),
            "failed" => bail!("backup failed: {info:?}"),
            _ if tokio::time::Instant::now() > deadline => bail!("backup never ended: {info:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Writes, then switches segments `n` times, waiting until the archive holds each one.
async fn wal_between(env: &Env, pg: &Pg, n: usize) -> Result<()> {
    for _ in 0..n {
        pg.psql(
            "create table if not exists t (x int); insert into t select generate_series(1, 1000)",
        )?;
        let seg = pg.psql("select pg_walfile_name(pg_switch_wal())")?;
        wait_wal(env, seg.trim()).await?;
    }
    Ok(())
}

async fn wait_wal(env: &Env, name: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while env.state.archive.catalog.wal("main", name).await?.is_none() {
        if tokio::time::Instant::now() > deadline {
            bail!("{name} never archived");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn list(env: &Env) -> Result<Vec<BackupInfo>> {
    call(env, "GET", "/v1/clusters/main/backups", "")
        .await?
        .json()
}

fn class_of(list: &[BackupInfo], id: &str) -> Option<String> {
    list.iter()
        .find(|b| b.id == id)
        .and_then(|b| b.retention.clone())
}

/// A retention run (a job followed to its end), or with `dry_run` what it would remove.
async fn retention(env: &Env, dry_run: bool) -> Result<RetentionReport> {
    if !dry_run {
        let run = run_job(env, "/v1/clusters/main/retention").await?;
        return match run.report {
            Some(pgwal::api::JobReport::Retention(r)) => Ok(r),
            _ => bail!(
                "retention job {} ended {}: {:?}",
                run.id,
                run.result,
                run.error
            ),
        };
    }
    let r = call(env, "POST", "/v1/clusters/main/retention?dry_run=true", "").await?;
    ensure!(
        r.status == StatusCode::OK,
        "retention: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

async fn wal_names(env: &Env) -> Result<Vec<String>> {
    let l: WalListing = call(env, "GET", "/v1/clusters/main/wal", "")
        .await?
        .json()?;
    ensure!(l.missing.is_empty(), "missing: {:?}", l.missing);
    Ok(l.files.into_iter().map(|f| f.name).collect())
}

fn segno(name: &str, size: SegmentSize) -> Option<u64> {
    name.parse::<WalFileName>().ok()?.segno(size)
}

fn object_path(env: &Env, name: &str) -> Result<PathBuf> {
    let n: WalFileName = name.parse()?;
    Ok(env
        .storage
        .join(wal_archive_server::wal::archive::object_key("main", &n)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redundancy_keep_minimum_and_resume() -> Result<()> {
    let dir = TestDir::new("srv-retention-redundancy")?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.start()?;
    let data = tempfile::tempdir()?;
    let size = SegmentSize::DEFAULT;

    // Three backups with WAL between them; minimum_redundancy 3 keeps all of them.
    let env = server(
        data.path(),
        &pg_section(
            &pg,
            true,
            "retention = \"redundancy 2\"\nminimum_redundancy = 3",
        )?,
        true,
    )
    .await?;
    // Installs the process's metrics recorder before anything is counted.
    call(&env, "GET", "/metrics", "").await?;
    let a = backup_done(&env).await?;
    wal_between(&env, &pg, 3).await?;
    let b = backup_done(&env).await?;
    wal_between(&env, &pg, 3).await?;
    let c = backup_done(&env).await?;
    wal_between(&env, &pg, 1).await?;
    let l = list(&env).await?;
    assert_eq!(class_of(&l, &a.id).as_deref(), Some("valid"), "{l:?}");
    let report = retention(&env, false).await?;
    assert!(report.removed_backups.is_empty(), "{report:?}");
    let a_begin = segno(a.begin_wal.as_deref().context("begin")?, size).context("segno")?;
    assert!(
        report
            .removed_wal
            .iter()
            .all(|n| segno(n, size) < Some(a_begin)),
        "only WAL older than the oldest backup may go: {report:?}"
    );
    env.shut_down().await;

    // redundancy 2, minimum 1: a kept oldest backup survives, with its own WAL range.
    let env = server(
        data.path(),
        &pg_section(
            &pg,
            false,
            "retention = \"redundancy 2\"\nminimum_redundancy = 1",
        )?,
        false,
    )
    .await?;
    let r = call(
        &env,
        "POST",
        &format!("/v1/clusters/main/backups/{}/keep", a.id),
        r#"{"keep": true}"#,
    )
    .await?;
    assert!(r.json::<BackupInfo>()?.keep);
    let l = list(&env).await?;
    assert_eq!(class_of(&l, &a.id).as_deref(), Some("kept"));
    assert_eq!(class_of(&l, &b.id).as_deref(), Some("valid"));
    assert_eq!(class_of(&l, &c.id).as_deref(), Some("valid"));
    let report = retention(&env, false).await?;
    assert!(report.removed_backups.is_empty(), "{report:?}");
    let a_end = segno(a.end_wal.as_deref().context("end")?, size).context("segno")?;
    let b_begin = segno(b.begin_wal.as_deref().context("begin")?, size).context("segno")?;
    for n in &report.removed_wal {
        let s = segno(n, size).context("segno")?;
        assert!(
            s < b_begin && !(a_begin..=a_end).contains(&s),
            "{n} is needed by kept backup A or by B"
        );
    }
    let names = wal_names(&env).await?;
    for s in a_begin..=a_end {
        let n = WalFileName::segment(1, s, size).to_string();
        assert!(names.contains(&n), "kept backup A's {n} was removed");
    }
    let r = verify(&env, &a.id).await?;
    assert!(r.ok, "kept backup A no longer verifies: {r:?}");

    // Released: A is obsolete. The dry run says what goes and removes nothing.
    call(
        &env,
        "POST",
        &format!("/v1/clusters/main/backups/{}/keep", a.id),
        r#"{"keep": false}"#,
    )
    .await?;
    let plan = retention(&env, true).await?;
    assert_eq!(plan.removed_backups, vec![a.id.clone()]);
    assert!(plan.dry_run);
    assert!(!plan.removed_wal.is_empty());
    for n in &plan.removed_wal {
        assert!(
            segno(n, size).context("segno")? < b_begin,
            "{n} is needed by B"
        );
        assert!(!n.ends_with(".history"));
    }
    assert_eq!(list(&env).await?.len(), 3, "a dry run removes nothing");
    assert!(object_path(&env, &plan.removed_wal[0])?.exists());

    // A run killed after marking and deleting some objects: the catalog never shows A as
    // usable, and the next start finishes the removal (before reconciliation re-indexes or
    // reports anything).
    let (id, wal) = (a.id.clone(), plan.removed_wal.clone());
    env.state
        .archive
        .catalog
        .call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE backups SET deleting = 1 WHERE cluster = 'main' AND id = ?1",
                [&id],
            )?;
            for n in &wal {
                tx.execute(
                    "INSERT INTO retention_pending (cluster, name) VALUES ('main', ?1)",
                    [n],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    std::fs::remove_file(object_path(&env, &plan.removed_wal[0])?)?;
    let shown: BackupInfo = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/backups/{}", a.id),
        "",
    )
    .await?
    .json()?;
    assert_eq!(shown.status, "deleting");
    env.shut_down().await;

    let env = server(
        data.path(),
        &pg_section(
            &pg,
            false,
            "retention = \"redundancy 2\"\nminimum_redundancy = 1",
        )?,
        false,
    )
    .await?;
    let l = list(&env).await?;
    assert_eq!(
        l.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        vec![c.id.clone(), b.id.clone()]
    );
    let names = wal_names(&env).await?;
    for n in &plan.removed_wal {
        assert!(!names.contains(n), "{n} is still listed");
        assert!(!object_path(&env, n)?.exists(), "{n} is still stored");
    }
    // B's WAL, from its begin to the newest, is intact in catalog and storage.
    let newest = names
        .iter()
        .filter_map(|n| segno(n, size))
        .max()
        .context("no WAL")?;
    for s in b_begin..=newest {
        let n = WalFileName::segment(1, s, size).to_string();
        assert!(names.contains(&n), "{n} missing from the catalog");
        assert!(object_path(&env, &n)?.exists(), "{n} missing from storage");
    }
    let r = verify(&env, &b.id).await?;
    assert!(r.ok, "{r:?}");
    // Nothing more to do; the API runs were recorded as jobs.
    let report = retention(&env, false).await?;
    assert!(
        report.removed_backups.is_empty() && report.removed_wal.is_empty(),
        "{report:?}"
    );
    let jobs: Vec<JobRun> = call(&env, "GET", "/v1/clusters/main/jobs", "")
        .await?
        .json()?;
    // Verify and backup requests are jobs too, each recorded with its outcome.
    let retention_runs: Vec<&JobRun> = jobs.iter().filter(|j| j.kind == "retention").collect();
    assert!(
        retention_runs
            .iter()
            .all(|j| j.trigger == "api" && j.result == "ok"),
        "{jobs:?}"
    );
    assert!(!retention_runs.is_empty());
    assert!(
        jobs.iter()
            .any(|j| j.kind == "verify" && j.backup_id.as_deref() == Some(b.id.as_str())),
        "{jobs:?}"
    );
    assert!(jobs.iter().all(|j| j.result != "running"), "{jobs:?}");
    let r = call(&env, "GET", "/metrics", "").await?;
    let text = String::from_utf8_lossy(&r.body);
    // Names only: the recorder is shared by every test of this process, all on cluster main.
    for needle in [
        "wal_archive_jobs_total{cluster=\"main\",kind=\"retention\",result=\"ok\"}",
        "wal_archive_retention_runs_total{cluster=\"main\"}",
        "wal_archive_retention_removed_wal_files_total{cluster=\"main\"}",
        "wal_archive_backups{cluster=\"main\",status=\"done\"}",
        "wal_archive_last_backup_age_seconds{cluster=\"main\"}",
        "wal_archive_last_backup_size_bytes{cluster=\"main\"}",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
    env.shut_down().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_window_with_a_moved_clock() -> Result<()> {
    let dir = TestDir::new("srv-retention-window")?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.start()?;
    let data = tempfile::tempdir()?;
    let env = server(
        data.path(),
        &pg_section(
            &pg,
            true,
            "retention = \"recovery window of 7 days\"\nminimum_redundancy = 1",
        )?,
        true,
    )
    .await?;
    let a = backup_done(&env).await?;
    wal_between(&env, &pg, 2).await?;
    let b = backup_done(&env).await?;
    // End times have second precision: make C end at least a second after B.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    wal_between(&env, &pg, 2).await?;
    let c = backup_done(&env).await?;
    wal_between(&env, &pg, 1).await?;

    // Now: everything is inside the window.
    let plan = retention(&env, true).await?;
    assert!(plan.removed_backups.is_empty(), "{plan:?}");

    // The window starts just after B ended: B is the newest backup before it, so it stays.
    let b_end = humantime::parse_rfc3339_weak(b.end_time.as_deref().context("end")?)?;
    let week = Duration::from_secs(7 * 86_400);
    let at = b_end + week + Duration::from_secs(1);
    env.state.backups.set_clock(Arc::new(move || at));
    let l = list(&env).await?;
    assert_eq!(class_of(&l, &a.id).as_deref(), Some("obsolete"), "{l:?}");
    assert_eq!(class_of(&l, &b.id).as_deref(), Some("valid"), "{l:?}");
    assert_eq!(class_of(&l, &c.id).as_deref(), Some("valid"), "{l:?}");

    // A month later only C, the newest before the window, is needed.
    let later = SystemTime::now() + Duration::from_secs(30 * 86_400);
    env.state.backups.set_clock(Arc::new(move || later));
    let report = retention(&env, false).await?;
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(report.removed_backups, expected, "{report:?}");
    let l = list(&env).await?;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].id, c.id);
    let size = SegmentSize::DEFAULT;
    let c_begin = segno(c.begin_wal.as_deref().context("begin")?, size).context("segno")?;
    let names = wal_names(&env).await?;
    assert!(
        names
            .iter()
            .filter(|n| !n.ends_with(".history"))
            .all(|n| segno(n, size) >= Some(c_begin)),
        "{names:?}"
    );
    let r = verify(&env, &c.id).await?;
    assert!(r.ok, "{r:?}");
    env.shut_down().await;
    Ok(())
}

const SYSID: u64 = 7_300_000_000_000_000_777;

async fn put_segment(env: &Env, tli: u32, segno: u64, size: SegmentSize) -> Result<String> {
    let seg = pgwal::synth::SyntheticSegment {
        page_tli: tli,
        segno,
        segment_size: size,
        system_identifier: SYSID,
        ..Default::default()
    };
    let name = seg.name(tli).to_string();
    let r = call_bytes(
        env,
        "PUT",
        &format!("/v1/clusters/main/wal/{name}"),
        seg.build(),
    )
    .await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "PUT {name}: {}",
        String::from_utf8_lossy(&r.body)
    );
    Ok(name)
}

/// Inserts a done backup row (the retention rule reads only the catalog).
async fn fake_backup(env: &Env, id: &str, begin: &str, end: &str) -> Result<()> {
    let (id, begin, end) = (id.to_string(), begin.to_string(), end.to_string());
    env.state
        .archive
        .catalog
        .call(move |c| {
            c.execute(
                "INSERT INTO backups (cluster, id, status, begin_wal, end_wal, begin_time, end_time)
                 VALUES ('main', ?1, 'done', ?2, ?3, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
                [&id, &begin, &end],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timelines_and_history_files_are_kept() -> Result<()> {
    let data = tempfile::tempdir()?;
    let env = server(
        data.path(),
        "retention = \"redundancy 2\"\nminimum_redundancy = 1",
        false,
    )
    .await?;
    let size = SegmentSize::new(1 << 20)?;
    // Timeline 1: segments 1..=6; the switch to timeline 2 happened in segment 5.
    for s in 1..=6 {
        put_segment(&env, 1, s, size).await?;
    }
    let r = call(
        &env,
        "PUT",
        "/v1/clusters/main/wal/00000002.history",
        "1\t0/500000\tno recovery target specified\n",
    )
    .await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "history: {}",
        String::from_utf8_lossy(&r.body)
    );
    for s in 5..=9 {
        put_segment(&env, 2, s, size).await?;
    }
    let seg = |tli, s| WalFileName::segment(tli, s, size).to_string();
    // X on timeline 1 (segments 3..3), Y and Z on timeline 2.
    fake_backup(&env, "20260101T000001", &seg(1, 3), &seg(1, 3)).await?;
    fake_backup(&env, "20260101T000002", &seg(2, 7), &seg(2, 7)).await?;
    let report = retention(&env, false).await?;
    assert!(report.removed_backups.is_empty());
    let mut removed = report.removed_wal.clone();
    removed.sort();
    assert_eq!(removed, vec![seg(1, 1), seg(1, 2)], "{report:?}");
    let names = wal_names(&env).await?;
    assert!(names.contains(&"00000002.history".to_string()));
    for s in 3..=6 {
        assert!(
            names.contains(&seg(1, s)),
            "timeline 1's {} was removed",
            seg(1, s)
        );
    }
    for s in 5..=9 {
        assert!(
            names.contains(&seg(2, s)),
            "timeline 2's {} was removed",
            seg(2, s)
        );
    }

    // A third backup on timeline 2 makes X obsolete: timeline 1's WAL before Y's begin goes
    // (on both timelines), the history file stays.
    fake_backup(&env, "20260101T000003", &seg(2, 9), &seg(2, 9)).await?;
    let report = retention(&env, false).await?;
    assert_eq!(report.removed_backups, vec!["20260101T000001".to_string()]);
    let names = wal_names(&env).await?;
    let mut expected = vec![
        "00000002.history".to_string(),
        seg(2, 7),
        seg(2, 8),
        seg(2, 9),
    ];
    expected.sort();
    let mut names = names;
    names.sort();
    assert_eq!(names, expected);
    assert!(object_path(&env, "00000002.history")?.exists());
    assert!(!object_path(&env, &seg(1, 6))?.exists());
    env.shut_down().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_and_delete_decide_under_one_lock() -> Result<()> {
    let dir = TestDir::new("srv-retention-races")?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.start()?;
    let data = tempfile::tempdir()?;
    let env = server(
        data.path(),
        &pg_section(
            &pg,
            true,
            "retention = \"redundancy 1\"\nminimum_redundancy = 1",
        )?,
        true,
    )
    .await?;
    let a = backup_done(&env).await?;
    wal_between(&env, &pg, 1).await?;
    backup_done(&env).await?;
    let c = backup_done(&env).await?;
    let state = env.state.clone();
    let keep = |id: String| {
        let state = state.clone();
        tokio::spawn(async move {
            wal_archive_server::backup::set_keep(&state.archive, &state.backups, "main", &id, true)
                .await
        })
    };

    // Retention has planned to remove A and B but not recorded it; A is kept meanwhile.
    let pause = state.backups.pause_at("retention.planned");
    let run = {
        let state = state.clone();
        tokio::spawn(async move {
            let cfg = state.config.cluster("main");
            wal_archive_server::jobs::retention::apply(
                &state.archive,
                &state.backups,
                &cfg,
                "main",
                false,
            )
            .await
        })
    };
    tokio::time::timeout(DEADLINE, pause.reached())
        .await
        .context("retention never reached its plan")?;
    let kept = keep(a.id.clone());
    pause.release();
    let report = run.await??;
    let kept = kept.await?;
    let listed = list(&env).await?;
    let a_listed = listed.iter().find(|x| x.id == a.id);
    // The keep came after the plan: refused, never recorded for a backup going away.
    match &kept {
        Ok(info) => bail!(
            "keep of {} was reported ({info:?}), yet retention removes it: {report:?}",
            a.id
        ),
        Err(e) => assert!(e.to_string().contains("being removed"), "{e}"),
    }
    assert!(a_listed.is_none(), "{listed:?}");

    // A delete of C has decided (it is neither kept nor needed: a newer one is) but not
    // removed; a keep meanwhile.
    backup_done(&env).await?;
    let pause = state.backups.pause_at("delete.decided");
    let deleting = {
        let state = state.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            wal_archive_server::backup::delete(
                &state.archive,
                &state.config,
                &state.backups,
                "main",
                &id,
            )
            .await
        })
    };
    tokio::time::timeout(DEADLINE, pause.reached())
        .await
        .context("delete never decided")?;
    let kept = keep(c.id.clone());
    pause.release();
    let deleted = deleting.await?;
    let kept = kept.await?;
    assert!(deleted.is_ok(), "{deleted:?}");
    assert!(
        kept.is_err(),
        "keep of {} reported after its delete had decided: {kept:?}",
        c.id
    );
    env.shut_down().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_operations_are_jobs_a_client_follows() -> Result<()> {
    let dir = TestDir::new("srv-jobs")?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.start()?;
    let data = tempfile::tempdir()?;
    let env = server(
        data.path(),
        &pg_section(
            &pg,
            true,
            "retention = \"redundancy 1\"\nminimum_redundancy = 1",
        )?,
        true,
    )
    .await?;
    let a = backup_done(&env).await?;
    wal_between(&env, &pg, 1).await?;
    let b = backup_done(&env).await?;
    // Started, and nobody follows: the answer is at once, the work goes on.
    let r = call(
        &env,
        "POST",
        &format!("/v1/clusters/main/backups/{}/verify", b.id),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let verify: JobRun = r.json()?;
    assert_eq!(
        (verify.kind.as_str(), verify.result.as_str()),
        ("verify", "running")
    );
    assert_eq!(verify.backup_id.as_deref(), Some(b.id.as_str()));
    let r = call(&env, "POST", "/v1/clusters/main/retention", "").await?;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let retention: JobRun = r.json()?;
    let ended = |id: i64| {
        let env = &env;
        async move {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                let run: JobRun = call(env, "GET", &format!("/v1/clusters/main/jobs/{id}"), "")
                    .await?
                    .json()?;
                if run.result != "running" {
                    return Ok::<JobRun, anyhow::Error>(run);
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "job {id} never ended"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let verify = ended(verify.id).await?;
    assert_eq!(verify.result, "ok", "{verify:?}");
    match &verify.report {
        Some(pgwal::api::JobReport::Verify(r)) => {
            assert!(r.ok && r.files_checked == b.file_count, "{r:?}")
        }
        other => bail!("verify report: {other:?}"),
    }
    let retention = ended(retention.id).await?;
    assert_eq!(retention.result, "ok", "{retention:?}");
    match &retention.report {
        Some(pgwal::api::JobReport::Retention(r)) => {
            assert_eq!(r.removed_backups, vec![a.id.clone()], "{r:?}")
        }
        other => bail!("retention report: {other:?}"),
    }
    let r = call(&env, "GET", "/v1/clusters/main/jobs/999999", "").await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    env.shut_down().await;
    Ok(())
}
