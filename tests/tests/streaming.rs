//! Streaming through a replication slot (DESIGN section 8, scenario 2, and the receiver's
//! promises): the server pulls WAL like `pg_receivewal` and stores every completed segment as if it
//! had been pushed.
//!
//! - `slot_streaming_archives_everything_across_kill9_and_primary_restart`: `archive_command =
//!   'false'` the whole time, so only streaming can archive; pgbench and `pg_switch_wal()` complete
//!   many segments while the server is killed with SIGKILL (and WAL is written while it is down)
//!   and while the primary restarts. Every segment from the first streamed one to the last
//!   switched one is listed, `wal --json` shows one range on timeline 1 with no gap, every fetched
//!   segment is byte-identical to the primary's pg_wal copy, and to the copy `pg_receivewal`
//!   (the oracle, on a second slot) wrote. The slot's `restart_lsn` is never past the receiver's
//!   `flushed_lsn`, and `check` passes.
//! - `receiver_follows_a_promoted_standby_to_timeline_2`: the server streams from a primary that
//!   crashes; its standby is promoted; the server, pointed at it, creates its slot there and goes
//!   on: `00000002.history`, the old timeline's last segment as `.partial`, and timeline-2
//!   segments from the one holding the switch point, with no hole and the standby's bytes.
//! - `receiver_on_a_standby_follows_its_promotion_live`: the server streams from a standby (a
//!   slot of its own there); the primary crashes and the standby is promoted under the running
//!   receiver, which follows the switch on its connection to the same archive result.
//! - `synchronous_commit_waits_for_the_receiver`: `synchronous_standby_names = 'wal_archive'` and
//!   `synchronous = true`: a commit returns while the server runs; with the server stopped a
//!   commit provably waits (`wait_event = 'SyncRep'`), and returns once the server is back.
//! - `clean_primary_shutdown_is_not_a_protocol_violation`: `pg_ctl stop -m fast` ends each
//!   walsender with CommandComplete and no CopyDone (walsender.c, `WalSndDone`; libpq's
//!   `PQgetCopyData` returns -1 for it, and pg_receivewal just reconnects). The receiver must take
//!   it as the end of the stream, not report a "protocol violation", which by pgrepl's own error
//!   rules means a bug or an incompatible server; after the restart it streams again.
//! - `segment_in_progress_is_served_to_archive_recovery`: a row committed into the segment still
//!   in progress (no switch, `archive_command = 'false'`) is replayed by a base backup restored
//!   with `restore_command = wal-archive fetch`, through the receiver's durable partial segment
//!   (`DATA_DIR/receiver/main/NAME.partial`, shown as `partial_segment` in the receiver status).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use wal_archive_e2e::{
    is_segment_name, parse_lsn, restore_command, segment_of_lsn, segment_offset, segment_range,
    streaming_config, wait_until, BaseBackupOptions, Cli, Pg, PgOptions, Server, TestDir, DEADLINE,
    SEG_SIZE,
};

/// At least this many complete segments must go through the receiver in scenario 2.
const MIN_SEGMENTS: usize = 15;

/// A primary whose `archive_command` always fails, so only the receiver can archive, and that
/// keeps its WAL for comparison.
fn primary_without_archiving(dir: &TestDir, name: &str) -> Result<Pg> {
    let pg = Pg::init(dir, name, PgOptions::default())?;
    pg.set("archive_mode", "on")?;
    pg.set("archive_command", "'false'")?;
    pg.set_str("wal_keep_size", "256MB")?;
    Ok(pg)
}

fn streaming_server(dir: &TestDir, pg: &Pg, extra: &str) -> Result<Server> {
    Server::start_with_config(dir, Some(&streaming_config("main", &pg.conninfo()?, extra)))
}

fn state(status: &Value) -> &str {
    status.get("state").and_then(Value::as_str).unwrap_or("")
}

/// An LSN field (`"0/3000000"`) of the receiver status, if set.
fn lsn_field(status: &Value, key: &str) -> Result<Option<u64>> {
    match status.get(key).and_then(Value::as_str) {
        Some(text) => Ok(Some(parse_lsn(text)?)),
        None => Ok(None),
    }
}

