//! Faults and bad inputs: what bad luck and a careless or hostile client can do, and what the
//! archive promises in each case. Every test here drives the real binaries; the ones that need
//! WAL take it from real PostgreSQL 15.
//!
//! The promises (DESIGN §4, §7):
//! - **No acknowledged file is ever lost or unservable.** `push` exits 0 only for a file the
//!   server can serve back byte for byte, whatever happens to the server, its storage or the
//!   body on the way.
//! - **An exit code tells PostgreSQL the truth.** `fetch` exits 1 only when the archive itself
//!   says, in its own error body, that the cluster has no such file. Everything else (an
//!   unreadable config or CA file, bad arguments, a wrong URL, a proxy, an unknown cluster)
//!   exits 1 in standby mode and 255 in archive recovery, so recovery never ends early at the
//!   wrong point. `push` exits non-zero on every failure.
//! - **Private.** The server's data directory and everything in it are owner-only whatever the
//!   umask; one found open to others is closed at start.
//!
//! Tests:
//! - `fetch_exit_codes_tell_the_truth`: 8 kinds of failure × standby and archive recovery,
//!   and the one true "no such file".
//! - `push_fails_loudly_on_setup_errors`: an unreadable config, a bad CA file, bad arguments.
//! - `the_data_directory_is_owner_only`: a data directory made 0755 before start, a server
//!   started under umask 022: every directory 0700 and file 0600 after pushes.
//! - `a_server_replaced_under_a_client_gets_every_file`: look-ahead records made against one
//!   archive are never taken for an acknowledgement by the new archive at the same URL (its
//!   storage replaced, as by a restored VM snapshot or a rebuilt host): every file is sent again
//!   and the new archive serves them all.
//! - `kill_9_at_every_step_of_ingest`, `..._of_a_backup`, `..._of_retention`: the server
//!   kills itself with SIGKILL at each named step (`WAL_ARCHIVE_CRASH_AT`, see
//!   `server/src/crash.rs`) and is started again: no push killed before its answer exited 0,
//!   every file acknowledged before is served byte for byte, a re-push succeeds; a backup
//!   killed before `done` is failed and leaves no objects, one killed after `done` is still
//!   done and verifies; a retention run killed anywhere is finished at the next start, leaving
//!   exactly the retained backups, all verifying, and no WAL row without its object.
//! - `bad_bodies_are_refused_and_nothing_is_stored`: over raw HTTP to the real server: a body
//!   torn off mid-way (the connection closed), a body that stalls past `body_idle_timeout`, a
//!   zstd body cut inside its frame or with bytes after it, a plain body sent as zstd, an
//!   unknown encoding, a body longer than a segment, a zstd body padded with skippable
//!   frames: each refused (or dropped) and nothing stored; a slow but steady body is stored.
//! - `a_full_disk_refuses_and_loses_nothing`: the data directory on a small tmpfs filled to the
//!   brim: pushes fail (507 or 503) and PostgreSQL would keep its files; once space is freed the
//!   same pushes succeed and every file acknowledged before is served.
//! - `a_silent_partition_is_noticed_and_healed`: the receiver's connection goes silent (a proxy
//!   stops forwarding without closing): within `receiver_timeout` the receiver reports
//!   `reconnecting` and `check` fails; once the network is back it streams again, with no gap.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use wal_archive_e2e::backup::{orphan_objects, BackupRig};
use wal_archive_e2e::{
    list_files, streaming_config, Cli, FakeHttp, FreezableProxy, Output, Pg, PgOptions, Server,
    TestDir, WalFactory,
};

const CRASH_AT: &str = "WAL_ARCHIVE_CRASH_AT";

/// Starts `server` again with `WAL_ARCHIVE_CRASH_AT=point` (or without it).
fn restart_with_crash(server: &mut Server, point: Option<&str>) -> Result<()> {
    match point {
        Some(p) => server.set_env(CRASH_AT, p),
        None => server.remove_env(CRASH_AT),
    }
    server.start_again()
}

