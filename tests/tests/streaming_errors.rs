//! What a DBA gets wrong on the PostgreSQL side when setting up streaming, and what they see.
//!
//! Each test starts a streaming server against a primary set up with one mistake, then checks
//! that the mistake is reported where a DBA looks: `GET /v1/clusters/main/receiver` says
//! `reconnecting` with the cause and a hint; `wal-archive check` (human, `--json`, `--nagios`)
//! fails with a FAILED receiver line naming the cause and the fix; the server log has
//! `receiver: <cause>; reconnecting in Ns`. Then the mistake is fixed on the PostgreSQL side only,
//! and without restarting the server the receiver streams again and `check` exits 0 (`--nagios`:
//! OK).
//!
//! - `role_without_replication`: conninfo `user=norepl`, a role without REPLICATION; fix:
//!   `ALTER ROLE norepl REPLICATION`.
//! - `pg_hba_rejects_replication`: `local replication all reject` first in pg_hba.conf; fix:
//!   remove it and reload.
//! - `slot_in_use_by_another_client`: pg_receivewal holds slot `wal_archive`; fix: stop it.
//! - `max_replication_slots_exhausted`: `max_replication_slots = 1` and slot `other` exists; fix:
//!   drop `other`.
//! - `wrong_password`: scram-sha-256 over TCP with `password = "wrong"` in the server
//!   configuration; fix: `ALTER ROLE pwuser PASSWORD 'wrong'`.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use wal_archive_e2e::{
    is_segment_name, streaming_config, wait_until, Output, Pg, PgOptions, Server, TestDir, DEADLINE,
};

fn state(status: &Value) -> &str {
    status.get("state").and_then(Value::as_str).unwrap_or("")
}

fn text_field<'a>(status: &'a Value, key: &str) -> &'a str {
    status.get(key).and_then(Value::as_str).unwrap_or("")
}

fn check(server: &Server) -> Result<Output> {
    server.cli()?.run(["check", "--cluster", "main"])
}

/// The `receiver:` line of `check`'s human output.
fn receiver_line(out: &Output) -> Option<&str> {
    out.stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("receiver:"))
}

fn started_primary(dir: &TestDir, settings: &[(&str, &str)]) -> Result<Pg> {
    let pg = Pg::init(dir, "primary", PgOptions::default())?;
    for (key, value) in settings {
        pg.set(key, value)?;
    }
    pg.start()?;
    pg.psql("create table t (id int)")?;
    Ok(pg)
}

/// The whole story of one mistake: the server (already started against the faulty setup)
/// reports `cause` (a distinctive part of the message or hint) in its receiver status, `check`
/// and log; after `fix` it streams again and `check` passes, without a restart.
fn reported_then_healed(
    server: &Server,
    pg: &Pg,
    cause: &str,
    fix: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let status = server.wait_receiver(
        "main",
        &format!("the receiver reports {cause:?} while reconnecting"),
        DEADLINE,
        |s| {
            Ok(state(s) == "reconnecting"
                && (text_field(s, "reason").contains(cause)
                    || text_field(s, "hint").contains(cause)))
        },
    )?;
    ensure!(
        status.get("failed_attempts").and_then(Value::as_u64) >= Some(1),
        "reconnecting with no failed attempt counted: {status}"
    );
    ensure!(
        !text_field(&status, "hint").is_empty(),
        "the receiver says what is wrong but not what to do: {status}"
    );

    // `check` may catch the receiver in the middle of an attempt ("starting"): poll.
    let mut last = None;
    wait_until(DEADLINE, &format!("check names {cause:?}"), || {
        let out = check(server)?;
        let found = out.code == Some(1)
            && receiver_line(&out).is_some_and(|l| {
                l.contains("FAILED") && l.contains(cause) && l.contains("— fix: ")
            });
        last = Some(out);
        Ok(found)
    })
    .with_context(|| format!("last check: {:?}", last.as_ref().map(Output::describe)))?;
    let mut last_json = None;
    wait_until(DEADLINE, &format!("check --json names {cause:?}"), || {
        let out = server
            .cli()?
            .run(["check", "--cluster", "main", "--json"])?;
        let doc: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("check --json: {}", out.describe()))?;
        let receiver = doc
            .get("checks")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| text_field(c, "name") == "receiver"))
            .cloned()
            .unwrap_or(Value::Null);
        last_json = Some(doc);
        Ok(out.code == Some(1)
            && receiver.get("ok") == Some(&Value::Bool(false))
            && (text_field(&receiver, "message").contains(cause)
                || text_field(&receiver, "hint").contains(cause)))
    })
    .with_context(|| format!("last check --json: {last_json:?}"))?;

    let mut last_nagios = None;
    wait_until(DEADLINE, &format!("check --nagios names {cause:?}"), || {
        let out = server
            .cli()?
            .run(["check", "--cluster", "main", "--nagios"])?;
        let found = !out.success() && out.stdout.contains("CRITICAL") && out.stdout.contains(cause);
        last_nagios = Some(out);
        Ok(found)
    })
    .with_context(|| {
        format!(
            "last check --nagios: {:?}",
            last_nagios.as_ref().map(Output::describe)
        )
    })?;

    let log = server.log();
    ensure!(
        log.lines().any(|l| l.contains("receiver: ")
            && l.contains("reconnecting in")
            && l.contains(cause)),
        "the server log has no `receiver: ...; reconnecting in` line naming {cause:?}:\n{}",
        server.log_tail()
    );

    fix()?;

    server.wait_receiver(
        "main",
        "the receiver streams after the fix",
        DEADLINE,
        |s| Ok(state(s) == "streaming"),
    )?;
    // `check` also wants a stored segment.
    pg.psql("insert into t select generate_series(1, 100)")?;
    let switched = pg.switch_wal()?;
    wait_until(DEADLINE, &format!("the archive lists {switched}"), || {
        Ok(server
            .api()
            .wal_names("main", None)?
            .iter()
            .any(|n| *n == switched && is_segment_name(n)))
    })
    .with_context(|| server.log_tail())?;
    let mut last = None;
    wait_until(DEADLINE, "check passes", || {
        let out = check(server)?;
        let ok = out.success();
        last = Some(out);
        Ok(ok)
    })
    .with_context(|| format!("last check: {:?}", last.as_ref().map(Output::describe)))?;
    let nagios = server
        .cli()?
        .run(["check", "--cluster", "main", "--nagios"])?;
    ensure!(
        nagios.success() && nagios.stdout.starts_with("WAL-ARCHIVE OK"),
        "check --nagios after the fix: {}",
        nagios.describe()
    );
    Ok(())
}