fn wait_streaming(server: &Server) -> Result<Value> {
    server.wait_receiver("main", "the receiver streams", DEADLINE, |s| {
        Ok(state(s) == "streaming")
    })
}

/// Waits until the receiver reports `lsn` durable (its `flushed_lsn` is at or past it).
fn wait_flushed(server: &Server, lsn: u64) -> Result<Value> {
    server.wait_receiver(
        "main",
        &format!("the receiver has flushed up to {lsn:X}"),
        DEADLINE,
        |s| Ok(lsn_field(s, "flushed_lsn")?.is_some_and(|f| f >= lsn)),
    )
}

/// The complete segments the archive lists, sorted.
fn listed_segments(server: &Server) -> Result<Vec<String>> {
    Ok(server
        .api()
        .wal_names("main", None)?
        .into_iter()
        .filter(|n| is_segment_name(n))
        .collect())
}

fn wait_listed(server: &Server, name: &str) -> Result<()> {
    wait_until(DEADLINE, &format!("the archive lists {name}"), || {
        Ok(server
            .api()
            .wal_names("main", None)?
            .iter()
            .any(|n| n == name))
    })
    .with_context(|| {
        format!(
            "receiver: {:?}\n--- server log (tail) ---\n{}",
            server.receiver("main"),
            server.log_tail()
        )
    })
}

/// One timeline of `wal --json`: its ranges and gaps as (first, last) names.
struct TimelineReport {
    tli: u64,
    ranges: Vec<(String, String)>,
    gaps: Vec<(String, String)>,
}

fn wal_report(cli: &Cli) -> Result<Vec<TimelineReport>> {
    let out = cli.run(["wal", "--cluster", "main", "--json"])?;
    ensure!(
        out.code == Some(0) || out.code == Some(1),
        "wal --json: {}",
        out.describe()
    );
    let doc: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("wal --json printed no JSON: {}", out.describe()))?;
    let pairs = |tl: &Value, key: &str| -> Result<Vec<(String, String)>> {
        tl.get(key)
            .and_then(Value::as_array)
            .with_context(|| format!("timeline without {key:?}: {tl}"))?
            .iter()
            .map(|p| match p.as_array().map(Vec::as_slice) {
                Some([Value::String(a), Value::String(b)]) => Ok((a.clone(), b.clone())),
                _ => bail!("{key} entry {p} is not a [first, last] pair"),
            })
            .collect()
    };
    doc.get("timelines")
        .and_then(Value::as_array)
        .with_context(|| format!("no \"timelines\" in {doc}"))?
        .iter()
        .map(|tl| {
            Ok(TimelineReport {
                tli: tl
                    .get("tli")
                    .and_then(Value::as_u64)
                    .with_context(|| format!("timeline without \"tli\": {tl}"))?,
                ranges: pairs(tl, "ranges")?,
                gaps: pairs(tl, "gaps")?,
            })
        })
        .collect()
}

/// `wal-archive fetch --cluster main NAME` into `dir`; returns the bytes.
fn fetch(cli: &Cli, dir: &Path, name: &str) -> Result<Vec<u8>> {
    let dest = dir.join(name);
    let out = cli.run(["fetch", "--cluster", "main", name, &dest.to_string_lossy()])?;
    ensure!(out.success(), "fetch of {name}: {}", out.describe());
    std::fs::read(&dest).with_context(|| format!("reading {}", dest.display()))
}

/// Writes a little and switches to a new segment; returns the segment the switch completed.
fn insert_and_switch(pg: &Pg, rows: u32) -> Result<String> {
    pg.psql(&format!(
        "insert into t (payload) select repeat(md5(g::text), 4) from generate_series(1, {rows}) g"
    ))?;
    pg.switch_wal()
}

