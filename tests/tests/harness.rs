//! Self-test of the harness: PostgreSQL starts, answers, writes WAL, stops. Needs no binary of
//! ours, so it shows whether the machine can run the other tests at all.
//!
//! - `postgres_starts_writes_wal_and_stops`: initdb + start, a query, a few switched segments
//!   copied by a plain archive_command, stop.
//! - `wal_names`: the harness's own WAL name arithmetic.

use std::time::Duration;

use anyhow::{ensure, Result};
use wal_archive_e2e::{
    copy_archive_command, segment_offset, wait_until, Pg, PgOptions, TestDir, SEG_SIZE,
};

#[test]
fn postgres_starts_writes_wal_and_stops() -> Result<()> {
    let dir = TestDir::new("harness")?;
    let archive = dir.pg_subdir("copies")?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.set("archive_mode", "on")?;
    pg.set("archive_command", copy_archive_command(&archive))?;
    pg.start()?;
    ensure!(pg.psql("select 1 + 1")? == "2");
    ensure!(pg.segment_size()? == SEG_SIZE);

    pg.psql("create table t (id int primary key, payload text)")?;
    let mut switched = Vec::new();
    for round in 0..3 {
        pg.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({}, {}) g",
            round * 1000 + 1,
            round * 1000 + 1000
        ))?;
        switched.push(pg.switch_wal()?);
    }
    for pair in switched.windows(2) {
        ensure!(
            segment_offset(&pair[0], 1, SEG_SIZE)? <= pair[1],
            "segments did not advance: {switched:?}"
        );
    }
    let last = switched.last().cloned().unwrap_or_default();
    pg.wait_archived(&last, Duration::from_secs(30))?;
    wait_until(Duration::from_secs(10), "the copies exist", || {
        Ok(switched.iter().all(|s| archive.join(s).exists()))
    })?;
    for name in &switched {
        let len = std::fs::metadata(archive.join(name))?.len();
        ensure!(len == SEG_SIZE, "{name} is {len} bytes");
    }
    ensure!(pg.psql("select count(*) from t")? == "3000");
    pg.stop_fast()?;
    ensure!(!pg.is_running());
    Ok(())
}

#[test]
fn wal_names() -> Result<()> {
    ensure!(segment_offset("000000010000000000000009", 1, SEG_SIZE)? == "00000001000000000000000A");
    Ok(())
}
