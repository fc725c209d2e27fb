//! S3-compatible object storage (DESIGN §1, §5, §7.9, scenario 8), against a real SeaweedFS
//! started on loopback by the harness, with the real binaries and real PostgreSQL 15.
//!
//! - `never_overwritten_on_a_bucket`: a segment and the other bytes a split-brain copy of its
//!   cluster wrote under the same name: 201, then 200 for the same bytes and 409 for the
//!   others; of eight concurrent uploads, four of each, exactly one is stored and served back,
//!   the uploads of its bytes get 200, the others 409.
//! - `faults_under_the_bucket_never_lose_an_acknowledged_file`: the server reaches its bucket
//!   through a proxy that answers 503, cuts uploads mid-way, drops answers after forwarding the
//!   request, and delays past the request timeout, on every third request. A primary archives
//!   through all of it (the store client and the archiver retry what fails); every file `push`
//!   said 0 for is served byte for byte, under faults (or refused, never wrong) and after them.
//! - `one_server_per_bucket`: a second server on the same bucket is refused while the first
//!   holds its lease, saying who holds it until when; after a clean stop it starts at once;
//!   after a crash the crashed server restarts at once, another only once the lease expired or
//!   with `--take-over`; a server whose storage is taken over stops.
//! - `a_server_that_cannot_renew_its_lease_stops_before_it_expires`: the bucket unreachable,
//!   the server stops while its lease is still its own; once the bucket is back it starts again.
//! - `a_new_host_rebuilds_and_serves_scenarios_1_and_4` (scenario 8): a primary archives into a
//!   server on a bucket, a backup is taken and a standby made; the server's host is lost (the
//!   process killed, its data directory deleted); a new server on the same bucket rebuilds its
//!   catalog, the standby, down meanwhile while the primary recycled its WAL, catches up from
//!   it (scenario 1), and the backup restores to a point in time (scenario 4).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::backup::{backup_config, count_and_max, RESTORE_TIMEOUT};
use wal_archive_e2e::{
    archive_command, archive_command_with, pg_command, restore_command, run_with_deadline, seaweed,
    segment_of_lsn, segment_offset, table_fingerprint, wait_until, BaseBackupOptions, FaultyProxy,
    Pg, PgOptions, SeaweedFs, Server, TestDir, WalFactory, DEADLINE, SEG_SIZE,
};

/// A server storing in `weed`'s bucket under `prefix` (reached at `endpoint`), with its
/// credentials in its environment. `extra` follows the `[storage]` section: its first lines
/// (before any section header) are more `[storage]` keys.
fn s3_server(
    dir: &TestDir,
    weed: &SeaweedFs,
    endpoint: &str,
    prefix: &str,
    extra: &str,
) -> Result<Server> {
    let mut server = prepare(dir, weed, endpoint, prefix, extra)?;
    server.start_again()?;
    Ok(server)
}

