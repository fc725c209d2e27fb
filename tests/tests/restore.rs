//! `wal-archive restore` against real PostgreSQL 15: acceptance scenarios 4 and 5 (DESIGN section
//! 8), tablespaces, and what restore refuses.
//!
//! - `point_in_time_restores_stop_exactly_at_their_targets`: scenario 4. One primary, one backup,
//!   then commits around a recorded time, an LSN, a restore point and a transaction id; one
//!   restore per target (`--target-time`, `--target-lsn`, `--target-name`, `--target-xid`,
//!   `--target-immediate`), each started and promoted, shows exactly the rows committed before
//!   its target.
//! - `restored_standby_follows_its_primary`: scenario 5. `restore --standby --primary-conninfo
//!   --primary-slot-name` gives a standby that streams from the primary through the slot.
//! - `tablespace_moves_to_a_new_directory`: a tablespace restored with `--tablespace ts=DIR`;
//!   `pg_verifybackup` accepts the restored directory, the table is there once started; without
//!   `--tablespace` the primary's own (non-empty) location is refused.
//! - `non_empty_directory_and_corrupt_blob_are_refused`: a non-empty target directory is refused
//!   and left as it was; a flipped byte in a stored blob makes `verify` fail naming it and
//!   `restore` fail naming the file, leaving nothing behind.
//! - `restore_command_reads_the_token_from_the_client_config`: with a server that requires a
//!   token, the restored directory's restore_command names the client config file (never the
//!   token), and recovery fetches the backup's WAL through it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::backup::{backup_config, backup_files, blob_path, count_and_max, BackupRig};
use wal_archive_e2e::{
    archive_command_with, pg_command, run_with_deadline, sha256_hex, wait_until, Pg, PgOptions,
    Server, TestDir, DEADLINE, PG_BIN,
};

fn insert(pg: &Pg, from: i64, to: i64) -> Result<()> {
    pg.psql(&format!(
        "insert into t select g, md5(g::text) from generate_series({from}, {to}) g"
    ))
    .map(|_| ())
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Restores with `args` into a new directory `name`, starts it, waits until it promoted at its
/// target, and returns `count(*) max(id)` of `t`.
fn restore_and_count(rig: &BackupRig, name: &str, args: &[&str]) -> Result<String> {
    let data = rig.new_path(&format!("{name}-data"));
    let data_s = s(&data);
    // Many parallel downloads: each blob GET costs the server some milliseconds of latency.
    let mut all = vec![
        "--target-dir",
        data_s.as_str(),
        "--target-action",
        "promote",
        "--jobs",
        "16",
    ];
    all.extend_from_slice(args);
    rig.restore_ok(&all)?;
    let pg = rig.start_restored(name, &data)?;
    BackupRig::wait_promoted(&pg)?;
    let result = count_and_max(&pg, "t")?;
    pg.stop_fast()?;
    Ok(result)
}

#[test]
fn point_in_time_restores_stop_exactly_at_their_targets() -> Result<()> {
    let rig = BackupRig::start("pitr")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint primary key, payload text)")?;
    insert(p, 1, 100)?;
    let backup = rig.backup()?;
    let id = backup["id"]
        .as_str()
        .context("backup without id")?
        .to_string();

    insert(p, 101, 200)?;
    // A statement of its own, after that commit: every later commit is later than this time.
    let time = p.psql("select now()")?;
    insert(p, 201, 300)?;
    let lsn = p.psql("select pg_current_wal_lsn()")?;
    insert(p, 301, 400)?;
    p.psql("select pg_create_restore_point('p1')")?;
    let xid = p.psql(
        "begin; insert into t select g, md5(g::text) from generate_series(401, 500) g; \
         select txid_current(); commit;",
    )?;
    insert(p, 501, 600)?;
    rig.archive_now()?;

    let cases: [(&str, Vec<&str>, &str); 5] = [
        ("time", vec![&id, "--target-time", &time], "200 200"),
        ("lsn", vec!["latest", "--target-lsn", &lsn], "300 300"),
        ("name", vec![&id, "--target-name", "p1"], "400 400"),
        ("xid", vec!["latest", "--target-xid", &xid], "500 500"),
        ("immediate", vec![&id, "--target-immediate"], "100 100"),
    ];
    for (name, args, expected) in cases {
        let got = restore_and_count(&rig, &format!("r-{name}"), &args)
            .with_context(|| format!("restore to the {name} target ({args:?})"))?;
        ensure!(
            got == expected,
            "restore to the {name} target {args:?}: rows (count max) {got}, expected {expected}"
        );
    }
    Ok(())
}

