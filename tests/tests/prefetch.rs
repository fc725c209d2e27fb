//! Prefetching fetch (`wal-archive fetch --prefetch N`): the next segments are spooled, verified
//! at hand-over, and timeline switches never hand over a segment of the wrong timeline.
//!
//! - `a_corrupted_spool_file_is_never_handed_over`: a fetch spools the next segments; a byte of
//!   one spooled file is flipped; the fetch of that name detects it, downloads the archive's copy
//!   and hands over exactly the archive's bytes; the next name comes from the spool; a request
//!   on another timeline discards the spooled segments; a missing name is still a fast exit 1.
//! - `recovery_across_a_promotion_with_prefetch`: the failover scenario (an old base backup
//!   replays timeline 1, then timeline 2 after a promotion, from the archive alone, with
//!   `recovery_target_timeline = 'latest'`) with prefetch on: some segments come from the spool
//!   and the data ends right.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{
    archive_command, restore_command_with, segment_of_lsn, segment_offset, sha256_file, sha256_hex,
    table_fingerprint, wait_until, BaseBackupOptions, Cli, Pg, PgOptions, Server, TestDir,
    WalFactory, DEADLINE, SEG_SIZE,
};

fn spooled(spool: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(spool)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn a_corrupted_spool_file_is_never_handed_over() -> Result<()> {
    let dir = TestDir::new("prefetch-corrupt")?;
    let server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "factory")?;
    let names = factory.make_segments(6)?;
    let cli = Cli::new(&dir)?;
    let url = server.url();
    for name in &names {
        let path = factory.path(name);
        cli.run_ok([
            "--url",
            &url,
            "--look-ahead",
            "0",
            "push",
            "--cluster",
            "main",
            path.to_str().context("path")?,
        ])?;
    }

    let pg_wal = dir.subdir("restore-pg_wal")?;
    let state = dir.subdir("state")?;
    let dest = pg_wal.join("RECOVERYXLOG");
    let fetch = |name: &str| {
        cli.run([
            "--url",
            &url,
            "--spool-dir",
            state.to_str().context("path")?,
            "--prefetch",
            "4",
            "fetch",
            "--cluster",
            "main",
            name,
            dest.to_str().context("path")?,
            "--pgdata",
            pg_wal.to_str().context("path")?,
        ])
    };

    let start = Instant::now();
    let out = fetch(&names[0])?;
    let first_time = start.elapsed();
    ensure!(out.success(), "fetch {}: {}", names[0], out.describe());
    ensure!(sha256_file(&dest)? == sha256_file(&factory.path(&names[0]))?);
    let spool = state.join("spool");
    let expected: Vec<String> = names[1..5].to_vec();
    ensure!(
        spooled(&spool)? == expected,
        "spool holds {:?}, expected {expected:?}",
        spooled(&spool)?
    );

    // Flip a byte of the next spooled file: it must not reach PostgreSQL.
    let victim = spool.join(&names[1]);
    let mut bytes = std::fs::read(&victim)?;
    bytes[5000] ^= 0x01;
    std::fs::write(&victim, &bytes)?;
    let out = fetch(&names[1])?;
    ensure!(out.success(), "fetch {}: {}", names[1], out.describe());
    ensure!(
        out.stderr.contains("fails its checksum"),
        "the corruption went unnoticed: {}",
        out.describe()
    );
    let archived = server.api().get_wal("main", &names[1], None)?;
    ensure!(
        archived.status == 200,
        "GET {}: {}",
        names[1],
        archived.short()
    );
    ensure!(
        sha256_file(&dest)? == sha256_hex(&archived.body),
        "the file handed over is not the archive's {}",
        names[1]
    );
    ensure!(!victim.exists(), "the corrupt spool file was kept");

    // The next name is a local copy.
    let start = Instant::now();
    let out = fetch(&names[2])?;
    let spool_time = start.elapsed();
    ensure!(
        out.success() && out.stderr.contains("from the prefetch spool"),
        "fetch {}: {}",
        names[2],
        out.describe()
    );
    ensure!(sha256_file(&dest)? == sha256_file(&factory.path(&names[2]))?);

    // A request on timeline 2 (as after a promotion): timeline-1 segments leave the spool and
    // are never handed over under a timeline-2 name.
    std::fs::remove_file(&dest)?;
    ensure!(!spooled(&spool)?.is_empty(), "the spool is already empty");
    let tl2 = format!("00000002{}", &names[3][8..]);
    let out = fetch(&tl2)?;
    ensure!(out.code == Some(1), "fetch {tl2}: {}", out.describe());
    ensure!(!dest.exists(), "{tl2} was handed over");
    ensure!(
        spooled(&spool)?.is_empty(),
        "timeline-1 segments left in the spool: {:?}",
        spooled(&spool)?
    );
    // A name the archive does not have: a fast no, nothing written.
    let missing = segment_offset(names.last().context("names")?, 5, SEG_SIZE)?;
    let out = fetch(&missing)?;
    ensure!(out.code == Some(1), "fetch {missing}: {}", out.describe());
    ensure!(!dest.exists(), "{missing} was handed over");

    eprintln!("timing: fetch from the server + fill {first_time:?}, from the spool {spool_time:?}");
    Ok(())
}

