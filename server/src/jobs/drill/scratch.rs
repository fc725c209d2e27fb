//! A drill's scratch directory on the server host, who its PostgreSQL runs as, and leaving
//! nothing behind: no directory, no process.
//!
//! Layout of `DRILL_DIR/drill-ID-TAG/` (TAG names the server's data directory, so that two
//! servers sharing a `drill_dir` never touch each other's drills), owner-only, owned by the user
//! PostgreSQL runs as:
//!
//! ```text
//! pgdata/          the restored data directory (standby.signal: replay, never promote)
//! tablespaces/OID/ each tablespace, linked from pgdata/pg_tblspc/OID
//! socket/          the only way in: a Unix socket (listen_addresses = '')
//! spool/           the prefetch spool of the drill's restore_command
//! client.toml      restore_command's client configuration (URL and token of the drill)
//! postgresql.conf, pg_hba.conf, pg_ident.conf, postgres.log
//! ```
//!
//! Every process a drill leaves is found from the directory itself: the postmaster from
//! `pgdata/postmaster.pid` (checked against its working directory, so that a PID reused by
//! another process is never signalled), any other process still working in the directory that
//! carries the drill's mark ([`MARK_ENV`], set for the drill's PostgreSQL and inherited by all
//! it starts: its children, a restore_command in progress), and the prefetch worker from its
//! lock file. A process without the mark (an operator's shell that went into the directory to
//! look) is never signalled. [`clean_leftovers`] runs at start, so that a server killed during
//! a drill leaves nothing running after its next start.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The environment variable that marks a drill's processes: set, to the scratch directory's
/// canonical path ([`Scratch::mark`]), for the drill's PostgreSQL, whose every descendant
/// inherits it.
pub const MARK_ENV: &str = "WAL_ARCHIVE_DRILL_DIR";

/// Who the drill's PostgreSQL runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// The server's own user (the packaged service user): PostgreSQL runs directly.
    Myself,
    /// The server runs as root, which PostgreSQL refuses: it runs as this user through
    /// `runuser`, and owns the scratch directory.
    User { name: String, uid: u32, gid: u32 },
}

impl RunAs {
    /// The server's own user, or `drill_user` when the server runs as root.
    pub fn resolve(drill_user: &str) -> Result<RunAs, String> {
        if !rustix::process::geteuid().is_root() {
            return Ok(RunAs::Myself);
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id")
                .args([flag, drill_user])
                .output()
                .map_err(|e| format!("cannot run `id {flag} {drill_user}`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "the server runs as root, and a drill's PostgreSQL runs as drill_user = \
                     {drill_user:?}, which is not an OS user here: create it, set drill_user to \
                     the PostgreSQL OS user, or run the server as its own user"
                ));
            }
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| format!("`id {flag} {drill_user}` printed no number"))
        };
        let uid = id("-u")?;
        if uid == 0 {
            return Err(format!(
                "drill_user = {drill_user:?} is root, which PostgreSQL refuses to run as: set \
                 drill_user to the PostgreSQL OS user"
            ));
        }
        Ok(RunAs::User {
            name: drill_user.to_string(),
            uid,
            gid: id("-g")?,
        })
    }

    /// A command that runs `program` as this user.
    pub fn command(&self, program: &Path) -> Command {
        match self {
            RunAs::Myself => Command::new(program),
            RunAs::User { name, .. } => {
                let mut cmd = Command::new(runuser());
                cmd.args(["-u", name, "--"]).arg(program);
                cmd
            }
        }
    }

    /// Gives `path` (not following a symlink) to this user.
    pub fn own(&self, path: &Path) -> io::Result<()> {
        match self {
            RunAs::Myself => Ok(()),
            RunAs::User { uid, gid, .. } => std::os::unix::fs::lchown(path, Some(*uid), Some(*gid)),
        }
    }

    /// Who, in words.
    pub fn describe(&self) -> String {
        match self {
            RunAs::Myself => "the server's own user".into(),
            RunAs::User { name, .. } => format!("OS user {name} (drill_user)"),
        }
    }

    /// Whether this user can run `test FLAG path` successfully (e.g. `-x` a directory to
    /// traverse it, or a binary to run it).
    pub fn can(&self, flag: &str, path: &Path) -> bool {
        let mut cmd = self.command(Path::new("/usr/bin/test"));
        cmd.arg(flag).arg(path);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }
}

/// `runuser` from util-linux, where Debian puts it.
fn runuser() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("runuser")
}

/// The first 8 hex digits of the SHA-256 of the data directory's absolute path: the suffix of
/// this server's scratch directories.
pub fn tag(data_dir: &Path) -> String {
    let path = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut h = pgwal::checksum::Sha256::new();
    h.update(path.as_os_str().as_encoded_bytes());
    h.finish_hex()[..8].to_string()
}

