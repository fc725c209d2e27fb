//! Recovery drills (`wal-archive drill`, DESIGN scenario 7) against real PostgreSQL 15: the
//! server restores a backup into a scratch directory, replays the archive in a throwaway
//! PostgreSQL 15 (run as the `postgres` OS user, since the tests run the server as root),
//! checks it, measures, and leaves nothing behind.
//!
//! - `a_drill_replays_the_archive_and_records_what_it_did`: a passing drill of the latest
//!   backup: its record (the backup, the WAL range and files applied, the timings, the sanity
//!   query), `list`/`show` (last drill per backup), `check`, `/metrics` (where the drill's WAL
//!   reads do not count as fetches), the status page and its
//!   JSON; the scratch directory
//!   is gone and no PostgreSQL of it runs; a second drill beside a running one is refused; a
//!   drill to a recovery target stops there.
//! - `a_drill_fails_naming_a_segment_missing_from_storage`: a segment between the backup and
//!   the end of the archive removed from storage: the drill fails naming it, `check` fails.
//!   Then, with `pg_bin_dir` pointing nowhere, a drill is refused up front naming the key; with
//!   a `drill_timeout` too short for any drill, it fails saying so and leaves nothing behind.
//! - `a_drill_killed_with_its_server_leaves_nothing_after_the_next_start`: the server is killed
//!   (SIGKILL, at the crash point where the drill's PostgreSQL runs and answered); its next
//!   start stops that PostgreSQL, removes the scratch directory and marks the drill failed.
//! - `a_scheduled_drill_is_recorded_and_survives_a_catalog_rebuild`: `drill_schedule` runs a
//!   drill of the latest backup by itself; a server started without its catalog rebuilds it
//!   from storage with the same drill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use wal_archive_e2e::backup::BackupRig;
use wal_archive_e2e::{Output, DEADLINE, PG_BIN};

/// A drill restores and replays: far below this on the test machine.
const DRILL_TIMEOUT: Duration = Duration::from_secs(180);

/// A primary archiving into a server that can back it up and drill it: PostgreSQL 15's
/// binaries, and a `drill_dir` outside the server's owner-only data directory (the drill's
/// PostgreSQL runs as `postgres`, the server as root).
fn rig(name: &str) -> Result<BackupRig> {
    rig_with(name, "")
}

/// [`rig`] with more keys of `[clusters.main]`.
fn rig_with(name: &str, cluster: &str) -> Result<BackupRig> {
    BackupRig::start_with(
        name,
        "drill_dir = \"{dir}/drills\"\n",
        &format!("pg_bin_dir = \"{PG_BIN}\"\ndrill_maximum_age = \"1 day\"\n{cluster}"),
    )
}

fn drills(rig: &BackupRig) -> Result<Vec<serde_json::Value>> {
    let resp = rig.server.api().get("/v1/clusters/main/drills", None)?;
    ensure!(resp.status == 200, "GET drills: {}", resp.status);
    Ok(serde_json::from_slice(&resp.body)?)
}

fn drill(rig: &BackupRig, args: &[&str]) -> Result<Output> {
    let cli = rig.server.cli()?.timeout(DRILL_TIMEOUT);
    cli.run([&["--json", "drill", "--cluster", "main"], args].concat())
}

fn json(out: &Output) -> Result<serde_json::Value> {
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("drill --json printed no JSON: {}", out.describe()))
}

fn drill_dir(rig: &BackupRig) -> PathBuf {
    rig.dir.path().join("drills")
}

