//! The backup catalog commands: `backup`, `list`, `show`, `verify`, `delete`, `keep`.
//!
//! The server takes, stores and checks backups; these commands ask it and print what it says.
//! `latest` is resolved here, once, to the newest done backup's id, so that it works wherever
//! an id does.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgwal::api::{BackupInfo, BackupRequest, JobReport, JobRun, KeepRequest, VerifyReport};

use crate::args::Checkpoint;
use crate::client::{read_json, with_retries, Client};
use crate::ops::progress::{bytes_bar, human_bytes, set_total};

/// How often `backup --wait` asks for progress.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long a poll may keep failing (server restarting, network) before `--wait` gives up.
const DEFAULT_RETRY: Duration = Duration::from_secs(60);

fn backups_path(cluster: &str) -> String {
    format!("/v1/clusters/{cluster}/backups")
}

/// `GET .../backups/{id}` (`latest` = the newest done backup).
pub fn info(client: &Client, cluster: &str, id: &str) -> Result<BackupInfo> {
    check_id(id)?;
    let window = client.settings.retry_for.unwrap_or(DEFAULT_RETRY);
    Ok(with_retries(window, &format!("backup {id}"), || {
        client.get_json(&format!("{}/{id}", backups_path(cluster)))
    })?)
}

/// The id `id` stands for (`latest` becomes the newest done backup's id).
pub fn resolve(client: &Client, cluster: &str, id: &str) -> Result<String> {
    if id == "latest" {
        Ok(info(client, cluster, id)?.id)
    } else {
        check_id(id)?;
        Ok(id.to_string())
    }
}

/// Ids go into URLs: only what the server makes (`20261121T223000`-like) or `latest`.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || id.starts_with('.')
    {
        bail!("{id:?} is not a backup id (see `wal-archive list`) nor `latest`");
    }
    Ok(())
}

/// `POST .../backups`; with `wait`, polls until the backup is done or failed.
pub fn backup(
    client: &Client,
    cluster: &str,
    checkpoint: Option<Checkpoint>,
    wait: bool,
    json: bool,
) -> Result<BackupInfo> {
    let request = BackupRequest {
        checkpoint: checkpoint.map(|c| c.as_str().to_string()),
    };
    // Not retried: a POST that reached the server but whose answer was lost would start a
    // second backup attempt, which the server refuses (409) anyway.
    let resp = client.post_json(&backups_path(cluster), &request)?;
    let started: BackupInfo = read_json(resp, &[200, 201, 202])?;
    if !wait {
        return Ok(started);
    }
    let id = started.id.clone();
    let bar = bytes_bar(started.estimated_bytes, json);
    bar.set_message(format!("backup {id}"));
    let mut last = started;
    loop {
        match last.status.as_str() {
            "done" | "failed" => break,
            "waiting_for_wal" => bar.set_message(format!("backup {id}: waiting for WAL")),
            _ => {}
        }
        std::thread::sleep(POLL_EVERY);
        let now = info(client, cluster, &id)?;
        if let Some(total) = now.estimated_bytes {
            // The server's estimate can fall short of the real size.
            set_total(&bar, total.max(now.progress_bytes));
        }
        bar.set_position(now.progress_bytes);
        last = now;
    }
    bar.finish_and_clear();
    Ok(last)
}

/// `GET .../backups`, newest first.
pub fn list(client: &Client, cluster: &str) -> Result<Vec<BackupInfo>> {
    let window = client.settings.retry_for.unwrap_or(DEFAULT_RETRY);
    Ok(with_retries(window, "list backups", || {
        client.get_json(&backups_path(cluster))
    })?)
}

/// `POST .../backups/{id}/verify` for one backup, or for every done backup when `id` is `None`.
pub fn verify(
    client: &Client,
    cluster: &str,
    id: Option<&str>,
    json: bool,
) -> Result<Vec<VerifyReport>> {
    let ids = match id {
        Some(id) => vec![resolve(client, cluster, id)?],
        None => {
            let all = list(client, cluster)?;
            let done: Vec<String> = all
                .into_iter()
                .filter(|b| b.status == "done")
                .map(|b| b.id)
                .collect();
            if done.is_empty() {
                bail!("cluster {cluster} has no done backup to verify");
            }
            done
        }
    };
    // Each verify is a job on the server (a big backup takes long to re-hash), followed here.
    let mut reports = Vec::new();
    for id in ids {
        let resp = client.post_json(
            &format!("{}/{id}/verify", backups_path(cluster)),
            &serde_json::json!({}),
        )?;
        let run: JobRun = read_json(resp, &[202])?;
        let run = crate::ops::jobs::follow(client, run, &format!("verify {id}"), json)?;
        match run.report {
            Some(JobReport::Verify(r)) => reports.push(r),
            _ => bail!(
                "verify of backup {id} {}: {}",
                run.result,
                run.error.as_deref().unwrap_or("no report")
            ),
        }
    }
    Ok(reports)
}

/// `DELETE .../backups/{id}`.
pub fn delete(client: &Client, cluster: &str, id: &str) -> Result<BackupInfo> {
    let id = resolve(client, cluster, id)?;
    let resp = client.delete(&format!("{}/{id}", backups_path(cluster)))?;
    read_json(resp, &[200])
        .map_err(anyhow::Error::from)
        .with_context(|| format!("deleting backup {id}"))
}

