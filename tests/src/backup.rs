//! Helpers of the base backup and restore tests (`tests/tests/backup.rs`, `restore.rs`): a primary
//! that archives into a server which can back it up, `backup --wait`, restore run as the
//! PostgreSQL OS user, restored clusters, and the blobs a backup stores.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::pg::{Pg, PgOptions};
use crate::server::Server;
use crate::testdir::{pg_command, TestDir};
use crate::util::{list_files, run_with_deadline, wait_until, Output};
use crate::{archive_command, toml_string, DEADLINE};

/// How long a restore may take (it downloads a whole data directory).
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// A server configuration in which cluster `cluster` can be backed up through `conninfo`.
pub fn backup_config(cluster: &str, conninfo: &str) -> String {
    format!(
        "[clusters.{cluster}]\nconninfo = {}\n",
        toml_string(conninfo)
    )
}

/// A running primary (1 MiB segments) whose archive_command pushes to a running server, which
/// has its conninfo as cluster `main` and so can take backups of it.
pub struct BackupRig {
    pub primary: Pg,
    pub server: Server,
    pub dir: TestDir,
}

impl BackupRig {
    pub fn start(name: &str) -> Result<BackupRig> {
        BackupRig::start_with(name, "", "")
    }

    /// [`BackupRig::start`] with more configuration: `top` (top-level keys) and `cluster`
    /// (keys of `[clusters.main]`); `{dir}` stands for the test directory in both.
    pub fn start_with(name: &str, top: &str, cluster: &str) -> Result<BackupRig> {
        let dir = TestDir::new(name)?;
        let primary = Pg::init(&dir, "primary", PgOptions::default())?;
        let at = |text: &str| text.replace("{dir}", &dir.path().display().to_string());
        let config = format!(
            "{}{}{}",
            at(top),
            backup_config("main", &primary.conninfo()?),
            at(cluster)
        );
        let server = Server::start_with_config(&dir, Some(&config))?;
        primary.set("archive_mode", "on")?;
        primary.set("archive_command", archive_command(&server, "main")?)?;
        primary.start()?;
        Ok(BackupRig {
            primary,
            server,
            dir,
        })
    }

    /// `wal-archive --json backup --cluster main --wait`: the finished backup as JSON; fails
    /// unless it exits 0 with status `done`. Backups taken back to back are fine: the server
    /// waits for the next second when the previous backup's id (a timestamp) is this second's.
    pub fn backup(&self) -> Result<serde_json::Value> {
        let cli = self.server.cli()?.timeout(Duration::from_secs(120));
        let args = ["--json", "backup", "--cluster", "main", "--wait"];
        let out = cli.run(args)?;
        if !out.success() {
            bail!(
                "wal-archive {} failed: {}\n--- server log (tail) ---\n{}",
                args.join(" "),
                out.describe(),
                self.server.log_tail()
            );
        }
        let info: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("backup --json printed no JSON: {}", out.describe()))?;
        if info["status"] != "done" {
            bail!("backup --wait exited 0 but the backup is not done: {info}");
        }
        Ok(info)
    }

    /// `pg_switch_wal()` and wait until the segment it completed is archived: everything
    /// committed so far is in the archive.
    pub fn archive_now(&self) -> Result<()> {
        let segment = self.primary.switch_wal()?;
        self.primary.wait_archived(&segment, DEADLINE)
    }

    /// `wal-archive --url URL restore --cluster main ARGS` as the PostgreSQL OS user (any exit
    /// code is `Ok`).
    pub fn restore(&self, args: &[&str]) -> Result<Output> {
        self.cli_as_pg(&[&["restore", "--cluster", "main"], args].concat())
    }

    /// [`BackupRig::restore`] that must exit 0.
    pub fn restore_ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.restore(args)?;
        if !out.success() {
            bail!(
                "wal-archive restore {} failed: {}\n--- server log (tail) ---\n{}",
                args.join(" "),
                out.describe(),
                self.server.log_tail()
            );
        }
        Ok(out)
    }

    /// `wal-archive --url URL ARGS`, run as the PostgreSQL OS user from the test directory.
    pub fn cli_as_pg(&self, args: &[&str]) -> Result<Output> {
        let cli = self.server.cli()?;
        let mut cmd = pg_command(cli.bin())?;
        cmd.current_dir(self.dir.path())
            .arg("--url")
            .arg(self.server.url())
            .args(args);
        run_with_deadline(&mut cmd, RESTORE_TIMEOUT)
    }

    /// A path in the test directory for a new data directory (not created: restore makes it,
    /// as the PostgreSQL user, who owns the test directory).
    pub fn new_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A restored data directory, configured (own port and socket, archiving off so that it
    /// never pushes its new timeline into the primary's archive) and started; waits until it
    /// answers queries.
    pub fn start_restored(&self, name: &str, data: &Path) -> Result<Pg> {
        let pg = Pg::from_dir(&self.dir, name, data)?;
        pg.set("archive_mode", "off")?;
        pg.start()?;
        pg.wait_ready(DEADLINE)?;
        Ok(pg)
    }

    /// Waits until `pg` has left recovery (promoted at its recovery target).
    pub fn wait_promoted(pg: &Pg) -> Result<()> {
        wait_until(DEADLINE, &format!("{} ends recovery", pg.name()), || {
            Ok(!pg.in_recovery()?)
        })
        .with_context(|| pg.log_tail())
    }

    /// The server's JSON for `GET /v1/clusters/main/backups{suffix}`; fails unless 200.
    pub fn api_get(&self, suffix: &str) -> Result<serde_json::Value> {
        let resp = self
            .server
            .api()
            .get(&format!("/v1/clusters/main/backups{suffix}"), None)?;
        if resp.status != 200 {
            bail!("GET backups{suffix}: {}", resp.short());
        }
        resp.json()
    }
}

