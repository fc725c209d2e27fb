//! A PostgreSQL 15 cluster for one test: initdb or pg_basebackup, configuration, start and stop,
//! psql, and the WAL facts tests check.
//!
//! Every command runs as the PostgreSQL OS user (see [`crate::pg_command`]). Dropping a `Pg` stops
//! its postmaster with `pg_ctl stop -m immediate`, also when the test failed.

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::background::Background;
use crate::testdir::{give_to_pg, pg_command, pg_user, PgUser, TestDir, PG_BIN, PSQL};
use crate::util::{free_port, run_ok, run_with_deadline, tail_file, wait_until};
use crate::wal::{is_segment_name, parse_lsn, SEG_SIZE};

/// How long a single pg_ctl / initdb / pg_basebackup / psql may take.
const PG_COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Settings every test cluster gets; a test adds its own with [`Pg::set`] / [`Pg::conf`]
/// (later lines win in postgresql.conf).
const BASE_SETTINGS: &str = "\
listen_addresses = '127.0.0.1'
max_wal_senders = 10
wal_level = replica
max_connections = 30
shared_buffers = 16MB
max_wal_size = 16MB
min_wal_size = 2MB
# Test clusters only: the archive server itself is never run without fsync.
fsync = off
log_line_prefix = '%m [%p] %b '
log_checkpoints = on
";

/// How `Pg::init` builds a cluster.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `initdb --wal-segsize` in MiB.
    pub wal_segsize_mb: u32,
    /// Extra `initdb` arguments.
    pub initdb_args: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_segsize_mb: 1,
            initdb_args: Vec::new(),
        }
    }
}

/// How `Pg::from_basebackup` copies the primary.
#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    /// `-X` method: "stream", "fetch" or "none".
    pub wal_method: &'static str,
    /// `-R`: write standby.signal and primary_conninfo.
    pub write_recovery_conf: bool,
}

impl BaseBackupOptions {
    /// A standby: `-X stream -R`.
    pub fn standby() -> Self {
        BaseBackupOptions {
            wal_method: "stream",
            write_recovery_conf: true,
        }
    }

    /// A self-contained copy: `-X fetch`, no recovery configuration.
    pub fn copy() -> Self {
        BaseBackupOptions {
            wal_method: "fetch",
            write_recovery_conf: false,
        }
    }
}

/// One PostgreSQL cluster under a test directory.
pub struct Pg {
    name: String,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    // Keeps the test directory alive as long as the cluster is.
    _dir: TestDir,
}

impl Pg {
    /// `initdb` a new cluster named `name` under `dir` (not started).
    pub fn init(dir: &TestDir, name: &str, opts: PgOptions) -> Result<Pg> {
        let pg = Pg::layout(dir, name)?;
        let mut cmd = pg_command(Path::new(PG_BIN).join("initdb"))?;
        cmd.current_dir(dir.path())
            .args(["-A", "trust", "-N", "-E", "UTF8", "--locale=C"])
            .arg(format!("--wal-segsize={}", opts.wal_segsize_mb))
            .args(&opts.initdb_args)
            .arg("-D")
            .arg(&pg.data);
        run_ok(&mut cmd, PG_COMMAND_TIMEOUT).with_context(|| format!("initdb of {name}"))?;
        pg.write_base_settings()?;
        Ok(pg)
    }

    /// A standby or copy of `primary` made with `pg_basebackup` (not started). The primary must
    /// be running. Its settings are copied too; the new cluster gets its own port and socket.
    pub fn from_basebackup(
        primary: &Pg,
        dir: &TestDir,
        name: &str,
        opts: BaseBackupOptions,
    ) -> Result<Pg> {
        let pg = Pg::layout(dir, name)?;
        let mut cmd = pg_command(Path::new(PG_BIN).join("pg_basebackup"))?;
        cmd.current_dir(dir.path())
            .arg("-D")
            .arg(&pg.data)
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-X", opts.wal_method, "-c", "fast", "--no-sync"]);
        if opts.write_recovery_conf {
            cmd.arg("-R");
        }
        run_ok(&mut cmd, PG_COMMAND_TIMEOUT)
            .with_context(|| format!("pg_basebackup of {} into {name}", primary.name))?;
        pg.write_base_settings()?;
        Ok(pg)
    }

