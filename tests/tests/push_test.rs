//! `wal-archive push --test`, archive_command's dry run: run as PostgreSQL would run the archiver,
//! it exits 0 only when the server is reachable, is a wal-archive server, and lets the token push
//! WAL of the cluster; otherwise it exits 1 saying what is wrong. It never stores anything.
//!
//! Tests:
//! - `push_test_answers_for_the_token_and_stores_nothing`: the real server with tokens: the
//!   cluster's archiver token passes (text and JSON, before and after the cluster is bound by a
//!   real push); another cluster's archiver token, a reader token, an unknown token and no token
//!   are refused with the reason; a web server that is not the archive, a path prefix on the
//!   archive's URL and a stopped server fail fast; storage holds exactly what it held before.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{list_files, sha256_hex, Cli, FakeHttp, Output, Server, TestDir, WalFactory};

const MAIN_ARCHIVER: &str = "secret-of-the-main-archiver";
const OTHER_ARCHIVER: &str = "secret-of-the-other-archiver";
const MAIN_READER: &str = "secret-of-the-main-reader";
const ADMIN: &str = "secret-of-the-admin";

fn token(name: &str, secret: &str, role: &str, clusters: &str) -> String {
    format!(
        "[[tokens]]\nname = \"{name}\"\nsecret_sha256 = \"{}\"\nrole = \"{role}\"\n{clusters}\n",
        sha256_hex(secret.as_bytes())
    )
}

/// `wal-archive --url URL push --test --cluster C` with `secret` in WAL_ARCHIVE_TOKEN.
fn push_test(cli: &Cli, url: &str, secret: Option<&str>, extra: &[&str]) -> Result<Output> {
    let cli = match secret {
        Some(s) => cli.clone().env("WAL_ARCHIVE_TOKEN", s),
        None => cli.clone(),
    };
    let mut args = vec!["--url", url];
    args.extend_from_slice(extra);
    args.extend(["push", "--test", "--cluster", "main"]);
    cli.run(&args)
}