/// The scratch directories left in `drill_dir`.
fn scratch_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("drill-"))
            })
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Whether process `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X')
    })
}

/// PIDs of `postgres` processes whose command line names `dir`.
fn postgres_in(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("postgres") && c.contains(&needle)
            })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

fn lsn(v: &serde_json::Value) -> Result<u64> {
    let s = v.as_str().context("no LSN")?;
    let (hi, lo) = s.split_once('/').context("not an LSN")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

fn seconds(r: &serde_json::Value, key: &str) -> Result<f64> {
    r[key].as_f64().with_context(|| format!("no {key} in {r}"))
}

#[test]
fn a_drill_replays_the_archive_and_records_what_it_did() -> Result<()> {
    let rig = rig("drill-pass")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint primary key, payload text)")?;
    p.psql("insert into t select g, md5(g::text) from generate_series(1, 20000) g")?;
    let backup = rig.backup()?;
    let id = backup["id"].as_str().context("backup id")?.to_string();
    // WAL after the backup: several segments for the drill to replay.
    for round in 0..4 {
        p.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({}, {}) g",
            20001 + round * 10000,
            30000 + round * 10000
        ))?;
        p.switch_wal()?;
    }
    rig.archive_now()?;
    let newest = p.last_archived_wal()?.context("nothing archived")?;

    let out = drill(&rig, &["latest"])?;
    ensure!(
        out.success(),
        "drill failed: {}\n--- server log ---\n{}",
        out.describe(),
        rig.server.log_tail()
    );
    let r = json(&out)?;
    eprintln!("drill report: {r:#}");
    ensure!(r["result"] == "ok", "result: {r}");
    ensure!(r["backup_id"] == id.as_str(), "backup: {r}");
    ensure!(r["target"] == "end of archive", "target: {r}");
    ensure!(r["error"].is_null(), "error: {r}");
    // The WAL range: from the backup's first segment to the newest archived one.
    ensure!(
        r["wal_first"] == backup["begin_wal"],
        "wal_first {} is not the backup's begin_wal {}",
        r["wal_first"],
        backup["begin_wal"]
    );
    ensure!(
        r["wal_last"] == newest.as_str(),
        "wal_last {} is not {newest}",
        r["wal_last"]
    );
    let first = r["wal_first"].as_str().context("wal_first")?;
    let span = u64::from_str_radix(&newest[16..], 16)? - u64::from_str_radix(&first[16..], 16)? + 1;
    let files = r["wal_files"].as_u64().context("wal_files")?;
    ensure!(
        files >= span && files <= span + 2,
        "{files} WAL files applied for {span} segments"
    );
    ensure!(
        r["wal_bytes"].as_u64().unwrap_or(0) >= span * (1 << 20),
        "wal_bytes: {r}"
    );
    ensure!(
        lsn(&r["reached_lsn"])? >= lsn(&r["expected_lsn"])?,
        "replay short: {r}"
    );
    // What was restored is the backup.
    ensure!(
        r["restored_bytes"] == backup["size_bytes"],
        "restored bytes: {r}"
    );
    ensure!(
        r["restored_files"].as_u64().unwrap_or(0) > 100,
        "restored files: {r}"
    );
    // The timings, in the order they happen.
    let (restore, consistent, recovered, total) = (
        seconds(&r, "restore_seconds")?,
        seconds(&r, "consistent_seconds")?,
        seconds(&r, "recovery_seconds")?,
        seconds(&r, "duration_seconds")?,
    );
    ensure!(
        0.0 < restore && restore <= consistent && consistent <= recovered && recovered <= total,
        "timings out of order: {r}"
    );
    ensure!(r["in_recovery"] == true, "sanity: {r}");
    ensure!(
        r["pg_class_count"].as_u64().unwrap_or(0) > 300,
        "sanity: {r}"
    );
    ensure!(
        r["postgres_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("15.")),
        "{r}"
    );

    // Nothing left behind.
    ensure!(
        scratch_dirs(&drill_dir(&rig))?.is_empty(),
        "a scratch directory is left"
    );
    ensure!(
        postgres_in(&drill_dir(&rig)).is_empty(),
        "a drill's PostgreSQL still runs"
    );

    // The record: list and show (last drill per backup), the drills API, check, metrics.
    let cli = rig.server.cli()?;
    let show: serde_json::Value = serde_json::from_str(
        &cli.run_ok(["--json", "show", "--cluster", "main", &id])?
            .stdout,
    )?;
    ensure!(show["last_drill"]["id"] == r["id"], "show: {show}");
    ensure!(show["last_drill"]["result"] == "ok", "show: {show}");
    let list: serde_json::Value =
        serde_json::from_str(&cli.run_ok(["--json", "list", "--cluster", "main"])?.stdout)?;
    ensure!(list[0]["last_drill"]["id"] == r["id"], "list: {list}");
    let text = cli.run_ok(["list", "--cluster", "main"])?.stdout;
    ensure!(text.contains("drill"), "list shows no drill column: {text}");
    let check = cli.run(["check", "--cluster", "main"])?;
    ensure!(
        check
            .stdout
            .lines()
            .any(|l| l.contains("drill") && l.contains("OK")),
        "check: {}",
        check.describe()
    );
    let metrics = String::from_utf8(rig.server.api().get("/metrics", None)?.body)?;
    for wanted in [
        "wal_archive_drill_last_result{cluster=\"main\"} 1",
        "wal_archive_drill_last_recovery_seconds{cluster=\"main\"}",
        "wal_archive_drill_last_success_timestamp_seconds{cluster=\"main\"}",
    ] {
        ensure!(metrics.contains(wanted), "/metrics lacks {wanted}");
    }
    // The drill's own reads are not production fetches: nothing else fetched here.
    let fetches: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("wal_archive_fetch_total{"))
        .collect();
    ensure!(
        fetches.is_empty(),
        "the drill's WAL reads count as fetches in /metrics: {fetches:?}"
    );
    // The status page's JSON and the page itself show the backup's last drill.
    let status = rig.server.api().get("/v1/clusters/main/status", None)?;
    ensure!(status.status == 200, "status: {}", status.short());
    let status: serde_json::Value = status.json()?;
    let backups = status["clusters"][0]["backups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        backups
            .iter()
            .any(|b| b["last_drill"]["id"] == r["id"] && b["last_drill"]["result"] == "ok"),
        "the status JSON lacks the drill: {status}"
    );
    let page = String::from_utf8(rig.server.api().get("/", None)?.body)?;
    ensure!(
        page.contains("data-drill-result=\"ok\""),
        "the status page does not show the passing drill"
    );

    // One at a time per cluster: a drill requested while one runs is refused, saying so.
    let first = {
        let cli = rig.server.cli()?.timeout(DRILL_TIMEOUT);
        std::thread::spawn(move || cli.run(["--json", "drill", "--cluster", "main"]))
    };
    wal_archive_e2e::wait_until(DEADLINE, "the drill runs", || {
        Ok(drills(&rig)?.iter().any(|d| d["result"] == "running"))
    })?;
    let second = drill(&rig, &[])?;
    let first = first
        .join()
        .map_err(|_| anyhow::anyhow!("the first drill's thread panicked"))??;
    ensure!(first.success(), "the first drill: {}", first.describe());
    ensure!(
        !second.success() && second.stderr.contains("one runs at a time"),
        "a second drill beside the first: {}",
        second.describe()
    );

    // A drill to a target: the LSN where the backup became consistent.
    let end_lsn = backup["end_lsn"].as_str().context("end_lsn")?;
    let out = drill(&rig, &[&id, "--target-lsn", end_lsn])?;
    ensure!(out.success(), "drill to {end_lsn}: {}", out.describe());
    let r2 = json(&out)?;
    ensure!(r2["target"] == format!("lsn {end_lsn}").as_str(), "{r2}");
    ensure!(lsn(&r2["reached_lsn"])? >= lsn(&backup["end_lsn"])?, "{r2}");
    ensure!(
        scratch_dirs(&drill_dir(&rig))?.is_empty(),
        "a scratch directory is left"
    );
    Ok(())
}

#[test]
fn a_drill_fails_naming_a_segment_missing_from_storage() -> Result<()> {
    let rig = rig("drill-missing")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint primary key, payload text)")?;
    rig.backup()?;
    let mut segments = Vec::new();
    for round in 0..3 {
        p.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({}, {}) g",
            1 + round * 10000,
            10000 + round * 10000
        ))?;
        segments.push(p.switch_wal()?);
    }
    rig.archive_now()?;
    let lost = &segments[1];
    let object = rig
        .server
        .stored_object(lost)?
        .with_context(|| format!("no stored object of {lost}"))?;
    std::fs::remove_file(&object)?;

    let out = drill(&rig, &[])?;
    ensure!(
        !out.success(),
        "a drill without {lost} passed: {}",
        out.describe()
    );
    let r = json(&out)?;
    ensure!(r["result"] == "failed", "{r}");
    let error = r["error"].as_str().context("no error")?;
    ensure!(
        error.contains(lost.as_str()),
        "the error does not name {lost}: {error}"
    );
    ensure!(
        scratch_dirs(&drill_dir(&rig))?.is_empty(),
        "a scratch directory is left"
    );
    ensure!(
        postgres_in(&drill_dir(&rig)).is_empty(),
        "a drill's PostgreSQL still runs"
    );
    let check = rig.server.cli()?.run(["check", "--cluster", "main"])?;
    ensure!(
        !check.success(),
        "check passes after a failed drill: {}",
        check.describe()
    );
    ensure!(
        check
            .stdout
            .lines()
            .any(|l| l.contains("drill") && l.contains("FAILED")),
        "check: {}",
        check.describe()
    );

    // Binaries missing: refused before anything is written, saying which key to fix.
    let config_path = rig.dir.path().join("server/server.toml");
    let config = std::fs::read_to_string(&config_path)?;
    let mut rig = rig;
    rig.server.stop()?;
    rig.server
        .set_config(&config.replace(PG_BIN, "/nonexistent/postgresql/15/bin"))?;
    rig.server.start_again()?;
    let out = drill(&rig, &[])?;
    ensure!(
        !out.success(),
        "a drill without binaries ran: {}",
        out.describe()
    );
    ensure!(
        out.stderr.contains("pg_bin_dir") && out.stderr.contains("no postgres"),
        "the refusal does not say what is missing: {}",
        out.describe()
    );
    ensure!(
        scratch_dirs(&drill_dir(&rig))?.is_empty(),
        "a scratch directory is left"
    );

    // Bounded in time: a drill still running at drill_timeout fails and is cleaned up.
    rig.server.stop()?;
    rig.server.set_config(&config.replace(
        "drill_maximum_age",
        "drill_timeout = \"200ms\"\ndrill_maximum_age",
    ))?;
    rig.server.start_again()?;
    let out = drill(&rig, &[])?;
    ensure!(
        !out.success(),
        "a drill ran within 200 ms: {}",
        out.describe()
    );
    let r = json(&out)?;
    ensure!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("drill_timeout")),
        "{r}"
    );
    ensure!(
        scratch_dirs(&drill_dir(&rig))?.is_empty(),
        "a scratch directory is left"
    );
    ensure!(
        postgres_in(&drill_dir(&rig)).is_empty(),
        "a drill's PostgreSQL still runs"
    );
    Ok(())
}

#[test]
fn a_drill_killed_with_its_server_leaves_nothing_after_the_next_start() -> Result<()> {
    let mut rig = rig("drill-killed")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint primary key, payload text)")?;
    rig.backup()?;
    p.psql("insert into t select g, md5(g::text) from generate_series(1, 10000) g")?;
    rig.archive_now()?;

    rig.server.stop()?;
    rig.server
        .set_env("WAL_ARCHIVE_CRASH_AT", "drill.postgres_running");
    rig.server.start_again()?;
    // The command gives up on the dead server after 2 s instead of the default minute.
    let out = drill(&rig, &["--retry-for", "2"])?;
    ensure!(
        !out.success(),
        "the drill survived its server: {}",
        out.describe()
    );
    rig.server
        .wait_exit(DEADLINE)
        .context("the server did not die at drill.postgres_running")?;
    let left = scratch_dirs(&drill_dir(&rig))?;
    ensure!(
        left.len() == 1,
        "scratch directories after the kill: {left:?}"
    );
    let pid_file = std::fs::read_to_string(left[0].join("pgdata/postmaster.pid"))?;
    let postmaster: u32 = pid_file
        .lines()
        .next()
        .context("empty pid file")?
        .trim()
        .parse()?;
    ensure!(
        alive(postmaster),
        "the drill's PostgreSQL is not running after the kill"
    );
    // The drill's processes carry its mark, which is how the clean-up knows them; an
    // operator's shell looking around in the directory does not, and is left alone.
    let environ = std::fs::read(format!("/proc/{postmaster}/environ"))?;
    ensure!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(b"WAL_ARCHIVE_DRILL_DIR=")),
        "the drill's postmaster has no WAL_ARCHIVE_DRILL_DIR in its environment"
    );
    let mut operator = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(left[0].join("pgdata"))
        .spawn()?;
    let operator_pid = operator.id();
    let operator_survived = (|| -> Result<bool> {
        rig.server.remove_env("WAL_ARCHIVE_CRASH_AT");
        rig.server.start_again()?;
        Ok(alive(operator_pid))
    })();
    let _ = operator.kill();
    let _ = operator.wait();
    ensure!(
        operator_survived?,
        "the start-up clean-up killed a process that is not the drill's"
    );
    ensure!(
        !alive(postmaster),
        "postmaster {postmaster} survived the next start"
    );
    ensure!(
        postgres_in(&drill_dir(&rig)).is_empty(),
        "a drill's PostgreSQL still runs"
    );
    ensure!(
        scratch_dirs(&drill_dir(&rig))?.is_empty(),
        "{:?} left",
        left[0]
    );
    let list = drills(&rig)?;
    let d = list.first().context("no drill recorded")?;
    ensure!(d["result"] == "failed", "{d}");
    ensure!(
        d["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted")),
        "{d}"
    );
    if !rig.server.log().contains("removed the scratch directory") {
        bail!(
            "the start-up cleanup is not logged:\n{}",
            rig.server.log_tail()
        );
    }
    Ok(())
}

#[test]
fn a_scheduled_drill_is_recorded_and_survives_a_catalog_rebuild() -> Result<()> {
    let mut rig = rig_with("drill-scheduled", "drill_schedule = \"*/5 * * * * *\"\n")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint primary key, payload text)")?;
    rig.backup()?;
    p.psql("insert into t select g, md5(g::text) from generate_series(1, 10000) g")?;
    rig.archive_now()?;
    let mut passed = None;
    wal_archive_e2e::wait_until(DRILL_TIMEOUT, "a scheduled drill passes", || {
        passed = drills(&rig)?.into_iter().find(|d| d["result"] == "ok");
        Ok(passed.is_some())
    })
    .with_context(|| rig.server.log_tail())?;
    let passed = passed.context("no drill")?;
    let jobs = rig
        .server
        .cli()?
        .run_ok(["--json", "jobs", "--cluster", "main"])?;
    let jobs: serde_json::Value = serde_json::from_str(&jobs.stdout)?;
    let run = jobs
        .as_array()
        .and_then(|j| j.iter().find(|r| r["id"] == passed["job_id"]))
        .with_context(|| format!("no job run {} in {jobs}", passed["job_id"]))?;
    ensure!(
        run["kind"] == "drill" && run["trigger"] == "schedule",
        "{run}"
    );
    ensure!(run["report"]["kind"] == "drill", "{run}");

    // The catalog lost: the next start rebuilds it from storage, drills included.
    rig.server.stop()?;
    for name in [
        "catalog.sqlite3",
        "catalog.sqlite3-wal",
        "catalog.sqlite3-shm",
    ] {
        let path = rig.server.data_dir().join(name);
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    rig.server.start_again()?;
    let after = drills(&rig)?;
    let same = after
        .iter()
        .find(|d| d["id"] == passed["id"])
        .with_context(|| {
            format!(
                "drill {} is gone after the rebuild: {after:?}",
                passed["id"]
            )
        })?;
    ensure!(
        *same == passed,
        "drill differs after the rebuild:\n{passed}\n{same}"
    );
    Ok(())
}
