//! The per-test temporary root, the OS user PostgreSQL runs as, and the binaries under test.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::run_ok;

/// The PostgreSQL 15 server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// psql (the Debian wrapper picks the newest client, which speaks to 15 fine).
pub const PSQL: &str = "/usr/bin/psql";

/// The OS user PostgreSQL commands run as.
#[derive(Debug, Clone, Copy)]
pub enum PgUser {
    /// We are root: PostgreSQL runs as `postgres` through `runuser`.
    Postgres { uid: u32, gid: u32 },
    /// We are an ordinary user: PostgreSQL runs as ourselves.
    Myself,
}

/// Who runs PostgreSQL here (decided once per test process).
pub fn pg_user() -> Result<PgUser> {
    static USER: OnceLock<PgUser> = OnceLock::new();
    if let Some(user) = USER.get() {
        return Ok(*user);
    }
    // /proc/self belongs to the effective uid of the process that looks at it.
    let euid = std::fs::metadata("/proc/self")
        .context("stat /proc/self")?
        .uid();
    let user = if euid == 0 {
        let id = |flag: &str| -> Result<u32> {
            let out = run_ok(
                Command::new("id").args([flag, "postgres"]),
                Duration::from_secs(10),
            )
            .context("running as root, PostgreSQL needs the `postgres` OS user")?;
            out.trim()
                .parse()
                .with_context(|| format!("parsing `id {flag} postgres` output {out:?}"))
        };
        PgUser::Postgres {
            uid: id("-u")?,
            gid: id("-g")?,
        }
    } else {
        PgUser::Myself
    };
    Ok(*USER.get_or_init(|| user))
}

/// A command that runs as the PostgreSQL OS user (through `runuser` when we are root).
pub fn pg_command(program: impl AsRef<Path>) -> Result<Command> {
    let program = program.as_ref();
    let mut cmd = match pg_user()? {
        PgUser::Postgres { .. } => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        }
        PgUser::Myself => Command::new(program),
    };
    scrub_env(&mut cmd);
    Ok(cmd)
}

/// Removes the variables that would make a test depend on the shell it was started from.
pub fn scrub_env(cmd: &mut Command) {
    for var in [
        "WAL_ARCHIVE_URL",
        "WAL_ARCHIVE_TOKEN",
        "WAL_ARCHIVE_CONFIG",
        "WAL_ARCHIVE_RETRY_FOR",
        "WAL_ARCHIVE_SERVER_CONFIG",
        "WAL_ARCHIVE_DATA_DIR",
        "WAL_ARCHIVE_LISTEN",
        "PGDATA",
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSERVICE",
        "PGOPTIONS",
        "PGAPPNAME",
    ] {
        cmd.env_remove(var);
    }
}

/// Gives `path` to the PostgreSQL OS user (no-op when that is us).
pub fn give_to_pg(path: &Path) -> Result<()> {
    if let PgUser::Postgres { uid, gid } = pg_user()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown postgres {}", path.display()))?;
    }
    Ok(())
}

/// The two binaries under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `wal-archive`, the helper / operator CLI.
    Cli,
    /// `wal-archive-server`, the daemon.
    Server,
}

impl Binary {
    pub fn file_name(self) -> &'static str {
        match self {
            Binary::Cli => "wal-archive",
            Binary::Server => "wal-archive-server",
        }
    }
}

/// Where the built binaries are: `WAL_ARCHIVE_BIN_DIR`, else the cargo target directory of this
/// test executable (`target/debug/deps/xxx` → `target/debug/`).
pub fn built_binary(bin: Binary) -> Result<PathBuf> {
    let dir = match std::env::var_os("WAL_ARCHIVE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("locating the test executable")?;
            let deps = exe.parent().context("test executable has no directory")?;
            let profile = if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent().context("deps directory has no parent")?
            } else {
                deps
            };
            profile.to_path_buf()
        }
    };
    let path = dir.join(bin.file_name());
    if !path.is_file() {
        bail!(
            "{} not found in {}: run `cargo build --workspace --bins` first \
             (or point WAL_ARCHIVE_BIN_DIR at the directory that holds it)",
            bin.file_name(),
            dir.display()
        );
    }
    Ok(path)
}

struct Root {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Drop for Root {
    fn drop(&mut self) {
        if std::env::var_os("WAL_ARCHIVE_E2E_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping test directory {}", dir.keep().display());
            }
        }
    }
}

/// A temporary root for one test: mode 0755 and owned by the PostgreSQL user, removed when the
/// last handle (the test's, and those kept by the `Pg`s and `Server`s inside it) is dropped.
/// Set `WAL_ARCHIVE_E2E_KEEP=1` to keep it for a post-mortem.
#[derive(Clone)]
pub struct TestDir {
    root: Arc<Root>,
    cli: Arc<OnceLock<PathBuf>>,
    server: Arc<OnceLock<PathBuf>>,
}

impl TestDir {
    pub fn new(name: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wal-archive-e2e-{name}-"))
            .tempdir()
            .context("creating the test's temporary directory")?;
        let path = dir.path().to_path_buf();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        give_to_pg(&path)?;
        Ok(TestDir {
            root: Arc::new(Root {
                dir: Some(dir),
                path,
            }),
            cli: Arc::new(OnceLock::new()),
            server: Arc::new(OnceLock::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root.path
    }

    /// A fresh subdirectory `name` (mode 0755), owned by us.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// A fresh subdirectory `name` (mode 0700), owned by us: what the helper accepts as a
    /// `--spool-dir`.
    pub fn private_subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(path)
    }

    /// A fresh subdirectory `name` (mode 0700) owned by the PostgreSQL user.
    pub fn pg_subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        give_to_pg(&path)?;
        Ok(path)
    }

    /// The test's own copy of a binary under test, inside this root with mode 0755, so that the
    /// PostgreSQL OS user can run it from `archive_command` / `restore_command` even when it cannot
    /// traverse the source tree.
    pub fn binary(&self, bin: Binary) -> Result<PathBuf> {
        let cell = match bin {
            Binary::Cli => &self.cli,
            Binary::Server => &self.server,
        };
        if let Some(path) = cell.get() {
            return Ok(path.clone());
        }
        let source = built_binary(bin)?;
        let bin_dir = self.subdir("bin")?;
        let dest = bin_dir.join(bin.file_name());
        std::fs::copy(&source, &dest)
            .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        Ok(cell.get_or_init(|| dest).clone())
    }

    /// The test's copy of `wal-archive`.
    pub fn cli_bin(&self) -> Result<PathBuf> {
        self.binary(Binary::Cli)
    }

    /// The test's copy of `wal-archive-server`.
    pub fn server_bin(&self) -> Result<PathBuf> {
        self.binary(Binary::Server)
    }
}
