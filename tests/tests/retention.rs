//! Running unattended, through the operator commands (DESIGN §8 scenario 6).
//!
//! - `redundancy_two_removes_the_oldest_and_its_wal_and_the_rest_restores`: three backups with
//!   writes between them under `retention = "redundancy 2"`; `retention --dry-run` removes
//!   nothing; a kept oldest backup survives a run; once released, `retention` removes it and the
//!   WAL only it needed; the oldest remaining backup restores and replays to the newest WAL
//!   (every row committed before the last archived switch is there); `jobs` shows the runs;
//!   `switch-wal --archive` returns once the closed segment is in the archive.

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::backup::BackupRig;
use wal_archive_e2e::{archive_command, toml_string, Pg, PgOptions, Server, TestDir};

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

fn ids(list: &serde_json::Value) -> Result<Vec<String>> {
    list.as_array()
        .context("not an array")?
        .iter()
        .map(|b| Ok(b["id"].as_str().context("no id")?.to_string()))
        .collect()
}

#[test]
fn redundancy_two_removes_the_oldest_and_its_wal_and_the_rest_restores() -> Result<()> {
    let dir = TestDir::new("retention")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    let config = format!(
        "[clusters.main]\nconninfo = {}\nretention = \"redundancy 2\"\nminimum_redundancy = 1\n",
        toml_string(&primary.conninfo()?)
    );
    let server = Server::start_with_config(&dir, Some(&config))?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.start()?;
    let rig = BackupRig {
        primary,
        server,
        dir,
    };
    let p = &rig.primary;
    let cli = rig.server.cli()?;
    p.psql("create table t (id bigint primary key, payload text)")?;

    let mut backups = Vec::new();
    for round in 0..3 {
        p.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({}, {}) g",
            round * 1000 + 1,
            round * 1000 + 1000
        ))?;
        rig.archive_now()?;
        let b = rig.backup()?;
        backups.push(b["id"].as_str().context("no id")?.to_string());
    }
    p.psql("insert into t select g, md5(g::text) from generate_series(3001, 4000) g")?;
    let out = cli.run_ok(["--json", "switch-wal", "--cluster", "main", "--archive"])?;
    let switched = json(&out.stdout)?;
    ensure!(
        switched["archived"] == true,
        "switch-wal --archive: {switched}"
    );
    let last_segment = switched["segment"]
        .as_str()
        .context("no segment")?
        .to_string();
    ensure!(
        rig.server
            .api()
            .wal_names("main", None)?
            .contains(&last_segment),
        "{last_segment} is not listed after switch-wal --archive"
    );
    let expected = p.psql("select count(*) || ' ' || sum(id) from t")?;

    let wal_before = rig.server.api().wal_names("main", None)?;
    let dry = json(
        &cli.run_ok(["--json", "retention", "--cluster", "main", "--dry-run"])?
            .stdout,
    )?;
    ensure!(
        dry["removed_backups"] == serde_json::json!([backups[0]]),
        "dry run should plan to remove only {}: {dry}",
        backups[0]
    );
    ensure!(
        ids(&json(
            &cli.run_ok(["--json", "list", "--cluster", "main"])?.stdout
        )?)?
        .len()
            == 3,
        "a dry run removed a backup"
    );
    ensure!(
        rig.server.api().wal_names("main", None)? == wal_before,
        "a dry run removed WAL"
    );

    // A kept backup is never removed by the policy.
    cli.run_ok(["keep", "--cluster", "main", &backups[0]])?;
    let kept = json(
        &cli.run_ok(["--json", "retention", "--cluster", "main"])?
            .stdout,
    )?;
    ensure!(
        kept["removed_backups"]
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "a kept backup was removed: {kept}"
    );
    let list = json(&cli.run_ok(["--json", "list", "--cluster", "main"])?.stdout)?;
    ensure!(ids(&list)?.len() == 3, "three backups expected: {list}");
    let classes: Vec<_> = list
        .as_array()
        .context("array")?
        .iter()
        .map(|b| b["retention"].as_str().unwrap_or("-").to_string())
        .collect();
    ensure!(
        classes.contains(&"kept".to_string()),
        "list shows no kept backup: {classes:?}"
    );

    cli.run_ok(["keep", "--cluster", "main", &backups[0], "--release"])?;
    let run = json(
        &cli.run_ok(["--json", "retention", "--cluster", "main"])?
            .stdout,
    )?;
    ensure!(
        run["removed_backups"] == serde_json::json!([backups[0]]),
        "retention should remove {}: {run}",
        backups[0]
    );
    let remaining = ids(&json(
        &cli.run_ok(["--json", "list", "--cluster", "main"])?.stdout,
    )?)?;
    ensure!(
        remaining == vec![backups[2].clone(), backups[1].clone()],
        "remaining backups {remaining:?}"
    );
    let oldest = rig.api_get(&format!("/{}", backups[1]))?;
    let begin_wal = oldest["begin_wal"]
        .as_str()
        .context("begin_wal")?
        .to_string();
    let wal_after = rig.server.api().wal_names("main", None)?;
    let segments: Vec<&String> = wal_after.iter().filter(|n| n.len() == 24).collect();
    ensure!(
        segments.first().map(|s| s.as_str()) == Some(begin_wal.as_str()),
        "WAL should start at the oldest remaining backup's begin {begin_wal}: {segments:?}"
    );
    ensure!(wal_after.len() < wal_before.len(), "no WAL was removed");
    ensure!(
        run["removed_wal"].as_array().is_some_and(|a| !a.is_empty()),
        "the report names no removed WAL: {run}"
    );

    // The oldest remaining backup still restores and replays to the newest WAL.
    let target = rig.new_path("restored-data");
    rig.restore_ok(&[
        &backups[1],
        "--target-dir",
        target.to_str().context("path")?,
        "--jobs",
        "8",
    ])?;
    let restored = rig.start_restored("restored", &target)?;
    BackupRig::wait_promoted(&restored)?;
    let got = restored.psql("select count(*) || ' ' || sum(id) from t")?;
    ensure!(got == expected, "restored {got}, primary {expected}");

    let jobs = json(&cli.run_ok(["--json", "jobs", "--cluster", "main"])?.stdout)?;
    let retention_runs = jobs
        .as_array()
        .context("jobs is not an array")?
        .iter()
        .filter(|j| j["kind"] == "retention")
        .count();
    ensure!(
        retention_runs >= 2,
        "jobs shows {retention_runs} retention runs: {jobs}"
    );
    let text = cli.run_ok(["jobs", "--cluster", "main"])?.stdout;
    ensure!(text.contains("retention"), "jobs text: {text}");
    Ok(())
}
