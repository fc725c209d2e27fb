//! Look-ahead push (`wal-archive push --look-ahead N`): the next `.ready` files are sent while
//! the requested one is pushed, and acknowledgement records let later calls return at once.
//!
//! - `a_stale_record_never_yields_a_false_zero`: records are made by a look-ahead push of real
//!   segments from a fake pg_wal; then one later file is replaced by another cluster's segment of
//!   the same name (new inode) and another is changed in place: both pushes fail (the server
//!   refuses them), never 0; an untouched file returns 0 from its record without being re-sent.
//! - `a_backlog_is_archived_with_few_uploads`: a real PostgreSQL 15 builds a backlog of `.ready`
//!   segments with archiving paused, then archives it with look-ahead: every segment is stored,
//!   pg_stat_archiver shows them archived without failures, and most archive_command calls
//!   were answered from records ("already acknowledged").
//! - `a_compressed_push_stores_the_same_bytes`: `--compress-level 3` sends zstd bodies (the
//!   requested file and the look-ahead ones); the archive serves the original bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{
    archive_command_with, sha256_file, wait_until, Cli, Pg, PgOptions, Server, TestDir, WalFactory,
    DEADLINE,
};

/// A fake `pg_wal` with `archive_status/NAME.ready` for each file copied in.
fn fake_pg_wal(dir: &TestDir, name: &str) -> Result<PathBuf> {
    let pg_wal = dir.subdir(name)?;
    std::fs::create_dir_all(pg_wal.join("archive_status"))?;
    Ok(pg_wal)
}

fn add_ready(pg_wal: &Path, source: &Path, name: &str) -> Result<()> {
    std::fs::copy(source, pg_wal.join(name))?;
    std::fs::write(
        pg_wal.join("archive_status").join(format!("{name}.ready")),
        "",
    )?;
    Ok(())
}

/// What PostgreSQL does once push returned 0: `.ready` becomes `.done`.
fn mark_done(pg_wal: &Path, name: &str) -> Result<()> {
    let status = pg_wal.join("archive_status");
    std::fs::rename(
        status.join(format!("{name}.ready")),
        status.join(format!("{name}.done")),
    )?;
    Ok(())
}

#[test]
fn a_stale_record_never_yields_a_false_zero() -> Result<()> {
    let dir = TestDir::new("lookahead-stale")?;
    let server = Server::start(&dir)?;
    let api = server.api();
    let a = WalFactory::start(&dir, "a")?;
    let b = WalFactory::start(&dir, "b")?;
    let a_names = a.make_segments(5)?;
    let b_names = b.make_segments(8)?;
    // Two fresh clusters number their segments alike: find names both have.
    let shared: Vec<&String> = a_names[1..]
        .iter()
        .filter(|n| b_names.contains(n))
        .collect();
    ensure!(
        shared.len() >= 2,
        "clusters a ({a_names:?}) and b ({b_names:?}) share too few segment names"
    );
    let replaced = shared[0].clone();
    let changed = shared[1].clone();

    let pg_wal = fake_pg_wal(&dir, "pg_wal")?;
    for name in &a_names {
        add_ready(&pg_wal, &a.path(name), name)?;
    }
    let state = dir.private_subdir("state")?;
    let cli = Cli::new(&dir)?;
    let push = |name: &str| -> Result<wal_archive_e2e::Output> {
        cli.run([
            "--url",
            &server.url(),
            "--spool-dir",
            state.to_str().context("path")?,
            "--look-ahead",
            "16",
            "--json",
            "push",
            "--cluster",
            "main",
            pg_wal.join(name).to_str().context("path")?,
        ])
    };

    // The first push sends the whole backlog and records the others.
    let first = push(&a_names[0])?;
    ensure!(first.success(), "first push: {}", first.describe());
    mark_done(&pg_wal, &a_names[0])?;
    let listed = api.wal_names("main", None)?;
    for name in &a_names {
        ensure!(
            listed.contains(name),
            "look-ahead did not store {name}: {listed:?}"
        );
        if name != &a_names[0] {
            ensure!(
                state.join("acks").join(name).exists(),
                "no acknowledgement record for {name}"
            );
        }
    }

    // Same name, other bytes, new inode (a re-initialised cluster): never 0.
    let tmp = pg_wal.join(format!("{replaced}.new"));
    std::fs::copy(b.path(&replaced), &tmp)?;
    std::fs::rename(&tmp, pg_wal.join(&replaced))?;
    let out = push(&replaced)?;
    ensure!(
        !out.success() && !out.stderr.contains("already acknowledged"),
        "a push of cluster b's {replaced} over a record of cluster a's returned: {}",
        out.describe()
    );

    // Same inode, bytes changed in place (one byte of the second page).
    let path = pg_wal.join(&changed);
    let mut bytes = std::fs::read(&path)?;
    bytes[8192 + 100] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    let out = push(&changed)?;
    ensure!(
        !out.success() && !out.stderr.contains("already acknowledged"),
        "a push of {changed} changed in place returned: {}",
        out.describe()
    );
    // The archive still holds cluster a's bytes under both names.
    for name in [&replaced, &changed] {
        let got = api.get_wal("main", name, None)?;
        ensure!(got.status == 200, "GET {name}: {}", got.short());
        ensure!(
            wal_archive_e2e::sha256_hex(&got.body) == sha256_file(&a.path(name))?,
            "the archive's {name} is not cluster a's"
        );
    }

    // An untouched file: 0 from its record, and the record is gone once used.
    let untouched = a_names[1..]
        .iter()
        .find(|n| *n != &replaced && *n != &changed)
        .context("no untouched name")?
        .clone();
    let start = Instant::now();
    let out = push(&untouched)?;
    let acknowledged_time = start.elapsed();
    ensure!(
        out.success() && out.stderr.contains("already acknowledged"),
        "push of untouched {untouched}: {}",
        out.describe()
    );
    ensure!(
        out.stdout.contains("\"acknowledged\""),
        "JSON: {}",
        out.stdout
    );
    ensure!(!state.join("acks").join(&untouched).exists());

    // The same file once more, without a record: a real push, answered 200 by the server.
    let start = Instant::now();
    let out = push(&untouched)?;
    let real_time = start.elapsed();
    ensure!(
        out.success() && out.stdout.contains("already_stored"),
        "second push of {untouched}: {}",
        out.describe()
    );
    eprintln!("timing: push from a record {acknowledged_time:?}, real push (200) {real_time:?}");
    Ok(())
}

