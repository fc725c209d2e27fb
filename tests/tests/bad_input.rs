//! What the archive refuses, and how the helper behaves when things go wrong. Real segments come
//! from real PostgreSQL clusters ([`WalFactory`]); the HTTP API is driven directly and through
//! `wal-archive`.
//!
//! Content (DESIGN 6, guarantee 2):
//! - `wal_of_another_system_is_refused`: a second initdb's segment under its valid name → 422.
//! - `random_bytes_are_refused`: a segment-sized file that is not WAL → 422.
//! - `segment_under_the_wrong_name_is_refused`: a real segment under a later segment's name → 422.
//! - `truncated_and_empty_files_are_refused`: half a segment, an empty body → 422.
//! - `archived_name_keeps_its_content`: same segment twice → 201 then 200; different content under
//!   an archived name → 409 and GET still returns the original bytes; a wrong X-Content-Sha256 is
//!   not stored.
//! - `bad_names_never_touch_storage`: `/`, `..`, wrong length, lowercase hex → 400 (404 when the
//!   path has more segments), and no file is created anywhere.
//!
//! Access (guarantee 7):
//! - `tokens_reach_only_their_clusters_and_roles`: 401 without or with an unknown token, 403 for
//!   another cluster's token or a reader's PUT, 201 for the archiver; no secret in the server log.
//! - `secrets_stay_out_of_ps_and_logs`: tokens given through WAL_ARCHIVE_TOKEN or a --config file
//!   never show in `ps` while PostgreSQL's archive_command runs, nor in any log.
//!
//! Failures of the helper (DESIGN 4):
//! - `fetch_of_a_missing_file_is_a_fast_no`: exit 1 in under a second, nothing at DEST.
//! - `push_to_an_unreachable_server_fails_within_the_retry_window`.
//! - `fetch_from_an_unreachable_server_depends_on_standby_signal`: 1 in standby mode, 255 in
//!   archive recovery, within the retry window, nothing left behind.
//! - `archiving_resumes_when_the_server_comes_back`: segments stay `.ready` while the server is
//!   down; once it is up, every segment from the first to `last_archived_wal` is archived.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use wal_archive_e2e::{
    archive_command_with, list_files, pseudo_random_bytes, run_ok, segment_offset, segment_range,
    sha256_hex, wait_until, Cli, Output, Pg, PgOptions, Response, Server, TestDir, WalFactory,
    DEADLINE, SEG_SIZE,
};

fn expect_status(resp: &Response, want: u16, what: &str) -> Result<()> {
    ensure!(
        resp.status == want,
        "{what}: expected HTTP {want}, got {}",
        resp.short()
    );
    Ok(())
}

/// A 4xx/5xx body must be the documented JSON error.
fn expect_error_body(resp: &Response, what: &str) -> Result<()> {
    let json = resp.json().with_context(|| what.to_string())?;
    ensure!(
        json.get("error").and_then(|e| e.as_str()).is_some()
            && json.get("message").and_then(|e| e.as_str()).is_some(),
        "{what}: error body lacks \"error\"/\"message\": {json}"
    );
    Ok(())
}

fn expect_refused(resp: &Response, want: u16, what: &str) -> Result<()> {
    expect_status(resp, want, what)?;
    expect_error_body(resp, what)
}

/// The archive does not serve `name`.
fn expect_absent(server: &Server, cluster: &str, name: &str) -> Result<()> {
    let resp = server.api().get_wal(cluster, name, None)?;
    expect_status(
        &resp,
        404,
        &format!("GET {cluster}/{name} after a refused PUT"),
    )?;
    let resp = server.api().head_wal(cluster, name, None)?;
    expect_status(
        &resp,
        404,
        &format!("HEAD {cluster}/{name} after a refused PUT"),
    )
}

/// A push the server refuses must fail at once with a message, not wait out the retry window
/// (PostgreSQL's archiver would stall behind it).
fn expect_refused_push(out: &Output, what: &str) -> Result<()> {
    ensure!(!out.success(), "{what}: push exited 0: {}", out.describe());
    ensure!(
        out.elapsed < Duration::from_secs(10),
        "{what}: a refused push took {:?} (retried a permanent refusal?): {}",
        out.elapsed,
        out.describe()
    );
    ensure!(
        !out.stderr.trim().is_empty(),
        "{what}: push failed without a message"
    );
    Ok(())
}

