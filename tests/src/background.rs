//! Processes a test leaves running while it does other things: `pg_receivewal` holding a slot, a
//! psql whose commit waits for a synchronous standby.
//!
//! Each one runs in its own process group (it is usually `runuser` and the PostgreSQL tool under
//! it), with stdout and stderr in a log file. Ending it signals that group, by its id, and only
//! while its leader has not been reaped, so the id cannot belong to anyone else. Dropping the
//! handle ends it too, also when the test failed.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{tail_file, wait_until};

/// How long a process group may take to exit after SIGTERM before it gets SIGKILL.
const TERM_DEADLINE: Duration = Duration::from_secs(10);

/// A child process (group) running in the background.
pub struct Background {
    what: String,
    log: PathBuf,
    child: Child,
    /// The exit code once the child has been reaped (`Some(None)`: ended by a signal).
    exited: Option<Option<i32>>,
}

impl Background {
    /// Starts `cmd` in a new process group, its output appended to `log`. `what` names it in
    /// error messages.
    pub fn spawn(cmd: &mut Command, what: &str, log: &Path) -> Result<Background> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let child = crate::util::spawn(cmd).with_context(|| format!("starting {what}"))?;
        Ok(Background {
            what: what.to_string(),
            log: log.to_path_buf(),
            child,
            exited: None,
        })
    }

    /// The process id of the group leader (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `None` while it runs; `Some(code)` once it has exited (`Some(None)`: killed by a signal).
    pub fn exit_code(&mut self) -> Result<Option<Option<i32>>> {
        if self.exited.is_none() {
            if let Some(status) = self.child.try_wait().context("waiting for a child")? {
                self.exited = Some(status.code());
            }
        }
        Ok(self.exited)
    }

    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.exit_code()?.is_none())
    }

    /// Waits until it exits on its own, at most `deadline`; returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<Option<i32>> {
        let what = format!("{} exits", self.what);
        wait_until(deadline, &what, || Ok(self.exit_code()?.is_some()))
            .with_context(|| format!("--- output of {} ---\n{}", self.what, self.output()))?;
        self.exit_code()?
            .context("exited, but no exit status was recorded")
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        tail_file(&self.log, 40)
    }

    /// SIGTERM to the whole group, then SIGKILL if it has not exited within a deadline. Fails if
    /// it had to be killed.
    pub fn stop(&mut self) -> Result<()> {
        if !self.is_running()? {
            return Ok(());
        }
        self.signal_group("TERM");
        let start = Instant::now();
        while start.elapsed() < TERM_DEADLINE {
            if !self.is_running()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal_group("KILL");
        let _ = self.child.wait();
        bail!(
            "{} did not exit within {TERM_DEADLINE:?} of SIGTERM; killed it",
            self.what
        )
    }

    fn signal_group(&self, signal: &str) {
        // The leader is not reaped yet (checked by the callers), so the group id is still ours.
        // `kill` the command rather than libc::kill: the workspace forbids unsafe code.
        let _ = Command::new("/bin/kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.is_running(), Ok(true)) {
            let _ = self.stop();
        }
    }
}
