//! `wal-archive drill`: a recovery drill on the server host (restore a backup into scratch,
//! replay the archive in a throwaway PostgreSQL, measure, clean up). The server runs it as a
//! job; this command starts it and follows it, with progress on a terminal.

use anyhow::{bail, Result};
use pgwal::api::{DrillReport, DrillRequest, JobReport, JobRun};

use crate::args::DrillArgs;
use crate::client::{read_json, Client};
use crate::ops::progress::human_bytes;

/// `POST /v1/clusters/{cluster}/drills`, followed to its end.
pub fn drill(client: &Client, args: &DrillArgs, json: bool) -> Result<DrillReport> {
    let backup = crate::ops::backup::resolve(client, &args.cluster, &args.backup)?;
    let request = DrillRequest {
        backup: Some(backup.clone()),
        target_time: args.target_time.clone(),
        target_lsn: args.target_lsn.clone(),
        target_xid: args.target_xid.clone(),
        target_name: args.target_name.clone(),
        target_immediate: args.target_immediate,
        target_timeline: args.target_timeline.clone(),
    };
    // Not retried: a lost answer would start a second drill, which the server refuses (409).
    let resp = client.post_json(&format!("/v1/clusters/{}/drills", args.cluster), &request)?;
    let run: JobRun = read_json(resp, &[202])?;
    let run = crate::ops::jobs::follow(client, run, &format!("drill of {backup}"), json)?;
    match run.report {
        Some(JobReport::Drill(r)) => Ok(*r),
        _ => bail!(
            "drill of backup {backup} {}: {}",
            run.result,
            run.error.as_deref().unwrap_or("no report")
        ),
    }
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.1} s"))
}

/// A drill's report, one fact per line.
pub fn print_report(r: &DrillReport) {
    let verdict = match r.result.as_str() {
        "ok" => "OK".to_string(),
        other => other.to_uppercase(),
    };
    println!(
        "drill {} of backup {} (cluster {}): {verdict}",
        r.id, r.backup_id, r.cluster
    );
    if let Some(e) = &r.error {
        println!("  error:         {e}");
    }
    println!("  target:        {}", r.target);
    println!(
        "  postgresql:    {}",
        r.postgres_version.as_deref().unwrap_or("-")
    );
    println!(
        "  restored:      {} in {} files",
        human_bytes(r.restored_bytes),
        r.restored_files
    );
    println!(
        "  wal replayed:  {} files, {} ({} .. {})",
        r.wal_files,
        human_bytes(r.wal_bytes),
        r.wal_first.as_deref().unwrap_or("-"),
        r.wal_last.as_deref().unwrap_or("-")
    );
    println!(
        "  lsn:           reached {} (expected {})",
        r.reached_lsn.as_deref().unwrap_or("-"),
        r.expected_lsn.as_deref().unwrap_or("-")
    );
    println!("  restore:       {}", secs(r.restore_seconds));
    println!("  consistent:    {}", secs(r.consistent_seconds));
    println!(
        "  recovered:     {} (the time to recover)",
        secs(r.recovery_seconds)
    );
    println!("  total:         {}", secs(r.duration_seconds));
    if let (Some(rec), Some(n)) = (r.in_recovery, r.pg_class_count) {
        println!("  sanity:        pg_is_in_recovery() = {rec}, {n} rows in pg_class");
    }
}