/// [`s3_server`], not started.
fn prepare(
    dir: &TestDir,
    weed: &SeaweedFs,
    endpoint: &str,
    prefix: &str,
    extra: &str,
) -> Result<Server> {
    let config = format!("{}{extra}", weed.storage_section(endpoint, prefix));
    let mut server = Server::prepare(dir, Some(&config))?;
    server.set_env("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY);
    server.set_env("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY);
    Ok(server)
}

#[test]
fn never_overwritten_on_a_bucket() -> Result<()> {
    let dir = TestDir::new("s3-overwrite")?;
    let weed = SeaweedFs::start(&dir, "weed")?;
    let server = s3_server(&dir, &weed, &weed.endpoint(), "overwrite", "")?;
    let a = WalFactory::start(&dir, "a")?;
    a.make_segments(2)?;
    // Two copies of one cluster (same system identifier and timeline) write the same segment
    // with other bytes: a split brain.
    let fork = a.fork(&dir, "fork")?;
    let target = a.make_segments(1)?.remove(0);
    ensure!(
        fork.make_segments(1)?.remove(0) == target,
        "the fork's segment has another name"
    );
    let two = [a.read(&target)?, fork.read(&target)?];
    ensure!(two[0] != two[1], "the two copies wrote the same bytes");
    let api = server.api();
    ensure!(api.put_wal("main", &target, &two[0], None, None)?.status == 201);
    ensure!(api.put_wal("main", &target, &two[0], None, None)?.status == 200);
    let r = api.put_wal("main", &target, &two[1], None, None)?;
    ensure!(r.status == 409, "{}", r.short());
    ensure!(
        api.get_wal("main", &target, None)?.body == two[0],
        "the stored copy changed"
    );

    // Eight uploads of it at once to a new cluster, four with each content: exactly one is
    // stored; the uploads of its bytes are told so (200), the others refused (409).
    let statuses: Vec<(usize, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = &api;
                let body = &two[i % 2];
                let target = &target;
                s.spawn(move || (i % 2, api.put_wal("split", target, body, None, None)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok((which, Ok(r))) => (which, r.status),
                Ok((which, Err(_))) => (which, 0),
                Err(_) => (9, 0),
            })
            .collect()
    });
    let winner = statuses
        .iter()
        .find(|(_, status)| *status == 201)
        .map(|(which, _)| *which)
        .with_context(|| format!("none stored: {statuses:?}"))?;
    for (which, status) in &statuses {
        let expected: &[u16] = if *which == winner {
            &[201, 200]
        } else {
            &[409]
        };
        ensure!(expected.contains(status), "statuses: {statuses:?}");
    }
    ensure!(
        statuses.iter().filter(|(_, s)| *s == 201).count() == 1,
        "statuses: {statuses:?}"
    );
    let stored = api.get_wal("split", &target, None)?;
    ensure!(
        stored.status == 200 && stored.body == two[winner],
        "{}",
        stored.short()
    );
    Ok(())
}

#[test]
fn faults_under_the_bucket_never_lose_an_acknowledged_file() -> Result<()> {
    let dir = TestDir::new("s3-faults")?;
    let weed = SeaweedFs::start(&dir, "weed")?;
    let proxy = FaultyProxy::start(weed.s3_port(), 3, Duration::from_secs(4))?;
    proxy.set_faults(false);
    // The first start waits for SeaweedFS to allocate a volume. Then a 2 s request timeout:
    // a 4 s delay outlasts it, and the server gives up on that request.
    let mut server = s3_server(&dir, &weed, &proxy.endpoint(), "faults", "")?;
    server.stop()?;
    let section = weed.storage_section(&proxy.endpoint(), "faults");
    server.set_config(&format!("{section}request_timeout = 2\n"))?;
    server.start_again()?;
    proxy.set_faults(true);

    // The primary keeps a copy of each segment it archives, then pushes it.
    let copies = dir.pg_subdir("copies")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    primary.set("archive_mode", "on")?;
    let push = archive_command_with(&server, "main", "--retry-for 3")?;
    primary.set(
        "archive_command",
        format!(
            "'cp %p {}/%f && {}'",
            copies.display(),
            push.trim_matches('\'')
        ),
    )?;
    primary.start()?;
    primary.psql("create table t (id bigint, payload text)")?;
    let mut last = String::new();
    for _ in 0..24 {
        primary.psql("insert into t select g, md5(g::text) from generate_series(1, 3000) g")?;
        last = primary.switch_wal()?;
    }
    primary.wait_archived(&last, Duration::from_secs(240))?;
    let counts = proxy.counts();
    ensure!(
        counts.rejected > 0 && counts.cut > 0 && counts.dropped_answers > 0,
        "the proxy injected too few faults: {counts:?}"
    );
    // Every segment PostgreSQL archived (push said 0) is served, under faults: the right bytes
    // or a refusal, never other bytes.
    let mut names: Vec<String> = std::fs::read_dir(&copies)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    ensure!(names.len() >= 24, "{names:?}");
    let fetched = dir.subdir("fetched")?;
    let recovery = dir.subdir("recovery-pgdata")?;
    std::fs::write(recovery.join("recovery.signal"), "")?;
    let cli = server.cli()?.cwd(&recovery);
    let mut served_under_faults = 0;
    for name in &names {
        let dest = fetched.join(name);
        let out = cli.run([
            "--retry-for",
            "2",
            "--prefetch",
            "0",
            "fetch",
            "--cluster",
            "main",
            name,
            &dest.to_string_lossy(),
        ])?;
        if out.success() {
            ensure!(
                std::fs::read(&dest)? == std::fs::read(copies.join(name))?,
                "{name}: fetch handed over other bytes"
            );
            served_under_faults += 1;
            std::fs::remove_file(&dest)?;
        } else {
            refused_under_faults(&dest, &out)?;
        }
    }

    // An outage of the store: pushes fail (the archiver keeps the segment and retries), fetches
    // fail with an exit code that stops archive recovery instead of ending it.
    proxy.set_outage(true);
    let failed_before = primary.archive_failed_count()?;
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 3000) g")?;
    let held_back = primary.switch_wal()?;
    wait_until(DEADLINE, "the archiver reports a failed push", || {
        Ok(primary.archive_failed_count()? > failed_before)
    })?;
    ensure!(
        !primary.is_archived(&held_back)?,
        "{held_back} archived during an outage"
    );
    let dest = fetched.join(&names[0]);
    let out = cli.run([
        "--retry-for",
        "2",
        "--prefetch",
        "0",
        "fetch",
        "--cluster",
        "main",
        &names[0],
        &dest.to_string_lossy(),
    ])?;
    refused_under_faults(&dest, &out)?;
    proxy.set_outage(false);
    primary.wait_archived(&held_back, Duration::from_secs(120))?;
    names.push(held_back);
    // And after them, every one.
    proxy.set_faults(false);
    for name in &names {
        let r = server.api().get_wal("main", name, None)?;
        ensure!(
            r.status == 200 && r.body == std::fs::read(copies.join(name))?,
            "{name} acknowledged but not served: {}",
            r.short()
        );
    }
    let listing = server.api().wal_listing("main", None)?;
    ensure!(
        listing["missing"].as_array().is_none_or(|m| m.is_empty()),
        "{listing}"
    );
    eprintln!(
        "faults: {:?}; {} pushes failed and were retried; {served_under_faults} of {} fetches \
         served under faults (the store client retries)",
        proxy.counts(),
        primary.archive_failed_count()?,
        names.len()
    );
    Ok(())
}