#[test]
fn slot_streaming_archives_everything_across_kill9_and_primary_restart() -> Result<()> {
    let started = Instant::now();
    let dir = TestDir::new("streaming")?;
    let primary = primary_without_archiving(&dir, "primary")?;
    primary.start()?;
    primary.psql("create table t (id bigserial primary key, payload text)")?;

    // The oracle: pg_receivewal on a slot of its own, from before the server's first byte.
    let oracle = dir.pg_subdir("oracle")?;
    primary.receivewal_create_slot("oracle_slot")?;
    let mut receivewal = primary.pg_receivewal(
        &oracle,
        "oracle_slot",
        &dir.path().join("pg_receivewal.log"),
    )?;

    let mut server = streaming_server(&dir, &primary, "")?;
    let cli = server.cli()?;
    wait_streaming(&server)?;

    // pgbench writes many segments; the server is killed while they stream in.
    std::thread::scope(|scope| -> Result<()> {
        let writer = scope.spawn(|| primary.pgbench(&["-i", "-s", "2", "-q"], DEADLINE));
        wait_until(DEADLINE, "5 streamed segments are stored", || {
            Ok(listed_segments(&server)?.len() >= 5 || writer.is_finished())
        })?;
        server.kill9()?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the pgbench thread panicked"))?
            .map(|_| ())
    })?;
    // More WAL while the server is down: the slot keeps it for the receiver.
    primary.pgbench(&["-t", "300", "-n"], DEADLINE)?;
    let mut switched = vec![insert_and_switch(&primary, 2000)?];
    server.start_again()?;
    wait_listed(&server, &switched[0])?;

    // The primary restarts under the receiver, which reconnects and goes on.
    switched.push(insert_and_switch(&primary, 2000)?);
    primary.restart()?;
    primary.pgbench(&["-T", "2", "-n"], DEADLINE)?;
    for _ in 0..3 {
        switched.push(insert_and_switch(&primary, 2000)?);
    }
    let last = switched.last().context("nothing switched")?.clone();
    wait_listed(&server, &last)?;
    // The slot never moves past what the receiver holds durably (read the slot first: the
    // receiver's flushed_lsn only grows).
    let restart_lsn = parse_lsn(&primary.psql(
        "select restart_lsn from pg_replication_slots where slot_name = 'wal_archive' and active",
    )?)?;
    let status = wait_streaming(&server)?;
    ensure!(
        status.get("timeline").and_then(Value::as_u64) == Some(1)
            && status.get("slot").and_then(Value::as_str) == Some("wal_archive")
            && status.get("slot_active") == Some(&Value::Bool(true)),
        "receiver: {status}"
    );
    let flushed = lsn_field(&status, "flushed_lsn")?.context("no flushed_lsn")?;
    ensure!(
        restart_lsn <= flushed,
        "the slot's restart_lsn {restart_lsn:X} is past the receiver's flushed_lsn {flushed:X}"
    );
    let check = cli.run(["check", "--cluster", "main"])?;
    ensure!(check.success(), "check: {}", check.describe());

    // Every segment from the first streamed one to the last switched one.
    let listed = listed_segments(&server)?;
    let first = listed.first().context("nothing listed")?.clone();
    let expected = segment_range(&first, &last, SEG_SIZE)?;
    ensure!(
        expected.len() >= MIN_SEGMENTS,
        "only {} segments {first}..{last} went through the receiver",
        expected.len()
    );
    let missing: Vec<&String> = expected.iter().filter(|n| !listed.contains(n)).collect();
    ensure!(missing.is_empty(), "the archive lacks {missing:?}");
    let timelines = wal_report(&cli)?;
    ensure!(
        timelines.len() == 1 && timelines[0].tli == 1,
        "expected timeline 1 only, got {:?}",
        timelines.iter().map(|t| t.tli).collect::<Vec<_>>()
    );
    ensure!(
        timelines[0].gaps.is_empty() && timelines[0].ranges.len() == 1,
        "timeline 1: ranges {:?}, gaps {:?}",
        timelines[0].ranges,
        timelines[0].gaps
    );
    let (range_first, range_last) = &timelines[0].ranges[0];
    ensure!(
        *range_first == first && range_last.as_str() >= last.as_str(),
        "the range {range_first}..{range_last} does not cover {first}..{last}"
    );

    // Byte for byte what the primary wrote.
    let fetched = dir.subdir("fetched")?;
    for name in &expected {
        let bytes = fetch(&cli, &fetched, name)?;
        let original = primary.data_dir().join("pg_wal").join(name);
        let want = std::fs::read(&original)
            .with_context(|| format!("reading the primary's {}", original.display()))?;
        ensure!(
            bytes == want,
            "the archive's {name} differs from the primary's pg_wal copy"
        );
    }

    // And what pg_receivewal wrote from its own slot.
    let oracle_last = oracle.join(&last);
    wait_until(DEADLINE, &format!("pg_receivewal completes {last}"), || {
        Ok(oracle_last.exists())
    })
    .with_context(|| receivewal.output())?;
    let mut compared = 0;
    for entry in std::fs::read_dir(&oracle)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !is_segment_name(&name) || !listed.contains(&name) {
            continue;
        }
        let bytes = fetch(&cli, &fetched, &name)?;
        ensure!(
            bytes == std::fs::read(oracle.join(&name))?,
            "the archive's {name} differs from pg_receivewal's"
        );
        compared += 1;
    }
    ensure!(
        compared >= MIN_SEGMENTS,
        "only {compared} segments compared with pg_receivewal"
    );
    receivewal.stop()?;
    eprintln!(
        "{} segments streamed, {compared} checked against pg_receivewal, in {:?}",
        expected.len(),
        started.elapsed()
    );
    Ok(())
}

