//! Real WAL files for tests that drive the API directly: a PostgreSQL cluster whose
//! `archive_command` copies each finished segment into a plain directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::pg::{copy_archive_command, BaseBackupOptions, Pg, PgOptions};
use crate::testdir::TestDir;
use crate::util::wait_until;

/// A running cluster that produces real, complete WAL segments on demand.
pub struct WalFactory {
    pg: Pg,
    out: PathBuf,
}

impl WalFactory {
    /// initdb + start a cluster named `name` with a copying archive_command, and a table `t`.
    pub fn start(dir: &TestDir, name: &str) -> Result<WalFactory> {
        let out = dir.pg_subdir(&format!("{name}-wal"))?;
        std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let pg = Pg::init(dir, name, PgOptions::default())?;
        pg.set("archive_mode", "on")?;
        pg.set("archive_command", copy_archive_command(&out))?;
        pg.start()?;
        pg.psql("create table t (id bigserial primary key, payload text)")?;
        Ok(WalFactory { pg, out })
    }

    /// A split brain: a copy of this cluster (pg_basebackup, same system identifier, same
    /// timeline), started on its own, so that from here on both write segments of the same
    /// names with other bytes. Its copies go to their own directory.
    pub fn fork(&self, dir: &TestDir, name: &str) -> Result<WalFactory> {
        let out = dir.pg_subdir(&format!("{name}-wal"))?;
        std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let pg = Pg::from_basebackup(&self.pg, dir, name, BaseBackupOptions::copy())?;
        pg.set("archive_command", copy_archive_command(&out))?;
        pg.start()?;
        pg.psql("insert into t (payload) values ('written by the fork only')")?;
        Ok(WalFactory { pg, out })
    }

    pub fn pg(&self) -> &Pg {
        &self.pg
    }

    /// Writes a little, switches, and returns the name of each of `n` new complete segments once
    /// its copy is in place.
    pub fn make_segments(&self, n: usize) -> Result<Vec<String>> {
        let mut names = Vec::with_capacity(n);
        for _ in 0..n {
            self.pg.psql(
                "insert into t (payload) select md5(g::text) from generate_series(1, 100) g",
            )?;
            let name = self.pg.switch_wal()?;
            let path = self.path(&name);
            wait_until(
                Duration::from_secs(30),
                &format!("{} is copied to {}", name, self.out.display()),
                || Ok(path.exists()),
            )
            .with_context(|| self.pg.log_tail())?;
            names.push(name);
        }
        Ok(names)
    }

    /// Where the copy of `name` is.
    pub fn path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// The bytes of the copy of `name`.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The directory the copies are in.
    pub fn dir(&self) -> &Path {
        &self.out
    }
}