#[test]
fn wal_of_another_system_is_refused() -> Result<()> {
    let dir = TestDir::new("other-system")?;
    let server = Server::start(&dir)?;
    let api = server.api();
    let ours = WalFactory::start(&dir, "ours")?;
    let theirs = WalFactory::start(&dir, "theirs")?;
    ensure!(ours.pg().system_identifier()? != theirs.pg().system_identifier()?);

    let mine = ours.make_segments(1)?;
    let other = theirs.make_segments(3)?;
    let resp = api.put_wal("c", &mine[0], &ours.read(&mine[0])?, None, None)?;
    expect_status(&resp, 201, "first segment of the cluster")?;
    let listing = api.wal_listing("c", None)?;
    ensure!(
        listing.get("system_identifier").and_then(|s| s.as_str())
            == Some(ours.pg().system_identifier()?.as_str()),
        "the cluster is not bound to the first segment's system: {listing}"
    );

    let foreign = other
        .iter()
        .find(|n| **n != mine[0])
        .context("no usable segment name")?;
    let resp = api.put_wal("c", foreign, &theirs.read(foreign)?, None, None)?;
    expect_refused(&resp, 422, "a segment of another system")?;
    expect_absent(&server, "c", foreign)?;

    // The same file through the helper: non-zero.
    let out = server.cli()?.run([
        "push",
        "--cluster",
        "c",
        &theirs.path(foreign).to_string_lossy(),
    ])?;
    expect_refused_push(&out, "push of another system's WAL")?;
    expect_absent(&server, "c", foreign)
}

#[test]
fn random_bytes_are_refused() -> Result<()> {
    let dir = TestDir::new("random-bytes")?;
    let server = Server::start(&dir)?;
    let api = server.api();
    let noise = pseudo_random_bytes(SEG_SIZE as usize, 42);
    let name = "000000010000000000000005";

    // On a cluster that has seen no WAL yet, and on one bound to a real system.
    let resp = api.put_wal("fresh", name, &noise, None, None)?;
    expect_refused(&resp, 422, "random bytes to a fresh cluster")?;
    expect_absent(&server, "fresh", name)?;

    let factory = WalFactory::start(&dir, "pg")?;
    let real = factory.make_segments(1)?;
    expect_status(
        &api.put_wal("bound", &real[0], &factory.read(&real[0])?, None, None)?,
        201,
        "a real segment",
    )?;
    let resp = api.put_wal("bound", name, &noise, None, None)?;
    expect_refused(&resp, 422, "random bytes to a bound cluster")?;
    expect_absent(&server, "bound", name)?;

    let noise_path = dir.path().join(name);
    std::fs::write(&noise_path, &noise)?;
    let out = server
        .cli()?
        .run(["push", "--cluster", "bound", &noise_path.to_string_lossy()])?;
    expect_refused_push(&out, "push of random bytes")?;

    // A real segment with its long page header destroyed.
    let other_name = segment_offset(&real[0], 1, SEG_SIZE)?;
    let mut bytes = factory.read(&real[0])?;
    bytes[..64].copy_from_slice(&noise[..64]);
    let resp = api.put_wal("bound", &other_name, &bytes, None, None)?;
    expect_refused(&resp, 422, "a segment with a garbage header")?;
    Ok(())
}

#[test]
fn segment_under_the_wrong_name_is_refused() -> Result<()> {
    let dir = TestDir::new("wrong-name")?;
    let server = Server::start(&dir)?;
    let api = server.api();
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(2)?;
    let bytes = factory.read(&names[0])?;

    // Bind the cluster first, so that only the name can be wrong.
    expect_status(
        &api.put_wal("c", &names[1], &factory.read(&names[1])?, None, None)?,
        201,
        "a segment under its own name",
    )?;
    // Page addresses that do not match the name. (A timeline-1 segment under a higher timeline's
    // name is not checked here: the first segment of a new timeline legitimately starts with
    // pages of its parent timeline. failover.rs checks the impossible direction.)
    let later = segment_offset(&names[1], 5, SEG_SIZE)?;
    let other_log = format!("{}00000001{}", &names[0][..8], &names[0][16..]);
    for wrong in [later.as_str(), other_log.as_str()] {
        let resp = api.put_wal("c", wrong, &bytes, None, None)?;
        expect_refused(&resp, 422, &format!("{} stored as {wrong}", names[0]))?;
        expect_absent(&server, "c", wrong)?;
    }
    // And on a fresh cluster, where no system identifier is known yet.
    let resp = api.put_wal("fresh", &later, &bytes, None, None)?;
    expect_refused(
        &resp,
        422,
        &format!("{} stored as {later} (fresh cluster)", names[0]),
    )?;
    Ok(())
}

