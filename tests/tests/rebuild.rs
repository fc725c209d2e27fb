//! The catalog is an index over storage (DESIGN §1, §7.9): everything it knows that the objects
//! do not carry is written to storage as records before it is reported, so a catalog rebuilt
//! from storage alone says what the old one said.
//!
//! - `a_rebuilt_catalog_says_and_restores_the_same`: three backups (one kept, one failed on
//!   purpose), WAL between them, a retention policy; then the catalog is deleted and the
//!   server started again (it rebuilds by itself), and once more with `--rebuild-catalog` over
//!   an existing catalog: `list`, `show`, `wal` and `retention --dry-run` print the same JSON
//!   as before, and the newest backup restores and replays to the last commit.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use wal_archive_e2e::backup::{backup_config, count_and_max, RESTORE_TIMEOUT};
use wal_archive_e2e::{
    archive_command, pg_command, run_with_deadline, Pg, PgOptions, Server, TestDir, DEADLINE,
};

/// What the operator sees, as JSON: `list`, `show` of each backup, `wal`, `retention --dry-run`.
fn views(server: &Server, ids: &[String]) -> Result<Vec<(String, Value)>> {
    let cli = server.cli()?;
    let mut out = Vec::new();
    let mut run = |what: String, args: Vec<&str>| -> Result<()> {
        let o = cli.run_ok(args)?;
        out.push((what, serde_json::from_str(&o.stdout)?));
        Ok(())
    };
    run("list".into(), vec!["--json", "list", "--cluster", "main"])?;
    for id in ids {
        run(
            format!("show {id}"),
            vec!["--json", "show", "--cluster", "main", id],
        )?;
    }
    run("wal".into(), vec!["--json", "wal", "--cluster", "main"])?;
    run(
        "retention --dry-run".into(),
        vec!["--json", "retention", "--cluster", "main", "--dry-run"],
    )?;
    Ok(out)
}

fn ensure_same(before: &[(String, Value)], after: &[(String, Value)], when: &str) -> Result<()> {
    for ((what, a), (_, b)) in before.iter().zip(after) {
        ensure!(a == b, "`{what}` differs {when}:\nbefore: {a}\nafter:  {b}");
    }
    ensure!(before.len() == after.len());
    Ok(())
}

fn remove_catalog(data: &Path) -> Result<()> {
    for name in [
        "catalog.sqlite3",
        "catalog.sqlite3-wal",
        "catalog.sqlite3-shm",
    ] {
        let p = data.join(name);
        if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

#[test]
fn a_rebuilt_catalog_says_and_restores_the_same() -> Result<()> {
    let dir = TestDir::new("rebuild")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    let config = format!(
        "{}retention = \"redundancy 1\"\nminimum_redundancy = 1\nbackup_wal_timeout = 3\n\
         [clusters.unreachable]\nconninfo = \"host=127.0.0.1 port=1 user=x connect_timeout=2\"\n",
        backup_config("main", &primary.conninfo()?)
    );
    let mut server = Server::start_with_config(&dir, Some(&config))?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.start()?;
    primary.psql("create table t (id bigint primary key, payload text)")?;
    let cli = server.cli()?.timeout(std::time::Duration::from_secs(120));
    let mut ids = Vec::new();
    for round in 0..3u32 {
        primary.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series({}, {}) g",
            round * 1000 + 1,
            round * 1000 + 1000
        ))?;
        let seg = primary.switch_wal()?;
        primary.wait_archived(&seg, DEADLINE)?;
        let out = cli.run_ok(["--json", "backup", "--cluster", "main", "--wait"])?;
        let info: Value = serde_json::from_str(&out.stdout)?;
        ids.push(info["id"].as_str().context("id")?.to_string());
    }
    cli.run_ok(["keep", "--cluster", "main", &ids[0]])?;
    // A failed backup is part of what `list` shows.
    let out = cli.run(["backup", "--cluster", "unreachable", "--wait"])?;
    ensure!(
        !out.success(),
        "a backup of an unreachable cluster succeeded"
    );
    primary.psql("insert into t select g, 'last' from generate_series(5001, 5100) g")?;
    let last = primary.switch_wal()?;
    primary.wait_archived(&last, DEADLINE)?;
    let expected = count_and_max(&primary, "t")?;
    let before = views(&server, &ids)?;

    // The catalog is lost: the server rebuilds it from storage by itself.
    server.stop()?;
    remove_catalog(server.data_dir())?;
    server.start_again()?;
    ensure!(
        server.log().contains("rebuilding the catalog from storage"),
        "{}",
        server.log_tail()
    );
    ensure_same(
        &before,
        &views(&server, &ids)?,
        "after the catalog was lost",
    )?;

    // And on request, over a catalog that is there (set aside, not deleted).
    server.stop()?;
    server.set_args(&["--rebuild-catalog"]);
    server.start_again()?;
    server.set_args(&[]);
    let aside = std::fs::read_dir(server.data_dir())?.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("catalog.sqlite3.before-rebuild-")
    });
    ensure!(aside, "the old catalog was not kept aside");
    ensure_same(&before, &views(&server, &ids)?, "after --rebuild-catalog")?;

    // A restore from the rebuilt catalog works and replays to the end.
    let target = dir.path().join("restored");
    let bin = server.cli()?.bin().to_path_buf();
    let mut cmd = pg_command(&bin)?;
    cmd.current_dir(dir.path())
        .arg("--url")
        .arg(server.url())
        .args(["restore", "--cluster", "main", "latest", "--target-dir"])
        .arg(&target)
        .args(["--target-action", "promote"]);
    let out = run_with_deadline(&mut cmd, RESTORE_TIMEOUT)?;
    ensure!(out.success(), "restore: {}", out.describe());
    let restored = Pg::from_dir(&dir, "restored-pg", &target)?;
    restored.set("archive_mode", "off")?;
    restored.start()?;
    wal_archive_e2e::wait_until(DEADLINE, "the restored cluster is promoted", || {
        Ok(restored.wait_ready(DEADLINE).is_ok() && !restored.in_recovery()?)
    })?;
    ensure!(
        count_and_max(&restored, "t")? == expected,
        "the restored cluster lacks rows"
    );
    Ok(())
}