/// Creates `drill_dir` if needed: owner-only, or traversable (not readable) by others when the
/// drill's PostgreSQL runs as another user, who must reach its own scratch directory inside.
/// An existing directory must be this server's own and writable by nobody else (a shared
/// directory such as /var/tmp is refused, never re-moded).
pub fn prepare_drill_dir(drill_dir: &Path, run_as: &RunAs) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(drill_dir)?;
    let meta = fs::symlink_metadata(drill_dir)?;
    let me = fs::metadata("/proc/self")?.uid();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o7022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory of this server's own that only it may write to (owner uid \
             {}, mode {:o}): give drill_dir a dedicated directory",
            drill_dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let mode = match run_as {
        RunAs::Myself => 0o700,
        RunAs::User { .. } => 0o711,
    };
    fs::set_permissions(drill_dir, fs::Permissions::from_mode(mode))
}

/// One drill's scratch directory.
#[derive(Clone, Debug)]
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(drill_dir: &Path, id: i64, tag: &str) -> Scratch {
        Scratch {
            root: drill_dir.join(format!("drill-{id}-{tag}")),
        }
    }

    pub fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }
    /// The value of [`MARK_ENV`] for this drill's processes: the canonical path of the
    /// directory (as given, before it exists).
    pub fn mark(&self) -> OsString {
        fs::canonicalize(&self.root)
            .unwrap_or_else(|_| self.root.clone())
            .into_os_string()
    }
    pub fn tablespace(&self, oid: u32) -> PathBuf {
        self.root.join("tablespaces").join(oid.to_string())
    }
    pub fn socket(&self) -> PathBuf {
        self.root.join("socket")
    }
    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    pub fn client_config(&self) -> PathBuf {
        self.root.join("client.toml")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Creates the directory and its empty subdirectories, owner-only, owned by `run_as`.
    pub fn create(&self, run_as: &RunAs) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o700).create(&self.root)?;
        run_as.own(&self.root)?;
        for d in [
            self.pgdata(),
            self.root.join("tablespaces"),
            self.socket(),
            self.spool(),
        ] {
            fs::DirBuilder::new().mode(0o700).create(&d)?;
            run_as.own(&d)?;
        }
        Ok(())
    }

    /// Writes a file of the scratch directory, owner-only, owned by `run_as`.
    pub fn write(&self, path: &Path, bytes: &[u8], run_as: &RunAs) -> io::Result<()> {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        run_as.own(path)
    }

    /// Stops every process the drill left (see [`stop_processes`]) and removes the directory.
    /// Returns what it stopped, for the log.
    pub fn remove(&self) -> io::Result<Vec<String>> {
        let stopped = stop_processes(self);
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(stopped),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(stopped),
            Err(e) => Err(e),
        }
    }
}

/// The PID in the first line of a pid file.
fn read_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|p| *p > 0)
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