#[test]
fn truncated_and_empty_files_are_refused() -> Result<()> {
    let dir = TestDir::new("truncated")?;
    let server = Server::start(&dir)?;
    let api = server.api();
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(2)?;
    expect_status(
        &api.put_wal("c", &names[0], &factory.read(&names[0])?, None, None)?,
        201,
        "a whole segment",
    )?;
    let bytes = factory.read(&names[1])?;
    let half = &bytes[..bytes.len() / 2];
    expect_refused(
        &api.put_wal("c", &names[1], half, None, None)?,
        422,
        "half a segment",
    )?;
    expect_absent(&server, "c", &names[1])?;
    let short = &bytes[..bytes.len() - 1];
    expect_refused(
        &api.put_wal("c", &names[1], short, None, None)?,
        422,
        "a segment minus one byte",
    )?;
    expect_absent(&server, "c", &names[1])?;
    expect_refused(
        &api.put_wal("c", &names[1], &[], None, None)?,
        422,
        "an empty body",
    )?;
    expect_absent(&server, "c", &names[1])?;

    // The helper refuses to report success for them either.
    let cut = dir.path().join(&names[1]);
    std::fs::write(&cut, half)?;
    let out = server
        .cli()?
        .run(["push", "--cluster", "c", &cut.to_string_lossy()])?;
    expect_refused_push(&out, "push of half a segment")?;
    expect_absent(&server, "c", &names[1])?;
    // The whole one is then accepted.
    expect_status(
        &api.put_wal("c", &names[1], &bytes, None, None)?,
        201,
        "the whole segment after refused attempts",
    )
}

#[test]
fn archived_name_keeps_its_content() -> Result<()> {
    let dir = TestDir::new("conflict")?;
    let server = Server::start(&dir)?;
    let api = server.api();
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(2)?;
    let name = &names[0];
    let original = factory.read(name)?;
    let sha = sha256_hex(&original);

    expect_status(
        &api.put_wal("c", name, &original, None, Some(&sha))?,
        201,
        "first PUT",
    )?;
    expect_status(
        &api.put_wal("c", name, &original, None, Some(&sha))?,
        200,
        "identical PUT",
    )?;
    expect_status(
        &api.put_wal("c", name, &original, None, None)?,
        200,
        "identical PUT without checksum",
    )?;

    // Same header, one byte changed well inside a page's data: valid-looking, different content.
    let mut altered = original.clone();
    let offset = 8192 * 10 + 1000;
    altered[offset] ^= 0x5a;
    let resp = api.put_wal("c", name, &altered, None, Some(&sha256_hex(&altered)))?;
    expect_refused(&resp, 409, "different content under an archived name")?;

    let got = api.get_wal("c", name, None)?;
    expect_status(&got, 200, "GET after the conflict")?;
    ensure!(
        got.body == original,
        "GET no longer returns the original bytes"
    );
    ensure!(
        got.header("x-content-sha256") == Some(sha.as_str()),
        "X-Content-Sha256 {:?} != {sha}",
        got.header("x-content-sha256")
    );
    let head = api.head_wal("c", name, None)?;
    expect_status(&head, 200, "HEAD of an archived file")?;

    // The helper's push of the altered file fails; an identical push succeeds.
    let altered_path = dir.path().join(name);
    std::fs::write(&altered_path, &altered)?;
    let cli = server.cli()?;
    let out = cli.run(["push", "--cluster", "c", &altered_path.to_string_lossy()])?;
    expect_refused_push(&out, "push of conflicting content")?;
    cli.run_ok([
        "push",
        "--cluster",
        "c",
        &factory.path(name).to_string_lossy(),
    ])?;
    ensure!(api.get_wal("c", name, None)?.body == original);

    // A body that does not match its declared checksum is not stored.
    let second = &names[1];
    let resp = api.put_wal("c", second, &factory.read(second)?, None, Some(&sha))?;
    ensure!(
        (400..500).contains(&resp.status),
        "a body with a wrong X-Content-Sha256: expected 4xx, got {}",
        resp.short()
    );
    expect_absent(&server, "c", second)
}