/// A fetch that failed under faults in archive recovery: no file, and an exit code above 125
/// (PostgreSQL stops rather than ending recovery at the wrong point).
fn refused_under_faults(dest: &std::path::Path, out: &wal_archive_e2e::Output) -> Result<()> {
    ensure!(!dest.exists(), "a failed fetch left {}", dest.display());
    ensure!(
        out.code.is_some_and(|c| c > 125),
        "a failed fetch in archive recovery must exit above 125: {}",
        out.describe()
    );
    Ok(())
}

#[test]
fn one_server_per_bucket() -> Result<()> {
    let dir = TestDir::new("s3-lease")?;
    let weed = SeaweedFs::start(&dir, "weed")?;
    // Long enough that a renewal delayed by a busy machine does not let the lease lapse.
    let lease = "lease_seconds = 10\n";
    let first_dir = TestDir::new("s3-lease-first")?;
    let mut first = s3_server(&first_dir, &weed, &weed.endpoint(), "lease", lease)?;
    let mut second = prepare(&dir, &weed, &weed.endpoint(), "lease", lease)?;
    let refused = second.start_again();
    let message = format!("{:#}", refused.err().context("a second server started")?);
    ensure!(
        message.contains("held by another wal-archive-server") && message.contains("--take-over"),
        "{message}"
    );
    // A clean stop releases it.
    first.stop()?;
    second.start_again()?;
    // A crash does not: the same server (host and data directory) restarts at once, another
    // only once the lease expired (10 s).
    second.kill9()?;
    second.start_again()?;
    second.kill9()?;
    let third_dir = TestDir::new("s3-lease-third")?;
    let mut third = prepare(&third_dir, &weed, &weed.endpoint(), "lease", lease)?;
    ensure!(
        third.start_again().is_err(),
        "started while a crashed server's lease ran"
    );
    wait_until(
        Duration::from_secs(30),
        "the dead server's lease expires",
        || Ok(third.start_again().is_ok()),
    )?;
    ensure!(
        third.log().contains("lease expired"),
        "{}",
        third.log_tail()
    );
    // --take-over at once; the server it was taken from stops by itself.
    let mut fourth = prepare(&first_dir, &weed, &weed.endpoint(), "lease", lease)?;
    fourth.set_args(&["--take-over"]);
    fourth.start_again()?;
    let status = third.wait_exit(Duration::from_secs(20))?;
    ensure!(!status.success(), "{status}");
    ensure!(third.log().contains("taken over"), "{}", third.log_tail());
    ensure!(
        fourth.api().healthz()?,
        "the server that took over is not healthy"
    );
    Ok(())
}

#[test]
fn a_server_that_cannot_renew_its_lease_stops_before_it_expires() -> Result<()> {
    let dir = TestDir::new("s3-lease-renewal")?;
    let weed = SeaweedFs::start(&dir, "weed")?;
    let proxy = FaultyProxy::start(weed.s3_port(), 3, Duration::from_secs(4))?;
    proxy.set_faults(false);
    let mut server = s3_server(
        &dir,
        &weed,
        &proxy.endpoint(),
        "renewal",
        "lease_seconds = 3\n",
    )?;
    proxy.set_outage(true);
    let status = server.wait_exit(Duration::from_secs(30))?;
    ensure!(!status.success(), "{status}");
    ensure!(
        server.log().contains("cannot renew the storage lease"),
        "{}",
        server.log_tail()
    );
    // Once the store is back, the server starts on it again.
    proxy.set_outage(false);
    server.start_again()?;
    Ok(())
}

