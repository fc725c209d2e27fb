//! Prefetching fetch (`wal-archive fetch --prefetch N`): a detached worker spools the next
//! segments while the caller goes on, each spooled file is verified at hand-over, timeline
//! switches never hand over a segment of the wrong timeline, and the worker is alone per spool
//! and goes away by itself.
//!
//! - `a_corrupted_spool_file_is_never_handed_over`: a fetch starts the worker, which spools the
//!   next segments; a byte of one spooled file is flipped; the fetch of that name detects it,
//!   says it discarded it, downloads the archive's copy and hands over exactly the archive's
//!   bytes; the next name comes from the spool; a request on another timeline empties the
//!   spool; a missing name is still a fast exit 1.
//! - `one_worker_per_spool_that_exits_when_idle`: two fetches started at once leave exactly one
//!   worker; it got the token through its environment, not its arguments; a worker started by
//!   hand while the lock is held exits at once; the worker exits by itself once idle.
//! - `recovery_across_a_promotion_with_prefetch`: the failover scenario (an old base backup
//!   replays timeline 1, then timeline 2 after a promotion, from the archive alone, with
//!   `recovery_target_timeline = 'latest'`) with prefetch on: some segments come from the spool,
//!   the data ends right, and the worker is gone afterwards.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{
    archive_command, restore_command_with, segment_of_lsn, segment_offset, sha256_file, sha256_hex,
    table_fingerprint, wait_until, BaseBackupOptions, Cli, Pg, PgOptions, Server, TestDir,
    WalFactory, DEADLINE, SEG_SIZE,
};

/// How long an idle worker may take to go away: its idle timeout is 3 s.
const IDLE_DEADLINE: Duration = Duration::from_secs(20);

/// Complete spooled segments: the file and its sidecar, as the worker leaves them.
/// Pushes the factory's `names` to cluster `main`, one file per call.
fn archive_all(cli: &Cli, url: &str, factory: &WalFactory, names: &[String]) -> Result<()> {
    for name in names {
        let path = factory.path(name);
        cli.run_ok([
            "--url",
            url,
            "--look-ahead",
            "0",
            "push",
            "--cluster",
            "main",
            path.to_str().context("path")?,
        ])?;
    }
    Ok(())
}

fn spooled(spool: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(spool)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && spool.join(format!("{n}.sum")).exists())
        .collect();
    names.sort();
    Ok(names)
}

