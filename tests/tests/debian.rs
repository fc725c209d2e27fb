//! The Debian package, end to end and system-wide: built by `cargo deb` from this workspace,
//! installed with dpkg, its files checked, its service run the way its systemd unit runs it, a
//! real segment pushed and fetched back; then removed (the archive, the account and the
//! configuration stay, and a reinstall serves the same archive) and purged (all of it goes);
//! then installed once more over an account of that name made beforehand without a group of
//! its own, which the package keeps and puts in the service's group.
//!
//! It installs into /usr/bin, /etc/wal-archive and /var/lib/wal-archive, creates the
//! `wal-archive` system account and its service listens on the configured 127.0.0.1:8420: the
//! only test that touches them. It needs root (CI runs as root) and `cargo-deb` (`.ci/run`
//! installs it); without either it fails saying so. It refuses to run where the package, its
//! account or its directories exist and are not a leftover of an interrupted run of this very
//! test (marked by a file it puts in the state directory), so that it never purges a real
//! archive. Whatever happens, it kills what it started and purges what it installed.
//!
//! It packages the binaries already built for the profile it runs in (`cargo deb --no-build
//! --profile dev` under `cargo test`, after README's `cargo build --workspace --bins`), with
//! the man pages and completions that `server/build.rs` generated beside them, and compresses
//! fast: a few seconds of packaging instead of a release build from scratch. The package is the
//! one `cargo deb -p wal-archive-server` builds from release binaries in every other respect.
//!
//! Tests:
//! - `the_package_installs_serves_keeps_and_purges`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wal_archive_e2e::{run_ok, run_with_deadline, wait_until, Api, Cli, TestDir, WalFactory};

const PACKAGE: &str = "wal-archive";
const ACCOUNT: &str = "wal-archive";
const STATE_DIR: &str = "/var/lib/wal-archive";
const CONFIG_DIR: &str = "/etc/wal-archive";
const UNIT: &str = "/usr/lib/systemd/system/wal-archive-server.service";
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/wal-archive-server.service";
/// Put in the state directory right after installing: what a later run may clean up.
const MARKER: &str = "/var/lib/wal-archive/.installed-by-wal-archive-e2e";
/// Packaging the built binaries: stripping, splitting the debug symbols, compressing.
const PACKAGE_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Where the installed `server.toml` has the service listen.
const LISTEN: &str = "127.0.0.1:8420";
const DPKG_DEADLINE: Duration = Duration::from_secs(120);

/// The workspace root (this crate is `tests/` in it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(".."))
        .to_path_buf()
}

fn dpkg(args: &[&str]) -> Result<String> {
    run_ok(Command::new("dpkg").args(args), DPKG_DEADLINE)
}

/// `dpkg-query`'s status of the package: `None` when dpkg does not know it.
fn package_status() -> Result<Option<String>> {
    let out = run_with_deadline(
        Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Abbrev}", PACKAGE]),
        DPKG_DEADLINE,
    )?;
    Ok(out.success().then(|| out.stdout.trim().to_string()))
}

fn getent(db: &str, name: &str) -> Result<Option<String>> {
    let out = run_with_deadline(Command::new("getent").args([db, name]), DPKG_DEADLINE)?;
    Ok(out.success().then(|| out.stdout.trim().to_string()))
}

/// What of the package is on this machine, by name, or nothing.
fn traces() -> Result<Vec<String>> {
    let mut found = Vec::new();
    if let Some(status) = package_status()? {
        if status != "un" {
            found.push(format!("package {PACKAGE} ({status})"));
        }
    }
    if getent("passwd", ACCOUNT)?.is_some() {
        found.push(format!("user {ACCOUNT}"));
    }
    if getent("group", ACCOUNT)?.is_some() {
        found.push(format!("group {ACCOUNT}"));
    }
    for path in [
        STATE_DIR,
        CONFIG_DIR,
        "/usr/bin/wal-archive",
        "/usr/bin/wal-archive-server",
    ] {
        if Path::new(path).exists() {
            found.push(path.to_string());
        }
    }
    Ok(found)
}

