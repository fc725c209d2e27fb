//! Base backups taken by the server in-process (router via `tower::ServiceExt::oneshot`) from a
//! real PostgreSQL 15, with the WAL arriving through the server's own streaming receiver.
//!
//! - `backup_lifecycle_dedup_and_verify`: running → waiting_for_wal → done, with a tablespace;
//!   files, blobs and manifest served exactly (pg_verifybackup accepts them laid out again); a second backup of an unchanged database stores almost nothing;
//!   verify is ok, then names the file whose stored blob was damaged, which is never served.
//! - `delete_keep_and_minimum_redundancy`: 409 `minimum_redundancy`, 409 `kept`, and a delete
//!   removes exactly the blobs no other backup references.
//! - `backup_without_wal_fails_and_cleans_up`: 400 `no_conninfo`, 409 `backup_running`, a
//!   backup whose WAL never arrives fails naming the segment and leaves no objects, an
//!   unreachable server and a server of another database system fail with a reason, and a
//!   backup interrupted by a restart is failed at the next start with its stray objects removed.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::StatusCode;
use common::{call, server_with_config, verify, Env, DEADLINE};
use pgwal::api::{BackupFiles, BackupInfo};
use wal_archive_e2e::{toml_string, Pg, PgOptions, TestDir};

/// A server on `data_dir` with cluster `main` backed up from `pg`; `extra` adds lines to its
/// section. With `streaming`, the receiver stores the cluster's WAL.
async fn server(data_dir: &Path, pg: &Pg, streaming: bool, extra: &str) -> Result<Env> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} sslmode=disable connect_timeout=10",
        pg.port(),
        pg.superuser()?
    );
    let text = format!(
        "[clusters.main]\nconninfo = {}\nstreaming = {streaming}\nreconnect_max_delay = 1\n{extra}\n\
         [clusters.nowhere]\nconninfo = \"host=127.0.0.1 port=1 user=x sslmode=disable connect_timeout=2\"\n\
         [clusters.other_system]\nconninfo = {}\n",
        toml_string(&conninfo),
        toml_string(&conninfo)
    );
    server_with_config(data_dir, &text, streaming).await
}

fn started_pg(dir: &TestDir) -> Result<Pg> {
    let pg = Pg::init(dir, "pg", PgOptions::default())?;
    pg.start()?;
    Ok(pg)
}

