//! The prefetch worker: a detached `wal-archive fetch-worker` process that keeps the spool
//! ([`crate::helper::spool`]) filled while PostgreSQL replays, so that restore_command calls find their
//! file waiting instead of downloading it (the design of pgBackRest's asynchronous
//! archive-get).
//!
//! # Life cycle
//!
//! - **Started by `fetch`** ([`want`]): each fetch of a segment records the name PostgreSQL
//!   asked for in `STATE/prefetch-wanted` (temp file + rename) and, if no worker holds the
//!   spool's lock, starts one: the same binary with the same server, cluster, settings and
//!   state directory, in its own process group, stdin null, stdout and stderr appended to
//!   `STATE/prefetch-worker.log`, working directory `/`, at nice 10: on a host short of CPU,
//!   PostgreSQL's startup process, which replays what the worker fetched, goes first. The token travels in
//!   `WAL_ARCHIVE_TOKEN`, never in the arguments, which anyone can read in `ps` (DESIGN §7.7).
//! - **One per spool.** The worker holds an exclusive `flock` on `STATE/prefetch-worker.lock`
//!   for its whole life and writes its PID there; a second worker that cannot take the lock
//!   exits at once. Two fetches that both find the lock free may both start one: only one
//!   survives.
//! - **Work.** It keeps the next `prefetch` segments after the wanted one, on the wanted one's
//!   timeline, spooled: always the first missing name, on `parallel` threads, while the spool
//!   holds less than `prefetch_max_bytes`. A 404 means the archive ends there: that name and
//!   the ones after it are asked again after [`REPOLL`]. It never writes into pg_wal. A wanted
//!   record of another server or cluster (an explicit `--spool-dir` shared by several
//!   clusters) is not its business: it goes idle, and that cluster's next fetch starts its own.
//! - **Exit.** When the wanted name has not moved and nothing was received for [`IDLE_EXIT`];
//!   after [`LIFETIME`] (the next fetch starts a new worker); when the server has been
//!   unreachable for longer than the retry window. Every request has the client's timeouts
//!   ([`crate::client`]), so nothing waits forever.

use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgwal::name::WalFileName;

use crate::client::Client;
use crate::helper::spool::{Spool, Wanted};

/// The worker's niceness increment (see nice(2)).
const WORKER_NICE: i32 = 10;
/// A worker with nothing to do for this long exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(3);
/// A worker exits after this long in any case.
pub const LIFETIME: Duration = Duration::from_secs(10 * 60);
/// A name the archive did not have (or that failed) is asked again after this long.
pub const REPOLL: Duration = Duration::from_secs(1);
/// How often an idle worker looks for a new wanted name.
const POLL: Duration = Duration::from_millis(20);
/// The log is moved aside to `.log.1` when it is larger than this at a worker's start.
const LOG_MAX_BYTES: u64 = 1 << 20;

const LOCK_FILE: &str = "prefetch-worker.lock";
const LOG_FILE: &str = "prefetch-worker.log";

/// Records `name` (a segment of `seg_bytes` bytes) as the one PostgreSQL asked for and makes
/// sure a worker runs for the spool. Failures are logged: prefetch is only an optimisation.
pub fn want(client: &Client, cluster: &str, spool: &Spool, name: &WalFileName, seg_bytes: u64) {
    if seg_bytes > client.settings.prefetch_max_bytes {
        // Not one segment fits: there is nothing a worker could do.
        return;
    }
    if let Err(e) = spool.set_wanted(name, seg_bytes) {
        eprintln!("wal-archive fetch: prefetch off: cannot record {name} as wanted: {e}");
        return;
    }
    if is_running(spool.state_dir()) {
        return;
    }
    if let Err(e) = start(client, cluster, spool.state_dir()) {
        eprintln!("wal-archive fetch: prefetch off: cannot start the prefetch worker: {e}");
    }
}

