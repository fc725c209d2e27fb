//! The `wal-archive-server` daemon as a child process of the test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::Cli;
use crate::http::Api;
use crate::testdir::{scrub_env, TestDir};
use crate::util::{free_port, tail_file, wait_until};

/// How long the server may take to answer `/healthz` after it is started.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd server may take to exit before it gets SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// One `wal-archive-server`, run as the test's own user, on a loopback port, with its data
/// directory and log inside the test directory. Dropping it kills it.
pub struct Server {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    config: Option<PathBuf>,
    port: u16,
    child: Option<Child>,
    dir: TestDir,
    /// Extra environment of the process (crash points, credentials).
    env: Vec<(String, String)>,
    /// Extra arguments of the next start (`--rebuild-catalog`, `--take-over`).
    args: Vec<String>,
}

impl Server {
    /// Starts a server with no configuration file and waits until it is healthy.
    pub fn start(dir: &TestDir) -> Result<Server> {
        Server::start_with_config(dir, None)
    }

    /// Starts a server with `config` (TOML text, written to a file passed with `--config`) and
    /// waits until it is healthy.
    pub fn start_with_config(dir: &TestDir, config: Option<&str>) -> Result<Server> {
        let mut server = Server::prepare(dir, config)?;
        server.start_again()?;
        Ok(server)
    }

    /// Everything but the process: port, data directory, log, configuration. Use
    /// [`Server::start_again`] to run it, for tests that need a server that is not up yet.
    pub fn prepare(dir: &TestDir, config: Option<&str>) -> Result<Server> {
        let bin = dir.server_bin()?;
        let root = dir.subdir("server")?;
        let config_path = match config {
            Some(text) => {
                let path = root.join("server.toml");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        Ok(Server {
            bin,
            data: root.join("data"),
            log: root.join("server.log"),
            config: config_path,
            port: free_port()?,
            child: None,
            dir: dir.clone(),
            env: Vec::new(),
            args: Vec::new(),
        })
    }

    /// (Re)starts the process on the same port and data directory, and waits for `/healthz`.
    pub fn start_again(&mut self) -> Result<()> {
        self.start_process(None)
    }

    /// [`Server::start_again`] with the process's umask set to `umask` first.
    pub fn start_again_with_umask(&mut self, umask: u32) -> Result<()> {
        self.start_process(Some(umask))
    }

    fn start_process(&mut self, umask: Option<u32>) -> Result<()> {
        if self.child.is_some() {
            bail!("the server is already running");
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = match umask {
            // The shell sets the mask and execs the server: same process, same PID.
            Some(mask) => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c")
                    .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                    .arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        scrub_env(&mut cmd);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir(self.dir.path());
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(&self.args)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = crate::util::spawn(&mut cmd)
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_healthy(START_DEADLINE)
    }

    fn wait_healthy(&mut self, deadline: Duration) -> Result<()> {
        let api = self.api();
        let log = self.log.clone();
        let child = self.child.as_mut().context("server not started")?;
        let result = wait_until(deadline, "the server answers GET /healthz with 200", || {
            if let Some(status) = child.try_wait()? {
                bail!("wal-archive-server exited early with {status}");
            }
            Ok(api.healthz().unwrap_or(false))
        });
        if let Err(e) = result {
            // Do not leave a half-started server behind.
            let _ = child.kill();
            let _ = child.wait();
            self.child = None;
            return Err(e)
                .with_context(|| format!("--- server log (tail) ---\n{}", tail_file(&log, 40)));
        }
        Ok(())
    }

    /// Sets `key=value` in the environment of the next [`Server::start_again`] (and those after).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Arguments for the next start and those after it (replacing earlier ones).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Removes `key` from the environment of the next start.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Waits until the server process exits by itself (a crash point), and reaps it; fails if
    /// it still runs after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("server not started")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() > deadline {
                bail!(
                    "the server still runs after {deadline:?}\n--- server log (tail) ---\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Replaces the configuration file (or gives the server one) with `config`; it is read at
    /// the next [`Server::start_again`]. For a restart with another configuration: `stop()`,
    /// `set_config(..)`, `start_again()`.
    pub fn set_config(&mut self, config: &str) -> Result<()> {
        let path = self.dir.path().join("server").join("server.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        self.config = Some(path);
        Ok(())
    }

    /// `GET /v1/clusters/{cluster}/receiver`: the streaming receiver's state as JSON.
    pub fn receiver(&self, cluster: &str) -> Result<serde_json::Value> {
        let resp = self
            .api()
            .get(&format!("/v1/clusters/{cluster}/receiver"), None)?;
        if resp.status != 200 {
            bail!("receiver status of cluster {cluster}: {}", resp.short());
        }
        resp.json()
    }

    /// Polls the receiver of `cluster` until `condition` holds for its state (see
    /// [`Server::receiver`]); returns that state. On timeout the error shows the last state and
    /// the end of the server log.
    pub fn wait_receiver(
        &self,
        cluster: &str,
        what: &str,
        deadline: Duration,
        mut condition: impl FnMut(&serde_json::Value) -> Result<bool>,
    ) -> Result<serde_json::Value> {
        let mut last = serde_json::Value::Null;
        let result = wait_until(deadline, what, || {
            last = self.receiver(cluster)?;
            condition(&last)
        });
        match result {
            Ok(()) => Ok(last),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "last receiver state: {last}\n--- server log (tail) ---\n{}",
                    self.log_tail()
                )
            }),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Where stored objects live: `DATA_DIR/storage`.
    pub fn storage_dir(&self) -> PathBuf {
        self.data.join("storage")
    }

    /// The path of the stored object of `walname` (a file named `<walname>.zst` somewhere under
    /// the storage directory), if there is one.
    pub fn stored_object(&self, walname: &str) -> Result<Option<PathBuf>> {
        let wanted = format!("{walname}.zst");
        let storage = self.storage_dir();
        Ok(crate::util::list_files(&storage)?
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == wanted.as_str()))
            .map(|p| storage.join(p)))
    }

    /// The whole server log (every run of this server).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 40)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill -9 of the server")?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, wait for a clean exit (with a deadline), SIGKILL if it does not come.
    /// Fails if the server had to be killed.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // `kill` the command rather than libc::kill: the workspace forbids unsafe code.
        let sent = Command::new("/bin/kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                if sent.is_err() {
                    bail!("could not send SIGTERM to the server: {sent:?}");
                }
                let _ = status;
                return Ok(());
            }
            if start.elapsed() > STOP_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the server did not exit within {STOP_DEADLINE:?} of SIGTERM; killed it\n\
                     --- server log (tail) ---\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An HTTP client for this server's API.
    pub fn api(&self) -> Api {
        Api::new(&self.url())
    }

    /// The `wal-archive` CLI, pointed at this server through `WAL_ARCHIVE_URL`.
    pub fn cli(&self) -> Result<Cli> {
        Ok(Cli::new(&self.dir)?.env("WAL_ARCHIVE_URL", &self.url()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
