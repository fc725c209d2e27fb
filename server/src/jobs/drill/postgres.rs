//! The drill's throwaway PostgreSQL: the binaries of the backup's major version, the settings
//! it runs with, starting it, asking it how far replay is, and stopping it.
//!
//! It runs `postgres` itself (not `pg_ctl`), as a child of the server, with a configuration of
//! its own (`config_file`, `hba_file`, `ident_file` in the scratch directory) and every
//! setting that matters on the command line, where it wins over anything the backup's
//! `postgresql.auto.conf` says: no TCP listener, a Unix socket in the scratch directory,
//! `archive_mode = off`, no `primary_conninfo`, no preloaded libraries. The data directory has
//! `standby.signal`: PostgreSQL replays everything `restore_command` gives it and waits for
//! more, never ends recovery, so it never starts a new timeline, and nothing it does reaches
//! the archive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgrepl::{ConnInfo, ReplError, ReplicationConnection, SslMode};

use super::scratch::{self, RunAs, Scratch};

/// The port in the socket's name (`.s.PGSQL.5432` in the scratch directory): nothing listens
/// on TCP, so it cannot clash with any other server.
pub const PORT: u16 = 5432;

/// PostgreSQL server binaries of one major version.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    /// `15.18`.
    pub version: String,
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)` → (`15.18`, 15).
pub fn parse_version(text: &str) -> Option<(String, u32)> {
    let rest = text.split("(PostgreSQL)").nth(1)?.trim();
    let version = rest.split_whitespace().next()?.to_string();
    let major: u32 = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((version, major))
}

/// The binaries a drill of a backup of PostgreSQL `major` runs: `pg_bin_dir`, else Debian's
/// `/usr/lib/postgresql/MAJOR/bin`. Refused, with what to do, when `postgres` or
/// `pg_controldata` is missing there or is of another major version.
pub fn find_binaries(
    configured: Option<&Path>,
    major: u32,
    cluster: &str,
) -> Result<Binaries, String> {
    let dir = configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    let key = if configured.is_some() {
        format!("pg_bin_dir = {:?}", dir.display().to_string())
    } else {
        format!(
            "{} (the default; set pg_bin_dir in [clusters.{cluster}])",
            dir.display()
        )
    };
    for tool in ["postgres", "pg_controldata"] {
        if !dir.join(tool).is_file() {
            return Err(format!(
                "a drill needs the PostgreSQL {major} server binaries on the archive host, and \
                 {key} has no {tool}: install PostgreSQL {major} there (postgresql-{major} on \
                 Debian) or set pg_bin_dir in [clusters.{cluster}] to where its bin directory is"
            ));
        }
    }
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}/postgres --version: {e}", dir.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (version, found) = parse_version(&text).ok_or_else(|| {
        format!(
            "{}/postgres --version printed {:?}, not a PostgreSQL version",
            dir.display(),
            text.trim()
        )
    })?;
    if found != major {
        return Err(format!(
            "{key} holds PostgreSQL {version}, but the backup is of PostgreSQL {major}: a data \
             directory only starts with binaries of its own major version. Set pg_bin_dir in \
             [clusters.{cluster}] to PostgreSQL {major}'s bin directory"
        ));
    }
    Ok(Binaries { dir, version })
}

/// What hot standby needs to be at least the primary's (PostgreSQL documentation, "Hot
/// Standby", Administrator's Overview): read from the restored `pg_control` with
/// `pg_controldata`, as `(setting, value)`.
pub fn control_settings(bins: &Binaries, pgdata: &Path) -> Result<Vec<(String, String)>, String> {
    let out = Command::new(bins.dir.join("pg_controldata"))
        .arg("-D")
        .arg(pgdata)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run pg_controldata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pg_controldata cannot read the restored pg_control: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_control(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_control(text: &str) -> Vec<(String, String)> {
    const WANTED: [(&str, &str); 5] = [
        ("max_connections setting", "max_connections"),
        ("max_worker_processes setting", "max_worker_processes"),
        ("max_wal_senders setting", "max_wal_senders"),
        ("max_prepared_xacts setting", "max_prepared_transactions"),
        ("max_locks_per_xact setting", "max_locks_per_transaction"),
    ];
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((label, value)) = line.split_once(':') else {
            continue;
        };
        if let Some((_, setting)) = WANTED.iter().find(|(l, _)| *l == label.trim()) {
            let value = value.trim();
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                out.push((setting.to_string(), value.to_string()));
            }
        }
    }
    out
}

/// A running throwaway PostgreSQL.
pub struct Throwaway {
    child: Child,
    scratch: Scratch,
}

impl Throwaway {
    /// Starts `postgres -D pgdata -c KEY=VALUE...` as `run_as`, its output in the scratch
    /// directory's log.
    pub fn start(
        bins: &Binaries,
        run_as: &RunAs,
        scratch: &Scratch,
        settings: &[(String, String)],
    ) -> Result<Throwaway, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(scratch.log())
            .map_err(|e| format!("cannot create {}: {e}", scratch.log().display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot share the log file: {e}"))?;
        let mut cmd = run_as.command(&bins.dir.join("postgres"));
        cmd.arg("-D").arg(scratch.pgdata());
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            // Inherited by everything the drill's PostgreSQL starts, so that clean-up finds
            // exactly those processes.
            .env(scratch::MARK_ENV, scratch.mark())
            .current_dir(scratch.pgdata())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}/postgres: {e}", bins.dir.display()))?;
        Ok(Throwaway {
            child,
            scratch: scratch.clone(),
        })
    }

    /// How it exited, if it did.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The postmaster's PID, once its `postmaster.pid` exists.
    pub fn postmaster(&self) -> Option<i32> {
        scratch::postmaster(&self.scratch.pgdata())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(self.scratch.log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Immediate shutdown (SIGQUIT to the postmaster; the copy is thrown away), SIGKILL after
    /// `grace`; then the child (`postgres`, or `runuser`) is reaped.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pid = self
            .postmaster()
            .or_else(|| i32::try_from(self.child.id()).ok());
        if let Some(p) = pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::QUIT);
        }
        let start = Instant::now();
        while self.exited().is_none() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.exited().is_none() {
            if let Some(p) = self.postmaster().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        // Normally stopped already; never leave it running because a drill's task ended early.
        if self.exited().is_none() {
            if let Some(p) = self.postmaster().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            let _ = self.child.kill();
            let _ = self.child.try_wait();
        }
    }
}

/// A connection to the throwaway server as its bootstrap superuser (the role of OID 10).
/// `candidates` are role names to try first; the socket is private, so `pg_hba.conf` trusts
/// it.
pub async fn connect(
    socket: &Path,
    candidates: &[String],
) -> Result<ReplicationConnection, ReplError> {
    let info = |user: &str| {
        let mut ci = ConnInfo::new(user);
        ci.host = Some(socket.display().to_string());
        ci.port = PORT;
        ci.dbname = Some("template1".into());
        ci.sslmode = SslMode::Disable;
        ci.connect_timeout = Duration::from_secs(5);
        ci.application_name = Some("wal-archive drill".into());
        ci
    };
    let mut last = None;
    for user in candidates {
        match ReplicationConnection::connect_database(&info(user)).await {
            Ok(mut conn) => {
                conn.set_command_timeout(Duration::from_secs(30));
                let sets = conn
                    .query("SELECT rolname FROM pg_catalog.pg_roles WHERE oid = 10")
                    .await?;
                let superuser = sets
                    .iter()
                    .find(|s| !s.rows.is_empty())
                    .and_then(|s| s.text(0, 0).ok().flatten().map(str::to_string));
                return match superuser {
                    Some(name) if name != *user => {
                        conn.close().await;
                        let mut conn =
                            ReplicationConnection::connect_database(&info(&name)).await?;
                        conn.set_command_timeout(Duration::from_secs(30));
                        Ok(conn)
                    }
                    _ => Ok(conn),
                };
            }
            // 28000 (invalid_authorization_specification): no such role; try the next name.
            Err(e) if e.sqlstate() == Some("28000") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ReplError::config("no role name to connect as")))
}

/// How far replay is, from one query.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    pub replay_lsn: Option<pgwal::Lsn>,
    /// Replay paused at the recovery target (`recovery_target_action = 'pause'`).
    pub paused: bool,
}

pub async fn replay(conn: &mut ReplicationConnection) -> Result<Replay, ReplError> {
    let sets = conn
        .query("SELECT pg_last_wal_replay_lsn(), pg_is_in_recovery() AND pg_is_wal_replay_paused()")
        .await?;
    let Some(set) = sets.iter().find(|s| !s.rows.is_empty()) else {
        return Err(ReplError::protocol("the replay query returned no row"));
    };
    Ok(Replay {
        replay_lsn: set.text(0, 0)?.and_then(|t| t.parse().ok()),
        paused: set.text(0, 1)? == Some("t"),
    })
}

/// What the startup process says it does, in its process title (`ps`): PostgreSQL sets it to
/// `recovering NAME` while it replays a WAL file, `restoring NAME` while `restore_command`
/// runs, and `waiting for NAME` once `restore_command` could not give it that file and it
/// waits to ask again (standby mode). Read before the server accepts connections too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    Recovering(String),
    Restoring(String),
    Waiting(String),
    Other(String),
}

impl Startup {
    /// From a process title such as `postgres: drill-7: startup waiting for 0000000100000000000000A2`.
    pub fn parse(title: &str) -> Option<Startup> {
        let rest = title.split("startup").nth(1)?.trim();
        let word = |prefix: &str| {
            rest.strip_prefix(prefix)
                .map(|n| n.split_whitespace().next().unwrap_or_default().to_string())
        };
        Some(if let Some(n) = word("waiting for ") {
            Startup::Waiting(n)
        } else if let Some(n) = word("recovering ") {
            Startup::Recovering(n)
        } else if let Some(n) = word("restoring ") {
            Startup::Restoring(n)
        } else {
            Startup::Other(rest.to_string())
        })
    }
}

/// The startup process of the postmaster `postmaster`: its title, parsed.
pub fn startup_activity(postmaster: i32) -> Option<Startup> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let parent = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse::<i32>().ok());
        if parent != Some(postmaster) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let title: String = String::from_utf8_lossy(&cmdline)
            .chars()
            .map(|c| if c == '\0' { ' ' } else { c })
            .collect();
        if let Some(s) = title
            .trim()
            .strip_prefix("postgres:")
            .filter(|t| t.contains(" startup"))
            .and_then(Startup::parse)
        {
            return Some(s);
        }
    }
    None
}

/// The sanity query: `pg_is_in_recovery()` and `count(*) FROM pg_class`.
pub async fn sanity(conn: &mut ReplicationConnection) -> Result<(bool, u64), ReplError> {
    let sets = conn
        .query("SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_catalog.pg_class)")
        .await?;
    let Some(set) = sets.iter().find(|s| !s.rows.is_empty()) else {
        return Err(ReplError::protocol("the sanity query returned no row"));
    };
    let count = set
        .text(0, 1)?
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ReplError::protocol("count(*) from pg_class is not a number"))?;
    Ok((set.text(0, 0)? == Some("t"), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)\n"),
            Some(("15.18".to_string(), 15))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1"),
            Some(("17beta1".to_string(), 17))
        );
        assert_eq!(parse_version("bash: postgres: not found"), None);
    }

    #[test]
    fn startup_titles() {
        assert_eq!(
            Startup::parse("postgres: drill-7: startup waiting for 000000010000000000000017  "),
            Some(Startup::Waiting("000000010000000000000017".into()))
        );
        assert_eq!(
            Startup::parse(" startup recovering 00000002000000000000000A"),
            Some(Startup::Recovering("00000002000000000000000A".into()))
        );
        assert_eq!(
            Startup::parse(" startup restoring 00000002.history"),
            Some(Startup::Restoring("00000002.history".into()))
        );
        assert_eq!(
            Startup::parse(" startup"),
            Some(Startup::Other(String::new()))
        );
        assert_eq!(Startup::parse("postgres: checkpointer"), None);
    }

    #[test]
    fn control_settings_are_read() {
        let text = "pg_control version number:            1300\n\
                    max_connections setting:              30\n\
                    max_worker_processes setting:         8\n\
                    max_wal_senders setting:              10\n\
                    max_prepared_xacts setting:           0\n\
                    max_locks_per_xact setting:           64\n";
        let got = parse_control(text);
        assert_eq!(got.len(), 5);
        assert!(got.contains(&("max_connections".into(), "30".into())));
        assert!(got.contains(&("max_prepared_transactions".into(), "0".into())));
    }
}