#[test]
fn restored_standby_follows_its_primary() -> Result<()> {
    let rig = BackupRig::start("restore-standby")?;
    let p = &rig.primary;
    p.psql("select pg_create_physical_replication_slot('s', true)")?;
    p.psql("create table t (id bigint primary key, payload text)")?;
    insert(p, 1, 100)?;
    rig.backup()?;
    insert(p, 101, 200)?;
    rig.archive_now()?;

    let data = rig.new_path("standby-data");
    let conninfo = p.conninfo()?;
    rig.restore_ok(&[
        "latest",
        "--target-dir",
        &s(&data),
        "--standby",
        "--primary-conninfo",
        &conninfo,
        "--primary-slot-name",
        "s",
        "--jobs",
        "16",
    ])?;
    ensure!(data.join("standby.signal").is_file(), "no standby.signal");
    ensure!(
        !data.join("recovery.signal").exists(),
        "recovery.signal next to standby.signal"
    );
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf"))?;
    let bin = s(rig.server.cli()?.bin());
    for wanted in [
        "primary_slot_name = 's'".to_string(),
        format!("primary_conninfo = '{conninfo}'"),
        format!(
            "restore_command = '{bin} --url {} fetch --cluster main %f %p'",
            rig.server.url()
        ),
        "recovery_target_timeline = 'latest'".to_string(),
    ] {
        ensure!(
            auto.contains(&wanted),
            "postgresql.auto.conf lacks {wanted:?}:\n{auto}"
        );
    }
    let mode = std::fs::metadata(&data)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "data directory mode {mode:o}, expected 700");

    let standby = rig.start_restored("standby", &data)?;
    wait_until(
        DEADLINE,
        "the restored standby streams through slot s",
        || {
            Ok(standby
                .psql("select count(*) from pg_stat_wal_receiver where status = 'streaming'")?
                == "1"
                && p.psql("select active from pg_replication_slots where slot_name = 's'")? == "t")
        },
    )
    .with_context(|| standby.log_tail())?;
    ensure!(standby.in_recovery()?, "the standby is not in recovery");
    insert(p, 201, 210)?;
    wait_until(DEADLINE, "the new rows appear on the standby", || {
        Ok(count_and_max(&standby, "t")? == "210 210")
    })
    .with_context(|| standby.log_tail())?;
    Ok(())
}

#[test]
fn tablespace_moves_to_a_new_directory() -> Result<()> {
    let rig = BackupRig::start("restore-tablespace")?;
    let p = &rig.primary;
    let original = rig.dir.pg_subdir("ts-original")?;
    p.psql(&format!("create tablespace ts location '{}'", s(&original)))?;
    p.psql("create table t (id bigint primary key, payload text) tablespace ts")?;
    insert(p, 1, 1000)?;
    let oid = p.psql("select oid from pg_tablespace where spcname = 'ts'")?;
    let backup = rig.backup()?;
    let listed = backup["tablespaces"]
        .as_array()
        .context("no tablespaces array")?;
    ensure!(
        listed.len() == 1
            && listed[0]["oid"].as_u64().map(|o| o.to_string()) == Some(oid.clone())
            && listed[0]["location"] == s(&original).as_str()
            && listed[0]["name"] == "ts",
        "backup lists tablespaces {listed:?}, expected ts (oid {oid}) at {}",
        original.display()
    );
    rig.archive_now()?;

    // The original location is the primary's, not empty: refused, and nothing is created.
    let refused = rig.new_path("refused-data");
    let out = rig.restore(&["latest", "--target-dir", &s(&refused)])?;
    ensure!(
        out.code == Some(1) && out.stderr.contains(&s(&original)),
        "restore onto the primary's tablespace was not refused naming it: {}",
        out.describe()
    );
    ensure!(!refused.exists(), "the refused restore created {refused:?}");

    let data = rig.new_path("ts-data");
    let moved = rig.new_path("ts-moved");
    rig.restore_ok(&[
        "latest",
        "--target-dir",
        &s(&data),
        "--tablespace",
        &format!("ts={}", s(&moved)),
        "--target-immediate",
        "--target-action",
        "promote",
        "--jobs",
        "16",
    ])?;
    let link = std::fs::read_link(data.join("pg_tblspc").join(&oid))?;
    ensure!(
        link == moved,
        "pg_tblspc/{oid} points at {link:?}, not {moved:?}"
    );

    // PostgreSQL's own oracle: every file of the manifest, with its size and SHA-256.
    let mut verify = pg_command(Path::new(PG_BIN).join("pg_verifybackup"))?;
    verify
        .current_dir(rig.dir.path())
        .arg("-n")
        .arg("-m")
        .arg(data.join("backup_manifest"))
        .arg(&data);
    let out = run_with_deadline(&mut verify, DEADLINE)?;
    ensure!(out.success(), "pg_verifybackup: {}", out.describe());

    let pg = rig.start_restored("ts-restored", &data)?;
    BackupRig::wait_promoted(&pg)?;
    ensure!(
        count_and_max(&pg, "t")? == "1000 1000",
        "rows in the moved tablespace: {}",
        count_and_max(&pg, "t")?
    );
    let location = pg.psql(&format!("select pg_tablespace_location({oid})"))?;
    ensure!(
        location == s(&moved),
        "the restored tablespace is at {location}, expected {}",
        moved.display()
    );
    Ok(())
}