/// Waits until the server killed itself, and checks that it did so at `point`.
fn expect_crashed(server: &mut Server, point: &str) -> Result<()> {
    let status = server.wait_exit(Duration::from_secs(60))?;
    ensure!(!status.success(), "the server exited cleanly: {status}");
    ensure!(
        server.log().contains(&format!("{CRASH_AT}={point}")),
        "the server did not stop at {point}:\n{}",
        server.log_tail()
    );
    Ok(())
}

fn expect_exit(out: &Output, code: i32, what: &str) -> Result<()> {
    ensure!(
        out.code == Some(code),
        "{what}: expected exit {code}, got {}",
        out.describe()
    );
    Ok(())
}

fn ensure_nothing_in(dir: &Path) -> Result<()> {
    let left = list_files(dir)?;
    ensure!(left.is_empty(), "files left in {}: {left:?}", dir.display());
    Ok(())
}

/// One way for `fetch` to go wrong, and the exit code it must give in each mode.
struct Case<'a> {
    what: &'a str,
    global: Vec<&'a str>,
    cluster: &'a str,
    extra: Vec<&'a str>,
    in_standby: i32,
    in_recovery: i32,
}

#[test]
fn fetch_exit_codes_tell_the_truth() -> Result<()> {
    let dir = TestDir::new("fetch-truth")?;
    let server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(1)?;
    let cli = Cli::new(&dir)?;
    cli.run_ok([
        "--url",
        &server.url(),
        "push",
        "--cluster",
        "main",
        &factory.path(&names[0]).to_string_lossy(),
    ])?;
    let standby_dir = dir.subdir("standby-pgdata")?;
    std::fs::write(standby_dir.join("standby.signal"), "")?;
    let recovery_dir = dir.subdir("recovery-pgdata")?;
    std::fs::write(recovery_dir.join("recovery.signal"), "")?;
    let dest_dir = dir.subdir("dest")?;
    let dest = dest_dir.join("RECOVERYXLOG").to_string_lossy().into_owned();
    let missing_config = dir.path().join("no-such-client.toml");
    let bad_pem = dir.path().join("bad-ca.pem");
    std::fs::write(&bad_pem, "-----BEGIN CERTIFICATE-----\nnot base64 !!\n")?;
    // Another service answering 404 in the archive's own words, but not for this cluster.
    let proxy = FakeHttp::start(
        "404 Not Found",
        r#"{"error":"not_found","message":"no route"}"#,
    )?;
    let url = server.url();
    let prefixed = format!("{url}/archive");
    let next_name = wal_archive_e2e::segment_offset(&names[0], 1, wal_archive_e2e::SEG_SIZE)?;

    let missing_config_arg = missing_config.to_string_lossy().into_owned();
    let bad_pem_arg = bad_pem.to_string_lossy().into_owned();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let proxy_url = proxy.url();
    let cases = [
        Case {
            what: "the archive has no such file",
            global: vec!["--url", &url],
            cluster: "main",
            extra: vec![],
            in_standby: 1,
            in_recovery: 1,
        },
        Case {
            what: "an unknown cluster",
            global: vec!["--url", &url],
            cluster: "mian",
            extra: vec![],
            in_standby: 1,
            in_recovery: 255,
        },
        Case {
            what: "a wrong path prefix",
            global: vec!["--url", &prefixed],
            cluster: "main",
            extra: vec![],
            in_standby: 1,
            in_recovery: 255,
        },
        Case {
            what: "a proxy's 404",
            global: vec!["--url", &proxy_url],
            cluster: "main",
            extra: vec![],
            in_standby: 1,
            in_recovery: 255,
        },
        Case {
            what: "a config file that does not exist",
            global: vec!["--url", &url, "--config", &missing_config_arg],
            cluster: "main",
            extra: vec![],
            in_standby: 1,
            in_recovery: 255,
        },
        Case {
            what: "a config file that is a directory",
            global: vec!["--url", &url, "--config", &dir_arg],
            cluster: "main",
            extra: vec![],
            in_standby: 1,
            in_recovery: 255,
        },
        Case {
            what: "a CA file that does not exist",
            global: vec!["--url", &url, "--ca-file", &missing_config_arg],
            cluster: "main",
            extra: vec![],
            in_standby: 1,
            in_recovery: 255,
        },
        Case {
            what: "a CA file that is not PEM",
            global: vec!["--url", &url, "--ca-file", &bad_pem_arg],
            cluster: "main",
            extra: vec![],
            in_standby: 1,
            in_recovery: 255,
        },
        Case {
            what: "an unknown option",
            global: vec!["--url", &url],
            cluster: "main",
            extra: vec!["--no-such-option"],
            in_standby: 1,
            in_recovery: 255,
        },
    ];
    for Case {
        what,
        global,
        cluster,
        extra,
        in_standby,
        in_recovery,
    } in cases
    {
        for (mode, pgdata, want) in [
            ("standby mode", &standby_dir, in_standby),
            ("archive recovery", &recovery_dir, in_recovery),
        ] {
            let mut args: Vec<&str> = global.clone();
            args.extend(["--retry-for", "1", "fetch", "--cluster", cluster]);
            args.extend([next_name.as_str(), dest.as_str()]);
            args.extend(extra.iter().copied());
            let out = cli.clone().cwd(pgdata).run(&args)?;
            expect_exit(&out, want, &format!("fetch with {what}, in {mode}"))?;
            ensure!(
                out.elapsed < Duration::from_secs(10),
                "fetch with {what} took {:?}",
                out.elapsed
            );
            ensure_nothing_in(&dest_dir)?;
        }
    }
    // And the file that is there still comes back.
    cli.clone().cwd(&recovery_dir).run_ok([
        "--url",
        &url,
        "fetch",
        "--cluster",
        "main",
        &names[0],
        &dest,
    ])?;
    ensure!(std::fs::read(&dest)? == factory.read(&names[0])?);
    Ok(())
}