#[test]
fn a_new_host_rebuilds_and_serves_scenarios_1_and_4() -> Result<()> {
    let dir = TestDir::new("s3-scenario-8")?;
    let weed = SeaweedFs::start(&dir, "weed")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    let mut server = s3_server(
        &dir,
        &weed,
        &weed.endpoint(),
        "scenario8",
        &backup_config("main", &primary.conninfo()?),
    )?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.set("wal_keep_size", 0)?;
    primary.start()?;
    primary.psql("create table t (id bigint primary key, payload text)")?;
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g")?;
    // A file of the backup larger than one PUT takes, incompressible: the staged route.
    primary.psql(
        "create table blob (id int, payload bytea); insert into blob select g, \
         decode(string_agg(md5(g::text || i::text), ''), 'hex') from generate_series(1, 1) g, \
         generate_series(1, 700000) i group by g",
    )?;
    let seg = primary.switch_wal()?;
    primary.wait_archived(&seg, DEADLINE)?;
    let cli = server.cli()?.timeout(Duration::from_secs(180));
    let out = cli.run_ok(["--json", "backup", "--cluster", "main", "--wait"])?;
    let backup: serde_json::Value = serde_json::from_str(&out.stdout)?;
    ensure!(backup["status"] == "done", "{backup}");

    // A standby, then its outage.
    let standby = Pg::from_basebackup(&primary, &dir, "standby", BaseBackupOptions::standby())?;
    standby.set("restore_command", restore_command(&server, "main")?)?;
    standby.set("hot_standby", "on")?;
    standby.start()?;
    standby.wait_streaming(DEADLINE)?;
    let caught = primary.flush_lsn()?;
    wait_until(DEADLINE, "the standby replays", || {
        Ok(standby.replay_lsn()? >= caught)
    })?;
    let replay_segment = segment_of_lsn(1, standby.replay_lsn()?, SEG_SIZE);
    standby.stop_fast()?;
    primary.psql("insert into t select g, md5(g::text) from generate_series(1001, 2000) g")?;
    let target_time = primary.psql("select now()")?;
    primary.psql("insert into t select g, md5(g::text) from generate_series(2001, 3000) g")?;
    let gone = segment_offset(&replay_segment, 8, SEG_SIZE)?;
    let mut next = 3001;
    wait_until(
        Duration::from_secs(90),
        "the primary recycled the standby's WAL",
        || {
            primary.psql(&format!(
                "insert into t select g, md5(g::text) from generate_series({next}, {}) g",
                next + 499
            ))?;
            next += 500;
            let s = primary.switch_wal()?;
            primary.wait_archived(&s, DEADLINE)?;
            primary.checkpoint()?;
            let segs = primary.wal_segments()?;
            Ok(segs.first().is_some_and(|f| f.as_str() > gone.as_str()))
        },
    )?;
    let last = primary.switch_wal()?;
    primary.wait_archived(&last, DEADLINE)?;

    // The backup host is lost: the process and its data directory. A new one on the bucket.
    server.kill9()?;
    std::fs::remove_dir_all(server.data_dir())?;
    server.set_args(&["--take-over"]);
    server.start_again()?;
    ensure!(
        server.log().contains("rebuilding the catalog from storage"),
        "{}",
        server.log_tail()
    );
    let list = server
        .cli()?
        .run_ok(["--json", "list", "--cluster", "main"])?;
    ensure!(
        list.stdout.contains(backup["id"].as_str().unwrap_or("?")),
        "{}",
        list.stdout
    );
    primary.wait_archived(&primary.switch_wal()?, DEADLINE)?;

    // Scenario 1 from the rebuilt catalog: the standby catches up from the archive.
    standby.start()?;
    wait_until(
        Duration::from_secs(120),
        "the standby catches up and streams",
        || Ok(standby.is_streaming()? && standby.replay_lsn()? >= primary.flush_lsn()?),
    )
    .with_context(|| standby.log_tail())?;
    ensure!(
        standby.log().contains("restored log file"),
        "the standby did not replay from the archive"
    );
    ensure!(table_fingerprint(&standby, "t")? == table_fingerprint(&primary, "t")?);

    // Scenario 4 from the rebuilt catalog: point-in-time restore of the backup.
    let target = dir.path().join("pitr");
    let bin = server.cli()?.bin().to_path_buf();
    let mut cmd = pg_command(&bin)?;
    cmd.current_dir(dir.path())
        .arg("--url")
        .arg(server.url())
        .args(["restore", "--cluster", "main", "latest", "--target-dir"])
        .arg(&target)
        .args(["--target-time", &target_time, "--target-action", "promote"]);
    let out = run_with_deadline(&mut cmd, RESTORE_TIMEOUT)?;
    ensure!(out.success(), "restore: {}", out.describe());
    let restored = Pg::from_dir(&dir, "pitr-pg", &target)?;
    restored.set("archive_mode", "off")?;
    restored.start()?;
    wait_until(DEADLINE, "the restored cluster is promoted", || {
        Ok(restored.wait_ready(DEADLINE).is_ok() && !restored.in_recovery()?)
    })?;
    ensure!(
        count_and_max(&restored, "t")? == "2000 2000",
        "rows after the restore to {target_time}: {}",
        count_and_max(&restored, "t")?
    );
    Ok(())
}