#[test]
fn non_empty_directory_and_corrupt_blob_are_refused() -> Result<()> {
    let rig = BackupRig::start("restore-refusals")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint primary key, payload text)")?;
    insert(p, 1, 1000)?;
    let backup = rig.backup()?;
    let id = backup["id"]
        .as_str()
        .context("backup without id")?
        .to_string();
    rig.archive_now()?;

    let busy = rig.dir.pg_subdir("busy")?;
    std::fs::write(busy.join("precious.txt"), "do not touch")?;
    let out = rig.restore(&[&id, "--target-dir", &s(&busy)])?;
    ensure!(
        out.code == Some(1) && out.stderr.contains("not empty"),
        "restore into a non-empty directory: {}",
        out.describe()
    );
    let entries: Vec<_> = std::fs::read_dir(&busy)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    ensure!(
        entries == ["precious.txt"]
            && std::fs::read_to_string(busy.join("precious.txt"))? == "do not touch",
        "the refused restore changed {busy:?}: {entries:?}"
    );

    let cli = rig.server.cli()?;
    cli.run_ok(["verify", "--cluster", "main", "latest"])?;

    // Flip one byte in the middle of the biggest file's stored object.
    let files = backup_files(&rig.server, "main", &id)?;
    let victim = files
        .iter()
        .filter(|f| f["kind"] == "file")
        .max_by_key(|f| f["size"].as_u64().unwrap_or(0))
        .context("the backup has no file")?;
    let path = victim["path"].as_str().context("file without path")?;
    let sha = victim["sha256"].as_str().context("file without sha256")?;
    let object = blob_path(&rig.server, "main", sha);
    let mut bytes =
        std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&object, &bytes)?;

    let out = cli.run(["verify", "--cluster", "main", &id])?;
    ensure!(
        out.code == Some(1) && (out.stdout.contains(path) || out.stdout.contains(sha)),
        "verify of a backup with a corrupt blob ({path}, {sha}): {}",
        out.describe()
    );

    // Identical files (pg_proc of template1 and postgres) share one blob: any of them is named.
    let sharing: Vec<&str> = files
        .iter()
        .filter(|f| f["sha256"] == sha)
        .filter_map(|f| f["path"].as_str())
        .collect();
    let data = rig.new_path("corrupt-data");
    let out = rig.restore(&[&id, "--target-dir", &s(&data)])?;
    ensure!(
        out.code == Some(1) && sharing.iter().any(|p| out.stderr.contains(p)),
        "restore of a backup with a corrupt blob ({sharing:?}): {}",
        out.describe()
    );
    ensure!(
        !data.exists(),
        "the failed restore left {} behind",
        data.display()
    );
    Ok(())
}

#[test]
fn restore_command_reads_the_token_from_the_client_config() -> Result<()> {
    let dir = TestDir::new("restore-token")?;
    let secret = "wa-restore-token-5f1c2b7e9d";
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    let config = format!(
        "{}\n[[tokens]]\nname = \"admin\"\nsecret_sha256 = \"{}\"\nrole = \"admin\"\n",
        backup_config("main", &primary.conninfo()?),
        sha256_hex(secret.as_bytes())
    );
    let server = Server::start_with_config(&dir, Some(&config))?;
    // The client config: readable by the PostgreSQL user only, as in production.
    let client_config = dir.path().join("client.toml");
    std::fs::write(&client_config, format!("token = \"{secret}\"\n"))?;
    std::fs::set_permissions(&client_config, std::fs::Permissions::from_mode(0o600))?;
    wal_archive_e2e::testdir::give_to_pg(&client_config)?;
    let config_arg = format!("--config {}", s(&client_config));
    primary.set("archive_mode", "on")?;
    primary.set(
        "archive_command",
        archive_command_with(&server, "main", &config_arg)?,
    )?;
    primary.start()?;
    let rig = BackupRig {
        primary,
        server,
        dir,
    };
    let cli = rig.server.cli()?;
    let refused = cli.run(["backup", "--cluster", "main"])?;
    ensure!(
        refused.code == Some(1),
        "backup without a token: {}",
        refused.describe()
    );
    cli.clone()
        .env("WAL_ARCHIVE_TOKEN", secret)
        .timeout(std::time::Duration::from_secs(120))
        .run_ok(["backup", "--cluster", "main", "--wait"])?;

    let data = rig.new_path("token-data");
    rig.restore_ok(&[
        "--config",
        &s(&client_config),
        "latest",
        "--target-dir",
        &s(&data),
        "--target-immediate",
        "--target-action",
        "promote",
        "--jobs",
        "16",
    ])?;
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf"))?;
    ensure!(
        !auto.contains(secret),
        "the token is in postgresql.auto.conf:\n{auto}"
    );
    ensure!(
        auto.contains(&format!("{config_arg} fetch --cluster main %f %p'")),
        "restore_command does not reference {}:\n{auto}",
        client_config.display()
    );
    let pg = rig.start_restored("token-restored", &data)?;
    BackupRig::wait_promoted(&pg)?;
    ensure!(
        pg.log().contains("from archive"),
        "recovery restored nothing from the archive:\n{}",
        pg.log_tail()
    );
    Ok(())
}