    /// A cluster whose data directory `data` was made by other means (owned by the PostgreSQL
    /// user). It is moved under `dir/name` only in the sense that its socket and log live there.
    pub fn from_dir(dir: &TestDir, name: &str, data: &Path) -> Result<Pg> {
        let mut pg = Pg::layout(dir, name)?;
        pg.data = data.to_path_buf();
        pg.write_base_settings()?;
        Ok(pg)
    }

    fn layout(dir: &TestDir, name: &str) -> Result<Pg> {
        let root = dir.pg_subdir(name)?;
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let sock = root.join("sock");
        std::fs::create_dir_all(&sock)?;
        give_to_pg(&sock)?;
        Ok(Pg {
            name: name.to_string(),
            data: root.join("data"),
            log: root.join("postgres.log"),
            sock,
            port: free_port()?,
            env: Vec::new(),
            _dir: dir.clone(),
        })
    }

    fn write_base_settings(&self) -> Result<()> {
        self.conf(&format!(
            "\n# --- wal-archive-e2e harness ---\n{BASE_SETTINGS}port = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.sock.display()
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 40)
    }

    /// Appends `key = value` to postgresql.conf; `value` is written as is (quote strings yourself,
    /// or use [`Pg::set_str`]).
    pub fn set(&self, key: &str, value: impl Display) -> Result<()> {
        self.conf(&format!("{key} = {value}\n"))
    }

    /// Appends `key = 'value'` to postgresql.conf.
    pub fn set_str(&self, key: &str, value: &str) -> Result<()> {
        self.set(key, format!("'{}'", value.replace('\'', "''")))
    }

    /// Appends raw text to postgresql.conf.
    pub fn conf(&self, text: &str) -> Result<()> {
        let path = self.data.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            file.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Writes a file inside the data directory (owned by the PostgreSQL user).
    pub fn write_file(&self, relative: &str, contents: &str) -> Result<()> {
        let path = self.data.join(relative);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        give_to_pg(&path)
    }

    /// An environment variable the postmaster (and so archive_command / restore_command) gets.
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    fn pg_ctl(&self) -> Result<Command> {
        let mut cmd = pg_command(Path::new(PG_BIN).join("pg_ctl"))?;
        // pg_ctl and the postmaster need a working directory they can read.
        cmd.current_dir(self.sock.parent().unwrap_or(&self.sock));
        cmd.arg("-D").arg(&self.data);
        Ok(cmd)
    }

    /// Whether a postmaster.pid file is present (the cluster is running or crashed uncleanly).
    pub fn is_running(&self) -> bool {
        self.data.join("postmaster.pid").exists()
    }

    /// `pg_ctl start -w`, failing with the end of the server log when it does not come up.
    pub fn start(&self) -> Result<()> {
        let mut cmd = self.pg_ctl()?;
        cmd.args(["start", "-w", "-t", "60", "-l"]).arg(&self.log);
        // archive_command / restore_command keep their look-ahead records and prefetch spool
        // under $XDG_RUNTIME_DIR: inside the test directory, removed with it.
        cmd.env("XDG_RUNTIME_DIR", self._dir.pg_subdir("xdg-runtime")?);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = run_with_deadline(&mut cmd, PG_COMMAND_TIMEOUT)?;
        if !out.success() {
            bail!(
                "pg_ctl start of {} failed: {}\n--- server log (tail) ---\n{}",
                self.name,
                out.describe(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn stop_mode(&self, mode: &str) -> Result<()> {
        let mut cmd = self.pg_ctl()?;
        cmd.args(["stop", "-w", "-t", "60", "-m", mode]);
        let out = run_with_deadline(&mut cmd, PG_COMMAND_TIMEOUT)?;
        if !out.success() {
            bail!(
                "pg_ctl stop -m {mode} of {} failed: {}\n--- server log (tail) ---\n{}",
                self.name,
                out.describe(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// A clean shutdown (`pg_ctl stop -m fast`).
    pub fn stop_fast(&self) -> Result<()> {
        self.stop_mode("fast")
    }

    /// A crash (`pg_ctl stop -m immediate`): no shutdown checkpoint, recovery at next start.
    pub fn crash(&self) -> Result<()> {
        self.stop_mode("immediate")
    }

    /// Fast stop, then start.
    pub fn restart(&self) -> Result<()> {
        self.stop_fast()?;
        self.start()
    }

    /// `pg_ctl promote -w`.
    pub fn promote(&self) -> Result<()> {
        let mut cmd = self.pg_ctl()?;
        cmd.args(["promote", "-w", "-t", "60"]);
        let out = run_with_deadline(&mut cmd, PG_COMMAND_TIMEOUT)?;
        if !out.success() {
            bail!(
                "pg_ctl promote of {} failed: {}\n--- server log (tail) ---\n{}",
                self.name,
                out.describe(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits until the cluster answers queries.
    pub fn wait_ready(&self, deadline: Duration) -> Result<()> {
        wait_until(
            deadline,
            &format!("{} accepts connections", self.name),
            || Ok(self.try_psql("select 1").is_ok()),
        )
    }

    fn psql_command(&self, sql: &str) -> Result<Command> {
        let mut cmd = pg_command(PSQL)?;
        cmd.current_dir(self.sock.parent().unwrap_or(&self.sock))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql]);
        Ok(cmd)
    }

    fn try_psql(&self, sql: &str) -> Result<String> {
        let mut cmd = self.psql_command(sql)?;
        let out = run_with_deadline(&mut cmd, PG_COMMAND_TIMEOUT)?;
        if !out.success() {
            bail!(
                "psql on {} failed for {sql:?}: {}",
                self.name,
                out.describe()
            );
        }
        Ok(out.stdout.trim_end_matches('\n').to_string())
    }

    /// Runs `sql` with psql (`-X -qAt`, database postgres) and returns its output, trimmed of the
    /// final newline. Fails with psql's stderr when the statement fails.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.try_psql(sql)
    }

    /// Runs `sql` with psql (as [`Pg::psql`]) in the background, its output in `log`: for a
    /// statement that is expected to wait, such as a commit waiting for a synchronous standby.
    pub fn psql_background(&self, sql: &str, log: &Path) -> Result<Background> {
        let mut cmd = self.psql_command(sql)?;
        Background::spawn(
            &mut cmd,
            &format!("psql on {} running {sql:?}", self.name),
            log,
        )
    }

    /// The role the harness connects as: the bootstrap superuser, which initdb names after the
    /// OS user that ran it.
    pub fn superuser(&self) -> Result<String> {
        match pg_user()? {
            PgUser::Postgres { .. } => Ok("postgres".to_string()),
            PgUser::Myself => {
                let name = run_ok(Command::new("id").arg("-un"), Duration::from_secs(10))?;
                Ok(name.trim().to_string())
            }
        }
    }

    /// A libpq conninfo that reaches this cluster over its Unix socket as the superuser:
    /// `host=SOCKET_DIR port=PORT user=postgres`.
    pub fn conninfo(&self) -> Result<String> {
        Ok(format!(
            "host={} port={} user={}",
            self.sock.display(),
            self.port,
            self.superuser()?
        ))
    }

    /// A client tool of [`PG_BIN`] (`pgbench`, `pg_receivewal`, ...) run as the PostgreSQL OS user
    /// and pointed at this cluster's socket (`-h SOCKET_DIR -p PORT`); add its own arguments.
    pub fn client_command(&self, tool: &str) -> Result<Command> {
        let mut cmd = pg_command(Path::new(PG_BIN).join(tool))?;
        cmd.current_dir(self.sock.parent().unwrap_or(&self.sock))
            .arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string()]);
        Ok(cmd)
    }

    /// `pgbench ARGS postgres`, failing unless it exits 0 within `timeout`; returns its output.
    pub fn pgbench(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = self.client_command("pgbench")?;
        cmd.args(args).arg("postgres");
        run_ok(&mut cmd, timeout).with_context(|| format!("pgbench on {}", self.name))
    }

    /// `pg_receivewal --create-slot -S SLOT`: a physical slot that reserves WAL from now on.
    pub fn receivewal_create_slot(&self, slot: &str) -> Result<()> {
        let mut cmd = self.client_command("pg_receivewal")?;
        cmd.args(["--create-slot", "-S", slot]);
        run_ok(&mut cmd, PG_COMMAND_TIMEOUT)
            .with_context(|| format!("creating slot {slot} on {}", self.name))?;
        Ok(())
    }

    /// `pg_receivewal -D DEST -S SLOT` in the background (it reconnects every 5 s by itself when
    /// the connection is lost), its output in `log`. `dest` must belong to the PostgreSQL user
    /// ([`TestDir::pg_subdir`]).
    pub fn pg_receivewal(&self, dest: &Path, slot: &str, log: &Path) -> Result<Background> {
        let mut cmd = self.client_command("pg_receivewal")?;
        cmd.arg("-D")
            .arg(dest)
            .args(["-S", slot, "--no-sync", "-v"]);
        Background::spawn(
            &mut cmd,
            &format!("pg_receivewal from {} slot {slot}", self.name),
            log,
        )
    }

    /// `select pg_reload_conf()`: postgresql.conf and pg_hba.conf are read again.
    pub fn reload(&self) -> Result<()> {
        self.psql("select pg_reload_conf()").map(|_| ())
    }

    fn hba_path(&self) -> PathBuf {
        self.data.join("pg_hba.conf")
    }

    /// Puts `line` first in pg_hba.conf (before initdb's `trust` lines, so it wins). Takes effect
    /// at the next [`Pg::reload`] or start.
    pub fn hba_prepend(&self, line: &str) -> Result<()> {
        let path = self.hba_path();
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        std::fs::write(&path, format!("{line}\n{old}"))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Removes every line equal to `line` from pg_hba.conf (see [`Pg::hba_prepend`]).
    pub fn hba_remove(&self, line: &str) -> Result<()> {
        let path = self.hba_path();
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let kept: Vec<&str> = old.lines().filter(|l| l.trim() != line.trim()).collect();
        if kept.len() == old.lines().count() {
            bail!("pg_hba.conf of {} has no line {line:?}", self.name);
        }
        std::fs::write(&path, kept.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }

    /// `pg_is_in_recovery()`.
    pub fn in_recovery(&self) -> Result<bool> {
        Ok(self.psql("select pg_is_in_recovery()")? == "t")
    }

    /// `pg_current_wal_lsn()` (primary only).
    pub fn current_lsn(&self) -> Result<u64> {
        parse_lsn(&self.psql("select pg_current_wal_lsn()")?)
    }

    /// `pg_current_wal_flush_lsn()` (primary only): what a walsender may send.
    pub fn flush_lsn(&self) -> Result<u64> {
        parse_lsn(&self.psql("select pg_current_wal_flush_lsn()")?)
    }

    /// Whether this standby's WAL receiver is streaming from its primary.
    pub fn is_streaming(&self) -> Result<bool> {
        Ok(
            self.psql("select count(*) from pg_stat_wal_receiver where status = 'streaming'")?
                == "1",
        )
    }

    /// Waits until this standby streams from its primary; the error carries its log's tail.
    pub fn wait_streaming(&self, deadline: Duration) -> Result<()> {
        wait_until(deadline, "the standby streams", || self.is_streaming())
            .with_context(|| self.log_tail())
    }

    /// `pg_last_wal_replay_lsn()` (standby), 0 when nothing was replayed yet.
    pub fn replay_lsn(&self) -> Result<u64> {
        let text = self.psql("select coalesce(pg_last_wal_replay_lsn(), '0/0')")?;
        parse_lsn(&text)
    }

    /// The timeline the cluster writes on (primary only), from the name of its current segment.
    pub fn current_timeline(&self) -> Result<u32> {
        let name = self.psql("select pg_walfile_name(pg_current_wal_lsn())")?;
        Ok(u32::from_str_radix(
            name.get(0..8).context("short WAL name")?,
            16,
        )?)
    }

    /// `pg_switch_wal()`; returns the name of the segment that the switch completed (or of the last
    /// completed one when nothing had been written since the previous switch).
    pub fn switch_wal(&self) -> Result<String> {
        self.psql("select pg_walfile_name(pg_switch_wal())")
    }

    /// The segment `pg_current_wal_lsn()` is in.
    pub fn current_segment(&self) -> Result<String> {
        self.psql("select pg_walfile_name(pg_current_wal_lsn())")
    }

    /// `CHECKPOINT`.
    pub fn checkpoint(&self) -> Result<()> {
        self.psql("checkpoint").map(|_| ())
    }

    /// The system identifier from pg_control.
    pub fn system_identifier(&self) -> Result<String> {
        self.psql("select system_identifier from pg_control_system()")
    }

    /// `pg_stat_archiver.last_archived_wal`.
    pub fn last_archived_wal(&self) -> Result<Option<String>> {
        let text = self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")?;
        Ok((!text.is_empty()).then_some(text))
    }

    /// `pg_stat_archiver.failed_count`.
    pub fn archive_failed_count(&self) -> Result<u64> {
        Ok(self
            .psql("select failed_count from pg_stat_archiver")?
            .parse()?)
    }

    /// Whether `segment` has been archived: PostgreSQL has no `.ready` for it and its archiver has
    /// reached it (archive status files are gone once a segment is recycled, so both are needed).
    pub fn is_archived(&self, segment: &str) -> Result<bool> {
        if self
            .data
            .join("pg_wal/archive_status")
            .join(format!("{segment}.ready"))
            .exists()
        {
            return Ok(false);
        }
        Ok(match self.last_archived_wal()? {
            Some(last) => last.get(..24).unwrap_or(&last) >= segment,
            None => false,
        })
    }

    /// Waits until `segment` is archived (see [`Pg::is_archived`]).
    pub fn wait_archived(&self, segment: &str, deadline: Duration) -> Result<()> {
        wait_until(
            deadline,
            &format!("{} has archived {segment}", self.name),
            || self.is_archived(segment),
        )
        .with_context(|| {
            format!(
                "pg_stat_archiver: {:?}\n--- server log (tail) ---\n{}",
                self.psql("select * from pg_stat_archiver"),
                self.log_tail()
            )
        })
    }

    /// Segment names (not history, backup or partial files) in pg_wal, sorted.
    pub fn wal_segments(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.data.join("pg_wal"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if is_segment_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The names that have a `.ready` file in pg_wal/archive_status, sorted.
    pub fn ready_files(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.data.join("pg_wal/archive_status"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".ready") {
                names.push(stem.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The segment size this cluster was made with.
    pub fn segment_size(&self) -> Result<u64> {
        let text = self.psql("select setting from pg_settings where name = 'wal_segment_size'")?;
        let size: u64 = text.parse()?;
        if size != SEG_SIZE {
            // Tests only use 1 MiB; say so loudly rather than computing wrong names.
            bail!(
                "{} has {size}-byte segments, the harness expects {SEG_SIZE}",
                self.name
            );
        }
        Ok(size)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.stop_mode("immediate");
        }
    }
}

/// An `archive_command` that copies into a plain directory (atomically: copy, then rename), for
/// clusters that only produce real WAL files for a test to use.
pub fn copy_archive_command(dest: &Path) -> String {
    let d = dest.display();
    format!("'cp %p {d}/%f.tmp && mv {d}/%f.tmp {d}/%f'")
}