/// Whether a worker holds the lock of the state directory `state`.
pub fn is_running(state: &Path) -> bool {
    let Ok(file) = open_lock(state) else {
        return false;
    };
    // Taking the lock proves nobody holds it; closing the file right away releases it.
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

fn open_lock(state: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(state.join(LOCK_FILE))
}

/// The worker's log, moved aside first if it has grown past [`LOG_MAX_BYTES`].
fn open_log(state: &Path) -> io::Result<File> {
    let path = state.join(LOG_FILE);
    if fs::metadata(&path).is_ok_and(|m| m.len() > LOG_MAX_BYTES) {
        let _ = fs::rename(&path, state.join(format!("{LOG_FILE}.1")));
    }
    File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Starts a detached worker for the state directory `state`.
fn start(client: &Client, cluster: &str, state: &Path) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    // The worker runs in `/`, so every path it gets is absolute.
    let state = fs::canonicalize(state)?;
    let log = open_log(&state)?;
    let s = &client.settings;
    let mut cmd = Command::new(exe);
    cmd.arg("--url").arg(&s.url);
    if let Some(config) = &s.config {
        cmd.arg("--config").arg(std::path::absolute(config)?);
    }
    if let Some(ca_file) = &s.ca_file {
        cmd.arg("--ca-file").arg(std::path::absolute(ca_file)?);
    }
    if let Some(retry_for) = s.retry_for {
        cmd.arg("--retry-for").arg(retry_for.as_secs().to_string());
    }
    cmd.arg("--parallel")
        .arg(s.parallel.to_string())
        .arg("--prefetch")
        .arg(s.prefetch.to_string())
        .arg("--prefetch-max-bytes")
        .arg(s.prefetch_max_bytes.to_string())
        .arg("--spool-dir")
        .arg(&state)
        .args(["fetch-worker", "--cluster", cluster]);
    // Whatever the token's source (flag, environment, config file), it reaches the worker
    // through its environment only.
    match &s.token {
        Some(token) => cmd.env("WAL_ARCHIVE_TOKEN", token),
        None => cmd.env_remove("WAL_ARCHIVE_TOKEN"),
    };
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: signals meant for PostgreSQL's process group (a terminal's
        // ^C) do not reach it, and it does not keep PostgreSQL's output open.
        .process_group(0);
    // Not waited for: it outlives this call by design, and this process exits right after,
    // so the worker is reparented rather than left a zombie.
    #[allow(clippy::zombie_processes)]
    cmd.spawn()?;
    Ok(())
}

/// `wal-archive fetch-worker`: runs until one of the exit conditions, then releases the lock.
pub fn run(client: &Client, cluster: &str) -> ExitCode {
    let Some(state) = client.settings.spool_dir.clone() else {
        log("no state directory given (--spool-dir); exiting");
        return ExitCode::from(2);
    };
    let origin = crate::helper::spool::origin(&client.settings.url, cluster);
    let spool = match Spool::in_state(&state, &origin) {
        Ok(s) => s,
        Err(e) => {
            log(format!("cannot open the spool in {}: {e}", state.display()));
            return ExitCode::from(1);
        }
    };
    let mut lock = match open_lock(&state) {
        Ok(f) => f,
        Err(e) => {
            log(format!(
                "cannot open the lock file in {}: {e}",
                state.display()
            ));
            return ExitCode::from(1);
        }
    };
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            log("another worker runs for this spool; exiting");
            return ExitCode::SUCCESS;
        }
        Err(TryLockError::Error(e)) => {
            log(format!(
                "cannot lock {}: {e}",
                state.join(LOCK_FILE).display()
            ));
            return ExitCode::from(1);
        }
    }
    // For operators (and tests): which process holds the lock.
    let _ = lock
        .set_len(0)
        .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()));
    // Background work: PostgreSQL's startup process, replaying what this worker fetched, is
    // the one that must not wait for a CPU.
    if let Err(e) = rustix::process::nice(WORKER_NICE) {
        log(format!("cannot lower the worker's priority: {e}"));
    }
    log("started");
    spool.remove_worker_debris();
    let worker = Worker::new(client, cluster, &spool);
    let reason = worker.run();
    log(format!("exiting: {reason}"));
    drop(lock);
    ExitCode::SUCCESS
}

/// What the threads of one worker share.
struct Shared {
    /// Names being received now.
    in_progress: Vec<WalFileName>,
    /// The wanted record as last read.
    seen: Option<Wanted>,
    /// When the wanted name last moved or a file was last received.
    last_activity: Instant,
    /// Do not ask for this name, or later ones of its timeline, before the instant.
    hold: Option<(WalFileName, Instant)>,
    /// Since when every request failed to reach the server.
    unreachable_since: Option<Instant>,
    received: u64,
    /// Why the worker stops, once it does.
    stop: Option<String>,
}

struct Worker<'a> {
    client: &'a Client,
    cluster: &'a str,
    spool: &'a Spool,
    started: Instant,
    retry_window: Duration,
    shared: Mutex<Shared>,
}