#[test]
fn push_fails_loudly_on_setup_errors() -> Result<()> {
    let dir = TestDir::new("push-setup")?;
    let server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(1)?;
    let path = factory.path(&names[0]).to_string_lossy().into_owned();
    let cli = Cli::new(&dir)?;
    let url = server.url();
    let missing = dir
        .path()
        .join("missing.toml")
        .to_string_lossy()
        .into_owned();
    for (what, args) in [
        (
            "a config file that does not exist",
            vec!["--url", &url, "--config", &missing, "push"],
        ),
        (
            "a CA file that does not exist",
            vec!["--url", &url, "--ca-file", &missing, "push"],
        ),
        ("an unknown option", vec!["--url", &url, "push", "--bogus"]),
    ] {
        let mut args = args.clone();
        args.extend(["--cluster", "main", path.as_str()]);
        let out = cli.run(&args)?;
        ensure!(!out.success(), "push with {what} exited 0");
        ensure!(
            out.code.is_some_and(|c| (1..=125).contains(&c)),
            "push with {what}: exit {:?}, wanted 1..=125 so PostgreSQL keeps and retries",
            out.code
        );
    }
    ensure!(
        server
            .api()
            .wal_names("main", None)
            .unwrap_or_default()
            .is_empty(),
        "nothing was stored"
    );
    Ok(())
}

/// Every path under `root` with its permission bits.
fn modes(root: &Path) -> Result<Vec<(String, u32, bool)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            let mode = meta.permissions().mode() & 0o7777;
            out.push((e.path().display().to_string(), mode, meta.is_dir()));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(out)
}

