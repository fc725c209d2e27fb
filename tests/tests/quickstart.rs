//! README's quickstart, run as written: `examples/quickstart.sh` (the commands the README shows)
//! from nothing to a primary archiving into the server, a base backup, a recovery drill, and a
//! standby brought back from the archive after an outage. Run as the PostgreSQL OS user (the
//! script refuses nothing, but PostgreSQL refuses root), in the test directory, on free loopback
//! ports, bounded in time; whatever it started is stopped also when it fails or times out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::util::free_port;
use wal_archive_e2e::{pg_command, run_with_deadline, TestDir, PG_BIN};

/// The whole quickstart takes well under a minute here.
const QUICKSTART_TIMEOUT: Duration = Duration::from_secs(300);

/// Stops what the script started if it could not (killed at its deadline): both PostgreSQL
/// servers by their data directories, the archive server by the PID the script wrote.
struct Leftovers {
    work: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for data in ["standby", "primary"] {
            let data = self.work.join(data);
            if data.join("postmaster.pid").exists() {
                if let Ok(mut cmd) = pg_command(Path::new(PG_BIN).join("pg_ctl")) {
                    cmd.arg("-D")
                        .arg(&data)
                        .args(["-m", "immediate", "-w", "stop"]);
                    let _ = run_with_deadline(&mut cmd, Duration::from_secs(30));
                }
            }
        }
        if let Ok(pid) = std::fs::read_to_string(self.work.join("server.pid")) {
            let pid = pid.trim();
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                let _ = std::process::Command::new("/bin/kill")
                    .args(["-KILL", pid])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

#[test]
fn the_quickstart_runs_to_its_end() -> Result<()> {
    let dir = TestDir::new("quickstart")?;
    let cli = dir.cli_bin()?;
    dir.server_bin()?;
    let bin = cli.parent().context("bin dir")?.to_path_buf();
    let script = dir.path().join("quickstart.sh");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.sh"),
        &script,
    )
    .context("copying examples/quickstart.sh")?;
    let work = dir.pg_subdir("work")?;
    let _leftovers = Leftovers { work: work.clone() };

    let mut cmd = pg_command("/usr/bin/env")?;
    cmd.current_dir(&work)
        .arg(format!(
            "PATH={}:/usr/local/bin:/usr/bin:/bin",
            bin.display()
        ))
        .arg(format!("PG_BIN={PG_BIN}"))
        .arg(format!("WORK={}", work.display()))
        .arg(format!("ARCHIVE_PORT={}", free_port()?))
        .arg(format!("PRIMARY_PORT={}", free_port()?))
        .arg(format!("STANDBY_PORT={}", free_port()?))
        .arg("sh")
        .arg(&script);
    let out = run_with_deadline(&mut cmd, QUICKSTART_TIMEOUT)?;
    let server_log = std::fs::read_to_string(work.join("server.log")).unwrap_or_default();
    ensure!(
        out.success(),
        "the quickstart failed: {}\n--- server log ---\n{server_log}",
        out.describe()
    );
    for wanted in [
        "switched: ",
        "(cluster main): OK",
        "the time to recover",
        "restored backup ",
        "the standby has all 200000 rows",
        "last drill: OK",
    ] {
        ensure!(
            out.stdout.contains(wanted),
            "the quickstart's output lacks {wanted:?}: {}",
            out.describe()
        );
    }
    // Scripts get no progress bars: stderr is not a terminal.
    ensure!(
        !out.stderr.contains('\r') && !out.stdout.contains('\r'),
        "progress output in a script: {}",
        out.describe()
    );
    Ok(())
}