/// The files a backup lists, from `GET .../backups/{id}/files`.
pub fn backup_files(server: &Server, cluster: &str, id: &str) -> Result<Vec<serde_json::Value>> {
    let resp = server
        .api()
        .get(&format!("/v1/clusters/{cluster}/backups/{id}/files"), None)?;
    if resp.status != 200 {
        bail!("files of backup {id}: {}", resp.short());
    }
    let json = resp.json()?;
    json["files"]
        .as_array()
        .cloned()
        .with_context(|| format!("no \"files\" array: {json}"))
}

/// What the server's storage holds for the backups of `cluster`: paths relative to
/// `DATA_DIR/storage/backups/{cluster}`.
pub fn stored_backup_objects(server: &Server, cluster: &str) -> Result<Vec<PathBuf>> {
    list_files(&server.storage_dir().join("backups").join(cluster))
}

/// The stored object of the blob with SHA-256 `sha`.
pub fn blob_path(server: &Server, cluster: &str, sha: &str) -> PathBuf {
    server
        .storage_dir()
        .join("backups")
        .join(cluster)
        .join("data")
        .join(&sha[..2])
        .join(format!("{sha}.zst"))
}

/// Objects under `DATA_DIR/storage/backups/{cluster}` that no remaining backup references: data
/// blobs no done backup lists, manifests and records of backups that are gone, and anything
/// else (uploads in progress, debris).
pub fn orphan_objects(server: &Server, cluster: &str) -> Result<Vec<PathBuf>> {
    let resp = server
        .api()
        .get(&format!("/v1/clusters/{cluster}/backups"), None)?;
    if resp.status != 200 {
        bail!("backups of {cluster}: {}", resp.short());
    }
    let list = resp.json()?;
    let mut shas = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for b in list.as_array().context("backup list is not an array")? {
        let id = b["id"].as_str().context("backup without id")?.to_string();
        if b["status"] == "done" {
            for f in backup_files(server, cluster, &id)? {
                if let Some(sha) = f["sha256"].as_str() {
                    shas.insert(sha.to_string());
                }
            }
        }
        ids.insert(id);
    }
    let mut orphans = Vec::new();
    for path in stored_backup_objects(server, cluster)? {
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let referenced = match parts.as_slice() {
            [data, _, name] if data == "data" => name
                .strip_suffix(".zst")
                .is_some_and(|sha| shas.contains(sha)),
            [manifests, name] if manifests == "manifests" => {
                name.strip_suffix(".zst").is_some_and(|id| ids.contains(id))
            }
            // The record of a backup the server lists (what a rebuilt catalog reads).
            [meta, name] if meta == "meta" => name
                .strip_suffix(".json")
                .is_some_and(|id| ids.contains(id)),
            _ => false,
        };
        if !referenced {
            orphans.push(path);
        }
    }
    Ok(orphans)
}

/// `count(*)` and `max(id)` of `table`, as `"COUNT MAX"`.
pub fn count_and_max(pg: &Pg, table: &str) -> Result<String> {
    pg.psql(&format!(
        "select count(*) || ' ' || coalesce(max(id), 0) from {table}"
    ))
}
