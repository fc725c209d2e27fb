//! Operator commands for running unattended: `retention`, `jobs`, `switch-wal`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgwal::api::{JobReport, JobRun, RetentionReport, SwitchWalRequest, SwitchWalResponse};

use crate::client::{read_json, with_retries, Client};
use crate::ops::progress::{bytes_bar, set_total};

/// How often a followed job is looked at.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// `wal-archive retention --cluster C [--dry-run]`: a dry run answers at once; a real run is a
/// job on the server, followed to its end.
pub fn retention(
    client: &Client,
    cluster: &str,
    dry_run: bool,
    json: bool,
) -> Result<RetentionReport> {
    let path = format!("/v1/clusters/{cluster}/retention?dry_run={dry_run}");
    let resp = client
        .post_json(&path, &serde_json::json!({}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if dry_run {
        return read_json(resp, &[200]).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let run: JobRun = read_json(resp, &[202]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run = follow(client, run, "retention", json)?;
    match run.report {
        Some(JobReport::Retention(r)) => Ok(r),
        _ => bail!(
            "retention run {} {}: {}",
            run.id,
            run.result,
            run.error.as_deref().unwrap_or("no report")
        ),
    }
}

/// Follows a job the server runs until it ends, showing its progress on a terminal (not with
/// `--json`). The job goes on in the server whatever happens here: a lost connection is
/// retried, and an interrupted command can look again with `wal-archive jobs`.
pub fn follow(client: &Client, mut run: JobRun, what: &str, json: bool) -> Result<JobRun> {
    let bar = bytes_bar(None, json);
    bar.set_message(format!("{what} (job {})", run.id));
    let path = format!("/v1/clusters/{}/jobs/{}", run.cluster, run.id);
    while run.result == "running" {
        if let Some(p) = &run.progress {
            if let Some(total) = p.total_bytes {
                set_total(&bar, total.max(p.done_bytes));
            }
            bar.set_position(p.done_bytes);
            if !p.step.is_empty() {
                bar.set_message(format!("{what}: {}", p.step));
            }
        }
        std::thread::sleep(POLL_EVERY);
        let window = client.settings.retry_for.unwrap_or(Duration::from_secs(60));
        run = with_retries(window, &format!("following job {}", run.id), || {
            client.get_json(&path)
        })
        .with_context(|| format!("following {what} job {} on the server", run.id))?;
    }
    bar.finish_and_clear();
    Ok(run)
}

pub fn print_retention(r: &RetentionReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    match &r.policy {
        Some(p) => println!("cluster {}: policy {p}", r.cluster),
        None => println!(
            "cluster {}: no retention policy configured, nothing removed",
            r.cluster
        ),
    }
    for b in &r.backups {
        println!(
            "  backup {}  {:<8} {}",
            b.id,
            b.retention.as_deref().unwrap_or("-"),
            b.status
        );
    }
    println!(
        "{verb} {} backups: {}",
        r.removed_backups.len(),
        r.removed_backups.join(" ")
    );
    println!("{verb} {} WAL files", r.removed_wal.len());
    if let (Some(first), Some(last)) = (r.removed_wal.first(), r.removed_wal.last()) {
        println!("  from {first} to {last}");
    }
    if let Some(k) = &r.wal_kept_from {
        println!("WAL kept from {k} on (every timeline), and every .history file");
    }
}

/// `wal-archive jobs --cluster C`.
pub fn jobs(client: &Client, cluster: &str) -> Result<Vec<JobRun>> {
    client
        .get_json(&format!("/v1/clusters/{cluster}/jobs"))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn print_jobs(jobs: &[JobRun]) {
    if jobs.is_empty() {
        println!("no job has run yet");
        return;
    }
    println!(
        "{:<6} {:<10} {:<9} {:<21} {:<21} {:<8} detail",
        "id", "kind", "trigger", "started", "ended", "result"
    );
    for j in jobs {
        let detail = j
            .error
            .as_deref()
            .or(j.detail.as_deref())
            .unwrap_or_default();
        println!(
            "{:<6} {:<10} {:<9} {:<21} {:<21} {:<8} {detail}",
            j.id,
            j.kind,
            j.trigger,
            j.started_at,
            j.ended_at.as_deref().unwrap_or("-"),
            j.result
        );
    }
}

/// `wal-archive switch-wal --cluster C [--archive] [--timeout S]`.
pub fn switch_wal(
    client: &Client,
    cluster: &str,
    archive: bool,
    timeout_secs: u64,
) -> Result<SwitchWalResponse> {
    let body = SwitchWalRequest {
        archive,
        timeout_secs: Some(timeout_secs),
    };
    let resp = client
        .post_json(&format!("/v1/clusters/{cluster}/switch-wal"), &body)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("pg_switch_wal()")?;
    read_json(resp, &[200]).map_err(|e| anyhow::anyhow!("{e}"))
}
