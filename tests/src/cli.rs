//! The `wal-archive` command as the tests run it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::testdir::{scrub_env, TestDir};
use crate::util::{run_with_deadline, Output};

/// A configured `wal-archive` invocation: environment, working directory and a deadline
/// (default 60 s) after which the process is killed and the run fails.
#[derive(Clone)]
pub struct Cli {
    bin: PathBuf,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    timeout: Duration,
}

impl Cli {
    /// The test's copy of `wal-archive`, run from the test directory, with a clean environment.
    pub fn new(dir: &TestDir) -> Result<Cli> {
        // The helper's records and spool go inside the test directory (see Pg::start).
        let runtime = dir.pg_subdir("xdg-runtime")?;
        Ok(Cli {
            bin: dir.cli_bin()?,
            env: vec![(
                "XDG_RUNTIME_DIR".to_string(),
                runtime.to_string_lossy().into_owned(),
            )],
            cwd: dir.path().to_path_buf(),
            timeout: Duration::from_secs(60),
        })
    }

    pub fn env(mut self, key: &str, value: &str) -> Cli {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cli {
        self.cwd = dir.to_path_buf();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Cli {
        self.timeout = timeout;
        self
    }

    /// The same invocation of another `wal-archive` binary (the one a package installed).
    pub fn with_bin(mut self, bin: &Path) -> Cli {
        self.bin = bin.to_path_buf();
        self
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `wal-archive ARGS` and returns how it ended (any exit code is `Ok`).
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.bin);
        scrub_env(&mut cmd);
        cmd.current_dir(&self.cwd).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_with_deadline(&mut cmd, self.timeout)
    }

    /// Runs `wal-archive ARGS` and fails unless it exits 0.
    pub fn run_ok<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.run(args)?;
        if !out.success() {
            bail!("wal-archive {} failed: {}", shown.join(" "), out.describe());
        }
        Ok(out)
    }
}
