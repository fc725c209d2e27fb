//! Base backups taken by the server, driven through the `wal-archive` operator commands.
//!
//! - `unchanged_database_is_deduplicated_and_the_catalog_commands_work`: two backups of a
//!   database that did not change in between; the second stores little (`stored_bytes` under a
//!   tenth of `size_bytes`, `deduplicated_bytes` most of it). `list` (newest first), `show`
//!   (`latest`), `keep` / `keep --release`, `delete` (refused while kept and at the minimum
//!   redundancy) in text and JSON; deleting leaves no object that no backup references.
//! - `kill_9_mid_backup_leaves_a_failed_backup_and_no_orphans`: the server is killed while it
//!   streams a backup; after the restart that backup is `failed`, storage holds nothing no backup
//!   references, and the next backup is done.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use wal_archive_e2e::backup::{orphan_objects, BackupRig};
use wal_archive_e2e::{wait_until, DEADLINE};

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

fn id_of(v: &serde_json::Value) -> Result<String> {
    Ok(v["id"].as_str().context("no id")?.to_string())
}

#[test]
fn unchanged_database_is_deduplicated_and_the_catalog_commands_work() -> Result<()> {
    let rig = BackupRig::start("backup-dedup")?;
    let p = &rig.primary;
    p.psql("create table t (id bigint primary key, payload text)")?;
    p.psql("insert into t select g, md5(g::text) from generate_series(1, 50000) g")?;
    // Set the hint bits now, so that the second backup does not see pages rewritten by them.
    p.psql("vacuum freeze t")?;
    p.checkpoint()?;
    let first = rig.backup()?;
    let second = rig.backup()?;
    let (first_id, second_id) = (id_of(&first)?, id_of(&second)?);
    ensure!(first_id != second_id, "two backups with one id {first_id}");

    let num = |v: &serde_json::Value, key: &str| -> Result<u64> {
        v[key].as_u64().with_context(|| format!("no {key} in {v}"))
    };
    let size = num(&second, "size_bytes")?;
    let stored = num(&second, "stored_bytes")?;
    let dedup = num(&second, "deduplicated_bytes")?;
    ensure!(
        size > 0 && stored * 10 < size && dedup * 2 > size,
        "second backup of an unchanged database: size {size}, stored {stored}, deduplicated \
         {dedup}; expected stored < 10% and deduplicated most of it"
    );

    let cli = rig.server.cli()?;
    let list = json(&cli.run_ok(["list", "--cluster", "main", "--json"])?.stdout)?;
    let ids: Vec<String> = list
        .as_array()
        .context("list --json is not an array")?
        .iter()
        .map(id_of)
        .collect::<Result<_>>()?;
    ensure!(
        ids == [second_id.clone(), first_id.clone()],
        "list, newest first: {ids:?}"
    );
    let text = cli.run_ok(["list", "--cluster", "main"])?.stdout;
    ensure!(
        text.contains(&first_id) && text.contains(&second_id) && text.contains("done"),
        "list:\n{text}"
    );
    let latest = json(
        &cli.run_ok(["--json", "show", "--cluster", "main", "latest"])?
            .stdout,
    )?;
    ensure!(
        id_of(&latest)? == second_id,
        "show latest: {latest}, expected {second_id}"
    );
    let text = cli.run_ok(["show", "--cluster", "main", &first_id])?.stdout;
    ensure!(
        text.contains(&first_id) && text.contains("done"),
        "show:\n{text}"
    );

    // A kept backup cannot be deleted; released, it can.
    cli.run_ok(["keep", "--cluster", "main", "latest"])?;
    let kept = json(
        &cli.run_ok(["show", "--cluster", "main", "latest", "--json"])?
            .stdout,
    )?;
    ensure!(kept["keep"] == true, "after keep: {kept}");
    let out = cli.run(["delete", "--cluster", "main", &second_id])?;
    ensure!(
        out.code == Some(1),
        "deleting a kept backup: {}",
        out.describe()
    );
    cli.run_ok(["keep", "--cluster", "main", &second_id, "--release"])?;
    let deleted = json(
        &cli.run_ok(["delete", "--cluster", "main", &first_id, "--json"])?
            .stdout,
    )?;
    ensure!(id_of(&deleted)? == first_id, "delete answered {deleted}");
    // The last done backup is the minimum redundancy (1): refused.
    let out = cli.run(["delete", "--cluster", "main", "latest"])?;
    ensure!(
        out.code == Some(1),
        "deleting the only backup: {}",
        out.describe()
    );
    let mut orphans = Vec::new();
    wait_until(DEADLINE, "no stored object outlives its backup", || {
        orphans = orphan_objects(&rig.server, "main")?;
        Ok(orphans.is_empty())
    })
    .with_context(|| format!("orphans: {orphans:?}"))?;
    Ok(())
}

#[test]
fn kill_9_mid_backup_leaves_a_failed_backup_and_no_orphans() -> Result<()> {
    let mut rig = BackupRig::start("backup-kill9")?;
    // About 150 MiB: long enough to be caught in the middle.
    rig.primary
        .pgbench(&["-i", "-s", "10", "-q"], Duration::from_secs(120))?;
    let cli = rig.server.cli()?;
    let id = cli
        .run_ok(["backup", "--cluster", "main"])?
        .stdout
        .trim()
        .to_string();
    ensure!(!id.is_empty(), "backup without --wait printed no id");

    let mut last = serde_json::Value::Null;
    wait_until(DEADLINE, "the backup is running and has sent bytes", || {
        last = rig.api_get(&format!("/{id}"))?;
        match last["status"].as_str() {
            Some("running") => Ok(last["progress_bytes"].as_u64().unwrap_or(0) > 0),
            Some("done") | Some("waiting_for_wal") => {
                bail!("backup {id} finished before it could be killed: {last}")
            }
            Some("failed") => bail!("backup {id} failed on its own: {last}"),
            _ => Ok(false),
        }
    })
    .with_context(|| format!("last state: {last}"))?;
    rig.server.kill9()?;
    rig.server.start_again()?;

    let after = rig.api_get(&format!("/{id}"))?;
    ensure!(
        after["status"] == "failed" && after["reason"].is_string(),
        "after kill -9 and restart, backup {id} is {after}"
    );
    let orphans = orphan_objects(&rig.server, "main")?;
    ensure!(
        orphans.is_empty(),
        "objects left by the killed backup: {orphans:?}"
    );
    let show = cli.run(["show", "--cluster", "main", &id])?;
    ensure!(
        show.success() && show.stdout.contains("failed"),
        "show of the killed backup: {}",
        show.describe()
    );

    let next = rig.backup()?;
    ensure!(id_of(&next)? != id, "the next backup reused id {id}");
    let orphans = orphan_objects(&rig.server, "main")?;
    ensure!(
        orphans.is_empty(),
        "objects no backup references after the next backup: {orphans:?}"
    );
    Ok(())
}
