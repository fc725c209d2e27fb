//! BASE_BACKUP against a real PostgreSQL 15 with an extra tablespace: events arrive in protocol
//! order, the tar archives parse and hold the cluster's files, the manifest is JSON whose WAL
//! range is the backup's, and pg_verifybackup accepts the extracted backup.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgrepl::{BackupEvent, BaseBackupOptions, ReplicationConnection};
use wal_archive_e2e::{parse_lsn, run_ok, PG_BIN};

#[tokio::test]
async fn base_backup_with_progress_manifest_and_tablespace() -> Result<()> {
    let (dir, pg) = common::started("pgrepl-backup", "")?;
    let ts_dir = dir.pg_subdir("ts")?;
    pg.psql(&format!(
        "create tablespace ts location '{}'",
        ts_dir.display()
    ))?;
    pg.psql(
        "create table in_ts (id int, p text) tablespace ts; \
         insert into in_ts select g, md5(g::text) from generate_series(1, 20000) g",
    )?;
    let ts_oid: u32 = pg
        .psql("select oid from pg_tablespace where spcname = 'ts'")?
        .parse()?;
    let before = parse_lsn(&pg.psql("select pg_current_wal_lsn()")?)?;

    let conn = ReplicationConnection::connect(&common::tcp(&pg, "postgres", "")?).await?;
    let mut opts = BaseBackupOptions::new("pgrepl test");
    opts.progress = true;
    opts.checkpoint_fast = true;
    opts.manifest = true;
    let mut backup = conn.base_backup(opts).await?;

    // Stream every archive to its own file: nothing is collected in memory.
    let out = dir.subdir("received")?;
    let mut kinds: Vec<&'static str> = Vec::new();
    let mut start = None;
    let mut end = None;
    let mut tablespaces = Vec::new();
    let mut archives: Vec<(String, Option<String>, PathBuf)> = Vec::new();
    let mut current: Option<std::fs::File> = None;
    let mut progress = Vec::new();
    let manifest_path = out.join("backup_manifest");
    let mut data_events = 0usize;
    while let Some(event) = backup.next().await? {
        let kind = match &event {
            BackupEvent::Start { .. } => "start",
            BackupEvent::Tablespaces(_) => "tablespaces",
            BackupEvent::Archive { .. } => "archive",
            BackupEvent::Data(_) => "data",
            BackupEvent::Progress(_) => "progress",
            BackupEvent::ManifestStart => "manifest",
            BackupEvent::End { .. } => "end",
        };
        if kinds.last() != Some(&kind) || kind != "data" {
            kinds.push(kind);
        }
        match event {
            BackupEvent::Start {
                start_lsn,
                timeline,
            } => start = Some((start_lsn, timeline)),
            BackupEvent::Tablespaces(t) => tablespaces = t,
            BackupEvent::Archive {
                name,
                tablespace_location,
            } => {
                let path = out.join(&name);
                current = Some(std::fs::File::create(&path)?);
                archives.push((name, tablespace_location, path));
            }
            BackupEvent::ManifestStart => current = Some(std::fs::File::create(&manifest_path)?),
            BackupEvent::Data(bytes) => {
                data_events += 1;
                current
                    .as_mut()
                    .context("data before an archive")?
                    .write_all(&bytes)?;
            }
            BackupEvent::Progress(done) => progress.push(done),
            BackupEvent::End { end_lsn, timeline } => end = Some((end_lsn, timeline)),
        }
    }
    drop(current);
    // After the end the connection is back in command mode.
    let mut conn = backup.into_connection()?;
    conn.identify_system().await?;

    // Order: start, tablespaces, archives with their data (progress in between), the manifest,
    // end.
    let order: Vec<&str> = kinds.iter().copied().filter(|k| *k != "progress").collect();
    assert_eq!(
        order,
        [
            "start",
            "tablespaces",
            "archive",
            "data",
            "archive",
            "data",
            "manifest",
            "data",
            "end"
        ],
        "event order {kinds:?}"
    );
    assert!(!progress.is_empty(), "PROGRESS true sends progress reports");
    assert!(data_events > 2);

    let (start_lsn, start_tli) = start.context("start event")?;
    let (end_lsn, end_tli) = end.context("end event")?;
    assert_eq!((start_tli, end_tli), (1, 1));
    assert!(
        start_lsn.0 >= before,
        "backup starts after the data was written"
    );
    assert!(end_lsn > start_lsn);

    // Tablespaces: ours with its location and a size (PROGRESS), and the main directory.
    assert_eq!(tablespaces.len(), 2, "{tablespaces:?}");
    let ts = tablespaces
        .iter()
        .find(|t| t.oid == Some(ts_oid))
        .context("our tablespace is listed")?;
    assert_eq!(
        ts.location.as_deref(),
        Some(ts_dir.to_str().context("utf-8 path")?)
    );
    assert!(ts.size_kb.is_some_and(|s| s > 0));
    assert!(tablespaces
        .iter()
        .any(|t| t.oid.is_none() && t.location.is_none()));

    // Archives: base.tar (main directory) and OID.tar (our tablespace, with its location).
    let base = archives
        .iter()
        .find(|(n, loc, _)| n == "base.tar" && loc.is_none())
        .context("base.tar")?;
    let ts_archive = archives
        .iter()
        .find(|(n, _, _)| *n == format!("{ts_oid}.tar"))
        .context("tablespace archive")?;
    assert_eq!(ts_archive.1.as_deref(), ts.location.as_deref());

    let names = tar_names(&base.2)?;
    for wanted in [
        "PG_VERSION",
        "global/pg_control",
        "backup_label",
        "tablespace_map",
    ] {
        assert!(names.iter().any(|n| n == wanted), "base.tar lacks {wanted}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("pg_wal/0")),
        "no WAL in the backup"
    );
    assert!(tar_names(&ts_archive.2)?
        .iter()
        .any(|n| n.starts_with("PG_15_")));

    // The manifest: JSON, lists files, and its WAL range is the backup's.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    let files = manifest["Files"].as_array().context("Files")?;
    assert!(files.iter().any(|f| f["Path"] == "global/pg_control"));
    let range = &manifest["WAL-Ranges"][0];
    assert_eq!(range["Start-LSN"], start_lsn.to_string());
    assert_eq!(range["End-LSN"], end_lsn.to_string());

    // Oracle: extract as a plain backup would be laid out and let pg_verifybackup check every
    // file's size and SHA-256 against the manifest (-n: the backup carries no WAL).
    let restore = dir.subdir("restore")?;
    tar::Archive::new(std::fs::File::open(&base.2)?).unpack(&restore)?;
    let ts_target = restore.join("pg_tblspc").join(ts_oid.to_string());
    std::fs::create_dir_all(&ts_target)?;
    tar::Archive::new(std::fs::File::open(&ts_archive.2)?).unpack(&ts_target)?;
    std::fs::copy(&manifest_path, restore.join("backup_manifest"))?;
    let verify = run_ok(
        Command::new(format!("{PG_BIN}/pg_verifybackup"))
            .arg("-n")
            .arg(&restore),
        Duration::from_secs(60),
    )?;
    assert!(verify.contains("successfully verified"), "{verify}");
    Ok(())
}

fn tar_names(path: &std::path::Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    for entry in archive.entries()? {
        let entry = entry?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        names.push(name);
    }
    if names.is_empty() {
        bail!("{} is an empty archive", path.display());
    }
    Ok(names)
}