/// Files under `root`, minus the server log and SQLite's side files (journal, -wal, -shm), which
/// any request may legitimately touch.
fn files_that_matter(root: &Path) -> Result<BTreeSet<String>> {
    Ok(list_files(root)?
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| {
            !(p.ends_with("server.log")
                || p.ends_with("-wal")
                || p.ends_with("-shm")
                || p.ends_with("-journal"))
        })
        .collect())
}

#[test]
fn bad_names_never_touch_storage() -> Result<()> {
    let dir = TestDir::new("bad-names")?;
    let server = Server::start(&dir)?;
    let api = server.api();
    let factory = WalFactory::start(&dir, "pg")?;
    let real = factory.make_segments(1)?;
    let body = factory.read(&real[0])?;
    let before = files_that_matter(dir.path())?;

    // One path segment each: they reach the handler, which must answer 400.
    let one_segment = [
        "..",
        "%2E%2E",
        "..%2F..%2F..%2F..%2Fescaped",
        "%2Ftmp%2Fescaped",
        &format!("{}%2F..", real[0]),
        &format!("..%2F{}", real[0]),
        &real[0][..23],
        &format!("{}0", real[0]),
        "00000001000000000000000a",
        "0000000100000000000000GG",
        &format!("{}%00", real[0]),
        &format!("{}.zst", real[0]),
        "00000001.HISTORY",
    ];
    let mut checked = 0;
    for name in one_segment {
        for cluster in ["c", "..", "a%2Fb", "..%2F..%2F..%2Fx"] {
            let path = format!("/v1/clusters/{cluster}/wal/{name}");
            let resp = api.raw("PUT", &path, &body)?;
            expect_refused(&resp, 400, &format!("PUT {path}"))?;
            let resp = api.raw("GET", &path, &[])?;
            expect_status(&resp, 400, &format!("GET {path}"))?;
            checked += 1;
        }
        // A bad cluster name with a good file name.
        for cluster in ["..", "a%2Fb", "%2E%2E", "..%2F..%2F..%2Fx"] {
            let path = format!("/v1/clusters/{cluster}/wal/{}", real[0]);
            let resp = api.raw("PUT", &path, &body)?;
            expect_refused(&resp, 400, &format!("PUT {path}"))?;
        }
    }
    ensure!(checked > 40);

    // More path segments: no such route (404) or refused (400), never stored.
    for path in [
        format!("/v1/clusters/c/wal/../../../{}", real[0]),
        format!("/v1/clusters/c/wal/x/{}", real[0]),
        "/v1/clusters/c/wal/../../../../escaped".to_string(),
        format!("/v1/clusters/../../wal/{}", real[0]),
    ] {
        for method in ["PUT", "GET"] {
            let resp = api.raw(method, &path, if method == "PUT" { &body } else { &[] })?;
            ensure!(
                resp.status == 400 || resp.status == 404,
                "{method} {path}: expected 400 or 404, got {}",
                resp.short()
            );
        }
    }

    let after = files_that_matter(dir.path())?;
    let created: Vec<&String> = after.difference(&before).collect();
    ensure!(created.is_empty(), "bad names created files: {created:?}");
    // The archive's identity (`meta/instance`, created with the storage) is all there is.
    let stored: Vec<_> = list_files(&server.storage_dir())?
        .into_iter()
        .filter(|p| p != Path::new("meta/instance"))
        .collect();
    ensure!(stored.is_empty(), "bad names reached storage: {stored:?}");
    Ok(())
}

struct Tokens {
    main_archiver: String,
    other_archiver: String,
    main_reader: String,
    admin: String,
}