fn server_for(dir: &TestDir, conninfo: &str, extra: &str) -> Result<Server> {
    Server::start_with_config(dir, Some(&streaming_config("main", conninfo, extra)))
}

#[test]
fn role_without_replication() -> Result<()> {
    let dir = TestDir::new("stream-err-norepl")?;
    let pg = started_primary(&dir, &[])?;
    pg.psql("create role norepl login")?;
    let conninfo = format!(
        "host={} port={} user=norepl",
        pg.socket_dir().display(),
        pg.port()
    );
    let server = server_for(&dir, &conninfo, "")?;
    reported_then_healed(&server, &pg, "replication role", || {
        pg.psql("alter role norepl replication").map(|_| ())
    })?;
    // The hint says what to run.
    let log = server.log();
    ensure!(
        log.contains("ALTER ROLE norepl REPLICATION"),
        "the log does not give the fix:\n{}",
        server.log_tail()
    );
    Ok(())
}

#[test]
fn pg_hba_rejects_replication() -> Result<()> {
    let dir = TestDir::new("stream-err-hba")?;
    let pg = started_primary(&dir, &[])?;
    let reject = "local replication all reject";
    pg.hba_prepend(reject)?;
    pg.reload()?;
    let server = server_for(&dir, &pg.conninfo()?, "")?;
    reported_then_healed(
        &server,
        &pg,
        "pg_hba.conf rejects replication connection",
        || {
            pg.hba_remove(reject)?;
            pg.reload()
        },
    )
}

#[test]
fn slot_in_use_by_another_client() -> Result<()> {
    let dir = TestDir::new("stream-err-slot-busy")?;
    let pg = started_primary(&dir, &[])?;
    pg.receivewal_create_slot("wal_archive")?;
    let dest = dir.pg_subdir("receivewal")?;
    let mut other = pg.pg_receivewal(&dest, "wal_archive", &dir.path().join("receivewal.log"))?;
    wait_until(DEADLINE, "pg_receivewal holds the slot", || {
        Ok(
            pg.psql("select active from pg_replication_slots where slot_name = 'wal_archive'")?
                == "t",
        )
    })
    .with_context(|| other.output())?;
    let server = server_for(&dir, &pg.conninfo()?, "")?;
    reported_then_healed(&server, &pg, "is active for PID", || other.stop())
}

#[test]
fn max_replication_slots_exhausted() -> Result<()> {
    let dir = TestDir::new("stream-err-slots")?;
    let pg = started_primary(&dir, &[("max_replication_slots", "1")])?;
    pg.psql("select pg_create_physical_replication_slot('other')")?;
    let server = server_for(&dir, &pg.conninfo()?, "")?;
    reported_then_healed(&server, &pg, "all replication slots are in use", || {
        pg.psql("select pg_drop_replication_slot('other')")
            .map(|_| ())
    })
}

#[test]
fn wrong_password() -> Result<()> {
    let dir = TestDir::new("stream-err-password")?;
    let pg = started_primary(&dir, &[])?;
    pg.psql("create role pwuser login replication password 'right'")?;
    pg.hba_prepend("host replication pwuser 127.0.0.1/32 scram-sha-256")?;
    pg.reload()?;
    let conninfo = format!("host=127.0.0.1 port={} user=pwuser", pg.port());
    let server = server_for(&dir, &conninfo, "password = \"wrong\"")?;
    reported_then_healed(&server, &pg, "password authentication failed", || {
        pg.psql("alter role pwuser password 'wrong'").map(|_| ())
    })?;
    ensure!(
        !server.log().contains("password = \"wrong\"") && !server.log().contains("'wrong'"),
        "the password appears in the server log"
    );
    Ok(())
}
