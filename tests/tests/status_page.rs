//! The status page in a real browser (issue 13 part 2): a server with real data (a primary
//! archiving into it, two base backups, one kept, an inactive slot retaining too much WAL) serves
//! `/`; headless Chromium (Debian's `chromium`, loopback only, a throwaway profile) loads it, and
//! the DOM it built must show the facts of `GET /v1/status`: the last WAL archived, no gaps, the
//! archiver's counts, the slot, the backups with retention class, keep flag, size and "no drill",
//! the WAL-per-hour and backup-duration charts, storage, and the failing check with its fix.
//! `wal-archive status` prints the same report. A screenshot is saved under the target directory
//! (`CARGO_TARGET_TMPDIR/status-page.png`) and its path printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wal_archive_e2e::{
    archive_command, toml_string, wait_until, Output, Pg, PgOptions, Server, TestDir, DEADLINE,
};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Chromium's first start on a loaded machine takes a few seconds; this bounds a hang.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
const SLOT: &str = "idle_standby";

/// Runs headless Chromium on `url` with `args` in its own process group, killed as a group if it
/// outlives [`BROWSER_TIMEOUT`]. No network beyond the loopback URL: no sync, no component or
/// extension updates, no first-run, a throwaway profile.
fn chromium(profile: &Path, args: &[String], url: &str) -> Result<Output> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-breakpad",
        "--metrics-recording-only",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {CHROMIUM} (apt-get install chromium)"))?;
    let mut out = child.stdout.take().context("stdout piped")?;
    let mut err = child.stderr.take().context("stderr piped")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > BROWSER_TIMEOUT {
            // The browser and the helpers it forked, all in the group made for it.
            kill_group(child.id());
            let _ = child.wait();
            bail!("chromium did not finish within {BROWSER_TIMEOUT:?}; killed its process group");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    })
}

/// `kill -KILL -PGID`: the process group of a browser this test started (the `kill` tool, so
/// that the test needs no unsafe code).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

