//! `check` and `switch-wal`, in-process against real PostgreSQL 15 (`archive_command = 'false'`,
//! so its archiver fails while the server's receiver streams the WAL of cluster `main`).
//!
//! `checks_name_their_cause`: a healthy streaming cluster passes every line; each failure is
//! reported with the cause and a hint — `archive_command` failing (pg_stat_archiver) for a
//! cluster archived through it, the last backup too old (moved clock), a WAL gap after the
//! oldest backup, another system's identifier, unreachable PostgreSQL; no conninfo skips the
//! PostgreSQL lines. `switch_wal_closes_and_archives`: two switches in a row (the second on an
//! idle segment) each close a segment that is then archived; waiting for a segment that is never
//! archived ends in 504.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use axum::http::StatusCode;
use pgwal::api::{BackupInfo, CheckItem, CheckReport, ErrorBody, SwitchWalResponse};
use pgwal::SegmentSize;
use wal_archive_e2e::{toml_string, Pg, PgOptions, TestDir};

mod common;
use common::*;

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

async fn check(env: &Env, cluster: &str) -> Result<Vec<CheckItem>> {
    let r: CheckReport = call(env, "GET", &format!("/v1/clusters/{cluster}/check"), "")
        .await?
        .json()?;
    Ok(r.checks)
}

fn item<'a>(checks: &'a [CheckItem], name: &str) -> Result<&'a CheckItem> {
    checks
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("no {name:?} line in {checks:#?}"))
}

/// Asserts the line `name` failed with `needle` in its message and a hint.
fn assert_failed(checks: &[CheckItem], name: &str, needle: &str) -> Result<()> {
    let c = item(checks, name)?;
    ensure!(
        !c.ok && c.message.contains(needle) && c.hint.is_some(),
        "expected {name:?} to fail naming {needle:?}: {c:#?}"
    );
    Ok(())
}

fn config_text(pg: &Pg, main_extra: &str) -> Result<String> {
    let ci = toml_string(&conninfo(pg)?);
    Ok(format!(
        "[clusters.main]\n{}\n\
         [clusters.archiving]\nconninfo = {ci}\n\
         [clusters.other]\nconninfo = {ci}\n\
         [clusters.nowhere]\nconninfo = \"host=127.0.0.1 port=1 user=x sslmode=disable connect_timeout=2\"\n\
         [clusters.bare]\n",
        pg_section(pg, true, main_extra)?
    ))
}

