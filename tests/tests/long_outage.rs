//! Acceptance scenario 1 (DESIGN section 8): a standby that was down while its primary recycled
//! the WAL it needs catches up from the archive, then streams again.
//!
//! - `standby_catches_up_from_the_archive_after_a_long_outage`: primary with
//!   `archive_command = wal-archive push`, `wal_keep_size = 0` and no slot; a standby made with
//!   pg_basebackup and `restore_command = wal-archive fetch`; the standby is stopped while the
//!   primary writes until the segment holding the standby's replay position is provably gone from
//!   the primary's pg_wal and archived; the restarted standby replays the missing segments from the
//!   archive (its log says so), reaches the primary's position, streams, and has the same data.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{
    archive_command, restore_command, segment_of_lsn, segment_offset, segment_range,
    table_fingerprint, wait_until, BaseBackupOptions, Pg, PgOptions, Server, TestDir, DEADLINE,
    SEG_SIZE,
};

/// Segments the standby never saw that must have been recycled on the primary before it restarts.
const UNSEEN_SEGMENTS_GONE: i64 = 16;

#[test]
fn standby_catches_up_from_the_archive_after_a_long_outage() -> Result<()> {
    let dir = TestDir::new("long-outage")?;
    let server = Server::start(&dir)?;

    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.set("wal_keep_size", 0)?;
    primary.start()?;
    primary.psql("create table t (id bigint primary key, payload text)")?;
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g")?;

    let standby = Pg::from_basebackup(&primary, &dir, "standby", BaseBackupOptions::standby())?;
    standby.set("restore_command", restore_command(&server, "main")?)?;
    standby.set("hot_standby", "on")?;
    standby.start()?;
    wait_until(DEADLINE, "the standby streams from the primary", || {
        standby.is_streaming()
    })
    .with_context(|| standby.log_tail())?;
    let caught_up_to = primary.flush_lsn()?;
    wait_until(DEADLINE, "the standby replays the first rows", || {
        Ok(standby.replay_lsn()? >= caught_up_to)
    })?;
    let replay = standby.replay_lsn()?;
    standby.stop_fast()?;
    let replay_segment = segment_of_lsn(1, replay, SEG_SIZE);
    let first_unseen = segment_offset(&replay_segment, 1, SEG_SIZE)?;
    let must_be_gone = segment_offset(&replay_segment, UNSEEN_SEGMENTS_GONE, SEG_SIZE)?;

    // The outage: the primary writes, switches and checkpoints until its pg_wal no longer holds
    // the standby's replay segment nor the next UNSEEN_SEGMENTS_GONE ones.
    let mut next_id = 1001;
    let mut rounds = 0;
    wait_until(
        Duration::from_secs(90),
        &format!("the primary has recycled every segment up to {must_be_gone}"),
        || {
            primary.psql(&format!(
                "insert into t select g, repeat(md5(g::text), 8) from generate_series({next_id}, {}) g",
                next_id + 1499
            ))?;
            next_id += 1500;
            primary.switch_wal()?;
            rounds += 1;
            if rounds % 3 == 0 {
                primary.checkpoint()?;
            }
            let oldest = primary.wal_segments()?.into_iter().next().unwrap_or_default();
            Ok(oldest.as_str() > must_be_gone.as_str())
        },
    )
    .with_context(|| format!("pg_wal: {:?}", primary.wal_segments()))?;
    let oldest_on_primary = primary
        .wal_segments()?
        .into_iter()
        .next()
        .context("the primary has no WAL segment at all")?;
    ensure!(
        oldest_on_primary > must_be_gone,
        "pg_wal of the primary still holds {oldest_on_primary}"
    );
    // Recycled segments were archived first (PostgreSQL only removes .done segments); check that
    // the archiver is past them and the archive lists them.
    let recycled = segment_range(
        &replay_segment,
        &segment_offset(&oldest_on_primary, -1, SEG_SIZE)?,
        SEG_SIZE,
    )?;
    primary.wait_archived(recycled.last().context("empty range")?, DEADLINE)?;
    let listed = server.api().wal_names("main", None)?;
    for name in &recycled {
        ensure!(
            listed.contains(name),
            "the archive does not list {name}: {listed:?}"
        );
    }

    let primary_data = table_fingerprint(&primary, "t")?;
    let target = primary.flush_lsn()?;

    standby.start()?;
    wait_until(
        Duration::from_secs(90),
        "the restarted standby replays up to the primary's position",
        || Ok(standby.replay_lsn()? >= target),
    )
    .with_context(|| standby.log_tail())?;
    wait_until(DEADLINE, "the restarted standby streams again", || {
        standby.is_streaming()
    })
    .with_context(|| standby.log_tail())?;

    // Every segment the standby never saw and the primary no longer had came from the archive.
    let log = standby.log();
    for name in segment_range(&first_unseen, &must_be_gone, SEG_SIZE)? {
        ensure!(
            log.contains(&format!("restored log file \"{name}\" from archive")),
            "the standby's log does not show {name} restored from the archive:\n{}",
            standby.log_tail()
        );
    }
    ensure!(
        table_fingerprint(&standby, "t")? == primary_data,
        "data differs: primary {primary_data}, standby {}",
        table_fingerprint(&standby, "t")?
    );
    Ok(())
}