/// The switch point of `tli`'s history file in `pg`'s pg_wal (the last line's LSN).
fn switch_point(pg: &Pg, tli: u32) -> Result<u64> {
    let path = pg
        .data_dir()
        .join("pg_wal")
        .join(format!("{tli:08X}.history"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = text
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{} is empty", path.display()))?;
    let lsn = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no switch point in {line:?}"))?;
    parse_lsn(lsn)
}

/// A primary and its streaming hot standby (which keeps its WAL for comparisons), with table `t`.
fn primary_and_standby(dir: &TestDir) -> Result<(Pg, Pg)> {
    let primary = Pg::init(dir, "primary", PgOptions::default())?;
    // Copied to the standby: it keeps its WAL for the comparisons.
    primary.set_str("wal_keep_size", "256MB")?;
    primary.start()?;
    primary.psql("create table t (id bigserial primary key, payload text)")?;
    let standby = Pg::from_basebackup(&primary, dir, "standby", BaseBackupOptions::standby())?;
    standby.set("hot_standby", "on")?;
    standby.start()?;
    standby.wait_streaming(DEADLINE)?;
    Ok((primary, standby))
}

/// Timeline 1: complete segments, then a few rows in the segment in progress, all of it received
/// by the standby and durable in the receiver.
fn write_timeline_1(server: &Server, primary: &Pg, standby: &Pg) -> Result<()> {
    let mut last_tl1 = String::new();
    for _ in 0..3 {
        last_tl1 = insert_and_switch(primary, 2000)?;
    }
    primary.psql("insert into t (payload) select 'tl1 tail' from generate_series(1, 100)")?;
    let end_of_tl1 = primary.flush_lsn()?;
    wait_listed(server, &last_tl1)?;
    wait_flushed(server, end_of_tl1)?;
    wait_until(DEADLINE, "the standby replays all of timeline 1", || {
        Ok(standby.replay_lsn()? >= end_of_tl1)
    })
}

/// The primary crashes and the standby is promoted to timeline 2; returns the switch point,
/// which the tests want inside a segment.
fn fail_over(primary: &Pg, standby: &Pg) -> Result<u64> {
    primary.crash()?;
    standby.promote()?;
    wait_until(DEADLINE, "the standby leaves recovery", || {
        Ok(!standby.in_recovery()?)
    })?;
    ensure!(standby.current_timeline()? == 2, "not on timeline 2");
    let switch = switch_point(standby, 2)?;
    ensure!(
        switch % SEG_SIZE != 0,
        "the switch point {switch:X} is on a segment boundary; the test wants it inside one"
    );
    Ok(switch)
}

/// Writes on the promoted standby until three timeline-2 segments are switched out and
/// archived, then checks what the archive holds across the switch at `switch`: the history
/// file, the old timeline's last segment as `.partial`, timeline 2 from the segment holding the
/// switch point with no hole, and the promoted standby's bytes.
fn timeline_2_is_archived_without_a_hole(
    dir: &TestDir,
    server: &Server,
    promoted: &Pg,
    switch: u64,
) -> Result<()> {
    let cli = server.cli()?;
    server.wait_receiver(
        "main",
        "the receiver streams on timeline 2",
        DEADLINE,
        |s| Ok(state(s) == "streaming" && s.get("timeline").and_then(Value::as_u64) == Some(2)),
    )?;
    let mut last_tl2 = String::new();
    for _ in 0..3 {
        last_tl2 = insert_and_switch(promoted, 2000)?;
    }
    ensure!(last_tl2.starts_with("00000002"), "switched {last_tl2}");
    wait_listed(server, &last_tl2)?;
    let status = wait_streaming(server)?;
    ensure!(
        status.get("timeline").and_then(Value::as_u64) == Some(2),
        "receiver: {status}"
    );

    let switch_segment = segment_of_lsn(1, switch, SEG_SIZE);
    let listed = server.api().wal_names("main", None)?;
    ensure!(
        listed.iter().any(|n| n == "00000002.history"),
        "00000002.history is not listed: {listed:?}"
    );
    let tl1_partial = format!("{switch_segment}.partial");
    ensure!(
        listed.contains(&tl1_partial),
        "the old timeline's last segment {tl1_partial} is not listed: {listed:?}"
    );
    let fetched = dir.subdir("fetched")?;
    ensure!(
        fetch(&cli, &fetched, "00000002.history")?
            == std::fs::read(promoted.data_dir().join("pg_wal/00000002.history"))?,
        "the archive's 00000002.history differs from the promoted standby's"
    );
    let first_tl2 = format!("00000002{}", &switch_segment[8..]);
    let timelines = wal_report(&cli)?;
    let tl = |n: u64| timelines.iter().find(|t| t.tli == n);
    let tl1 = tl(1).context("no timeline 1 in `wal`")?;
    let tl2 = tl(2).context("no timeline 2 in `wal`")?;
    ensure!(
        tl1.gaps.is_empty() && tl2.gaps.is_empty(),
        "gaps: timeline 1 {:?}, timeline 2 {:?}",
        tl1.gaps,
        tl2.gaps
    );
    let last_complete_tl1 = segment_offset(&switch_segment, -1, SEG_SIZE)?;
    ensure!(
        tl1.ranges.last().map(|r| r.1.as_str()) == Some(last_complete_tl1.as_str()),
        "timeline 1 should end with {last_complete_tl1}: {:?}",
        tl1.ranges
    );
    ensure!(
        tl2.ranges.len() == 1
            && tl2.ranges[0].0 == first_tl2
            && tl2.ranges[0].1.as_str() >= last_tl2.as_str(),
        "timeline 2 should be one range from {first_tl2} (the switch point {switch:X}) to \
         {last_tl2}: {:?}",
        tl2.ranges
    );

    // The bytes are the promoted standby's: timeline-2 segments whole, the old timeline's
    // last segment up to the switch point.
    for name in segment_range(&first_tl2, &last_tl2, SEG_SIZE)? {
        let want = std::fs::read(promoted.data_dir().join("pg_wal").join(&name))?;
        ensure!(
            fetch(&cli, &fetched, &name)? == want,
            "the archive's {name} differs from the promoted standby's"
        );
    }
    let prefix = usize::try_from(switch % SEG_SIZE)?;
    let partial = fetch(&cli, &fetched, &tl1_partial)?;
    let standby_partial = std::fs::read(promoted.data_dir().join("pg_wal").join(&tl1_partial))
        .or_else(|_| std::fs::read(promoted.data_dir().join("pg_wal").join(&first_tl2)))?;
    ensure!(
        partial.len() == usize::try_from(SEG_SIZE)?
            && partial.get(..prefix) == standby_partial.get(..prefix),
        "{tl1_partial} ({} bytes) differs from the standby's timeline-1 WAL before the switch \
         point",
        partial.len()
    );
    Ok(())
}

#[test]
fn receiver_follows_a_promoted_standby_to_timeline_2() -> Result<()> {
    let dir = TestDir::new("streaming-failover")?;
    let (primary, standby) = primary_and_standby(&dir)?;
    let mut server = streaming_server(&dir, &primary, "")?;
    wait_streaming(&server)?;
    write_timeline_1(&server, &primary, &standby)?;
    let switch = fail_over(&primary, &standby)?;

    // The server follows the promoted standby (no slot there yet: slots are not copied).
    server.stop()?;
    server.set_config(&streaming_config("main", &standby.conninfo()?, ""))?;
    server.start_again()?;
    timeline_2_is_archived_without_a_hole(&dir, &server, &standby, switch)
}

#[test]
fn receiver_on_a_standby_follows_its_promotion_live() -> Result<()> {
    let dir = TestDir::new("streaming-cascade")?;
    let (primary, standby) = primary_and_standby(&dir)?;
    // The archive streams from the standby (its own slot there), as a cascading standby would.
    let server = streaming_server(&dir, &standby, "")?;
    wait_streaming(&server)?;
    write_timeline_1(&server, &primary, &standby)?;
    let switch = fail_over(&primary, &standby)?;
    timeline_2_is_archived_without_a_hole(&dir, &server, &standby, switch)
}

#[test]
fn clean_primary_shutdown_is_not_a_protocol_violation() -> Result<()> {
    let dir = TestDir::new("streaming-shutdown")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    primary.start()?;
    primary.psql("create table t (id bigserial primary key, payload text)")?;
    let server = streaming_server(&dir, &primary, "")?;
    wait_streaming(&server)?;
    let switched = insert_and_switch(&primary, 1000)?;
    wait_listed(&server, &switched)?;

    let log_before = server.log().len();
    primary.stop_fast()?;
    // The primary stays down: the receiver's attempts fail to connect until it is back.
    server.wait_receiver(
        "main",
        "the receiver fails to connect to the stopped primary",
        DEADLINE,
        |s| {
            Ok(state(s) == "reconnecting"
                && s.get("reason")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.contains("cannot connect")))
        },
    )?;
    let log = server.log();
    let after_stop: Vec<&str> = log
        .get(log_before..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("receiver: ") && l.contains("reconnecting in"))
        .collect();
    ensure!(
        !after_stop.is_empty(),
        "the receiver did not log the end of its connection"
    );
    let violations: Vec<&&str> = after_stop
        .iter()
        .filter(|l| l.contains("protocol violation"))
        .collect();
    ensure!(
        violations.is_empty(),
        "a clean shutdown of the primary is logged as a protocol violation:\n{}",
        after_stop.join("\n")
    );

    primary.start()?;
    wait_streaming(&server)?;
    let switched = insert_and_switch(&primary, 1000)?;
    wait_listed(&server, &switched)?;
    Ok(())
}

fn sync_state(pg: &Pg) -> Result<String> {
    pg.psql("select coalesce(string_agg(sync_state, ','), '') from pg_stat_replication where application_name = 'wal_archive'")
}

#[test]
fn synchronous_commit_waits_for_the_receiver() -> Result<()> {
    let dir = TestDir::new("streaming-sync")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    primary.set_str("synchronous_standby_names", "wal_archive")?;
    primary.set("synchronous_commit", "on")?;
    primary.start()?;
    let mut server = streaming_server(&dir, &primary, "synchronous = true")?;
    let status = wait_streaming(&server)?;
    ensure!(
        status.get("synchronous").and_then(Value::as_bool) == Some(true),
        "receiver: {status}"
    );
    wait_until(DEADLINE, "the receiver is the synchronous standby", || {
        Ok(sync_state(&primary)? == "sync")
    })?;

    // While the server runs, commits return.
    let mut first = primary.psql_background(
        "create table t (id int primary key); insert into t values (1)",
        &dir.path().join("psql-1.log"),
    )?;
    ensure!(
        first.wait_exit(Duration::from_secs(30))? == Some(0),
        "the first commit failed: {}",
        first.output()
    );

    // Without the server, a commit waits for it.
    server.stop()?;
    let insert = "insert into t values (2)";
    let mut waiting = primary.psql_background(insert, &dir.path().join("psql-2.log"))?;
    wait_until(DEADLINE, "the commit waits for the synchronous standby", || {
        Ok(primary.psql(&format!(
            "select count(*) from pg_stat_activity where wait_event = 'SyncRep' and query = '{insert}'"
        ))? == "1")
    })
    .with_context(|| waiting.output())?;
    ensure!(
        waiting.is_running()?,
        "the commit returned without a synchronous standby: {}",
        waiting.output()
    );

    // The server comes back, streams, reports the commit durable: it returns.
    server.start_again()?;
    let code = waiting
        .wait_exit(DEADLINE)
        .with_context(|| format!("--- server log (tail) ---\n{}", server.log_tail()))?;
    ensure!(
        code == Some(0),
        "the waiting commit ended with {code:?}: {}",
        waiting.output()
    );
    ensure!(
        primary.psql("select count(*) from t where id = 2")? == "1",
        "row 2 is not visible"
    );
    ensure!(
        sync_state(&primary)? == "sync",
        "the receiver is not the synchronous standby again"
    );
    Ok(())
}

/// Removes every file of `pg_wal` (and of `pg_wal/archive_status`), keeping the directories.
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
fn segment_in_progress_is_served_to_archive_recovery() -> Result<()> {
    let dir = TestDir::new("streaming-partial")?;
    let primary = primary_without_archiving(&dir, "primary")?;
    primary.start()?;
    primary.psql("create table t (id int primary key, payload text)")?;
    primary.psql("insert into t select g, 'before the backup' from generate_series(1, 100) g")?;
    let server = streaming_server(&dir, &primary, "")?;
    wait_streaming(&server)?;

    // B: a base backup whose WAL comes from the archive only.
    let backup = Pg::from_basebackup(&primary, &dir, "backup", BaseBackupOptions::copy())?;
    empty_pg_wal(&backup)?;

    // A commit in the segment in progress; nothing switches it out.
    primary.psql("insert into t values (1000, 'last streamed commit')")?;
    let commit_end = primary.current_lsn()?;
    let in_progress = segment_of_lsn(1, commit_end, SEG_SIZE);
    let status = wait_flushed(&server, commit_end)?;
    ensure!(
        status.get("partial_segment").and_then(Value::as_str)
            == Some(format!("{in_progress}.partial").as_str()),
        "the receiver should show {in_progress}.partial in progress: {status}"
    );
    ensure!(
        primary.current_segment()? == in_progress,
        "the primary switched segments on its own"
    );
    let working = server
        .data_dir()
        .join("receiver/main")
        .join(format!("{in_progress}.partial"));
    let durable = std::fs::metadata(&working)
        .with_context(|| format!("the receiver's working file {}", working.display()))?
        .len();
    ensure!(
        durable >= commit_end % SEG_SIZE,
        "{} holds {durable} bytes, less than the flushed {commit_end:X}",
        working.display()
    );
    let listed = server.api().wal_names("main", None)?;
    ensure!(
        !listed.contains(&in_progress),
        "{in_progress} is listed as complete: {listed:?}"
    );

    backup.set("restore_command", restore_command(&server, "main")?)?;
    backup.set("archive_mode", "off")?;
    backup.write_file("recovery.signal", "")?;
    backup.start()?;
    wait_until(DEADLINE, "B finishes archive recovery", || {
        Ok(!backup.in_recovery()?)
    })
    .with_context(|| backup.log_tail())?;
    ensure!(
        backup
            .log()
            .contains(&format!("restored log file \"{in_progress}\" from archive")),
        "B did not restore the segment in progress {in_progress}:\n{}",
        backup.log_tail()
    );
    ensure!(
        backup.psql("select payload from t where id = 1000")? == "last streamed commit",
        "B lacks the last streamed commit:\n{}",
        backup.log_tail()
    );
    ensure!(
        backup.psql("select count(*) from t")? == "101",
        "B has other rows than the primary"
    );
    Ok(())
}