impl<'a> Worker<'a> {
    fn new(client: &'a Client, cluster: &'a str, spool: &'a Spool) -> Worker<'a> {
        let now = Instant::now();
        Worker {
            client,
            cluster,
            spool,
            started: now,
            retry_window: client
                .settings
                .retry_for
                .unwrap_or_else(|| crate::helper::fetch::default_retry(true)),
            shared: Mutex::new(Shared {
                in_progress: Vec::new(),
                seen: None,
                last_activity: now,
                hold: None,
                unreachable_since: None,
                received: 0,
                stop: None,
            }),
        }
    }

    /// Runs `parallel` threads until one decides to stop; returns why.
    fn run(&self) -> String {
        std::thread::scope(|s| {
            for _ in 0..self.client.settings.parallel.max(1) {
                s.spawn(|| self.work());
            }
        });
        match self.shared.lock() {
            Ok(sh) => format!(
                "{}; {} files received",
                sh.stop.as_deref().unwrap_or("stopped"),
                sh.received
            ),
            Err(_) => "a thread failed".into(),
        }
    }

    fn work(&self) {
        loop {
            let job = {
                let Ok(mut sh) = self.shared.lock() else {
                    return;
                };
                if sh.stop.is_some() {
                    return;
                }
                let job = self.next_job(&mut sh);
                if let Some(name) = &job {
                    sh.in_progress.push(name.clone());
                }
                job
            };
            let Some(name) = job else {
                std::thread::sleep(POLL);
                continue;
            };
            let result = self.spool.receive_one(self.client, self.cluster, &name);
            let Ok(mut sh) = self.shared.lock() else {
                return;
            };
            sh.in_progress.retain(|n| *n != name);
            let now = Instant::now();
            match result {
                Ok(true) => {
                    sh.received += 1;
                    sh.last_activity = now;
                    sh.unreachable_since = None;
                }
                Ok(false) => {
                    sh.unreachable_since = None;
                    sh.hold = Some((name, now + REPOLL));
                }
                Err(f) if f.is_retryable() => {
                    let since = *sh.unreachable_since.get_or_insert(now);
                    if now.duration_since(since) > self.retry_window {
                        sh.stop = Some(format!(
                            "the server has been unreachable for {}s ({f})",
                            now.duration_since(since).as_secs()
                        ));
                    } else {
                        log(format!("{name}: {f}; trying again"));
                        sh.hold = Some((name, now + REPOLL));
                    }
                }
                Err(f) => {
                    log(format!("{name}: {f}"));
                    sh.hold = Some((name, now + REPOLL));
                }
            }
        }
    }

    /// The next name to receive, if any; decides to stop when there is nothing to do.
    fn next_job(&self, sh: &mut Shared) -> Option<WalFileName> {
        let now = Instant::now();
        if now.duration_since(self.started) > LIFETIME {
            sh.stop = Some("lifetime reached; the next fetch starts a new worker".into());
            return None;
        }
        let wanted = self.spool.wanted();
        if wanted != sh.seen {
            if let Some(w) = &wanted {
                self.spool.on_request(&w.name);
            }
            sh.seen = wanted.clone();
            sh.last_activity = now;
        }
        let job = wanted.and_then(|w| self.first_missing(&w, sh, now));
        if job.is_none()
            && sh.in_progress.is_empty()
            && now.duration_since(sh.last_activity) > IDLE_EXIT
        {
            sh.stop = Some(format!("nothing to do for {}s", IDLE_EXIT.as_secs()));
        }
        job
    }

    /// The first name of the window after `wanted` that is neither spooled nor being
    /// received, if the byte budget allows one more.
    fn first_missing(&self, wanted: &Wanted, sh: &Shared, now: Instant) -> Option<WalFileName> {
        let seg = wanted.size.bytes();
        let used = self.spool.used_bytes() + seg * sh.in_progress.len() as u64;
        for name in Spool::window(wanted, self.client.settings.prefetch) {
            if let Some((held, until)) = &sh.hold {
                if now < *until && name.timeline() == held.timeline() && name >= *held {
                    return None;
                }
            }
            if sh.in_progress.contains(&name) || self.spool.is_spooled(&name) {
                continue;
            }
            return (used + seg <= self.client.settings.prefetch_max_bytes).then_some(name);
        }
        None
    }
}

/// One line of the worker's log.
fn log(message: impl std::fmt::Display) {
    eprintln!(
        "{} wal-archive fetch-worker[{}]: {message}",
        utc_timestamp(SystemTime::now()),
        std::process::id()
    );
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let at = |s: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_767_225_599), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn one_lock_holder_per_state_directory() {
        let state = tempfile::tempdir().expect("tempdir");
        assert!(!is_running(state.path()));
        let held = open_lock(state.path()).expect("open");
        held.try_lock().expect("lock");
        assert!(is_running(state.path()));
        drop(held);
        assert!(!is_running(state.path()));
    }
}