#[test]
fn the_data_directory_is_owner_only() -> Result<()> {
    let dir = TestDir::new("private")?;
    let mut server = Server::prepare(&dir, None)?;
    std::fs::create_dir_all(server.data_dir())?;
    std::fs::set_permissions(server.data_dir(), std::fs::Permissions::from_mode(0o755))?;
    // The server is started under umask 022, as an unconfigured service would be.
    server.start_again_with_umask(0o022)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let cli = server.cli()?;
    for name in factory.make_segments(2)? {
        cli.run_ok([
            "push",
            "--cluster",
            "main",
            &factory.path(&name).to_string_lossy(),
        ])?;
    }
    let top = std::fs::metadata(server.data_dir())?.permissions().mode() & 0o7777;
    ensure!(top == 0o700, "data directory mode {top:o}");
    ensure!(
        server.log().contains("it is now 0700"),
        "the server says it closed the directory"
    );
    let all = modes(server.data_dir())?;
    ensure!(all.len() > 5, "{all:?}");
    for (path, mode, is_dir) in all {
        ensure!(
            mode & 0o077 == 0,
            "{path} is {mode:o}: open to others ({})",
            if is_dir { "directory" } else { "file" }
        );
    }
    Ok(())
}

#[test]
fn a_server_replaced_under_a_client_gets_every_file() -> Result<()> {
    let dir = TestDir::new("replaced")?;
    let mut server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(4)?;
    let pg_wal = dir.subdir("pg_wal")?;
    std::fs::create_dir_all(pg_wal.join("archive_status"))?;
    for name in &names {
        std::fs::copy(factory.path(name), pg_wal.join(name))?;
        std::fs::write(pg_wal.join(format!("archive_status/{name}.ready")), "")?;
    }
    let state = dir.private_subdir("state")?;
    let cli = Cli::new(&dir)?;
    let url = server.url();
    let push = |name: &str| {
        cli.run([
            "--url",
            &url,
            "--spool-dir",
            &state.to_string_lossy(),
            "--look-ahead",
            "16",
            "push",
            "--cluster",
            "main",
            &pg_wal.join(name).to_string_lossy(),
        ])
    };
    let first = push(&names[0])?;
    ensure!(first.success(), "{}", first.describe());
    std::fs::rename(
        pg_wal.join(format!("archive_status/{}.ready", names[0])),
        pg_wal.join(format!("archive_status/{}.done", names[0])),
    )?;
    for name in &names[1..] {
        ensure!(
            state.join("acks").join(name).exists(),
            "no acknowledgement record for {name}: {}",
            first.describe()
        );
    }
    // The archive is replaced at the same URL: same port, new storage.
    server.stop()?;
    std::fs::remove_dir_all(server.data_dir())?;
    server.start_again()?;
    for name in &names[1..] {
        let out = push(name)?;
        ensure!(out.success(), "{}", out.describe());
        ensure!(
            !out.stderr.contains("already acknowledged"),
            "{name} was taken as acknowledged by the new archive: {}",
            out.describe()
        );
    }
    let held = server.api().wal_names("main", None)?;
    for name in &names[1..] {
        ensure!(
            held.contains(name),
            "the new archive lacks {name}: {held:?}"
        );
        let r = server.api().get_wal("main", name, None)?;
        ensure!(
            r.status == 200 && r.body == factory.read(name)?,
            "{name} served back"
        );
    }
    Ok(())
}

