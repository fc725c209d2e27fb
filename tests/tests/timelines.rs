//! What PostgreSQL writes around promotions and point-in-time recoveries is always accepted
//! (DESIGN §7.8): an archiver refused for good stops PostgreSQL's whole archive, and pg_wal grows
//! until the primary stops.
//!
//! - `a_history_with_decreasing_switchpoints_is_archived`: a backup is restored twice. The first
//!   copy recovers to the end of the archive and is promoted to timeline 2. The second stops
//!   at a target before that switch, along timeline 2 (`recovery_target_timeline = latest`), and
//!   is promoted to timeline 3: PostgreSQL writes `00000003.history` with the switchpoint of
//!   timeline 2 after the (later) one of timeline 1. Its archiver stores it and goes on to
//!   timeline 3's segments.
//! - `a_partial_pushed_after_the_receivers_is_accepted`: the server streams from a standby whose
//!   own `archive_command` is held back; the standby is promoted. The receiver stores the old
//!   timeline's `.partial` first, zero-filled after the switch point; the standby's `.partial`
//!   (recycled WAL after it) comes second, is the same WAL, and the standby's archiver goes on
//!   to timeline 2.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::backup::BackupRig;
use wal_archive_e2e::{
    archive_command, parse_lsn, segment_of_lsn, streaming_config, wait_until, BaseBackupOptions,
    Pg, PgOptions, Server, TestDir, DEADLINE, SEG_SIZE,
};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Rows, then a switch: returns the segment the switch completed.
fn write_and_switch(pg: &Pg, rows: u32) -> Result<String> {
    pg.psql(&format!(
        "insert into t select g, md5(g::text) from generate_series(1, {rows}) g"
    ))?;
    pg.switch_wal()
}

/// A restored data directory that archives into `server`'s cluster `main`, started.
fn start_archiving(rig: &BackupRig, name: &str, data: &Path) -> Result<Pg> {
    let pg = Pg::from_dir(&rig.dir, name, data)?;
    pg.set("archive_mode", "on")?;
    pg.set("archive_command", archive_command(&rig.server, "main")?)?;
    pg.start()?;
    Ok(pg)
}

/// `(timeline, switchpoint)` of each line of a history file.
fn history_lines(text: &str) -> Result<Vec<(u32, u64)>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            let tli = f.next().context("timeline")?.parse()?;
            let lsn = parse_lsn(f.next().context("switchpoint")?)?;
            Ok((tli, lsn))
        })
        .collect()
}

#[test]
fn a_history_with_decreasing_switchpoints_is_archived() -> Result<()> {
    let rig = BackupRig::start("history-decreasing")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint, payload text)")?;
    write_and_switch(p, 100)?;
    let backup = rig.backup()?;
    let id = backup["id"].as_str().context("backup id")?.to_string();
    write_and_switch(p, 100)?;
    // The target of the second recovery, on timeline 1, before the end of the archive.
    let target = p.psql("select pg_current_wal_lsn()")?;
    p.psql("insert into t select g, 'after the target' from generate_series(1, 5000) g")?;
    rig.archive_now()?;

    // First copy: to the end of the archive, promoted to timeline 2.
    let first = rig.new_path("first-data");
    rig.restore_ok(&[&id, "--target-dir", &s(&first)])?;
    let r1 = start_archiving(&rig, "first", &first)?;
    BackupRig::wait_promoted(&r1)?;
    ensure!(
        r1.current_timeline()? == 2,
        "the first copy is not on timeline 2"
    );
    let tl2 = write_and_switch(&r1, 100)?;
    r1.wait_archived(&tl2, DEADLINE)?;

    // Second copy: along timeline 2, stopping before 2 began; promoted to timeline 3.
    let second = rig.new_path("second-data");
    rig.restore_ok(&[
        &id,
        "--target-dir",
        &s(&second),
        "--target-lsn",
        &target,
        "--target-action",
        "promote",
    ])?;
    let r2 = start_archiving(&rig, "second", &second)?;
    BackupRig::wait_promoted(&r2)?;
    ensure!(
        r2.current_timeline()? == 3,
        "the second copy is not on timeline 3"
    );
    let text = std::fs::read_to_string(second.join("pg_wal/00000003.history"))?;
    let lines = history_lines(&text)?;
    ensure!(
        lines.len() == 2 && lines[0].0 == 1 && lines[1].0 == 2 && lines[1].1 < lines[0].1,
        "PostgreSQL was to write decreasing switchpoints here; it wrote:\n{text}"
    );

    // Its archiver stores the history file and goes on with timeline 3.
    let tl3 = write_and_switch(&r2, 100)?;
    ensure!(tl3.starts_with("00000003"), "{tl3}");
    r2.wait_archived(&tl3, DEADLINE)?;
    let listed = rig.server.api().wal_names("main", None)?;
    ensure!(
        listed.iter().any(|n| n == "00000003.history") && listed.contains(&tl3),
        "{listed:?}"
    );
    let stored = rig.server.api().get_wal("main", "00000003.history", None)?;
    ensure!(
        stored.status == 200 && stored.body == text.as_bytes(),
        "{}",
        stored.short()
    );
    // And a recovery can follow it: `wal` lists the three timelines without complaint.
    let out = rig.server.cli()?.run(["wal", "--cluster", "main"])?;
    ensure!(out.success(), "{}", out.describe());
    Ok(())
}