async fn start_backup(env: &Env) -> Result<BackupInfo> {
    let r = call(env, "POST", "/v1/clusters/main/backups", "{}").await?;
    if r.status != StatusCode::ACCEPTED {
        bail!(
            "POST backups: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let info: BackupInfo = r.json()?;
    assert_eq!(info.status, "running");
    Ok(info)
}

async fn show(env: &Env, id: &str) -> Result<BackupInfo> {
    call(env, "GET", &format!("/v1/clusters/main/backups/{id}"), "")
        .await?
        .json()
}

/// Polls the backup until it ends; returns it and its first view in each status, in order.
async fn wait_end(env: &Env, id: &str) -> Result<(BackupInfo, Vec<BackupInfo>)> {
    wait_end_in(env, "main", id).await
}

async fn wait_end_in(env: &Env, cluster: &str, id: &str) -> Result<(BackupInfo, Vec<BackupInfo>)> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen: Vec<BackupInfo> = Vec::new();
    loop {
        let info: BackupInfo = call(
            env,
            "GET",
            &format!("/v1/clusters/{cluster}/backups/{id}"),
            "",
        )
        .await?
        .json()?;
        if seen.last().map(|s| &s.status) != Some(&info.status) {
            seen.push(info.clone());
        }
        if info.status == "done" || info.status == "failed" {
            return Ok((info, seen));
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "backup {id} still {} after {DEADLINE:?}: {info:?}",
                info.status
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn statuses(seen: &[BackupInfo]) -> Vec<&str> {
    seen.iter().map(|s| s.status.as_str()).collect()
}

async fn backup_done(env: &Env) -> Result<BackupInfo> {
    let info = start_backup(env).await?;
    let (info, seen) = wait_end(env, &info.id).await?;
    assert_eq!(info.status, "done", "{info:?}");
    // The statuses only ever move forward.
    let order = ["running", "waiting_for_wal", "done"];
    let ranks: Vec<usize> = statuses(&seen)
        .iter()
        .map(|s| order.iter().position(|o| o == s).unwrap_or(usize::MAX))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]),
        "statuses seen: {seen:?}"
    );
    Ok(info)
}

async fn files(env: &Env, id: &str) -> Result<BackupFiles> {
    call(
        env,
        "GET",
        &format!("/v1/clusters/main/backups/{id}/files"),
        "",
    )
    .await?
    .json()
}

fn file_sha(files: &BackupFiles, path: &str) -> Result<String> {
    files
        .files
        .iter()
        .find(|f| f.path == path && f.tablespace_oid.is_none())
        .and_then(|f| f.sha256.clone())
        .with_context(|| format!("{path} is not in the backup"))
}

fn shas(files: &BackupFiles) -> HashSet<String> {
    files
        .files
        .iter()
        .filter_map(|f| f.sha256.clone())
        .collect()
}

fn blob_path(env: &Env, sha: &str) -> PathBuf {
    env.storage
        .join(format!("backups/main/data/{}/{sha}.zst", &sha[..2]))
}

/// Every stored object under `prefix` of the storage directory.
fn objects_under(env: &Env, prefix: &str) -> Result<Vec<PathBuf>> {
    let root = env.storage.join(prefix);
    if !root.exists() {
        return Ok(Vec::new());
    }
    wal_archive_e2e::list_files(&root)
}

/// Backup content left in storage: objects under `backups/` but the records of backups
/// (`CLUSTER/meta/ID.json`), which describe failed backups too.
fn backup_content(env: &Env) -> Result<Vec<PathBuf>> {
    Ok(objects_under(env, "backups")?
        .into_iter()
        .filter(|p| {
            p.components()
                .nth(1)
                .is_none_or(|c| c.as_os_str() != "meta")
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_lifecycle_dedup_and_verify() -> Result<()> {
    let dir = TestDir::new("srv-backup-lifecycle")?;
    let pg = started_pg(&dir)?;
    pg.psql("create table t (id int primary key, payload text); insert into t select g, md5(g::text) from generate_series(1, 5000) g")?;
    let ts_dir = dir.pg_subdir("ts")?;
    pg.psql(&format!(
        "create tablespace ts location '{}'",
        ts_dir.display()
    ))?;
    pg.psql("create table in_ts (id int, p text) tablespace ts; insert into in_ts select g, md5(g::text) from generate_series(1, 2000) g")?;
    let ts_oid: u32 = pg
        .psql("select oid from pg_tablespace where spcname = 'ts'")?
        .parse()?;
    let data = tempfile::tempdir()?;
    let env = server(data.path(), &pg, true, "").await?;

    let first = backup_done(&env).await?;
    let ts = first
        .tablespaces
        .iter()
        .find(|t| t.oid == ts_oid)
        .context("tablespace")?;
    assert_eq!(ts.name.as_deref(), Some("ts"));
    assert_eq!(Path::new(&ts.location), ts_dir.as_path());
    assert_eq!(
        first.pg_version.as_deref().map(|v| v.starts_with("15")),
        Some(true)
    );
    assert_eq!(first.timeline, Some(1));
    assert!(
        first.begin_wal.is_some() && first.end_wal.is_some(),
        "{first:?}"
    );
    assert!(first.file_count > 500, "{first:?}");
    assert!(first.size_bytes > 1 << 20, "{first:?}");
    assert!(
        first.stored_bytes > 0 && first.stored_bytes < first.size_bytes,
        "{first:?}"
    );
    assert!(
        first.estimated_bytes.is_some_and(|e| e > 1 << 20),
        "{first:?}"
    );
    assert_eq!(first.progress_bytes, first.size_bytes);
    assert_eq!(first.system_identifier, Some(pg.system_identifier()?));

    // The files, and their content byte for byte.
    let list = files(&env, &first.id).await?;
    assert_eq!(
        list.files.iter().filter(|f| f.kind == "file").count() as u64,
        first.file_count
    );
    let control = list
        .files
        .iter()
        .find(|f| f.path == "global/pg_control")
        .context("pg_control")?;
    assert_eq!((control.kind.as_str(), control.size), ("file", 8192));
    assert!(list
        .files
        .iter()
        .any(|f| f.path == "global" && f.kind == "dir"));
    assert!(list.files.iter().any(|f| f.path == "backup_label"));
    // The pg_tblspc link travels as a symlink entry, not as a tablespace_map file.
    let link = list
        .files
        .iter()
        .find(|f| f.path == format!("pg_tblspc/{ts_oid}"))
        .context("tablespace link")?;
    assert_eq!(
        (link.kind.as_str(), link.link_target.as_deref()),
        ("symlink", Some(ts.location.as_str()))
    );
    assert!(!list.files.iter().any(|f| f.path == "tablespace_map"));
    assert!(list.files.iter().any(|f| f.tablespace_oid == Some(ts_oid)
        && f.kind == "file"
        && f.path.starts_with("PG_15_")));
    let version_sha = file_sha(&list, "PG_VERSION")?;
    let r = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/blobs/{version_sha}"),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, std::fs::read(pg.data_dir().join("PG_VERSION"))?);
    assert_eq!(
        r.headers
            .get("x-content-sha256")
            .and_then(|v| v.to_str().ok()),
        Some(version_sha.as_str())
    );
    let conf_sha = file_sha(&list, "postgresql.conf")?;
    let r = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/blobs/{conf_sha}"),
        "",
    )
    .await?;
    assert_eq!(
        r.body,
        std::fs::read(pg.data_dir().join("postgresql.conf"))?
    );
    // Unknown content and bad names.
    let r = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/blobs/{}", "0".repeat(64)),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&env, "GET", "/v1/clusters/main/blobs/..%2Fx", "").await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // The manifest as PostgreSQL sent it.
    let r = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/backups/{}/manifest", first.id),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::OK);
    let manifest: serde_json::Value = serde_json::from_slice(&r.body)?;
    assert_eq!(
        manifest["WAL-Ranges"][0]["Start-LSN"],
        first.begin_lsn.clone().unwrap_or_default()
    );
    assert_eq!(
        r.headers
            .get("x-content-sha256")
            .and_then(|v| v.to_str().ok()),
        Some(wal_archive_e2e::sha256_hex(&r.body).as_str())
    );

    // Oracle: the files served back, laid out as a plain backup, satisfy pg_verifybackup.
    let restore = dir.subdir("restore")?;
    for f in &list.files {
        let rel = match f.tablespace_oid {
            Some(oid) => format!("pg_tblspc/{oid}/{}", f.path),
            None => f.path.clone(),
        };
        let target = restore.join(&rel);
        match f.kind.as_str() {
            "dir" | "symlink" => std::fs::create_dir_all(&target)?,
            _ => {
                let sha = f.sha256.as_deref().context("file checksum")?;
                let r = call(&env, "GET", &format!("/v1/clusters/main/blobs/{sha}"), "").await?;
                assert_eq!(r.status, StatusCode::OK);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&target, &r.body)?;
            }
        }
    }
    std::fs::write(restore.join("backup_manifest"), &r.body)?;
    let out = wal_archive_e2e::run_ok(
        std::process::Command::new(format!("{}/pg_verifybackup", wal_archive_e2e::PG_BIN))
            .arg("-n")
            .arg(&restore),
        DEADLINE,
    )?;
    assert!(out.contains("successfully verified"), "{out}");

    // A second backup of the unchanged database references nearly everything.
    let second = backup_done(&env).await?;
    assert!(second.id > first.id, "{} {}", second.id, first.id);
    assert!(
        second.deduplicated_bytes * 10 >= second.size_bytes * 9,
        "second backup deduplicated too little: {second:?}"
    );
    assert!(
        second.stored_bytes * 5 < first.stored_bytes,
        "{first:?} {second:?}"
    );
    let r = call(&env, "GET", "/v1/clusters/main/backups", "").await?;
    let all: Vec<BackupInfo> = r.json()?;
    assert_eq!(
        all.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        vec![second.id.clone(), first.id.clone()],
        "newest first"
    );
    assert_eq!(show(&env, "latest").await?.id, second.id);

    // Verify: ok, then a damaged blob is found and named, and never served.
    let report = verify(&env, &first.id).await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.files_checked, first.file_count);
    let path = blob_path(&env, &version_sha);
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.len() - 64 - 6;
    bytes[at] ^= 0x55;
    std::fs::write(&path, &bytes)?;
    let report = verify(&env, &first.id).await?;
    assert!(!report.ok);
    assert!(
        report.problems.iter().any(|p| p.starts_with("PG_VERSION:")),
        "{report:?}"
    );
    let r = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/blobs/{version_sha}"),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.error()?.error, "corrupt");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_keep_and_minimum_redundancy() -> Result<()> {
    let dir = TestDir::new("srv-backup-delete")?;
    let pg = started_pg(&dir)?;
    let data = tempfile::tempdir()?;
    let env = server(data.path(), &pg, true, "minimum_redundancy = 1").await?;

    let a = backup_done(&env).await?;
    let r = call(
        &env,
        "DELETE",
        &format!("/v1/clusters/main/backups/{}", a.id),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error()?.error, "minimum_redundancy");

    pg.psql("create table big as select g as id, md5(g::text) as payload from generate_series(1, 20000) g; checkpoint")?;
    let b = backup_done(&env).await?;
    let r = call(
        &env,
        "POST",
        &format!("/v1/clusters/main/backups/{}/keep", b.id),
        r#"{"keep": true}"#,
    )
    .await?;
    assert!(r.json::<BackupInfo>()?.keep);
    let r = call(
        &env,
        "DELETE",
        &format!("/v1/clusters/main/backups/{}", b.id),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error()?.error, "kept");
    let r = call(
        &env,
        "POST",
        &format!("/v1/clusters/main/backups/{}/keep", b.id),
        r#"{"keep": false}"#,
    )
    .await?;
    assert!(!r.json::<BackupInfo>()?.keep);

    let files_a = shas(&files(&env, &a.id).await?);
    let files_b = shas(&files(&env, &b.id).await?);
    let only_b: Vec<&String> = files_b.difference(&files_a).collect();
    let shared: Vec<&String> = files_b.intersection(&files_a).collect();
    assert!(!only_b.is_empty() && !shared.is_empty());
    for sha in &only_b {
        assert!(blob_path(&env, sha).exists());
    }

    let r = call(
        &env,
        "DELETE",
        &format!("/v1/clusters/main/backups/{}", b.id),
        "",
    )
    .await?;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json::<BackupInfo>()?.id, b.id);
    let r = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/backups/{}", b.id),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error()?.error, "unknown_backup");
    for sha in &only_b {
        assert!(
            !blob_path(&env, sha).exists(),
            "{sha} only B used is still stored"
        );
        let r = call(&env, "GET", &format!("/v1/clusters/main/blobs/{sha}"), "").await?;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    for sha in &shared {
        assert!(
            blob_path(&env, sha).exists(),
            "{sha} A still needs was deleted"
        );
    }
    // Exactly A's blobs remain, and A is intact.
    assert_eq!(
        objects_under(&env, "backups/main/data")?.len(),
        files_a.len()
    );
    let report = verify(&env, &a.id).await?;
    assert!(report.ok, "{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_without_wal_fails_and_cleans_up() -> Result<()> {
    let dir = TestDir::new("srv-backup-nowal")?;
    let pg = started_pg(&dir)?;
    let data = tempfile::tempdir()?;
    let env = server(data.path(), &pg, false, "backup_wal_timeout = 3").await?;

    let r = call(&env, "POST", "/v1/clusters/other/backups", "").await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error()?.error, "no_conninfo");

    let started = start_backup(&env).await?;
    let r = call(&env, "POST", "/v1/clusters/main/backups", "").await?;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let e = r.error()?;
    assert_eq!(e.error, "backup_running");
    assert!(e.message.contains(&started.id), "{e:?}");

    let (info, seen) = wait_end(&env, &started.id).await?;
    assert_eq!(info.status, "failed");
    let st = statuses(&seen);
    assert!(st.ends_with(&["waiting_for_wal", "failed"]), "{st:?}");
    // While it waits, the whole backup is in and visible.
    let waiting = &seen[seen.len() - 2];
    assert!(waiting.size_bytes > 1 << 20, "{waiting:?}");
    assert_eq!(waiting.progress_bytes, waiting.size_bytes);
    assert!(
        waiting.estimated_bytes.is_some() && waiting.end_lsn.is_some(),
        "{waiting:?}"
    );
    let reason = info.reason.clone().unwrap_or_default();
    let end_wal = info.end_wal.clone().unwrap_or_default();
    assert!(
        reason.starts_with("the archive lacks ") && reason.contains("after 3 s"),
        "{reason}"
    );
    assert!(
        info.begin_wal
            .as_deref()
            .is_some_and(|b| reason.contains(b))
            || reason.contains(&end_wal)
    );
    // Only its record is left, which says it failed and why (a rebuilt catalog lists it so).
    let left = backup_content(&env)?;
    assert!(left.is_empty(), "a failed backup leaves objects: {left:?}");
    let r = call(
        &env,
        "GET",
        &format!("/v1/clusters/main/backups/{}/files", info.id),
        "",
    )
    .await?;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error()?.error, "backup_not_done");
    assert!(!verify(&env, &info.id).await?.ok);

    // PostgreSQL out of reach: failed, with a reason that says so.
    let r = call(&env, "POST", "/v1/clusters/nowhere/backups", "").await?;
    let nowhere: BackupInfo = r.json()?;
    let (failed, _) = wait_end_in(&env, "nowhere", &nowhere.id).await?;
    assert_eq!(failed.status, "failed");
    assert!(
        failed
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("127.0.0.1") && r.contains("connect")),
        "{failed:?}"
    );

    // A cluster bound to another database system is refused.
    let archive = env.state.archive.clone();
    archive
        .catalog
        .bind_cluster("other_system", 42, 1 << 20, 15)
        .await?;
    let r = call(&env, "POST", "/v1/clusters/other_system/backups", "").await?;
    let refused: BackupInfo = r.json()?;
    let (refused, _) = wait_end_in(&env, "other_system", &refused.id).await?;
    assert_eq!(refused.status, "failed");
    assert!(
        refused
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("bound to system 42")),
        "{refused:?}"
    );

    // A backup interrupted by a restart: failed at the next start, its objects removed.
    let outcome = wal_archive_server::backup::catalog::start(
        &archive.catalog,
        "main",
        "20200101T000000",
        "2020-01-01T00:00:00Z",
    )
    .await?;
    assert_eq!(
        outcome,
        wal_archive_server::backup::catalog::StartOutcome::Started
    );
    let stray = format!("backups/main/data/ab/{}.zst", "ab".repeat(32));
    let mut up = archive.blobs.begin_put(&stray).await?;
    up.write(b"leftover").await?;
    up.commit().await?;
    drop(archive);
    drop(env);
    let env = server(data.path(), &pg, false, "backup_wal_timeout = 3").await?;
    let info = show(&env, "20200101T000000").await?;
    assert_eq!(info.status, "failed");
    assert!(
        info.reason
            .as_deref()
            .is_some_and(|r| r.contains("interrupted")),
        "{info:?}"
    );
    assert!(
        backup_content(&env)?.is_empty(),
        "stray object survived the restart"
    );
    Ok(())
}