#[test]
fn push_test_answers_for_the_token_and_stores_nothing() -> Result<()> {
    let dir = TestDir::new("push-test")?;
    let config = [
        token(
            "main-archiver",
            MAIN_ARCHIVER,
            "archiver",
            "clusters = [\"main\"]",
        ),
        token(
            "other-archiver",
            OTHER_ARCHIVER,
            "archiver",
            "clusters = [\"other\"]",
        ),
        token(
            "main-reader",
            MAIN_READER,
            "reader",
            "clusters = [\"main\"]",
        ),
        token("admin", ADMIN, "admin", ""),
    ]
    .concat();
    let mut server = Server::start_with_config(&dir, Some(&config))?;
    let url = server.url();
    let cli = Cli::new(&dir)?;
    let stored_before = list_files(&server.storage_dir())?;

    // The cluster's own archiver token: one line saying so, naming the server and the cluster.
    let out = push_test(&cli, &url, Some(MAIN_ARCHIVER), &[])?;
    ensure!(
        out.success(),
        "push --test with the archiver token: {}",
        out.describe()
    );
    let line = out.stdout.trim();
    ensure!(
        line.starts_with("ok: ")
            && line.lines().count() == 1
            && line.contains(&url)
            && line.contains("cluster \"main\"")
            && line.contains("token \"main-archiver\"")
            && line.contains("no WAL yet"),
        "push --test said: {}",
        out.describe()
    );
    let out = push_test(&cli, &url, Some(MAIN_ARCHIVER), &["--json"])?;
    ensure!(out.success(), "push --test --json: {}", out.describe());
    let answer: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("push --test --json printed {}", out.stdout))?;
    let instance = server
        .api()
        .get("/healthz", None)?
        .header(pgwal::api::INSTANCE_HEADER)
        .map(str::to_string)
        .context("the server sends its instance")?;
    ensure!(
        answer["cluster"] == "main"
            && answer["token"] == "main-archiver"
            && answer["system_identifier"].is_null()
            && answer["instance"] == instance.as_str(),
        "push --test --json answered {answer}"
    );

    // Refused: each says why, with the status the server gave, and fails at once.
    let not_archive = FakeHttp::start(
        "200 OK",
        r#"{"cluster":"main","instance":"x","token":null,"system_identifier":null}"#,
    )?;
    let proxy_404 = FakeHttp::start("404 Not Found", r#"{"error":"not_found","message":"no"}"#)?;
    let prefixed = format!("{url}/archive");
    let cases: [(&str, &str, Option<&str>, &[&str]); 7] = [
        (
            "another cluster's archiver token",
            &url,
            Some(OTHER_ARCHIVER),
            &[
                "(403)",
                "\"other-archiver\" is not allowed on cluster \"main\"",
                "archiver",
            ],
        ),
        (
            "a reader token of the cluster",
            &url,
            Some(MAIN_READER),
            &["(403)", "role Reader", "may not push"],
        ),
        (
            "an unknown token",
            &url,
            Some("not-a-configured-secret"),
            &["(401)", "not known to this server"],
        ),
        ("no token", &url, None, &["(401)", "requires a token"]),
        (
            "a web server that answers 200 to everything",
            &not_archive.url(),
            Some(MAIN_ARCHIVER),
            &["HTTP 200", "not a wal-archive server", "--url"],
        ),
        (
            "a proxy's 404",
            &proxy_404.url(),
            Some(MAIN_ARCHIVER),
            &["HTTP 404", "not a wal-archive server"],
        ),
        (
            "a path prefix after the archive's address",
            &prefixed,
            Some(MAIN_ARCHIVER),
            &[
                "is a wal-archive server",
                "(404)",
                "no path after host:port",
            ],
        ),
    ];
    for (what, at, secret, says) in cases {
        let out = push_test(&cli, at, secret, &[])?;
        ensure!(
            out.code == Some(1),
            "push --test with {what}: wanted exit 1, got {}",
            out.describe()
        );
        for s in says {
            ensure!(
                out.stderr.contains(s),
                "push --test with {what} does not say {s:?}: {}",
                out.describe()
            );
        }
        ensure!(
            out.stdout.is_empty() && out.elapsed < Duration::from_secs(10),
            "push --test with {what}: {}",
            out.describe()
        );
    }

    // Not with a file: `--test` stores nothing, so a path makes no sense with it.
    let out = cli.run([
        "--url",
        &url,
        "push",
        "--test",
        "--cluster",
        "main",
        "000000010000000000000001",
    ])?;
    ensure!(
        out.code == Some(1) && out.stderr.contains("cannot be used with"),
        "push --test with a path: {}",
        out.describe()
    );

    // The server stopped: one attempt, refused at once.
    server.stop()?;
    let out = push_test(&cli, &url, Some(MAIN_ARCHIVER), &[])?;
    ensure!(
        out.code == Some(1)
            && out.stderr.contains("cannot reach")
            && out.stderr.contains(&url)
            && out.elapsed < Duration::from_secs(10),
        "push --test with the server stopped: {}",
        out.describe()
    );
    server.start_again()?;

    ensure!(
        list_files(&server.storage_dir())? == stored_before,
        "push --test stored something: {:?} before, {:?} after",
        stored_before,
        list_files(&server.storage_dir())?
    );
    let api = server.api();
    for cluster in ["main", "other"] {
        let resp = api.get(&format!("/v1/clusters/{cluster}/wal"), Some(ADMIN))?;
        ensure!(
            resp.status == 404,
            "cluster {cluster} exists after tests only: {}",
            resp.short()
        );
    }

    // Once a real push bound the cluster, the test names the system it is bound to.
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(1)?;
    cli.clone()
        .env("WAL_ARCHIVE_TOKEN", MAIN_ARCHIVER)
        .run_ok([
            "--url",
            &url,
            "push",
            "--cluster",
            "main",
            &factory.path(&names[0]).to_string_lossy(),
        ])?;
    let system = factory
        .pg()
        .psql("select system_identifier from pg_control_system()")?;
    let out = push_test(&cli, &url, Some(MAIN_ARCHIVER), &[])?;
    ensure!(
        out.success()
            && out
                .stdout
                .contains(&format!("bound to PostgreSQL system {}", system.trim())),
        "push --test after a push: {}",
        out.describe()
    );
    ensure!(
        api.wal_names("main", Some(ADMIN))? == names,
        "the archive holds exactly the pushed segment"
    );
    Ok(())
}