/// Purges the package if dpkg knows it; then nothing of it may be left. An account this test
/// made before installing (the state directory holds the marker) goes too.
fn purge() -> Result<()> {
    if package_status()?.is_some_and(|s| s != "un") {
        dpkg(&["--purge", PACKAGE])?;
    }
    if Path::new(MARKER).exists() {
        if getent("passwd", ACCOUNT)?.is_some() {
            run_ok(
                Command::new("deluser").args(["--system", "--quiet", ACCOUNT]),
                DPKG_DEADLINE,
            )?;
        }
        if getent("group", ACCOUNT)?.is_some() {
            run_ok(
                Command::new("delgroup").args(["--system", "--quiet", ACCOUNT]),
                DPKG_DEADLINE,
            )?;
        }
        std::fs::remove_dir_all(STATE_DIR)?;
    }
    let left = traces()?;
    ensure!(
        left.is_empty(),
        "left after dpkg --purge {PACKAGE}: {left:?}"
    );
    Ok(())
}

/// Purges the package when dropped, unless the test already did: also when it fails.
struct Installed {
    purged: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            if let Err(e) = purge() {
                eprintln!("cleaning up after the test: {e:#}");
            }
        }
    }
}

/// `ExecStart=` of a unit as an argument vector, and its `User=`. Our unit quotes nothing and
/// uses no specifiers; anything that would need systemd's own parsing is refused.
fn exec_start(unit: &str) -> Result<(Vec<String>, String)> {
    let value = |key: &str| -> Result<String> {
        let mut values = unit
            .lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string());
        let v = values
            .next()
            .with_context(|| format!("the unit has no {key}="))?;
        ensure!(values.next().is_none(), "the unit has more than one {key}=");
        Ok(v)
    };
    let exec = value("ExecStart")?;
    ensure!(
        !exec.contains(['"', '\'', '%', '$', '\\']) && !exec.starts_with(['-', '@', '+', '!', ':']),
        "ExecStart={exec} needs systemd's own parsing"
    );
    let argv: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    ensure!(!argv.is_empty(), "ExecStart= is empty");
    Ok((argv, value("User")?))
}

/// The installed service's process: `runuser -u USER -- ExecStart...`, in the next to empty
/// environment and the working directory systemd gives a service. Dropping it kills the server.
struct Service {
    runuser: Child,
    /// The server itself, runuser's child.
    pid: u32,
    log: PathBuf,
}