/// `POST .../backups/{id}/keep`.
pub fn keep(client: &Client, cluster: &str, id: &str, keep: bool) -> Result<BackupInfo> {
    let id = resolve(client, cluster, id)?;
    let resp = client.post_json(
        &format!("{}/{id}/keep", backups_path(cluster)),
        &KeepRequest { keep },
    )?;
    read_json(resp, &[200])
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{} backup {id}", if keep { "keeping" } else { "releasing" }))
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// One line per backup, newest first, under a header.
pub fn print_list(backups: &[BackupInfo]) {
    if backups.is_empty() {
        println!("no backups");
        return;
    }
    println!(
        "{:<17} {:<15} {:<25} {:<25} {:<12} {:>10} {:>10} {:>10} {:<4} last drill",
        "id", "status", "begin", "end", "end lsn", "size", "stored", "dedup", "keep"
    );
    for b in backups {
        println!(
            "{:<17} {:<15} {:<25} {:<25} {:<12} {:>10} {:>10} {:>10} {:<4} {}",
            b.id,
            b.status,
            b.begin_time,
            opt(&b.end_time),
            opt(&b.end_lsn),
            human_bytes(b.size_bytes),
            human_bytes(b.stored_bytes),
            human_bytes(b.deduplicated_bytes),
            if b.keep { "keep" } else { "" },
            drill_line(b)
        );
    }
}

/// A backup's newest drill in a few words: `ok 2026-… (recovered in 4.2 s)`, or `-`.
fn drill_line(b: &BackupInfo) -> String {
    match &b.last_drill {
        None => "-".into(),
        Some(d) => {
            let when = d.ended_at.as_deref().unwrap_or(&d.started_at);
            match (d.result.as_str(), d.recovery_seconds) {
                ("ok", Some(s)) => format!("ok {when} (recovered in {s:.1} s)"),
                (result, _) => format!("{result} {when} (drill {})", d.id),
            }
        }
    }
}

/// Every field of one backup, one per line.
pub fn print_info(b: &BackupInfo) {
    println!("backup {} of cluster {}", b.id, b.cluster);
    println!("  status:        {}", b.status);
    if let Some(reason) = &b.reason {
        println!("  reason:        {reason}");
    }
    if b.status == "running" || b.status == "waiting_for_wal" {
        match b.estimated_bytes {
            Some(total) => println!(
                "  progress:      {} of about {}",
                human_bytes(b.progress_bytes),
                human_bytes(total)
            ),
            None => println!("  progress:      {}", human_bytes(b.progress_bytes)),
        }
    }
    println!("  system:        {}", opt(&b.system_identifier));
    println!("  postgresql:    {}", opt(&b.pg_version));
    println!(
        "  timeline:      {}",
        b.timeline.map_or("-".to_string(), |t| t.to_string())
    );
    println!(
        "  begin:         {}  lsn {}  wal {}",
        b.begin_time,
        opt(&b.begin_lsn),
        opt(&b.begin_wal)
    );
    println!(
        "  end:           {}  lsn {}  wal {}",
        opt(&b.end_time),
        opt(&b.end_lsn),
        opt(&b.end_wal)
    );
    println!(
        "  size:          {} in {} files",
        human_bytes(b.size_bytes),
        b.file_count
    );
    println!("  stored:        {}", human_bytes(b.stored_bytes));
    println!("  deduplicated:  {}", human_bytes(b.deduplicated_bytes));
    println!("  keep:          {}", if b.keep { "yes" } else { "no" });
    if let Some(r) = &b.retention {
        println!("  retention:     {r}");
    }
    println!("  last drill:    {}", drill_line(b));
    if let Some(e) = b.last_drill.as_ref().and_then(|d| d.error.as_deref()) {
        println!("  drill error:   {e}");
    }
    for t in &b.tablespaces {
        println!(
            "  tablespace:    {} (oid {}) at {}",
            t.name.as_deref().unwrap_or("?"),
            t.oid,
            t.location
        );
    }
}

/// A verification report: what was checked and each problem on its own line.
pub fn print_report(r: &VerifyReport) {
    if r.ok {
        println!(
            "backup {}: OK ({} files, {} checked)",
            r.id,
            r.files_checked,
            human_bytes(r.bytes_checked)
        );
    } else {
        println!(
            "backup {}: FAILED ({} problem{}; {} files, {} checked)",
            r.id,
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" },
            r.files_checked,
            human_bytes(r.bytes_checked)
        );
    }
    for p in &r.problems {
        println!("  PROBLEM: {p}");
    }
    for g in &r.wal_gaps_after {
        println!("  WAL gap after the backup (point-in-time recovery cannot pass it): {g}");
    }
}

#[cfg(test)]
mod tests {
    use super::check_id;

    #[test]
    fn ids_are_checked_before_they_reach_a_url() {
        assert!(check_id("20261121T223000").is_ok());
        assert!(check_id("latest").is_ok());
        assert!(check_id("../x").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("").is_err());
        assert!(check_id("a?b").is_err());
    }
}