/// Every file in the spool directory (segments, sidecars, part files).
fn spool_files(spool: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(spool)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn lock_file(state: &Path) -> PathBuf {
    state.join("prefetch-worker.lock")
}

fn worker_log(state: &Path) -> String {
    std::fs::read_to_string(state.join("prefetch-worker.log")).unwrap_or_default()
}

/// Whether some process holds the worker lock of `state` (we can take it only if nobody does).
fn worker_holds_lock(state: &Path) -> Result<bool> {
    let path = lock_file(state);
    if !path.exists() {
        return Ok(false);
    }
    let file = File::options().read(true).write(true).open(&path)?;
    Ok(matches!(
        file.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ))
}

/// The PID the worker wrote into its lock file, once it has.
fn worker_pid(state: &Path) -> Result<Option<u32>> {
    let text = std::fs::read_to_string(lock_file(state)).unwrap_or_default();
    Ok(text.trim().parse().ok())
}

/// Whether `pid` is a live process (not gone, not a zombie waiting for its reaper).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Waits until no worker runs for `state`, as an idle one must do by itself.
fn wait_worker_gone(state: &Path) -> Result<()> {
    let pid = worker_pid(state)?;
    wait_until(IDLE_DEADLINE, "the prefetch worker exits by itself", || {
        Ok(!worker_holds_lock(state)? && pid.is_none_or(|p| !process_alive(p)))
    })
    .with_context(|| format!("--- worker log ---\n{}", worker_log(state)))
}

#[test]
fn a_corrupted_spool_file_is_never_handed_over() -> Result<()> {
    let dir = TestDir::new("prefetch-corrupt")?;
    let server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "factory")?;
    let names = factory.make_segments(6)?;
    let cli = Cli::new(&dir)?;
    let url = server.url();
    archive_all(&cli, &url, &factory, &names)?;

    let pg_wal = dir.subdir("restore-pg_wal")?;
    let state = dir.private_subdir("state")?;
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

    let out = fetch(&names[0])?;
    ensure!(out.success(), "fetch {}: {}", names[0], out.describe());
    ensure!(sha256_file(&dest)? == sha256_file(&factory.path(&names[0]))?);
    // The call returned at once; the worker fills the spool behind it.
    let spool = state.join("spool");
    let expected: Vec<String> = names[1..5].to_vec();
    wait_until(DEADLINE, "the worker spools the next 4 segments", || {
        Ok(spooled(&spool)? == expected)
    })
    .with_context(|| format!("spool: {:?}\n{}", spool_files(&spool), worker_log(&state)))?;

    // Flip a byte of the next spooled file: it must not reach PostgreSQL. The sidecar's last
    // field is the change time the file had when it was spooled; the kernel's clock for file
    // times moves once per tick, so the write is repeated until the change time has moved.
    let victim = spool.join(&names[1]);
    let sidecar = std::fs::read_to_string(spool.join(format!("{}.sum", names[1])))?;
    let sealed = sidecar
        .split_whitespace()
        .last()
        .context("sidecar")?
        .to_string();
    let mut bytes = std::fs::read(&victim)?;
    bytes[5000] ^= 0x01;
    wait_until(DEADLINE, "the damaged file's change time moves", || {
        std::fs::write(&victim, &bytes)?;
        let meta = std::fs::metadata(&victim)?;
        Ok(format!("{}.{:09}", meta.ctime(), meta.ctime_nsec()) != sealed)
    })?;
    let out = fetch(&names[1])?;
    ensure!(out.success(), "fetch {}: {}", names[1], out.describe());
    ensure!(
        out.stderr.contains("was changed after it was verified")
            && out.stderr.contains("discarded"),
        "the corruption went unnoticed: {}",
        out.describe()
    );
    ensure!(
        !out.stderr.contains("from the prefetch spool"),
        "{}",
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

    // The next name is a local copy, moved rather than downloaded.
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
    ensure!(
        !spool.join(&names[2]).exists(),
        "{} is still in the spool after its hand-over",
        names[2]
    );

    // A request on timeline 2 (as after a promotion): timeline-1 segments leave the spool and
    // are never handed over under a timeline-2 name.
    std::fs::remove_file(&dest)?;
    ensure!(!spooled(&spool)?.is_empty(), "the spool is already empty");
    let tl2 = format!("00000002{}", &names[3][8..]);
    let out = fetch(&tl2)?;
    ensure!(out.code == Some(1), "fetch {tl2}: {}", out.describe());
    ensure!(!dest.exists(), "{tl2} was handed over");
    // A download the worker had under way when the request came may still land; it goes at
    // the worker's next look at the wanted name.
    wait_until(DEADLINE, "timeline-1 segments leave the spool", || {
        Ok(spooled(&spool)?.is_empty())
    })
    .with_context(|| format!("spool: {:?}", spool_files(&spool)))?;
    // A name the archive does not have: a fast no, nothing written.
    let missing = segment_offset(names.last().context("names")?, 5, SEG_SIZE)?;
    let out = fetch(&missing)?;
    ensure!(out.code == Some(1), "fetch {missing}: {}", out.describe());
    ensure!(!dest.exists(), "{missing} was handed over");

    wait_worker_gone(&state)?;
    eprintln!("timing: fetch from the spool {spool_time:?}");
    Ok(())
}

#[test]
fn one_worker_per_spool_that_exits_when_idle() -> Result<()> {
    let dir = TestDir::new("prefetch-worker")?;
    let secret = format!(
        "wa-prefetch-{}",
        sha256_hex(dir.path().as_os_str().as_encoded_bytes())
    );
    let config = format!(
        "[[tokens]]\nname = \"main-archiver\"\nsecret_sha256 = \"{}\"\nrole = \"archiver\"\n",
        sha256_hex(secret.as_bytes())
    );
    let server = Server::start_with_config(&dir, Some(&config))?;
    let factory = WalFactory::start(&dir, "factory")?;
    let names = factory.make_segments(5)?;
    let cli = Cli::new(&dir)?.env("WAL_ARCHIVE_TOKEN", &secret);
    let url = server.url();
    archive_all(&cli, &url, &factory, &names)?;

    let pg_wal = dir.subdir("restore-pg_wal")?;
    let state = dir.private_subdir("state")?;
    let spool = state.join("spool");
    let fetch_args = |name: &str, dest: &Path| -> Result<Vec<String>> {
        Ok([
            "--url",
            &url,
            "--spool-dir",
            state.to_str().context("path")?,
            "--prefetch",
            "3",
            "fetch",
            "--cluster",
            "main",
            name,
            dest.to_str().context("path")?,
            "--pgdata",
            pg_wal.to_str().context("path")?,
        ]
        .map(String::from)
        .to_vec())
    };

    // Two fetches at once, both finding no worker: at most one may take the spool.
    let args_a = fetch_args(&names[0], &pg_wal.join("A"))?;
    let args_b = fetch_args(&names[0], &pg_wal.join("B"))?;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| cli.run(&args_a));
        let b = s.spawn(|| cli.run(&args_b));
        (a.join(), b.join())
    });
    let a = a.map_err(|_| anyhow::anyhow!("fetch A panicked"))??;
    let b = b.map_err(|_| anyhow::anyhow!("fetch B panicked"))??;
    ensure!(
        a.success() && b.success(),
        "{}\n{}",
        a.describe(),
        b.describe()
    );
    let original = sha256_file(&factory.path(&names[0]))?;
    ensure!(sha256_file(&pg_wal.join("A"))? == original);
    ensure!(sha256_file(&pg_wal.join("B"))? == original);

    wait_until(DEADLINE, "the worker spools the next 3 segments", || {
        Ok(spooled(&spool)? == names[1..4])
    })
    .with_context(|| format!("spool: {:?}\n{}", spool_files(&spool), worker_log(&state)))?;
    let pid = worker_pid(&state)?.context("no PID in the worker's lock file")?;

    // The token reached the worker (the server answered it), but not through its arguments.
    if process_alive(pid) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        ensure!(
            !cmdline.contains(&secret),
            "the token is in the worker's arguments: {cmdline}"
        );
        ensure!(cmdline.contains("fetch-worker"), "{cmdline}");
    }

    // A worker started by hand while the lock is held goes away at once.
    {
        let held = File::options()
            .read(true)
            .write(true)
            .open(lock_file(&state))?;
        wait_until(DEADLINE, "the test holds the worker lock", || {
            Ok(held.try_lock().is_ok())
        })?;
        let out = cli.run([
            "--url",
            &url,
            "--spool-dir",
            state.to_str().context("path")?,
            "fetch-worker",
            "--cluster",
            "main",
        ])?;
        ensure!(out.success(), "{}", out.describe());
        ensure!(
            out.elapsed < Duration::from_secs(5),
            "a second worker ran for {:?}",
            out.elapsed
        );
        ensure!(
            out.stderr.contains("another worker runs for this spool"),
            "{}",
            out.describe()
        );
    }

    // Idle (the archive ends, PostgreSQL asks for nothing): the worker exits by itself.
    wait_worker_gone(&state)?;
    ensure!(!process_alive(pid), "worker {pid} still runs");
    let log = worker_log(&state);
    ensure!(
        log.matches(": started").count() == 1,
        "not exactly one worker took the spool:\n{log}"
    );
    ensure!(log.contains("exiting: nothing to do"), "{log}");
    // Not a byte of the secret in the log either.
    ensure!(!log.contains(&secret), "the token is in the worker log");
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
    standby.wait_streaming(DEADLINE)?;

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
    ensure!(
        worker_log(&state).contains(": started"),
        "no prefetch worker ran:\n{}",
        worker_log(&state)
    );
    wait_worker_gone(&state)?;
    Ok(())
}