impl Service {
    fn start(dir: &TestDir, run: &str) -> Result<Service> {
        let unit = std::fs::read_to_string(UNIT).with_context(|| format!("reading {UNIT}"))?;
        let (argv, user) = exec_start(&unit)?;
        ensure!(user == ACCOUNT, "the unit runs as {user}, not {ACCOUNT}");
        let config = std::fs::read_to_string(format!("{CONFIG_DIR}/server.toml"))?;
        ensure!(
            config.lines().any(|l| l.starts_with("listen")
                && l.split('#')
                    .next()
                    .unwrap_or_default()
                    .contains(&format!("\"{LISTEN}\""))),
            "the installed server.toml does not listen on {LISTEN}"
        );
        ensure!(
            std::net::TcpListener::bind(LISTEN).is_ok(),
            "{LISTEN}, where the installed server.toml has the service listen, is taken"
        );
        let log = dir.path().join(format!("service-{run}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new("runuser");
        // As systemd would: its environment is next to empty (its PATH for services).
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .args(["-u", &user, "--"])
            .args(&argv)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let runuser = wal_archive_e2e::util::spawn(&mut cmd).context("starting runuser")?;
        let mut service = Service {
            pid: 0,
            runuser,
            log,
        };
        let children = format!("/proc/{0}/task/{0}/children", service.runuser.id());
        wait_until(Duration::from_secs(10), "runuser starts the server", || {
            let list = std::fs::read_to_string(&children).unwrap_or_default();
            service.pid = list.split_whitespace().next().unwrap_or("0").parse()?;
            Ok(service.pid != 0)
        })?;
        let api = service.api();
        let started = wait_until(
            Duration::from_secs(30),
            "the installed server answers /healthz",
            || {
                if let Some(status) = service.runuser.try_wait()? {
                    bail!("the server exited early with {status}");
                }
                Ok(api.healthz().unwrap_or(false))
            },
        );
        started.with_context(|| service.log_text())?;
        Ok(service)
    }

    fn url(&self) -> String {
        format!("http://{LISTEN}")
    }

    fn api(&self) -> Api {
        Api::new(&self.url())
    }

    fn log_text(&self) -> String {
        format!(
            "--- log of the installed server ---\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// SIGTERM to the server, as `systemctl stop` sends it; it must exit cleanly.
    fn stop(mut self) -> Result<()> {
        run_ok(
            Command::new("/bin/kill").args(["-TERM", &self.pid.to_string()]),
            Duration::from_secs(10),
        )?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.runuser.try_wait()? {
                break status;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "the server did not exit within 30 s of SIGTERM\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.pid = 0;
        ensure!(
            status.success(),
            "the server exited with {status} on SIGTERM\n{}",
            self.log_text()
        );
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.pid != 0 {
            let _ = Command::new("/bin/kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
        let _ = self.runuser.kill();
        let _ = self.runuser.wait();
    }
}

fn is_root() -> Result<bool> {
    // /proc/self belongs to the effective user of the process that looks at it.
    Ok(std::fs::metadata("/proc/self")?.uid() == 0)
}

/// The cargo profile this test was built in and the directory of its build products
/// (`target/debug/deps/debian-HASH` → `dev`, `target/debug`).
fn profile() -> Result<(String, PathBuf)> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in <target>/<profile>/deps")?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the profile directory has no name")?;
    let profile = match name {
        "debug" => "dev",
        other => other,
    };
    Ok((profile.to_string(), dir.to_path_buf()))
}

/// `cargo deb` of the binaries built for this test's profile, into `out`; returns the path of
/// the `.deb`.
fn build_package(out: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let version = run_with_deadline(
        Command::new(&cargo).args(["deb", "--version"]),
        Duration::from_secs(30),
    )?;
    ensure!(
        version.success(),
        "cargo-deb is not installed, and this test builds the Debian package with it: run \
         `cargo install cargo-deb --version 3.8.0 --locked` (.ci/run does). {}",
        version.describe()
    );
    let (profile, dir) = profile()?;
    let built = [
        "wal-archive",
        "wal-archive-server",
        "assets/man",
        "assets/completions",
    ];
    for file in built {
        ensure!(
            dir.join(file).exists(),
            "{} is missing: run `cargo build --workspace --bins` (with the profile of this test, \
             {profile}) first",
            dir.join(file).display()
        );
    }
    let started = Instant::now();
    let packaged = run_with_deadline(
        Command::new(&cargo)
            .current_dir(workspace())
            .args(["deb", "-p", "wal-archive-server", "--locked", "--no-build"])
            .args(["--profile", &profile, "--fast", "--output"])
            .arg(out),
        PACKAGE_DEADLINE,
    )?;
    ensure!(
        packaged.success(),
        "cargo deb failed: {}",
        packaged.describe()
    );
    eprintln!(
        "cargo deb packaged the {profile} binaries of {} in {:?}",
        dir.display(),
        started.elapsed()
    );
    let mut debs = Vec::new();
    let mut ddebs = Vec::new();
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("deb") => debs.push(path),
            Some("ddeb") => ddebs.push(path),
            _ => {}
        }
    }
    ensure!(
        debs.len() == 1 && ddebs.len() == 1,
        "cargo deb wrote {debs:?} and {ddebs:?}: wanted one .deb and its -dbgsym .ddeb"
    );
    let listing = dpkg(&["--contents", &debs[0].to_string_lossy()])?;
    for bin in ["./usr/bin/wal-archive", "./usr/bin/wal-archive-server"] {
        ensure!(
            listing.lines().any(|l| l.ends_with(bin)),
            "{bin} is not in the package:\n{listing}"
        );
    }
    Ok(debs.remove(0))
}

/// `dpkg -i`, man pages included even where a `path-exclude` of dpkg's configuration (as in
/// slim container images) leaves out /usr/share/man; then, where systemd runs, the service that
/// postinst started is stopped: the test runs it itself, as its unit would.
fn install(deb: &str) -> Result<()> {
    dpkg(&["--path-include=/usr/share/man/man1/wal-archive*", "-i", deb])?;
    if Path::new("/run/systemd/system").is_dir() {
        run_ok(
            Command::new("systemctl").args(["stop", "wal-archive-server.service"]),
            Duration::from_secs(150),
        )?;
    }
    Ok(())
}

fn mode_and_owner(path: &str) -> Result<(u32, u32, u32)> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {path}"))?;
    Ok((meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()))
}

/// `(uid, gid)` of the account, from `getent passwd`; checks it is a system account that
/// cannot log in and lives in the state directory.
fn account() -> Result<(u32, u32)> {
    let entry = getent("passwd", ACCOUNT)?.with_context(|| format!("no user {ACCOUNT}"))?;
    let fields: Vec<&str> = entry.split(':').collect();
    ensure!(fields.len() == 7, "getent passwd {ACCOUNT}: {entry}");
    let uid: u32 = fields[2].parse()?;
    let gid: u32 = fields[3].parse()?;
    ensure!(
        uid < 1000 && fields[5] == STATE_DIR && fields[6].ends_with("nologin"),
        "{ACCOUNT} is not a system account living in {STATE_DIR}: {entry}"
    );
    let group = getent("group", ACCOUNT)?.with_context(|| format!("no group {ACCOUNT}"))?;
    ensure!(
        group.split(':').nth(2) == Some(gid.to_string().as_str()),
        "the group of {ACCOUNT} is not its own: {group}"
    );
    Ok((uid, gid))
}

/// The package's files, as installed.
fn check_installed_files() -> Result<()> {
    let root = workspace();
    for bin in ["/usr/bin/wal-archive", "/usr/bin/wal-archive-server"] {
        let version = run_ok(Command::new(bin).arg("--version"), Duration::from_secs(10))?;
        ensure!(
            version.trim().ends_with(env!("CARGO_PKG_VERSION")),
            "{bin} --version: {version}"
        );
        let (mode, uid, _) = mode_and_owner(bin)?;
        ensure!(mode == 0o755 && uid == 0, "{bin}: mode {mode:o}, uid {uid}");
    }
    ensure!(
        std::fs::read(UNIT)? == std::fs::read(root.join("packaging/wal-archive-server.service"))?,
        "{UNIT} is not packaging/wal-archive-server.service"
    );
    ensure!(
        std::fs::symlink_metadata(ENABLED_LINK).is_ok_and(|m| m.file_type().is_symlink()),
        "the unit is not enabled ({ENABLED_LINK} is missing)"
    );

    // The configuration: both examples as conffiles, server.toml for the service's group only.
    let (uid, gid) = account()?;
    for (file, source) in [
        ("server.toml", "server.toml"),
        ("client.toml", "client.toml"),
    ] {
        let path = format!("{CONFIG_DIR}/{file}");
        ensure!(
            std::fs::read(&path)? == std::fs::read(root.join("packaging").join(source))?,
            "{path} is not packaging/{source}"
        );
    }
    ensure!(
        mode_and_owner("/etc/wal-archive/server.toml")? == (0o640, 0, gid),
        "server.toml: (mode, uid, gid) = {:?}",
        mode_and_owner("/etc/wal-archive/server.toml")?
    );
    ensure!(
        mode_and_owner("/etc/wal-archive/client.toml")?.0 == 0o644,
        "client.toml is not 0644"
    );
    let conffiles = run_ok(
        Command::new("dpkg-query").args(["--control-show", PACKAGE, "conffiles"]),
        DPKG_DEADLINE,
    )?;
    for file in [
        "/etc/wal-archive/server.toml",
        "/etc/wal-archive/client.toml",
    ] {
        ensure!(
            conffiles.contains(file),
            "{file} is not a conffile: {conffiles}"
        );
    }
    // The unit is enabled and started once, after the account exists.
    let postinst = run_ok(
        Command::new("dpkg-query").args(["--control-show", PACKAGE, "postinst"]),
        DPKG_DEADLINE,
    )?;
    let starts: Vec<usize> = postinst
        .match_indices("deb-systemd-invoke $_dh_action")
        .map(|(i, _)| i)
        .collect();
    let account_made = postinst.find("adduser --system");
    ensure!(
        starts.len() == 1 && account_made.is_some_and(|a| a < starts[0]),
        "postinst does not start the unit once, after making its account:\n{postinst}"
    );
    ensure!(
        mode_and_owner(STATE_DIR)? == (0o700, uid, gid),
        "{STATE_DIR}: (mode, uid, gid) = {:?}",
        mode_and_owner(STATE_DIR)?
    );

    // Man pages and completions, generated from the clap definitions of the installed binaries:
    // a page for each binary and each subcommand `wal-archive -h` lists, each naming what that
    // command's own `-h` says it does; `push --test` is in push's page.
    let man = "/usr/share/man/man1";
    let short_help = |args: &[&str]| -> Result<String> {
        let help = run_ok(
            Command::new(args[0]).args(&args[1..]).arg("-h"),
            Duration::from_secs(10),
        )?;
        Ok(help.lines().next().unwrap_or_default().to_string())
    };
    let cli_help = run_ok(
        Command::new("/usr/bin/wal-archive").arg("-h"),
        Duration::from_secs(10),
    )?;
    let subcommands: Vec<String> = cli_help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    ensure!(
        subcommands.len() >= 10 && subcommands.iter().any(|c| c == "push"),
        "the subcommands of wal-archive -h: {subcommands:?}"
    );
    let mut pages = vec![
        (
            "wal-archive-server".to_string(),
            vec!["/usr/bin/wal-archive-server"],
        ),
        ("wal-archive".to_string(), vec!["/usr/bin/wal-archive"]),
    ];
    for command in &subcommands {
        pages.push((
            format!("wal-archive-{command}"),
            vec!["/usr/bin/wal-archive", command.as_str()],
        ));
    }
    for (page, invocation) in &pages {
        let path = format!("{man}/{page}.1.gz");
        // man(1) finds it where `man {page}` would read it from.
        let found = run_ok(
            Command::new("man").args(["-w", page]),
            Duration::from_secs(10),
        )?;
        ensure!(found.trim() == path, "man -w {page}: {found}");
        let roff = run_ok(Command::new("zcat").arg(&path), Duration::from_secs(10))?;
        ensure!(
            roff.contains(&format!(".TH {page} 1")),
            "{path} is not the man page of {page}"
        );
        let text = roff.replace("\\-", "-").replace("\\*(Aq", "'");
        let about = short_help(invocation)?;
        ensure!(
            text.contains(&format!("\n{page} - {about}\n")),
            "the NAME of {path} is not what `{} -h` says: {about}",
            invocation.join(" ")
        );
    }
    let push_page = run_ok(
        Command::new("zcat").arg(format!("{man}/wal-archive-push.1.gz")),
        Duration::from_secs(10),
    )?;
    ensure!(
        push_page.contains("\\-\\-test"),
        "push's man page lacks --test"
    );
    for bin in ["wal-archive", "wal-archive-server"] {
        // bash loads the completion and registers it for the command.
        let script = format!("/usr/share/bash-completion/completions/{bin}");
        let registered = run_ok(
            Command::new("bash").args([
                "--norc",
                "-c",
                &format!(". {script} && complete -p {bin}"),
            ]),
            Duration::from_secs(10),
        )?;
        ensure!(
            registered.contains(bin),
            "bash does not complete {bin}: {registered}"
        );
        let zsh = std::fs::read_to_string(format!("/usr/share/zsh/vendor-completions/_{bin}"))?;
        ensure!(
            zsh.starts_with(&format!("#compdef {bin}")),
            "zsh completion of {bin}"
        );
        let fish =
            std::fs::read_to_string(format!("/usr/share/fish/vendor_completions.d/{bin}.fish"))?;
        ensure!(
            fish.contains(&format!("complete -c {bin}")),
            "fish completion of {bin}"
        );
    }
    Ok(())
}

#[test]
fn the_package_installs_serves_keeps_and_purges() -> Result<()> {
    ensure!(
        is_root()?,
        "this test installs a Debian package system-wide and needs root (CI runs as root); run \
         it as root, or leave it to CI"
    );
    // Never touch a real installation; clean up only what an interrupted run of this test left.
    let found = traces()?;
    if !found.is_empty() {
        ensure!(
            Path::new(MARKER).exists(),
            "refusing to run: this machine has {found:?}, which this test did not install. It \
             installs and purges the {PACKAGE} package (and deletes {STATE_DIR}); run it where \
             the package is not in use"
        );
        eprintln!("purging what an interrupted run left: {found:?}");
        purge()?;
    }

    let dir = TestDir::new("debian")?;
    let deb = build_package(&dir.subdir("deb")?)?;
    let deb_arg = deb.to_string_lossy().into_owned();

    let mut installed = Installed { purged: false };
    install(&deb_arg)?;
    std::fs::write(MARKER, "")?;
    check_installed_files()?;

    // The service as its unit runs it, storing into the state directory.
    let service = Service::start(&dir, "first")?;
    let factory = WalFactory::start(&dir, "pg")?;
    let names = factory.make_segments(1)?;
    let name = &names[0];
    let cli = Cli::new(&dir)?.with_bin(Path::new("/usr/bin/wal-archive"));
    let url = service.url();
    let out = cli.run_ok(["--url", &url, "push", "--test", "--cluster", "main"])?;
    ensure!(
        out.stdout.starts_with("ok: "),
        "push --test: {}",
        out.describe()
    );
    cli.run_ok([
        "--url",
        &url,
        "push",
        "--cluster",
        "main",
        &factory.path(name).to_string_lossy(),
    ])
    .with_context(|| service.log_text())?;
    let fetched_dir = dir.subdir("fetched")?;
    // `fetch` of the segment from the service at `url` gives back the pushed bytes.
    let fetch = |url: &str, into: &str| -> Result<()> {
        let dest = fetched_dir.join(into);
        cli.run_ok([
            "--url",
            url,
            "fetch",
            "--cluster",
            "main",
            name,
            &dest.to_string_lossy(),
        ])?;
        ensure!(
            std::fs::read(&dest)? == factory.read(name)?,
            "{name} fetched into {into} differs from the pushed one"
        );
        Ok(())
    };
    fetch(&url, "first")?;
    let (uid, _) = account()?;
    let objects: Vec<PathBuf> = wal_archive_e2e::list_files(Path::new(STATE_DIR))?
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(&format!("{name}.zst")))
        .collect();
    ensure!(objects.len() == 1, "stored objects of {name}: {objects:?}");
    let object = Path::new(STATE_DIR).join(&objects[0]);
    let (mode, owner, _) = mode_and_owner(&object.to_string_lossy())?;
    ensure!(
        mode == 0o600 && owner == uid,
        "{}: mode {mode:o}, uid {owner}",
        object.display()
    );
    service.stop()?;

    // Removed: the archive, the account and the configuration stay.
    dpkg(&["-r", PACKAGE])?;
    ensure!(
        package_status()?.as_deref() == Some("rc"),
        "after dpkg -r the package is {:?}, not rc (removed, configuration kept)",
        package_status()?
    );
    for gone in ["/usr/bin/wal-archive", "/usr/bin/wal-archive-server", UNIT] {
        ensure!(
            !Path::new(gone).exists(),
            "{gone} is still there after dpkg -r"
        );
    }
    ensure!(object.is_file(), "dpkg -r deleted the archive");
    ensure!(
        getent("passwd", ACCOUNT)?.is_some(),
        "dpkg -r deleted user {ACCOUNT}"
    );
    ensure!(
        Path::new("/etc/wal-archive/server.toml").is_file(),
        "dpkg -r deleted server.toml"
    );

    // Installed again, it serves the same archive.
    install(&deb_arg)?;
    ensure!(
        account()?.0 == uid,
        "the account changed across remove and install"
    );
    let service = Service::start(&dir, "again")?;
    fetch(&service.url(), "after-reinstall")?;
    service.stop()?;

    // Purged: the archive, the account, the configuration and the unit's enablement go.
    dpkg(&["--purge", PACKAGE])?;
    installed.purged = true;
    let left = traces()?;
    ensure!(left.is_empty(), "left after dpkg --purge: {left:?}");
    ensure!(
        std::fs::symlink_metadata(ENABLED_LINK).is_err(),
        "{ENABLED_LINK} is left after dpkg --purge"
    );

    // An account of that name made beforehand, in no group of that name (`adduser --system`
    // alone puts it in nogroup): kept, and put in the group the unit runs the service as.
    std::fs::create_dir(STATE_DIR)?;
    std::fs::write(MARKER, "")?;
    installed.purged = false;
    run_ok(
        Command::new("adduser").args([
            "--system",
            "--no-create-home",
            "--home",
            STATE_DIR,
            "--shell",
            "/usr/sbin/nologin",
            "--quiet",
            ACCOUNT,
        ]),
        DPKG_DEADLINE,
    )?;
    let before = getent("passwd", ACCOUNT)?.context("adduser made no account")?;
    ensure!(
        getent("group", ACCOUNT)?.is_none(),
        "adduser --system made a group {ACCOUNT}"
    );
    install(&deb_arg)?;
    ensure!(
        getent("passwd", ACCOUNT)?.as_deref() == Some(before.as_str()),
        "the account made beforehand was changed"
    );
    let group = getent("group", ACCOUNT)?.with_context(|| format!("no group {ACCOUNT}"))?;
    let gid: u32 = group.split(':').nth(2).context("group entry")?.parse()?;
    ensure!(
        group
            .split(':')
            .nth(3)
            .is_some_and(|m| m.split(',').any(|u| u == ACCOUNT)),
        "{ACCOUNT} is not a member of its group: {group}"
    );
    let uid: u32 = before.split(':').nth(2).context("passwd entry")?.parse()?;
    let (_, owner, group_owner) = mode_and_owner(STATE_DIR)?;
    ensure!(
        (owner, group_owner) == (uid, gid),
        "{STATE_DIR} belongs to {owner}:{group_owner}, not {uid}:{gid}"
    );
    let (_, _, config_group) = mode_and_owner("/etc/wal-archive/server.toml")?;
    ensure!(
        config_group == gid,
        "server.toml's group is {config_group}, not {ACCOUNT} ({gid})"
    );
    dpkg(&["--purge", PACKAGE])?;
    installed.purged = true;
    let left = traces()?;
    ensure!(left.is_empty(), "left after the second purge: {left:?}");
    Ok(())
}
