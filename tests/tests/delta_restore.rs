//! `wal-archive restore --delta` against real PostgreSQL 15: DESIGN scenario 3's old primary,
//! re-based after a failover by rewriting only what differs.
//!
//! - `old_primary_is_re_based_with_delta_and_follows_the_new_one`: a primary archives and is
//!   backed up; a streaming standby is promoted (timeline 2) while the old primary still runs
//!   and commits rows the new primary never sees. `restore --delta` refuses the old primary
//!   while it runs and refuses a data directory of another cluster, changing nothing in either.
//!   Once the old primary is stopped, `restore --delta --standby` keeps most of its files,
//!   rewrites the others, removes what the backup does not have (the old timeline's WAL among
//!   it); `pg_verifybackup` accepts the result; started, it follows the new primary from the
//!   archive and by streaming, without the diverged rows, and receives new ones.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::backup::{count_and_max, BackupRig};
use wal_archive_e2e::{
    pg_command, restore_command, run_with_deadline, wait_until, BaseBackupOptions, Pg, PgOptions,
    DEADLINE, PG_BIN,
};

fn insert(pg: &Pg, from: i64, to: i64) -> Result<()> {
    pg.psql(&format!(
        "insert into t select g, md5(g::text) from generate_series({from}, {to}) g"
    ))
    .map(|_| ())
}

/// Every file below `dir` with its content, for "nothing was changed" checks.
fn snapshot(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push((
                    entry.path().display().to_string(),
                    std::fs::read(entry.path())?,
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn old_primary_is_re_based_with_delta_and_follows_the_new_one() -> Result<()> {
    let rig = BackupRig::start("delta")?;
    let old = &rig.primary;
    old.psql("create table t (id bigint primary key, payload text)")?;
    insert(old, 1, 50_000)?;
    rig.backup()?;

    let new = Pg::from_basebackup(old, &rig.dir, "new-primary", BaseBackupOptions::standby())?;
    new.set("restore_command", restore_command(&rig.server, "main")?)?;
    new.start()?;
    new.wait_streaming(DEADLINE)?;
    insert(old, 50_001, 51_000)?;
    rig.archive_now()?;
    let lsn = old.flush_lsn()?;
    wait_until(DEADLINE, "the standby replays timeline 1", || {
        Ok(new.replay_lsn()? >= lsn)
    })?;

    // Failover; the old primary keeps committing for a moment: the divergence a re-base undoes.
    new.promote()?;
    insert(old, 900_001, 900_100)?;
    old.switch_wal()?;
    insert(&new, 51_001, 52_000)?;
    let tl2_segment = new.switch_wal()?;
    new.wait_archived(&tl2_segment, DEADLINE)?;

    let data = old.data_dir().to_path_buf();
    let data_s = data.display().to_string();
    let conninfo = new.conninfo()?;
    let delta_args = |target: &str| {
        vec![
            "--json".to_string(),
            "restore".into(),
            "--cluster".into(),
            "main".into(),
            "latest".into(),
            "--target-dir".into(),
            target.to_string(),
            "--delta".into(),
            "--standby".into(),
            "--primary-conninfo".into(),
            conninfo.clone(),
        ]
    };
    let run = |target: &str| {
        let args = delta_args(target);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rig.cli_as_pg(&args)
    };

    // Refused while PostgreSQL runs on it.
    let out = run(&data_s)?;
    ensure!(
        !out.success() && out.stderr.contains("is running"),
        "restore --delta into a running cluster: {}",
        out.describe()
    );
    ensure!(
        data.join("global/pg_control").is_file()
            && !data.join("wal-archive-delta.in-progress").exists(),
        "a refused delta restore changed the running cluster's directory"
    );
    ensure!(
        old.psql("select 1")? == "1",
        "the running old primary was disturbed"
    );

    // Refused for another cluster's data directory, which stays as it was.
    let other = Pg::init(&rig.dir, "other", PgOptions::default())?;
    let before = snapshot(other.data_dir())?;
    let out = run(&other.data_dir().display().to_string())?;
    ensure!(
        !out.success() && out.stderr.contains("another cluster"),
        "restore --delta into another cluster's directory: {}",
        out.describe()
    );
    ensure!(
        snapshot(other.data_dir())? == before,
        "a refused delta restore changed another cluster's directory"
    );

    old.stop_fast()?;
    let out = run(&data_s)?;
    ensure!(
        out.success(),
        "restore --delta: {}\n--- server log ---\n{}",
        out.describe(),
        rig.server.log_tail()
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("restore --json printed no JSON: {}", out.describe()))?;
    let delta = &report["delta"];
    let (files, kept, written, removed) = (
        report["files"].as_u64().unwrap_or(0),
        delta["kept_files"].as_u64().unwrap_or(0),
        delta["written_files"].as_u64().unwrap_or(0),
        delta["removed"].as_u64().unwrap_or(0),
    );
    ensure!(
        kept + written == files && kept > files / 2 && written > 0 && removed > 0,
        "delta restore kept {kept} and wrote {written} of {files} files, removed {removed}: \
         expected most kept, some written, the old timeline's leftovers removed ({report})"
    );
    ensure!(
        !data.join("wal-archive-delta.in-progress").exists()
            && data.join("standby.signal").is_file(),
        "restore --delta left its mark or no standby.signal"
    );
    let pg_wal: Vec<String> = std::fs::read_dir(data.join("pg_wal"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(
        pg_wal.is_empty(),
        "the old primary's WAL is still in pg_wal: {pg_wal:?}"
    );

    // PostgreSQL's own oracle: every file of the manifest, with its size and checksum.
    let mut verify = pg_command(Path::new(PG_BIN).join("pg_verifybackup"))?;
    verify.current_dir(rig.dir.path()).arg("-n").arg(&data);
    let out = run_with_deadline(&mut verify, DEADLINE)?;
    ensure!(out.success(), "pg_verifybackup: {}", out.describe());

    old.start()?;
    wait_until(
        DEADLINE,
        "the re-based old primary streams from the new one",
        || old.is_streaming(),
    )
    .with_context(|| old.log_tail())?;
    ensure!(
        old.in_recovery()?,
        "the re-based old primary is not a standby"
    );
    let tli = old.psql("select received_tli from pg_stat_wal_receiver")?;
    ensure!(
        tli == "2",
        "the re-based old primary receives timeline {tli}, not 2"
    );
    insert(&new, 52_001, 52_010)?;
    wait_until(
        DEADLINE,
        "the new rows reach the re-based old primary",
        || Ok(count_and_max(old, "t")? == count_and_max(&new, "t")?),
    )
    .with_context(|| old.log_tail())?;
    ensure!(
        count_and_max(old, "t")? == "52010 52010"
            && old.psql("select count(*) from t where id > 900000")? == "0",
        "the re-based old primary holds {} rows (count max), diverged rows: {}",
        count_and_max(old, "t")?,
        old.psql("select count(*) from t where id > 900000")?
    );
    Ok(())
}