#[test]
fn a_backlog_is_archived_with_few_uploads() -> Result<()> {
    const BACKLOG: usize = 24;
    let dir = TestDir::new("lookahead-backlog")?;
    let server = Server::start(&dir)?;
    let state = dir.pg_subdir("state")?;

    let pg = Pg::init(&dir, "primary", PgOptions::default())?;
    pg.set("archive_mode", "on")?;
    // Archiving paused: PostgreSQL keeps marking segments .ready.
    pg.set("archive_command", "''")?;
    pg.start()?;
    pg.psql("create table t (id bigint primary key, payload text)")?;
    let mut last = String::new();
    for i in 0..BACKLOG {
        let from = i * 100;
        pg.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({from}, {}) g",
            from + 99
        ))?;
        last = pg.switch_wal()?;
    }
    let ready = pg.ready_files()?;
    ensure!(
        ready.len() >= BACKLOG,
        "only {} .ready files: {ready:?}",
        ready.len()
    );

    pg.set(
        "archive_command",
        archive_command_with(
            &server,
            "main",
            &format!(
                "--spool-dir {} --look-ahead 8 --parallel 2",
                state.display()
            ),
        )?,
    )?;
    pg.reload()?;
    pg.wait_archived(&last, Duration::from_secs(120))?;
    wait_until(DEADLINE, "pg_stat_archiver counts the backlog", || {
        Ok(pg
            .psql("select archived_count from pg_stat_archiver")?
            .parse::<usize>()?
            >= ready.len())
    })?;
    ensure!(
        pg.archive_failed_count()? == 0,
        "archive failures:\n{}",
        pg.log_tail()
    );
    let listed = server.api().wal_names("main", None)?;
    for name in &ready {
        ensure!(listed.contains(name), "the archive lacks {name}");
    }
    let log = pg.log();
    let from_records = log.matches("already acknowledged").count();
    eprintln!(
        "backlog: {} segments archived, {from_records} archive_command calls answered from records",
        ready.len()
    );
    ensure!(
        from_records * 2 >= ready.len(),
        "only {from_records} of {} archive_command calls were answered from records:\n{}",
        ready.len(),
        pg.log_tail()
    );
    // Every record was used: none is left over.
    let left: Vec<_> = std::fs::read_dir(state.join("acks"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(left.is_empty(), "records left: {left:?}");
    Ok(())
}

#[test]
fn a_compressed_push_stores_the_same_bytes() -> Result<()> {
    let dir = TestDir::new("lookahead-compress")?;
    let server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "factory")?;
    let names = factory.make_segments(3)?;
    let pg_wal = fake_pg_wal(&dir, "pg_wal")?;
    for name in &names {
        add_ready(&pg_wal, &factory.path(name), name)?;
    }
    let state = dir.private_subdir("state")?;
    let out = Cli::new(&dir)?.run_ok([
        "--url",
        &server.url(),
        "--spool-dir",
        state.to_str().context("path")?,
        "--compress-level",
        "3",
        "--json",
        "push",
        "--cluster",
        "main",
        pg_wal.join(&names[0]).to_str().context("path")?,
    ])?;
    ensure!(out.stdout.contains("\"stored\""), "{}", out.describe());
    // The requested file and the look-ahead ones, compressed on the way, read back identical.
    for name in &names {
        let got = server.api().get_wal("main", name, None)?;
        ensure!(got.status == 200, "GET {name}: {}", got.short());
        ensure!(
            wal_archive_e2e::sha256_hex(&got.body) == sha256_file(&factory.path(name))?,
            "{name} differs after a compressed push"
        );
    }
    Ok(())
}
