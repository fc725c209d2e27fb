//! Replication as the DBA watches it (issue 13 part 3): with `conninfo` set, `check` and
//! `/metrics` show the primary's physical slots and its standbys' lag, and `check` fails for an
//! inactive slot that retains more than `max_slot_retained`.
//!
//! - `an_inactive_slot_retaining_too_much_fails_check`: a real standby made with pg_basebackup
//!   streams through a physical slot; `check` passes, and `/metrics` and the status report show
//!   the slot active and the standby's lag. The standby is stopped and the primary writes and switches WAL until the slot
//!   retains more than `max_slot_retained = "2MB"`: `check` fails naming the slot, with its fix,
//!   and `/metrics` shows the slot inactive with the bytes it retains.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wal_archive_e2e::{
    archive_command, toml_string, wait_until, BaseBackupOptions, Pg, PgOptions, Server, TestDir,
    DEADLINE,
};

const SLOT: &str = "standby_slot";
/// `max_slot_retained` of the test: two 1 MiB segments.
const MAX_RETAINED: u64 = 2 << 20;

fn slot_row(primary: &Pg) -> Result<(bool, u64)> {
    let row = primary.psql(&format!(
        "select active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
         from pg_replication_slots where slot_name = '{SLOT}'"
    ))?;
    let (active, retained) = row
        .split_once('|')
        .with_context(|| format!("no slot {SLOT}: {row:?}"))?;
    Ok((active == "t", retained.parse()?))
}

/// The value of the first `/metrics` line that starts with `prefix`.
fn metric(server: &Server, prefix: &str) -> Result<Option<f64>> {
    let r = server.api().get("/metrics", None)?;
    ensure!(r.status == 200, "/metrics: {}", r.short());
    let text = r.text();
    Ok(text
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok()))
}

#[test]
fn an_inactive_slot_retaining_too_much_fails_check() -> Result<()> {
    let dir = TestDir::new("replication-slots")?;
    let primary = Pg::init(&dir, "primary", PgOptions::default())?;
    let config = format!(
        "[clusters.main]\nconninfo = {}\nmax_slot_retained = \"2MB\"\n",
        toml_string(&primary.conninfo()?)
    );
    let server = Server::start_with_config(&dir, Some(&config))?;
    primary.set("archive_mode", "on")?;
    primary.set("archive_command", archive_command(&server, "main")?)?;
    primary.start()?;
    primary.psql("create table t (id bigint primary key, payload text)")?;
    primary.psql(&format!(
        "select pg_create_physical_replication_slot('{SLOT}', true)"
    ))?;

    // A standby of the primary through the slot, as `pg_basebackup -R -S standby_slot` sets it up.
    let standby = Pg::from_basebackup(&primary, &dir, "standby", BaseBackupOptions::standby())?;
    standby.set_str("primary_slot_name", SLOT)?;
    standby.start()?;
    wait_until(DEADLINE, "the standby streams through its slot", || {
        Ok(standby.is_streaming()? && slot_row(&primary)?.0)
    })
    .with_context(|| standby.log_tail())?;
    let segment = primary.switch_wal()?;
    primary.wait_archived(&segment, DEADLINE)?;
    wait_until(DEADLINE, "the archive lists the switched segment", || {
        Ok(server.api().wal_names("main", None)?.contains(&segment))
    })?;

    let cli = server.cli()?.timeout(Duration::from_secs(60));
    let before = cli.run(["check", "--cluster", "main"])?;
    ensure!(
        before.success(),
        "check fails while the standby streams: {}",
        before.describe()
    );
    ensure!(
        before
            .stdout
            .contains(&format!("slot {SLOT}: OK (slot {SLOT} active")),
        "check does not show the active slot: {}",
        before.stdout
    );
    ensure!(
        before.stdout.contains("standbys: OK (walreceiver"),
        "check does not show the standby: {}",
        before.stdout
    );
    let labels = format!("{{cluster=\"main\",slot=\"{SLOT}\"}}");
    ensure!(metric(&server, &format!("wal_archive_slot_active{labels}"))? == Some(1.0));
    // The status page's report shows the slot and the standby with its lags.
    let status = server.api().get("/v1/clusters/main/status", None)?;
    ensure!(status.status == 200, "status: {}", status.short());
    let pg = &status.json()?["clusters"][0]["postgres"];
    let slot = pg["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot_name"] == SLOT))
        .with_context(|| format!("no slot in the status: {pg}"))?;
    ensure!(slot["active"] == true, "{pg}");
    let listed = pg["standbys"]
        .as_array()
        .and_then(|s| s.first())
        .with_context(|| format!("no standby in the status: {pg}"))?;
    ensure!(
        listed["state"] == "streaming" && listed["replay_lag_bytes"].is_u64(),
        "{pg}"
    );
    ensure!(
        metric(&server, "wal_archive_standby_lag_bytes{")?.is_some(),
        "/metrics shows no standby lag"
    );

    // The standby goes away; its slot stays and keeps WAL while the primary writes.
    standby.stop_fast()?;
    wait_until(DEADLINE, "the slot is inactive", || {
        Ok(!slot_row(&primary)?.0)
    })?;
    wait_until(DEADLINE, "the slot retains more than 2 MiB", || {
        primary.psql(
            "insert into t select g, md5(g::text) from generate_series(1, 2000) g \
                      on conflict (id) do update set payload = excluded.payload || 'x'",
        )?;
        primary.switch_wal()?;
        Ok(slot_row(&primary)?.1 > MAX_RETAINED)
    })?;
    let retained = slot_row(&primary)?.1;

    let after = cli.run(["check", "--cluster", "main"])?;
    ensure!(
        after.code == Some(1),
        "check does not fail for the inactive slot: {}",
        after.describe()
    );
    let line = after
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("slot {SLOT}: FAILED")))
        .with_context(|| format!("no failed line for the slot: {}", after.stdout))?;
    ensure!(
        line.contains("inactive")
            && line.contains("fix:")
            && line.contains("pg_drop_replication_slot"),
        "the slot's line does not say what is wrong and what to do: {line}"
    );
    let failed: Vec<&str> = after
        .stdout
        .lines()
        .filter(|l| l.contains("FAILED"))
        .collect();
    ensure!(
        failed.len() == 1,
        "only the slot may fail, got: {failed:#?}"
    );
    ensure!(metric(&server, &format!("wal_archive_slot_active{labels}"))? == Some(0.0));
    let shown = metric(&server, &format!("wal_archive_slot_retained_bytes{labels}"))?
        .context("/metrics shows no retained bytes for the slot")?;
    ensure!(
        shown >= retained as f64,
        "/metrics shows {shown} retained bytes, the primary said {retained} a moment before"
    );
    println!("slot {SLOT}: {retained} bytes retained; check: {line}");
    Ok(())
}