fn secret(label: &str, seed: u64) -> String {
    format!("wa-{label}-{}", hex_of(&pseudo_random_bytes(16, seed)))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tokens_config(t: &Tokens) -> String {
    let entry = |name: &str, secret: &str, role: &str, clusters: Option<&str>| {
        let clusters = clusters
            .map(|c| format!("clusters = [{c}]\n"))
            .unwrap_or_default();
        format!(
            "[[tokens]]\nname = \"{name}\"\nsecret_sha256 = \"{}\"\nrole = \"{role}\"\n{clusters}\n",
            sha256_hex(secret.as_bytes())
        )
    };
    [
        entry(
            "main-archiver",
            &t.main_archiver,
            "archiver",
            Some("\"main\""),
        ),
        entry(
            "other-archiver",
            &t.other_archiver,
            "archiver",
            Some("\"other\""),
        ),
        entry("main-reader", &t.main_reader, "reader", Some("\"main\"")),
        entry("admin", &t.admin, "admin", None),
    ]
    .concat()
}

#[test]
fn tokens_reach_only_their_clusters_and_roles() -> Result<()> {
    let dir = TestDir::new("tokens")?;
    let t = Tokens {
        main_archiver: secret("main-archiver", 1),
        other_archiver: secret("other-archiver", 2),
        main_reader: secret("main-reader", 3),
        admin: secret("admin", 4),
    };
    let wrong = secret("wrong", 5);
    let server = Server::start_with_config(&dir, Some(&tokens_config(&t)))?;
    let api = server.api();
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(2)?;
    let seg = &names[0];
    let bytes = factory.read(seg)?;

    expect_refused(
        &api.put_wal("main", seg, &bytes, None, None)?,
        401,
        "PUT without a token",
    )?;
    expect_refused(
        &api.put_wal("main", seg, &bytes, Some(&wrong), None)?,
        401,
        "PUT with an unknown token",
    )?;
    expect_refused(
        &api.put_wal("main", seg, &bytes, Some(&t.other_archiver), None)?,
        403,
        "PUT with another cluster's archiver token",
    )?;
    expect_refused(
        &api.put_wal("main", seg, &bytes, Some(&t.main_reader), None)?,
        403,
        "PUT with a reader token",
    )?;
    expect_absent_with(
        &api_get(&server, "main", seg, &t.admin)?,
        "after refused PUTs",
    )?;
    expect_status(
        &api.put_wal("main", seg, &bytes, Some(&t.main_archiver), None)?,
        201,
        "PUT with the cluster's archiver token",
    )?;

    expect_refused(&api.get_wal("main", seg, None)?, 401, "GET without a token")?;
    expect_refused(
        &api.get_wal("main", seg, Some(&wrong))?,
        401,
        "GET with an unknown token",
    )?;
    expect_refused(
        &api.get_wal("main", seg, Some(&t.other_archiver))?,
        403,
        "GET with another cluster's token",
    )?;
    for (who, token) in [
        ("reader", &t.main_reader),
        ("archiver", &t.main_archiver),
        ("admin", &t.admin),
    ] {
        let resp = api.get_wal("main", seg, Some(token))?;
        expect_status(&resp, 200, &format!("GET with the {who} token"))?;
        ensure!(
            resp.body == bytes,
            "GET with the {who} token returned other bytes"
        );
    }
    expect_refused(
        &api.get("/v1/clusters/main/wal", None)?,
        401,
        "listing without a token",
    )?;
    expect_status(
        &api.get("/v1/clusters/main/wal", Some(&t.main_reader))?,
        200,
        "listing as reader",
    )?;
    expect_refused(
        &api.get("/v1/clusters/main/wal", Some(&t.other_archiver))?,
        403,
        "listing with another cluster's token",
    )?;

    // The helper, token from the environment.
    let cli = server.cli()?;
    let second = factory.path(&names[1]);
    let out = cli.run(["push", "--cluster", "main", &second.to_string_lossy()])?;
    expect_refused_push(&out, "push without a token")?;
    let out = cli.clone().env("WAL_ARCHIVE_TOKEN", &t.main_reader).run([
        "push",
        "--cluster",
        "main",
        &second.to_string_lossy(),
    ])?;
    expect_refused_push(&out, "push with a reader token")?;
    cli.clone()
        .env("WAL_ARCHIVE_TOKEN", &t.main_archiver)
        .run_ok(["push", "--cluster", "main", &second.to_string_lossy()])?;
    let dest = dir.path().join("fetched");
    cli.clone()
        .env("WAL_ARCHIVE_TOKEN", &t.main_reader)
        .run_ok([
            "fetch",
            "--cluster",
            "main",
            &names[1],
            &dest.to_string_lossy(),
        ])?;
    ensure!(std::fs::read(&dest)? == factory.read(&names[1])?);
    std::fs::remove_file(&dest)?;
    let out = cli.clone().env("WAL_ARCHIVE_TOKEN", &wrong).run([
        "--retry-for",
        "2",
        "fetch",
        "--cluster",
        "main",
        &names[1],
        &dest.to_string_lossy(),
    ])?;
    ensure!(
        !out.success(),
        "fetch with an unknown token exited 0: {}",
        out.describe()
    );
    ensure!(!dest.exists(), "a refused fetch left {}", dest.display());
    for s in [
        &t.main_archiver,
        &t.other_archiver,
        &t.main_reader,
        &t.admin,
        &wrong,
    ] {
        ensure!(
            !out.stderr.contains(s.as_str()),
            "the helper printed a secret: {}",
            out.describe()
        );
    }

    let log = server.log();
    for s in [
        &t.main_archiver,
        &t.other_archiver,
        &t.main_reader,
        &t.admin,
        &wrong,
    ] {
        ensure!(
            !log.contains(s.as_str()),
            "the server log contains the secret {s}"
        );
    }
    Ok(())
}

fn api_get(server: &Server, cluster: &str, name: &str, token: &str) -> Result<Response> {
    server.api().get_wal(cluster, name, Some(token))
}

fn expect_absent_with(resp: &Response, what: &str) -> Result<()> {
    expect_status(resp, 404, what)
}

/// Command lines of every process, as `ps` shows them.
fn process_list() -> Result<String> {
    run_ok(
        Command::new("ps").args(["-eww", "-o", "pid=,args="]),
        Duration::from_secs(10),
    )
}

#[test]
fn secrets_stay_out_of_ps_and_logs() -> Result<()> {
    let dir = TestDir::new("secrets")?;
    let token = secret("archiver", 11);
    let config = format!(
        "[[tokens]]\nname = \"archiver\"\nsecret_sha256 = \"{}\"\nrole = \"archiver\"\n",
        sha256_hex(token.as_bytes())
    );
    // Not started yet: the archive_command runs long enough (retrying) to be seen in `ps`.
    let mut server = Server::prepare(&dir, Some(&config))?;

    // Cluster "env": the token comes from WAL_ARCHIVE_TOKEN in the postmaster's environment.
    let mut by_env = Pg::init(&dir, "by-env", PgOptions::default())?;
    by_env.env("WAL_ARCHIVE_TOKEN", &token);
    by_env.set("archive_mode", "on")?;
    by_env.set(
        "archive_command",
        archive_command_with(&server, "env", "--retry-for 60")?,
    )?;
    // Cluster "cfg": the token comes from a client configuration file readable by postgres only.
    let by_cfg = Pg::init(&dir, "by-cfg", PgOptions::default())?;
    let client_conf = dir.path().join("by-cfg/client.toml");
    std::fs::write(&client_conf, format!("token = \"{token}\"\n"))?;
    std::fs::set_permissions(&client_conf, std::fs::Permissions::from_mode(0o600))?;
    wal_archive_e2e::testdir::give_to_pg(&client_conf)?;
    by_cfg.set("archive_mode", "on")?;
    by_cfg.set(
        "archive_command",
        archive_command_with(
            &server,
            "cfg",
            &format!("--retry-for 60 --config {}", client_conf.display()),
        )?,
    )?;

    let mut switched = Vec::new();
    for pg in [&by_env, &by_cfg] {
        pg.start()?;
        pg.psql("create table t (id int)")?;
        pg.psql("insert into t select generate_series(1, 100)")?;
        switched.push(pg.switch_wal()?);
    }

    // Both archivers are now inside `wal-archive push`, retrying: look at every command line.
    let mut seen = String::new();
    wait_until(DEADLINE, "both archive_commands are running", || {
        seen = process_list()?;
        let running = |cluster: &str| {
            seen.lines()
                .any(|l| l.contains("wal-archive") && l.contains(&format!("--cluster {cluster}")))
        };
        Ok(running("env") && running("cfg"))
    })?;
    ensure!(
        !seen.contains(&token),
        "the secret is visible in ps:\n{seen}"
    );
    for pid_line in seen.lines().filter(|l| l.contains("wal-archive")) {
        let pid = pid_line.split_whitespace().next().unwrap_or_default();
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            ensure!(
                !String::from_utf8_lossy(&cmdline).contains(&token),
                "the secret is in /proc/{pid}/cmdline"
            );
        }
    }

    server.start_again()?;
    by_env.wait_archived(&switched[0], DEADLINE)?;
    by_cfg.wait_archived(&switched[1], DEADLINE)?;
    ensure!(
        !server.log().contains(&token),
        "the server log contains the secret"
    );
    for pg in [&by_env, &by_cfg] {
        ensure!(
            !pg.log().contains(&token),
            "{}'s log contains the secret",
            pg.name()
        );
    }
    Ok(())
}