#[test]
fn a_partial_pushed_after_the_receivers_is_accepted() -> Result<()> {
    let dir = TestDir::new("partial-twice")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    primary.set_str("wal_keep_size", "64MB")?;
    primary.start()?;
    primary.psql("create table t (id bigint, payload text)")?;
    let standby = Pg::from_basebackup(&primary, &dir, "standby", BaseBackupOptions::standby())?;
    // The archive streams from the standby, which archives into it too once promoted, through
    // a command held back until the receiver has stored its copy of the `.partial`.
    let server = Server::start_with_config(
        &dir,
        Some(&streaming_config("main", &standby.conninfo()?, "")),
    )?;
    let gate = dir.pg_subdir("gate")?.join("open");
    let push = archive_command(&server, "main")?;
    standby.set("archive_mode", "on")?;
    standby.set(
        "archive_command",
        format!("'test -f {} && {}'", s(&gate), push.trim_matches('\'')),
    )?;
    standby.set("hot_standby", "on")?;
    // Recycled segment files kept for later use: the tail lands in one.
    standby.set_str("min_wal_size", "8MB")?;
    standby.set_str("wal_keep_size", "0")?;
    standby.start()?;
    standby.wait_streaming(DEADLINE)?;
    server.wait_receiver("main", "the receiver streams", DEADLINE, |v| {
        Ok(v["state"] == "streaming")
    })?;

    // Many segments and restartpoints, so that the standby recycles its segment files: the
    // one the switch point falls in then holds old WAL after it.
    for _ in 0..12 {
        write_and_switch(&primary, 2000)?;
    }
    primary.checkpoint()?;
    let caught_up = primary.flush_lsn()?;
    wait_until(DEADLINE, "the standby replays everything", || {
        Ok(standby.replay_lsn()? >= caught_up)
    })?;
    // A restartpoint recycles the old segments into the names of future ones.
    standby.checkpoint()?;
    let current = primary.current_segment()?;
    let recycled: Vec<String> = standby
        .wal_segments()?
        .into_iter()
        .filter(|n| n.as_str() > current.as_str())
        .collect();
    ensure!(
        !recycled.is_empty(),
        "the standby recycled no segment file ahead of {current}; the test needs one"
    );
    write_and_switch(&primary, 100)?;
    primary.psql("insert into t select g, 'tail' from generate_series(1, 300) g")?;
    let end = primary.flush_lsn()?;
    wait_until(DEADLINE, "the standby replays the tail", || {
        Ok(standby.replay_lsn()? >= end)
    })?;
    primary.crash()?;
    standby.promote()?;
    wait_until(DEADLINE, "the standby leaves recovery", || {
        Ok(!standby.in_recovery()?)
    })?;
    let history = std::fs::read_to_string(standby.data_dir().join("pg_wal/00000002.history"))?;
    let switch = history_lines(&history)?
        .last()
        .map(|l| l.1)
        .context("no switchpoint")?;
    let partial = format!("{}.partial", segment_of_lsn(1, switch, SEG_SIZE));

    // The receiver's copy arrives first.
    wait_until(DEADLINE, "the receiver stores the .partial", || {
        Ok(server.api().wal_names("main", None)?.contains(&partial))
    })?;
    let theirs = std::fs::read(standby.data_dir().join("pg_wal").join(&partial))
        .with_context(|| format!("the standby has no {partial}"))?;
    let ours = server.api().get_wal("main", &partial, None)?.body;
    let offset = usize::try_from(switch % SEG_SIZE)?;
    ensure!(
        ours.get(..offset) == theirs.get(..offset),
        "the two copies differ before the switch point"
    );
    ensure!(
        ours != theirs,
        "the standby's {partial} holds the same bytes as the receiver's: this test needs \
         other bytes after the switch point to mean anything"
    );

    // The standby's own copy is pushed second: accepted, and its archiver goes on.
    std::fs::write(&gate, "")?;
    wal_archive_e2e::testdir::give_to_pg(&gate)?;
    let next = write_and_switch(&standby, 100)?;
    ensure!(next.starts_with("00000002"), "{next}");
    standby.wait_archived(&next, Duration::from_secs(60))?;
    ensure!(
        !standby
            .data_dir()
            .join("pg_wal/archive_status")
            .join(format!("{partial}.ready"))
            .exists(),
        "the standby still has {partial} to archive"
    );
    let r = server.api().get_wal("main", &partial, None)?;
    ensure!(r.status == 200 && r.body == ours, "the stored copy is kept");
    Ok(())
}