fn started_pg(dir: &TestDir) -> Result<Pg> {
    let pg = Pg::init(dir, "pg", PgOptions::default())?;
    pg.set_str("archive_mode", "on")?;
    pg.set_str("archive_command", "false")?;
    pg.start()?;
    Ok(pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_name_their_cause() -> Result<()> {
    let dir = TestDir::new("srv-checks")?;
    let pg = started_pg(&dir)?;
    let data = tempfile::tempdir()?;
    let env = server_with_config(
        data.path(),
        &config_text(&pg, "last_backup_maximum_age = \"1 day\"")?,
        true,
    )
    .await?;
    backup_done(&env).await?;
    let mut switched = Vec::new();
    for _ in 0..3 {
        pg.psql(
            "create table if not exists t (x int); insert into t select generate_series(1, 1000)",
        )?;
        let seg = pg.psql("select pg_walfile_name(pg_switch_wal())")?;
        wait_wal(&env, seg.trim()).await?;
        switched.push(seg.trim().to_string());
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while pg
        .psql("select failed_count > 0 from pg_stat_archiver")?
        .trim()
        != "t"
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the archiver never failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Healthy: streaming covers the failing archive_command.
    let checks = check(&env, "main").await?;
    let bad: Vec<&CheckItem> = checks.iter().filter(|c| !c.ok).collect();
    ensure!(bad.is_empty(), "failed lines: {bad:#?}");
    for name in [
        "PostgreSQL",
        "role privileges",
        "wal_level",
        "archive_command",
        "continuous archiving",
        "system identifier",
        "newest WAL age",
        "last backup",
        "minimum redundancy",
        "failed backups",
        "WAL continuity",
        "free space",
    ] {
        item(&checks, name)?;
    }
    assert!(item(&checks, "system identifier")?
        .message
        .contains("as in the archive"));

    // Archived through archive_command: it fails, naming the segment it fails on.
    let checks = check(&env, "archiving").await?;
    let failed_wal = pg.psql("select last_failed_wal from pg_stat_archiver")?;
    assert_failed(&checks, "archive_command", "archive_command = \"false\"")?;
    let c = item(&checks, "continuous archiving")?;
    ensure!(
        !c.ok && c.message.contains("archive_command is failing") && c.hint.is_some(),
        "{c:#?}"
    );
    let name_len = failed_wal.trim().len();
    ensure!(
        name_len == 24 && c.message.contains(&failed_wal.trim()[..16]),
        "{c:#?} vs {failed_wal}"
    );

    // The newest backup is older than last_backup_maximum_age.
    let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
    env.state.backups.set_clock(Arc::new(move || later));
    let checks = check(&env, "main").await?;
    assert_failed(&checks, "last backup", "more than the maximum age")?;
    assert_failed(&checks, "newest WAL age", "more than wal_maximum_age")?;
    env.state.backups.set_clock(Arc::new(SystemTime::now));

    // A WAL gap after the oldest backup's begin.
    let gap = switched[1].clone();
    let g = gap.clone();
    env.state
        .archive
        .catalog
        .call(move |c| {
            c.execute(
                "DELETE FROM wal_files WHERE cluster = 'main' AND name = ?1",
                [&g],
            )?;
            Ok(())
        })
        .await?;
    let checks = check(&env, "main").await?;
    assert_failed(&checks, "WAL continuity", &gap)?;

    // Another system's WAL under cluster `other`.
    let seg = pgwal::synth::SyntheticSegment {
        segment_size: SegmentSize::DEFAULT,
        system_identifier: 7_300_000_000_000_000_777,
        ..Default::default()
    };
    let name = seg.name(1).to_string();
    let r = call_bytes(
        &env,
        "PUT",
        &format!("/v1/clusters/other/wal/{name}"),
        seg.build(),
    )
    .await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let checks = check(&env, "other").await?;
    assert_failed(&checks, "system identifier", "7300000000000000777")?;

    // Unreachable PostgreSQL; no conninfo.
    let checks = check(&env, "nowhere").await?;
    assert_failed(&checks, "PostgreSQL", "cannot connect")?;
    let checks = check(&env, "bare").await?;
    let c = item(&checks, "PostgreSQL")?;
    ensure!(
        c.ok && c.message == "no conninfo: PostgreSQL checks skipped",
        "{c:#?}"
    );
    env.shut_down().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_wal_closes_and_archives() -> Result<()> {
    let dir = TestDir::new("srv-switch-wal")?;
    let pg = started_pg(&dir)?;
    let data = tempfile::tempdir()?;
    let env = server_with_config(data.path(), &config_text(&pg, "")?, true).await?;
    let body = r#"{"archive": true, "timeout_secs": 60}"#;
    let r = call(&env, "POST", "/v1/clusters/main/switch-wal", body).await?;
    let first: SwitchWalResponse = r.json()?;
    assert!(first.archived, "{first:?}");
    // Nothing written since: the server checkpoints so that the switch closes a new segment.
    let r = call(&env, "POST", "/v1/clusters/main/switch-wal", body).await?;
    let second: SwitchWalResponse = r.json()?;
    assert!(second.archived, "{second:?}");
    assert!(second.segment > first.segment, "{first:?} then {second:?}");
    assert!(env
        .state
        .archive
        .catalog
        .wal("main", &second.segment)
        .await?
        .is_some());

    // Cluster `archiving` relies on the failing archive_command: the wait times out.
    let r = call(
        &env,
        "POST",
        "/v1/clusters/archiving/switch-wal",
        r#"{"archive": true, "timeout_secs": 1}"#,
    )
    .await?;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let e: ErrorBody = r.json()?;
    assert_eq!(e.error, "not_archived");
    assert!(e.message.contains("was not archived"), "{e:?}");
    let r = call(&env, "POST", "/v1/clusters/bare/switch-wal", "").await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    env.shut_down().await;
    Ok(())
}
