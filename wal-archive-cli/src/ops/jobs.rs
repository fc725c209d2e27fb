//! Operator commands for running unattended: `retention`, `jobs`, `switch-wal`.

use anyhow::{Context, Result};
use pgwal::api::{JobRun, RetentionReport, SwitchWalRequest, SwitchWalResponse};

use crate::client::{read_json, Client};

/// `wal-archive retention --cluster C [--dry-run]`.
pub fn retention(client: &Client, cluster: &str, dry_run: bool) -> Result<RetentionReport> {
    let path = format!("/v1/clusters/{cluster}/retention?dry_run={dry_run}");
    let resp = client
        .post_json(&path, &serde_json::json!({}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    read_json(resp, &[200]).map_err(|e| anyhow::anyhow!("{e}"))
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