fn insert(pg: &Pg, from: u64, to: u64) -> Result<()> {
    pg.psql(&format!(
        "insert into t select g, repeat(md5(g::text), 4) from generate_series({from}, {to}) g"
    ))
    .map(|_| ())
}

fn empty_pg_wal(pg: &Pg) -> Result<()> {
    for sub in ["pg_wal", "pg_wal/archive_status"] {
        for entry in std::fs::read_dir(pg.data_dir().join(sub))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

#[test]
fn recovery_across_a_promotion_with_prefetch() -> Result<()> {
    let dir = TestDir::new("prefetch-failover")?;
    let server = Server::start(&dir)?;
    let state = dir.pg_subdir("state")?;

    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.start()?;
    primary.psql("create table t (id bigint primary key, payload text)")?;
    insert(&primary, 1, 1000)?;

    let backup = Pg::from_basebackup(&primary, &dir, "backup", BaseBackupOptions::copy())?;
    empty_pg_wal(&backup)?;
    let standby = Pg::from_basebackup(&primary, &dir, "standby", BaseBackupOptions::standby())?;
    standby.start()?;
    wait_until(DEADLINE, "the standby streams", || {
        Ok(
            standby.psql("select count(*) from pg_stat_wal_receiver where status = 'streaming'")?
                == "1",
        )
    })
    .with_context(|| standby.log_tail())?;

    // Timeline 1: enough segments for the spool to matter.
    let mut next = 1001;
    for _ in 0..8 {
        insert(&primary, next, next + 1999)?;
        next += 2000;
        primary.switch_wal()?;
    }
    insert(&primary, next, next + 99)?;
    next += 100;
    let end_of_tl1 = primary.flush_lsn()?;
    let last_tl1_segment = segment_of_lsn(1, end_of_tl1, SEG_SIZE);
    primary.wait_archived(&segment_offset(&last_tl1_segment, -1, SEG_SIZE)?, DEADLINE)?;
    wait_until(DEADLINE, "the standby has replayed timeline 1", || {
        Ok(standby.replay_lsn()? >= end_of_tl1)
    })?;

    primary.crash()?;
    standby.promote()?;
    ensure!(standby.current_timeline()? == 2, "no timeline 2");
    for _ in 0..4 {
        insert(&standby, next, next + 1999)?;
        next += 2000;
        standby.switch_wal()?;
    }
    insert(&standby, next, next + 99)?;
    let last_tl2_segment = standby.switch_wal()?;
    standby.wait_archived(&last_tl2_segment, DEADLINE)?;
    let expected_data = table_fingerprint(&standby, "t")?;

    backup.set(
        "restore_command",
        restore_command_with(
            &server,
            "main",
            &format!("--spool-dir {} --prefetch 8 --parallel 2", state.display()),
        )?,
    )?;
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
        log.contains("from the prefetch spool"),
        "no segment came from the spool:\n{}",
        backup.log_tail()
    );
    for name in ["00000002.history".to_string(), last_tl2_segment.clone()] {
        ensure!(
            log.contains(&format!("restored log file \"{name}\" from archive")),
            "B did not restore {name}:\n{}",
            backup.log_tail()
        );
    }
    // Past the switch, only timeline-2 names were restored.
    let first_tl2 = format!("00000002{}", &last_tl1_segment[8..]);
    let past_switch_tl1 = segment_offset(&last_tl1_segment, 1, SEG_SIZE)?;
    ensure!(
        log.contains(&format!("restored log file \"{first_tl2}\" from archive")),
        "B did not restore {first_tl2}:\n{}",
        backup.log_tail()
    );
    ensure!(
        !log.contains(&format!("restored log file \"{past_switch_tl1}\"")),
        "B restored timeline-1 {past_switch_tl1} past the switch"
    );
    let got = table_fingerprint(&backup, "t")?;
    ensure!(
        got == expected_data,
        "B's data {got} differs from the promoted standby's {expected_data}"
    );
    Ok(())
}