#[test]
fn a_silent_partition_is_noticed_and_healed() -> Result<()> {
    let dir = TestDir::new("partition")?;
    let pg = Pg::init(&dir, "primary", PgOptions::default())?;
    // The old walsender must let go of the slot soon after the partition, for the new
    // connection to take it.
    pg.set("wal_sender_timeout", "'3s'")?;
    pg.start()?;
    pg.psql("create table t (id int)")?;
    let proxy = FreezableProxy::start(pg.port())?;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} sslmode=disable connect_timeout=2",
        proxy.port(),
        pg.superuser()?
    );
    let server = Server::start_with_config(
        &dir,
        Some(&streaming_config("main", &conninfo, "receiver_timeout = 4")),
    )?;
    let streaming = |v: &serde_json::Value| Ok(v["state"] == "streaming");
    server.wait_receiver(
        "main",
        "the receiver streams",
        Duration::from_secs(60),
        streaming,
    )?;
    pg.psql("insert into t select generate_series(1, 1000)")?;
    let before = pg.switch_wal()?;
    wait_archived(&server, &before)?;

    proxy.freeze();
    let started = std::time::Instant::now();
    let status = server.wait_receiver(
        "main",
        "the receiver notices the silence",
        Duration::from_secs(30),
        |v| Ok(v["state"] != "streaming"),
    )?;
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "noticed only after {:?}",
        started.elapsed()
    );
    let reason = status["reason"].as_str().unwrap_or_default();
    ensure!(reason.contains("no message from the server"), "{status}");
    let check = server.cli()?.run(["check", "--cluster", "main"])?;
    ensure!(
        !check.success(),
        "check passes during a partition: {}",
        check.describe()
    );
    // WAL written meanwhile is not lost: it is streamed once the network is back.
    pg.psql("insert into t select generate_series(1, 1000)")?;
    let during = pg.switch_wal()?;

    proxy.thaw();
    server.wait_receiver(
        "main",
        "the receiver streams again",
        Duration::from_secs(60),
        streaming,
    )?;
    wait_archived(&server, &during)?;
    let names = server.api().wal_names("main", None)?;
    let first = names
        .iter()
        .find(|n| n.len() == 24)
        .cloned()
        .unwrap_or_default();
    for name in wal_archive_e2e::segment_range(&first, &during, wal_archive_e2e::SEG_SIZE)? {
        ensure!(names.contains(&name), "gap at {name}: {names:?}");
    }
    Ok(())
}

/// Waits until the archive lists `segment`.
fn wait_archived(server: &Server, segment: &str) -> Result<()> {
    wal_archive_e2e::wait_until(
        Duration::from_secs(60),
        &format!("{segment} is archived"),
        || {
            Ok(server
                .api()
                .wal_names("main", None)?
                .iter()
                .any(|n| n == segment))
        },
    )
}

#[test]
fn kill_9_at_every_step_of_ingest() -> Result<()> {
    let dir = TestDir::new("kill-ingest")?;
    let mut server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let cli = server.cli()?;
    let push = |name: &str| {
        cli.run([
            "--retry-for",
            "1",
            "--look-ahead",
            "0",
            "push",
            "--cluster",
            "main",
            &factory.path(name).to_string_lossy(),
        ])
    };
    let mut acknowledged: Vec<String> = Vec::new();
    for point in ["ingest.received", "ingest.published", "ingest.cataloged"] {
        let name = factory.make_segments(1)?.remove(0);
        server.stop()?;
        restart_with_crash(&mut server, Some(point))?;
        let out = push(&name)?;
        ensure!(
            !out.success(),
            "push answered 0 from a server killed at {point}"
        );
        expect_crashed(&mut server, point)?;
        restart_with_crash(&mut server, None)?;
        // Everything acknowledged so far is there, byte for byte.
        for earlier in &acknowledged {
            let r = server.api().get_wal("main", earlier, None)?;
            ensure!(
                r.status == 200 && r.body == factory.read(earlier)?,
                "{earlier}, acknowledged before the kill at {point}, is not served: {}",
                r.short()
            );
        }
        // PostgreSQL pushes the same file again: stored (or found stored), then served.
        let out = push(&name)?;
        ensure!(
            out.success(),
            "re-push after the kill at {point}: {}",
            out.describe()
        );
        let r = server.api().get_wal("main", &name, None)?;
        ensure!(
            r.status == 200 && r.body == factory.read(&name)?,
            "{name} after {point}"
        );
        acknowledged.push(name);
    }
    let listing = server.api().wal_listing("main", None)?;
    ensure!(
        listing["missing"].as_array().is_none_or(|m| m.is_empty()),
        "{listing}"
    );
    ensure!(
        list_files(&server.storage_dir().join("staging"))
            .unwrap_or_default()
            .is_empty(),
        "staging debris left"
    );
    Ok(())
}

/// `GET .../backups/{id}` of cluster main.
fn backup_status(server: &Server, id: &str) -> Result<serde_json::Value> {
    let r = server
        .api()
        .get(&format!("/v1/clusters/main/backups/{id}"), None)?;
    ensure!(r.status == 200, "backup {id}: {}", r.short());
    r.json()
}

