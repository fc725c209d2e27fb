//! Guarantee 5 (crash-safe) and 1 (durable before acknowledged): `kill -9` of the server while
//! PostgreSQL is archiving loses nothing PostgreSQL was told is archived.
//!
//! - `server_killed_during_a_stream_of_pushes_loses_nothing`: PostgreSQL archives through
//!   `wal-archive push` while a loop writes and switches segments; the server is killed with
//!   SIGKILL several times in the middle and restarted; once `last_archived_wal` reaches the last
//!   switched segment, every segment from the first archived one to it is fetched with exit 0,
//!   is byte-identical to the copy archive_command kept aside, and `pg_waldump` (the oracle)
//!   parses the whole range.
//! - `interrupted_upload_leaves_nothing_visible`: an upload cut in the middle of its body, once
//!   by the client going away (the helper killed) and once by `kill -9` of the server, leaves no
//!   file in the listing, on GET or in storage; the full upload afterwards is stored (201).

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{
    is_segment_name, run_with_deadline, segment_range, sha256_file, wait_until, Pg, PgOptions,
    Server, TestDir, WalFactory, DEADLINE, PG_BIN, SEG_SIZE,
};

const SEGMENTS: usize = 30;
const KILLS: usize = 3;

#[test]
fn server_killed_during_a_stream_of_pushes_loses_nothing() -> Result<()> {
    let dir = TestDir::new("crash")?;
    let mut server = Server::start(&dir)?;
    let api = server.api();
    // archive_command keeps its own copy first: the oracle for the fetched bytes.
    let copies = dir.pg_subdir("copies")?;
    let cli = server.cli()?;
    let archive_command = format!(
        "'cp %p {c}/%f.tmp && mv {c}/%f.tmp {c}/%f && {bin} --url {url} push --cluster main %p'",
        c = copies.display(),
        bin = cli.bin().display(),
        url = server.url()
    );
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.set("archive_mode", "on")?;
    pg.set("archive_command", archive_command)?;
    pg.start()?;
    pg.psql("create table t (id bigint, payload text)")?;

    let switched: Vec<String> = std::thread::scope(|scope| -> Result<Vec<String>> {
        let writer = scope.spawn(|| -> Result<Vec<String>> {
            let mut names = Vec::new();
            for round in 0..SEGMENTS {
                pg.psql(&format!(
                    "insert into t select g, repeat(md5(g::text), 4) from generate_series({}, {}) g",
                    round * 1000,
                    round * 1000 + 999
                ))?;
                names.push(pg.switch_wal()?);
            }
            Ok(names)
        });
        for kill in 1..=KILLS {
            // Kill while segments are arriving: after a few more have been stored.
            let want = kill * SEGMENTS / (KILLS + 2);
            wait_until(DEADLINE, &format!("{want} segments are archived"), || {
                Ok(api.wal_names("main", None)?.len() >= want || writer.is_finished())
            })?;
            server.kill9()?;
            server.start_again()?;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
    })?;

    let last = switched.last().context("no segment switched")?.clone();
    pg.wait_archived(&last, Duration::from_secs(90))?;
    let last_archived = pg.last_archived_wal()?.context("nothing archived")?;
    let listed: Vec<String> = api
        .wal_names("main", None)?
        .into_iter()
        .filter(|n| is_segment_name(n))
        .collect();
    let first = listed
        .first()
        .context("the archive lists no segment")?
        .clone();
    let range = segment_range(&first, &last_archived[..24], SEG_SIZE)?;
    ensure!(
        range.len() >= SEGMENTS,
        "only {} segments archived",
        range.len()
    );

    let fetched = dir.subdir("fetched")?;
    for name in &range {
        let dest = fetched.join(name);
        let out = cli.run(["fetch", "--cluster", "main", name, &dest.to_string_lossy()])?;
        ensure!(out.success(), "fetch of {name} failed: {}", out.describe());
        let copy = copies.join(name);
        ensure!(
            sha256_file(&dest)? == sha256_file(&copy)?,
            "the archive's {name} differs from what PostgreSQL handed to archive_command"
        );
    }
    waldump(&fetched, &first, &last_archived[..24])?;
    Ok(())
}

/// `pg_waldump -p DIR FIRST LAST` must read every record of the range without error.
fn waldump(dir: &Path, first: &str, last: &str) -> Result<()> {
    let mut cmd = std::process::Command::new(Path::new(PG_BIN).join("pg_waldump"));
    cmd.arg("-p").arg(dir).args([first, last]).arg("--quiet");
    let out = run_with_deadline(&mut cmd, Duration::from_secs(60))?;
    ensure!(
        out.success(),
        "pg_waldump rejects the fetched WAL {first}..{last}: {}",
        out.describe()
    );
    Ok(())
}

/// Sends the request head and the first half of `body` for a PUT of `name`, then returns the
/// still-open connection.
fn half_upload(server: &Server, name: &str, body: &[u8]) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port()))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "PUT /v1/clusters/main/wal/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body[..body.len() / 2])?;
    stream.flush()?;
    Ok(stream)
}

fn expect_invisible(server: &Server, name: &str, when: &str) -> Result<()> {
    let api = server.api();
    let resp = api.get_wal("main", name, None)?;
    ensure!(
        resp.status == 404,
        "{when}: GET {name} answered {}",
        resp.short()
    );
    ensure!(
        !api.wal_names("main", None)?.iter().any(|n| n == name),
        "{when}: the listing shows {name}"
    );
    ensure!(
        server.stored_object(name)?.is_none(),
        "{when}: storage holds an object for {name}"
    );
    Ok(())
}

#[test]
fn interrupted_upload_leaves_nothing_visible() -> Result<()> {
    let dir = TestDir::new("crash-upload")?;
    let mut server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(3)?;
    let cli = server.cli()?;
    // A first segment binds the cluster, so that the cut uploads are otherwise acceptable.
    cli.run_ok([
        "push",
        "--cluster",
        "main",
        &factory.path(&names[0]).to_string_lossy(),
    ])?;

    // The client goes away in the middle of the body (as when the helper is killed).
    let cut = &names[1];
    let stream = half_upload(&server, cut, &factory.read(cut)?)?;
    drop(stream);
    // The server notices the cut asynchronously: give it until a later request is answered.
    cli.run_ok([
        "push",
        "--cluster",
        "main",
        &factory.path(&names[2]).to_string_lossy(),
    ])?;
    expect_invisible(&server, cut, "after the client went away mid-upload")?;

    // The server is killed in the middle of the body.
    let stream = half_upload(&server, cut, &factory.read(cut)?)?;
    server.kill9()?;
    drop(stream);
    server.start_again()?;
    expect_invisible(&server, cut, "after kill -9 of the server mid-upload")?;

    // Nothing stands in the way of the real upload, and what was acknowledged before survived.
    let resp = server
        .api()
        .put_wal("main", cut, &factory.read(cut)?, None, None)?;
    ensure!(
        resp.status == 201,
        "full upload after the cuts: {}",
        resp.short()
    );
    for name in &names {
        let dest = dir.path().join(format!("fetched-{name}"));
        cli.run_ok(["fetch", "--cluster", "main", name, &dest.to_string_lossy()])?;
        ensure!(
            std::fs::read(&dest)? == factory.read(name)?,
            "{name} differs after the crash"
        );
    }
    Ok(())
}