fn cwd(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn wait_gone(pids: &[i32], deadline: Duration) -> bool {
    let start = Instant::now();
    loop {
        if pids.iter().all(|p| !alive(*p)) {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The PID of the postmaster of `pgdata`, if it runs: its `postmaster.pid` names it and it
/// works in that directory.
pub fn postmaster(pgdata: &Path) -> Option<i32> {
    let pid = read_pid(&pgdata.join("postmaster.pid"))?;
    let dir = fs::canonicalize(pgdata).ok()?;
    (alive(pid) && cwd(pid).as_deref() == Some(dir.as_path())).then_some(pid)
}

/// Whether process `pid` has `MARK_ENV=mark` in its environment.
fn marked(pid: i32, mark: &[u8]) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    env.split(|b| *b == 0).any(|kv| {
        kv.strip_prefix(MARK_ENV.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
            == Some(mark)
    })
}

/// The drill's processes working inside its directory (PostgreSQL's children, a
/// restore_command in progress): working there and carrying the drill's mark.
fn working_in(scratch: &Scratch) -> Vec<i32> {
    let Ok(root) = fs::canonicalize(&scratch.root) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mark = root.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && alive(*pid))
        .filter(|pid| cwd(*pid).is_some_and(|c| c.starts_with(&root)) && marked(*pid, mark))
        .collect()
}

/// The prefetch worker of the drill's spool, if it runs (it writes its PID in its lock file).
fn prefetch_worker(spool: &Path) -> Option<i32> {
    let pid = read_pid(&spool.join("prefetch-worker.lock"))?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let spool = spool.as_os_str().as_encoded_bytes();
    let is_ours = cmdline.split(|b| *b == 0).any(|a| a == b"fetch-worker")
        && cmdline.windows(spool.len()).any(|w| w == spool);
    (is_ours && alive(pid)).then_some(pid)
}

/// Stops what a drill left running: its postmaster (SIGQUIT, PostgreSQL's immediate shutdown:
/// the copy is thrown away; SIGKILL if it is still there after 10 s), then any marked process
/// still working in the directory and the prefetch worker (SIGKILL). Returns what was
/// signalled.
pub fn stop_processes(scratch: &Scratch) -> Vec<String> {
    let mut stopped = Vec::new();
    if let Some(pid) = postmaster(&scratch.pgdata()) {
        signal(pid, rustix::process::Signal::QUIT);
        if !wait_gone(&[pid], Duration::from_secs(10)) {
            signal(pid, rustix::process::Signal::KILL);
            wait_gone(&[pid], Duration::from_secs(5));
        }
        stopped.push(format!("postmaster {pid}"));
    }
    let mut rest = working_in(scratch);
    rest.extend(prefetch_worker(&scratch.spool()));
    for pid in &rest {
        signal(*pid, rustix::process::Signal::KILL);
        stopped.push(format!("process {pid}"));
    }
    wait_gone(&rest, Duration::from_secs(5));
    stopped
}

/// At start: every scratch directory of this server's drills (a crash during a drill) is
/// emptied of processes and removed. Returns the directories removed and what was stopped.
pub fn clean_leftovers(drill_dir: &Path, tag: &str) -> io::Result<Vec<(PathBuf, Vec<String>)>> {
    let entries = match fs::read_dir(drill_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let suffix = format!("-{tag}");
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name
            .strip_prefix("drill-")
            .and_then(|n| n.strip_suffix(&suffix))
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
        if !ours || !entry.file_type()?.is_dir() {
            continue;
        }
        let scratch = Scratch { root: entry.path() };
        let stopped = scratch.remove()?;
        removed.push((scratch.root, stopped));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_drill_dir_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let own = dir.path().join("drills");
        prepare_drill_dir(&own, &RunAs::Myself).expect("created");
        let mode = fs::metadata(&own).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = prepare_drill_dir(&shared, &RunAs::Myself).expect_err("refused");
        assert!(err.to_string().contains("dedicated directory"), "{err}");
        let mode = fs::metadata(&shared).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1777);
    }

    #[test]
    fn leftovers_of_this_server_only_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = Scratch::new(dir.path(), 7, "abcd1234");
        fs::create_dir_all(ours.pgdata()).expect("mkdir");
        fs::write(ours.pgdata().join("PG_VERSION"), "15\n").expect("write");
        // A postmaster.pid naming a process that does not work there is never signalled.
        fs::write(
            ours.pgdata().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .expect("write");
        let theirs = Scratch::new(dir.path(), 7, "ffff0000");
        fs::create_dir_all(theirs.pgdata()).expect("mkdir");
        fs::create_dir_all(dir.path().join("drill-x-abcd1234")).expect("mkdir");
        fs::write(dir.path().join("notes"), "keep").expect("write");

        let removed = clean_leftovers(dir.path(), "abcd1234").expect("clean");
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(removed[0].1.is_empty(), "{removed:?}");
        assert!(!ours.root.exists());
        assert!(theirs.root.exists());
        assert!(dir.path().join("drill-x-abcd1234").exists());
        assert!(dir.path().join("notes").exists());
        assert!(alive(std::process::id() as i32));
    }

    #[test]
    fn only_the_drills_own_processes_are_stopped() {
        /// Children of this test, killed and reaped whatever happens.
        struct Reaped(Vec<std::process::Child>);
        impl Drop for Reaped {
            fn drop(&mut self) {
                for c in &mut self.0 {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let scratch = Scratch::new(dir.path(), 9, "abcd1234");
        fs::create_dir_all(scratch.pgdata()).expect("mkdir");
        // `spawn` returns once `sleep` runs: its working directory and environment are set.
        let sleeper = |mark: Option<OsString>| {
            let mut cmd = Command::new("sleep");
            cmd.arg("600").current_dir(scratch.pgdata());
            if let Some(m) = mark {
                cmd.env(MARK_ENV, m);
            }
            cmd.spawn().expect("sleep")
        };
        let mut kids = Reaped(vec![
            sleeper(Some(scratch.mark())),
            sleeper(None),
            sleeper(Some(OsString::from("/another/drill"))),
        ]);
        let pids: Vec<i32> = kids.0.iter().map(|c| c.id() as i32).collect();

        let stopped = stop_processes(&scratch);
        assert_eq!(stopped, vec![format!("process {}", pids[0])]);
        let status = kids.0[0].wait().expect("wait");
        assert!(!status.success(), "{status:?}");
        // An unmarked process (an operator's shell) and another drill's are left alone.
        assert!(alive(pids[1]) && alive(pids[2]));
    }

    #[test]
    fn tags_differ_by_data_directory() {
        assert_ne!(tag(Path::new("/a")), tag(Path::new("/b")));
        assert_eq!(tag(Path::new("/a")).len(), 8);
    }
}