#[test]
fn kill_9_at_every_step_of_a_backup() -> Result<()> {
    let mut rig = BackupRig::start("kill-backup")?;
    rig.primary
        .psql("create table t (id int primary key, payload text)")?;
    rig.primary
        .psql("insert into t select g, md5(g::text) from generate_series(1, 20000) g")?;
    rig.archive_now()?;
    for point in ["backup.streaming", "backup.streamed", "backup.done"] {
        rig.server.stop()?;
        restart_with_crash(&mut rig.server, Some(point))?;
        let out = rig
            .server
            .cli()?
            .run(["--json", "backup", "--cluster", "main"])?;
        ensure!(out.success(), "backup start: {}", out.describe());
        let id = serde_json::from_str::<serde_json::Value>(&out.stdout)?["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if point != "backup.streaming" {
            // PostgreSQL ends the backup with a WAL switch; archive_command brings it in.
            rig.primary.psql("select 1")?;
        }
        expect_crashed(&mut rig.server, point)?;
        restart_with_crash(&mut rig.server, None)?;
        let info = backup_status(&rig.server, &id)?;
        if point == "backup.done" {
            ensure!(
                info["status"] == "done",
                "a done backup came back as {info}"
            );
            let out = rig
                .server
                .cli()?
                .run(["verify", "--cluster", "main", &id])?;
            ensure!(out.success(), "verify of {id}: {}", out.describe());
        } else {
            ensure!(
                info["status"] == "failed",
                "after a kill at {point}: {info}"
            );
            ensure!(
                info["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("interrupted"),
                "{info}"
            );
        }
        let orphans = orphan_objects(&rig.server, "main")?;
        ensure!(
            orphans.is_empty(),
            "after {point}: objects nothing references: {orphans:?}"
        );
    }
    // And the next backup is done.
    rig.backup()?;
    Ok(())
}

#[test]
fn kill_9_at_every_step_of_retention() -> Result<()> {
    let dir = TestDir::new("kill-retention")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    let config = format!(
        "{}retention = \"redundancy 1\"\nminimum_redundancy = 1\n",
        wal_archive_e2e::backup::backup_config("main", &primary.conninfo()?)
    );
    let mut server = Server::start_with_config(&dir, Some(&config))?;
    primary.set("archive_mode", "on")?;
    primary.set(
        "archive_command",
        wal_archive_e2e::archive_command(&server, "main")?,
    )?;
    primary.start()?;
    primary.psql("create table t (id int)")?;
    let backup = |server: &Server| -> Result<String> {
        primary.psql("insert into t select generate_series(1, 1000)")?;
        let seg = primary.switch_wal()?;
        primary.wait_archived(&seg, Duration::from_secs(60))?;
        let out = server.cli()?.timeout(Duration::from_secs(120)).run([
            "--json",
            "backup",
            "--cluster",
            "main",
            "--wait",
        ])?;
        ensure!(out.success(), "backup: {}", out.describe());
        Ok(
            serde_json::from_str::<serde_json::Value>(&out.stdout)?["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    backup(&server)?;
    for point in [
        "retention.planned",
        "retention.backups_removed",
        "retention.wal_objects_removed",
    ] {
        let newest = backup(&server)?;
        server.stop()?;
        restart_with_crash(&mut server, Some(point))?;
        let out = server
            .cli()?
            .run(["--retry-for", "1", "retention", "--cluster", "main"])?;
        ensure!(
            !out.success(),
            "retention reported success from a server killed at {point}"
        );
        expect_crashed(&mut server, point)?;
        restart_with_crash(&mut server, None)?;
        // The interrupted run was finished at start: only the newest backup is left.
        let list = server
            .api()
            .get("/v1/clusters/main/backups", None)?
            .json()?;
        let ids: Vec<&str> = list
            .as_array()
            .map(|a| a.iter().filter_map(|b| b["id"].as_str()).collect())
            .unwrap_or_default();
        ensure!(
            ids == vec![newest.as_str()],
            "after a kill at {point}: {list}"
        );
        let out = server
            .cli()?
            .run(["verify", "--cluster", "main", &newest])?;
        ensure!(
            out.success(),
            "verify of {newest} after {point}: {}",
            out.describe()
        );
        let listing = server.api().wal_listing("main", None)?;
        ensure!(
            listing["missing"].as_array().is_none_or(|m| m.is_empty()),
            "after {point}, rows without objects: {listing}"
        );
        let orphans = orphan_objects(&server, "main")?;
        ensure!(orphans.is_empty(), "after {point}: {orphans:?}");
    }
    Ok(())
}

/// One raw HTTP/1.1 `PUT` of `parts` (each sent after its pause) to the server on `port`, with
/// `Content-Length` of `declared` bytes and the extra `headers`. With `close_early`, the
/// connection is closed after the parts, whatever was declared. Returns the status and body
/// of the answer, or `None` when none came (the server dropped the connection).
fn raw_put(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    declared: usize,
    parts: &[(Vec<u8>, Duration)],
    close_early: bool,
) -> Result<Option<(u16, String)>> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n\
         Connection: close\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    for (bytes, pause) in parts {
        std::thread::sleep(*pause);
        if conn.write_all(bytes).is_err() {
            break;
        }
    }
    if close_early {
        drop(conn);
        return Ok(None);
    }
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    Ok(status.map(|s| (s, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())))
}

/// A bad body: what it is, its headers, the length it declares, its parts (each sent after its
/// pause), whether the client hangs up after them, and the statuses it may get (none: the
/// server may only drop the connection).
struct BodyCase<'a>(
    &'a str,
    &'a [(&'a str, &'a str)],
    usize,
    Vec<(Vec<u8>, Duration)>,
    bool,
    &'a [u16],
);

#[test]
fn bad_bodies_are_refused_and_nothing_is_stored() -> Result<()> {
    let dir = TestDir::new("bad-bodies")?;
    let server = Server::start_with_config(&dir, Some("body_idle_timeout = 2\n"))?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(3)?;
    // The cluster is bound by a first segment, so that its bodies have their size limit.
    server.cli()?.run_ok([
        "push",
        "--cluster",
        "main",
        &factory.path(&names[0]).to_string_lossy(),
    ])?;
    let name = &names[1];
    let plain = factory.read(name)?;
    let path = format!("/v1/clusters/main/wal/{name}");
    let whole = zstd::encode_all(&plain[..], 3)?;
    let mut cut = whole.clone();
    cut.truncate(whole.len() - 3);
    let mut trailing = whole.clone();
    trailing.extend_from_slice(b"TRAILER!");
    let mut padded = Vec::new();
    for _ in 0..3 {
        padded.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        padded.extend_from_slice(&(1u32 << 20).to_le_bytes());
        padded.extend_from_slice(&vec![0u8; 1 << 20]);
    }
    padded.extend_from_slice(&whole);
    let mut long = plain.clone();
    long.push(0);
    let now = Duration::ZERO;
    let zstd = [("Content-Encoding", "zstd")];
    let half = plain[..plain.len() / 2].to_vec();
    let cases: Vec<BodyCase> = vec![
        BodyCase(
            "torn off",
            &[],
            plain.len(),
            vec![(half.clone(), now)],
            true,
            &[],
        ),
        BodyCase(
            "stalled",
            &[],
            plain.len(),
            vec![(half.clone(), now)],
            false,
            &[400],
        ),
        BodyCase(
            "zstd cut short",
            &zstd,
            cut.len(),
            vec![(cut.clone(), now)],
            false,
            &[422],
        ),
        BodyCase(
            "zstd with bytes after",
            &zstd,
            trailing.len(),
            vec![(trailing.clone(), now)],
            false,
            &[422],
        ),
        BodyCase(
            "plain sent as zstd",
            &zstd,
            plain.len(),
            vec![(plain.clone(), now)],
            false,
            &[422],
        ),
        BodyCase(
            "unknown encoding",
            &[("Content-Encoding", "gzip")],
            plain.len(),
            vec![(plain.clone(), now)],
            false,
            &[415],
        ),
        BodyCase(
            "longer than a segment",
            &[],
            long.len(),
            vec![(long.clone(), now)],
            false,
            &[422],
        ),
        BodyCase(
            "padded with skippable frames",
            &zstd,
            padded.len(),
            vec![(padded.clone(), now)],
            false,
            &[422],
        ),
    ];
    let tried = cases.len();
    for BodyCase(what, headers, declared, parts, close, statuses) in cases {
        let answer = raw_put(server.port(), &path, headers, declared, &parts, close)?;
        if let Some((status, body)) = &answer {
            ensure!(
                statuses.contains(status),
                "{what}: HTTP {status} {body}, wanted one of {statuses:?}"
            );
        }
        let r = server.api().get_wal("main", name, None)?;
        ensure!(r.status == 404, "{what}: {name} was stored: {}", r.short());
    }
    // A slow but steady body (a piece every half second, each under the idle timeout).
    let steady: Vec<(Vec<u8>, Duration)> = plain
        .chunks(plain.len() / 6 + 1)
        .map(|c| (c.to_vec(), Duration::from_millis(500)))
        .collect();
    let answer = raw_put(server.port(), &path, &[], plain.len(), &steady, false)?;
    ensure!(
        matches!(answer, Some((201, _))),
        "a slow, steady upload: {answer:?}"
    );
    let r = server.api().get_wal("main", name, None)?;
    ensure!(r.status == 200 && r.body == plain, "{name} served back");
    ensure!(tried == 8);
    Ok(())
}

/// A tmpfs of `size` mounted at `path` for the test; unmounted when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        let out = wal_archive_e2e::run_with_deadline(
            std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(path),
            Duration::from_secs(30),
        )?;
        ensure!(
            out.success(),
            "this test needs to mount a small tmpfs (as root) to fill a disk for real: {}",
            out.describe()
        );
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn a_full_disk_refuses_and_loses_nothing() -> Result<()> {
    let dir = TestDir::new("disk-full")?;
    let mut server = Server::prepare(&dir, None)?;
    let disk = Tmpfs::mount(server.data_dir(), "24m")?;
    server.start_again()?;
    let factory = WalFactory::start(&dir, "pg")?;
    let cli = server.cli()?;
    let push = |name: &str| {
        cli.run([
            "--retry-for",
            "1",
            "--look-ahead",
            "0",
            "push",
            "--cluster",
            "main",
            &factory.path(name).to_string_lossy(),
        ])
    };
    let mut stored = Vec::new();
    for name in factory.make_segments(3)? {
        ensure!(push(&name)?.success());
        stored.push(name);
    }
    // Fill the disk to the last few kilobytes.
    let filler = disk.path.join("filler");
    {
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0xA5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let waiting = factory.make_segments(3)?;
    for name in &waiting {
        let out = push(name)?;
        ensure!(!out.success(), "push of {name} to a full disk exited 0");
        ensure!(
            out.stderr.contains("507") || out.stderr.contains("503"),
            "{}",
            out.describe()
        );
    }
    // Everything acknowledged before is still served, byte for byte.
    for name in &stored {
        let r = server.api().get_wal("main", name, None)?;
        ensure!(
            r.status == 200 && r.body == factory.read(name)?,
            "{name} on a full disk"
        );
    }
    // Space back: PostgreSQL's retries succeed.
    std::fs::remove_file(&filler)?;
    for name in &waiting {
        let out = push(name)?;
        ensure!(
            out.success(),
            "{name} once space is back: {}",
            out.describe()
        );
        stored.push(name.clone());
    }
    for name in &stored {
        let r = server.api().get_wal("main", name, None)?;
        ensure!(
            r.status == 200 && r.body == factory.read(name)?,
            "{name} at the end"
        );
    }
    let listing = server.api().wal_listing("main", None)?;
    ensure!(
        listing["missing"].as_array().is_none_or(|m| m.is_empty()),
        "{listing}"
    );
    server.stop()?;
    Ok(())
}
