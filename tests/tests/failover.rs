//! Failover (DESIGN section 8, scenario 3, archive side): the archive follows a timeline switch
//! and a base backup taken before it recovers across it from the archive alone.
//!
//! - `backup_recovers_across_a_promotion_from_the_archive`: a primary archives; a base backup B
//!   is taken early and its pg_wal emptied (so every WAL byte it replays comes from the archive);
//!   a streaming standby with the same archive_command follows; the primary crashes; the standby
//!   is promoted to timeline 2 and archives `00000002.history` and timeline-2 segments; B starts
//!   with `recovery.signal`, `restore_command = wal-archive fetch` and
//!   `recovery_target_timeline = 'latest'`, finishes recovery, and holds exactly the data of the
//!   promoted standby as of its last archived segment. On the way, a timeline-2 segment offered
//!   under a timeline-1 name is refused (422).

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{
    archive_command, is_segment_name, restore_command, segment_of_lsn, segment_offset,
    segment_range, table_fingerprint, wait_until, BaseBackupOptions, Pg, PgOptions, Server,
    TestDir, DEADLINE, SEG_SIZE,
};

fn insert(pg: &Pg, from: u64, to: u64) -> Result<()> {
    pg.psql(&format!(
        "insert into t select g, repeat(md5(g::text), 4) from generate_series({from}, {to}) g"
    ))
    .map(|_| ())
}

/// Removes every file of `pg_wal` (and of `pg_wal/archive_status`), keeping the directories.
fn empty_pg_wal(pg: &Pg) -> Result<usize> {
    let mut removed = 0;
    for sub in ["pg_wal", "pg_wal/archive_status"] {
        for entry in std::fs::read_dir(pg.data_dir().join(sub))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[test]
fn backup_recovers_across_a_promotion_from_the_archive() -> Result<()> {
    let dir = TestDir::new("failover")?;
    let server = Server::start(&dir)?;
    let api = server.api();

    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.start()?;
    primary.psql("create table t (id bigint primary key, payload text)")?;
    insert(&primary, 1, 1000)?;

    // B: a self-contained base backup whose WAL we throw away.
    let backup = Pg::from_basebackup(&primary, &dir, "backup", BaseBackupOptions::copy())?;
    let removed = empty_pg_wal(&backup)?;
    ensure!(
        removed > 0,
        "pg_basebackup -X fetch left no WAL in B's pg_wal"
    );

    let standby = Pg::from_basebackup(&primary, &dir, "standby", BaseBackupOptions::standby())?;
    // archive_mode and archive_command come with the copied postgresql.conf: once promoted, the
    // standby archives to the same cluster.
    standby.set("restore_command", restore_command(&server, "main")?)?;
    standby.start()?;
    standby.wait_streaming(DEADLINE)?;

    // Timeline 1: several segments, then a few rows in the current segment.
    let mut next = 1001;
    for _ in 0..4 {
        insert(&primary, next, next + 1999)?;
        next += 2000;
        primary.switch_wal()?;
    }
    insert(&primary, next, next + 99)?;
    next += 100;
    let end_of_tl1 = primary.flush_lsn()?;
    let last_tl1_segment = segment_of_lsn(1, end_of_tl1, SEG_SIZE);
    // Everything before the segment in progress must be in the archive before the crash.
    primary.wait_archived(&segment_offset(&last_tl1_segment, -1, SEG_SIZE)?, DEADLINE)?;
    wait_until(
        DEADLINE,
        "the standby has replayed all of timeline 1",
        || Ok(standby.replay_lsn()? >= end_of_tl1),
    )?;

    primary.crash()?;
    standby.promote()?;
    ensure!(
        !standby.in_recovery()?,
        "the standby is still in recovery after promotion"
    );
    ensure!(
        standby.current_timeline()? == 2,
        "the promoted standby is not on timeline 2"
    );

    wait_until(DEADLINE, "the archive lists 00000002.history", || {
        Ok(api
            .wal_names("main", None)?
            .iter()
            .any(|n| n == "00000002.history"))
    })
    .with_context(|| standby.log_tail())?;

    // Timeline 2: more rows, switched out and archived.
    for _ in 0..2 {
        insert(&standby, next, next + 1999)?;
        next += 2000;
        standby.switch_wal()?;
    }
    insert(&standby, next, next + 99)?;
    let last_tl2_segment = standby.switch_wal()?;
    ensure!(
        last_tl2_segment.starts_with("00000002"),
        "switched {last_tl2_segment}"
    );
    standby.wait_archived(&last_tl2_segment, DEADLINE)?;
    let expected_data = table_fingerprint(&standby, "t")?;

    let listed = api.wal_names("main", None)?;
    let first_tl2_segment = format!("00000002{}", &last_tl1_segment[8..]);
    for name in segment_range(&first_tl2_segment, &last_tl2_segment, SEG_SIZE)? {
        ensure!(
            listed.contains(&name),
            "the archive lacks {name}: {listed:?}"
        );
    }
    ensure!(
        listed
            .iter()
            .filter(|n| is_segment_name(n) && n.starts_with("00000001"))
            .count()
            >= 4,
        "timeline 1 segments missing from the archive: {listed:?}"
    );

    // A timeline-2 segment can never be a timeline-1 file: its pages say timeline 2.
    let tl2_bytes = api.get_wal("main", &last_tl2_segment, None)?;
    ensure!(
        tl2_bytes.status == 200,
        "GET {last_tl2_segment}: {}",
        tl2_bytes.short()
    );
    let as_tl1 = format!("00000001{}", &last_tl2_segment[8..]);
    let resp = api.put_wal("main", &as_tl1, &tl2_bytes.body, None, None)?;
    ensure!(
        resp.status == 422,
        "{last_tl2_segment} stored as {as_tl1}: expected 422, got {}",
        resp.short()
    );

    // B recovers from the archive alone: no primary_conninfo, no WAL of its own.
    backup.set("restore_command", restore_command(&server, "main")?)?;
    backup.set_str("recovery_target_timeline", "latest")?;
    backup.set("archive_mode", "off")?;
    backup.write_file("recovery.signal", "")?;
    backup.start()?;
    wait_until(DEADLINE, "B finishes archive recovery", || {
        Ok(!backup.in_recovery()?)
    })
    .with_context(|| backup.log_tail())?;

    let log = backup.log();
    ensure!(
        log.contains("restored log file \"00000002.history\" from archive"),
        "B did not restore 00000002.history from the archive:\n{}",
        backup.log_tail()
    );
    ensure!(
        log.contains(&format!(
            "restored log file \"{last_tl2_segment}\" from archive"
        )),
        "B did not restore {last_tl2_segment} from the archive:\n{}",
        backup.log_tail()
    );
    let got = table_fingerprint(&backup, "t")?;
    ensure!(
        got == expected_data,
        "B's data {got} differs from the promoted standby's {expected_data}"
    );
    Ok(())
}