#[test]
fn fetch_of_a_missing_file_is_a_fast_no() -> Result<()> {
    let dir = TestDir::new("fetch-missing")?;
    let server = Server::start(&dir)?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(2)?;
    let cli = server.cli()?;
    for name in &names {
        cli.run_ok([
            "push",
            "--cluster",
            "main",
            &factory.path(name).to_string_lossy(),
        ])?;
    }
    let dest_dir = dir.subdir("dest")?;
    let dest = dest_dir.join("RECOVERYXLOG");

    // Present: exit 0 and the exact bytes.
    cli.run_ok([
        "fetch",
        "--cluster",
        "main",
        &names[0],
        &dest.to_string_lossy(),
    ])?;
    ensure!(
        std::fs::read(&dest)? == factory.read(&names[0])?,
        "fetched bytes differ"
    );
    std::fs::remove_file(&dest)?;

    let next = segment_offset(&names[1], 1, SEG_SIZE)?;
    for (cluster, name) in [
        ("main", next.as_str()),
        ("main", "00000002.history"),
        ("main", "000000010000000000000001.00000028.backup"),
    ] {
        let out = cli.run(["fetch", "--cluster", cluster, name, &dest.to_string_lossy()])?;
        expect_exit(&out, 1, &format!("fetch of missing {cluster}/{name}"))?;
        ensure!(
            out.elapsed < Duration::from_secs(1),
            "fetch of missing {cluster}/{name} took {:?}",
            out.elapsed
        );
        ensure_nothing_left(&dest_dir)?;
    }
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

fn ensure_nothing_left(dir: &Path) -> Result<()> {
    let left = list_files(dir)?;
    ensure!(left.is_empty(), "files left in {}: {left:?}", dir.display());
    Ok(())
}

/// A loopback URL where nothing listens.
fn dead_url() -> Result<String> {
    Ok(format!(
        "http://127.0.0.1:{}",
        wal_archive_e2e::util::free_port()?
    ))
}

#[test]
fn push_to_an_unreachable_server_fails_within_the_retry_window() -> Result<()> {
    let dir = TestDir::new("push-unreachable")?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(1)?;
    let path = factory.path(&names[0]).to_string_lossy().into_owned();
    let cli = Cli::new(&dir)?;
    let url = dead_url()?;

    let out = cli.run([
        "--url",
        &url,
        "--retry-for",
        "2",
        "push",
        "--cluster",
        "main",
        &path,
    ])?;
    ensure!(!out.success(), "push to nowhere exited 0");
    ensure!(
        out.elapsed < Duration::from_secs(10),
        "push took {:?} with --retry-for 2",
        out.elapsed
    );

    // The same through the environment, options after the command name.
    let out = cli
        .clone()
        .env("WAL_ARCHIVE_URL", &url)
        .env("WAL_ARCHIVE_RETRY_FOR", "2")
        .run(["push", "--cluster", "main", &path])?;
    ensure!(!out.success(), "push to nowhere exited 0");
    ensure!(
        out.elapsed < Duration::from_secs(10),
        "push took {:?} with WAL_ARCHIVE_RETRY_FOR=2",
        out.elapsed
    );

    let out = cli.run([
        "push",
        "--cluster",
        "main",
        &path,
        "--url",
        &url,
        "--retry-for",
        "2",
    ])?;
    ensure!(!out.success(), "push to nowhere exited 0");
    ensure!(
        out.elapsed < Duration::from_secs(10),
        "push took {:?}",
        out.elapsed
    );
    Ok(())
}

#[test]
fn fetch_from_an_unreachable_server_depends_on_standby_signal() -> Result<()> {
    let dir = TestDir::new("fetch-unreachable")?;
    let cli = Cli::new(&dir)?.env("WAL_ARCHIVE_URL", &dead_url()?);
    let standby_dir = dir.subdir("standby-pgdata")?;
    std::fs::write(standby_dir.join("standby.signal"), "")?;
    let recovery_dir = dir.subdir("recovery-pgdata")?;
    std::fs::write(recovery_dir.join("recovery.signal"), "")?;
    let dest_dir = dir.subdir("dest")?;
    let dest = dest_dir.join("RECOVERYXLOG").to_string_lossy().into_owned();
    let name = "000000010000000000000003";
    let standby = standby_dir.to_string_lossy().into_owned();
    let recovery = recovery_dir.to_string_lossy().into_owned();

    let cases: [(&str, Cli, Vec<&str>, i32); 4] = [
        (
            "--pgdata with standby.signal",
            cli.clone(),
            vec!["--pgdata", &standby],
            1,
        ),
        (
            "--pgdata without standby.signal",
            cli.clone(),
            vec!["--pgdata", &recovery],
            255,
        ),
        (
            "cwd with standby.signal",
            cli.clone().cwd(&standby_dir),
            vec![],
            1,
        ),
        (
            "cwd without standby.signal",
            cli.clone().cwd(&recovery_dir),
            vec![],
            255,
        ),
    ];
    for (what, cli, extra, want) in cases {
        let mut args = vec![
            "--retry-for",
            "2",
            "fetch",
            "--cluster",
            "main",
            name,
            &dest,
        ];
        args.extend(extra);
        let out = cli.run(&args)?;
        expect_exit(
            &out,
            want,
            &format!("fetch from an unreachable server, {what}"),
        )?;
        ensure!(
            out.elapsed < Duration::from_secs(10),
            "fetch ({what}) took {:?} with --retry-for 2",
            out.elapsed
        );
        ensure_nothing_left(&dest_dir)?;
    }
    Ok(())
}

#[test]
fn archiving_resumes_when_the_server_comes_back() -> Result<()> {
    let dir = TestDir::new("resume")?;
    let mut server = Server::prepare(&dir, None)?;
    let pg = Pg::init(&dir, "pg", PgOptions::default())?;
    pg.set("archive_mode", "on")?;
    pg.set(
        "archive_command",
        archive_command_with(&server, "main", "--retry-for 1")?,
    )?;
    pg.start()?;
    pg.psql("create table t (id int, payload text)")?;
    let mut switched = Vec::new();
    for round in 0..5 {
        pg.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({}, {}) g",
            round * 1000,
            round * 1000 + 999
        ))?;
        switched.push(pg.switch_wal()?);
    }
    wait_until(DEADLINE, "archive_command has failed at least once", || {
        Ok(pg.archive_failed_count()? >= 1)
    })?;
    let ready = pg.ready_files()?;
    for name in &switched {
        ensure!(
            ready.contains(name),
            "{name} is not .ready while the server is down: {ready:?}"
        );
    }
    ensure!(
        pg.last_archived_wal()?.is_none(),
        "something was archived with no server"
    );

    server.start_again()?;
    // A new segment wakes the archiver if it is waiting after failures.
    pg.psql("insert into t values (-1, 'wake up')")?;
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, Duration::from_secs(90))?;
    let last_archived = pg
        .last_archived_wal()?
        .context("nothing archived after the server came back")?;

    let listed: BTreeSet<String> = server.api().wal_names("main", None)?.into_iter().collect();
    let first = ready.first().context("no .ready file at all")?;
    let missing: Vec<String> = segment_range(first, &last_archived[..24], SEG_SIZE)?
        .into_iter()
        .filter(|n| !listed.contains(n))
        .collect();
    ensure!(
        missing.is_empty(),
        "segments PostgreSQL wrote but the archive lacks: {missing:?}"
    );
    for name in &ready {
        ensure!(
            listed.contains(name),
            "{name} was .ready but is not archived"
        );
    }
    ensure!(pg.ready_files()?.iter().all(|n| n.as_str() > last.as_str()));
    if let Some(bad) = listed.iter().find(|n| n.as_str() < first.as_str()) {
        bail!("the archive lists {bad}, older than anything PostgreSQL archived");
    }
    Ok(())
}