fn slot_retained(primary: &Pg) -> Result<u64> {
    Ok(primary
        .psql(&format!(
            "select coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
             from pg_replication_slots where slot_name = '{SLOT}'"
        ))?
        .parse()?)
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn the_status_page_shows_the_archive_in_a_real_browser() -> Result<()> {
    ensure!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
    );
    let dir = TestDir::new("status-page")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    // Retention runs only when asked (a far-away schedule), so the classes stay as computed.
    let config = format!(
        "[clusters.main]\nconninfo = {}\nretention = \"redundancy 2\"\n\
         retention_schedule = \"0 0 1 1 *\"\nmax_slot_retained = \"1MB\"\n",
        toml_string(&primary.conninfo()?)
    );
    let server = Server::start_with_config(&dir, Some(&config))?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.start()?;
    primary.psql("create table t (id bigint primary key, payload text)")?;
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 5000) g")?;

    let cli = server.cli()?.timeout(Duration::from_secs(120));
    let backup = |n: u32| -> Result<serde_json::Value> {
        let out = cli.run(["--json", "backup", "--cluster", "main", "--wait"])?;
        ensure!(out.success(), "backup {n}: {}", out.describe());
        Ok(serde_json::from_str(&out.stdout)?)
    };
    let first = backup(1)?;
    primary.psql("insert into t select g, md5(g::text) from generate_series(5001, 8000) g")?;
    let second = backup(2)?;
    let first_id = first["id"].as_str().context("backup id")?.to_string();
    let second_id = second["id"].as_str().context("backup id")?.to_string();
    let kept = cli.run(["keep", "--cluster", "main", &first_id])?;
    ensure!(kept.success(), "keep: {}", kept.describe());

    // A slot whose standby never came: it holds WAL while the primary writes.
    primary.psql(&format!(
        "select pg_create_physical_replication_slot('{SLOT}', true)"
    ))?;
    let mut last = String::new();
    wait_until(DEADLINE, "the idle slot retains more than 1 MiB", || {
        primary.psql("update t set payload = payload || 'x' where id % 4 = 0")?;
        last = primary.switch_wal()?;
        Ok(slot_retained(&primary)? > 1 << 20)
    })?;
    primary.wait_archived(&last, DEADLINE)?;
    wait_until(
        DEADLINE,
        "the archive lists the last switched segment",
        || Ok(server.api().wal_names("main", None)?.contains(&last)),
    )?;

    // The JSON behind the page.
    let r = server.api().get("/v1/status", None)?;
    ensure!(r.status == 200, "/v1/status: {}", r.short());
    let report = r.json()?;
    let c = &report["clusters"][0];
    ensure!(c["cluster"] == "main", "{report}");
    let last_wal = c["wal"]["last_segment"].as_str().context("last_segment")?;
    ensure!(
        last_wal == last,
        "last WAL {last_wal}, the primary switched {last}"
    );
    let hour_bytes: u64 = c["wal"]["hours"]
        .as_array()
        .context("hours")?
        .iter()
        .filter_map(|h| h["bytes"].as_u64())
        .sum();
    ensure!(hour_bytes > 0, "no WAL per hour: {report}");
    let size_of = |id: &str| -> Result<u64> {
        c["backups"]
            .as_array()
            .context("backups")?
            .iter()
            .find(|b| b["id"] == id)
            .and_then(|b| b["size_bytes"].as_u64())
            .with_context(|| format!("backup {id} missing from {report}"))
    };

    // `wal-archive status` shares it.
    let out = cli.run(["--json", "status"])?;
    ensure!(
        out.code == Some(1),
        "status exits 1 while a check fails: {}",
        out.describe()
    );
    let shared: serde_json::Value = serde_json::from_str(&out.stdout)?;
    ensure!(shared["clusters"][0]["wal"]["last_segment"] == last_wal);
    let text = cli.run(["status", "--cluster", "main"])?;
    ensure!(
        text.stdout.contains(&format!("slot {SLOT}: FAILED"))
            && text
                .stdout
                .contains(&format!("last WAL archived: {last_wal}")),
        "status text: {}",
        text.describe()
    );

    // The page in the browser.
    let url = format!("{}/", server.url());
    let profile = dir.subdir("chromium-profile")?;
    let dom = chromium(&profile, &["--dump-dom".to_string()], &url)?;
    ensure!(dom.success(), "chromium --dump-dom: {}", dom.describe());
    let dom = dom.stdout;
    let expect = |what: &str, needle: &str| -> Result<()> {
        ensure!(
            dom.contains(needle),
            "the page does not show {what} ({needle:?}):\n{dom}"
        );
        Ok(())
    };
    expect("the cluster", "data-cluster=\"main\"")?;
    expect("the refresh", "http-equiv=\"refresh\"")?;
    expect(
        "the last WAL archived",
        &format!("data-last-wal=\"{last_wal}\""),
    )?;
    expect("its age", "class=\"last-wal-age\" data-age-seconds=\"")?;
    expect("no gaps", "data-gaps=\"0\">none<")?;
    expect(
        "the archiver's failures",
        "class=\"archiver\" data-failed-count=\"0\"",
    )?;
    expect(
        "the inactive slot",
        &format!("data-slot=\"{SLOT}\" data-active=\"false\""),
    )?;
    expect(
        "the failing check",
        &format!("class=\"check-failed\" data-check=\"slot {SLOT}\""),
    )?;
    ensure!(
        count(&dom, "class=\"check-failed\"") == 1,
        "only the slot's check may fail:\n{dom}"
    );
    expect("the check's fix", "fix: an inactive slot keeps WAL")?;
    expect(
        "the kept backup",
        &format!(
            "data-backup=\"{first_id}\" data-status=\"done\" data-retention=\"kept\" \
             data-keep=\"true\" data-size-bytes=\"{}\"",
            size_of(&first_id)?
        ),
    )?;
    expect(
        "the newest backup",
        &format!(
            "data-backup=\"{second_id}\" data-status=\"done\" data-retention=\"valid\" \
             data-keep=\"false\" data-size-bytes=\"{}\"",
            size_of(&second_id)?
        ),
    )?;
    ensure!(
        count(&dom, ">no drill<") == 2,
        "each backup says it has no drill:\n{dom}"
    );
    expect("the WAL chart", "id=\"wal-chart-main\"")?;
    let chart_bytes: u64 = dom
        .split("data-bytes=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse::<u64>().ok())
        .sum();
    ensure!(
        chart_bytes == hour_bytes,
        "the WAL chart's bars add up to {chart_bytes} bytes, the report says {hour_bytes}"
    );
    expect("the durations chart", "id=\"duration-chart-main\"")?;
    for id in [&first_id, &second_id] {
        expect(
            "a backup's duration",
            &format!("class=\"bar\" data-backup=\"{id}\""),
        )?;
        expect(
            "a backup on the timeline",
            &format!("class=\"mark\" data-backup=\"{id}\""),
        )?;
    }
    expect("storage used and free", "id=\"storage\" data-used-bytes=\"")?;
    ensure!(
        !dom.contains("data-free-bytes=\"\""),
        "the page does not show free space:\n{dom}"
    );
    for external in ["src=\"http", "href=\"http", "url(http"] {
        ensure!(
            !dom.contains(external),
            "the page loads {external}…:\n{dom}"
        );
    }

    // What a DBA would see.
    let shot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600".to_string(),
        ],
        &url,
    )?;
    ensure!(out.success(), "chromium --screenshot: {}", out.describe());
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a PNG of the page ({} bytes)",
        shot.display(),
        png.len()
    );
    println!("status page screenshot: {}", shot.display());
    Ok(())
}
