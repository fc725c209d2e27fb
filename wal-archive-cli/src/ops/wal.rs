//! `wal-archive wal`: the archive's timelines, contiguous ranges and gaps.

use pgwal::api::WalSummary;

use crate::client::{status_failure, Client, Failure};

/// The server's summary of the cluster's WAL (`GET /v1/clusters/{cluster}/timelines`).
pub type WalReport = WalSummary;

pub fn report(client: &Client, cluster: &str) -> Result<WalReport, Failure> {
    let mut resp = client.get(&format!("/v1/clusters/{cluster}/timelines"), false)?;
    if resp.status().as_u16() != 200 {
        return Err(status_failure(resp));
    }
    resp.body_mut()
        .with_config()
        .limit(1 << 30)
        .read_json()
        .map_err(|e| Failure::Fatal(format!("unexpected answer from the server: {e}")))
}

pub fn print_human(r: &WalReport) {
    println!(
        "cluster {}  system {}  segment size {}",
        r.cluster,
        r.system_identifier.as_deref().unwrap_or("(not bound yet)"),
        r.segment_size
            .map(|z| format!("{} MiB", z >> 20))
            .unwrap_or_else(|| "?".into())
    );
    println!("{} files archived", r.files);
    for t in &r.timelines {
        println!(
            "timeline {}: {} segments{}",
            t.tli,
            t.segments,
            if t.has_history {
                ", history file present"
            } else {
                ""
            }
        );
        for (a, b) in &t.ranges {
            println!("  range {a} .. {b}");
        }
        for (a, b) in &t.gaps {
            println!("  GAP   {a} .. {b}");
        }
    }
    for m in &r.missing {
        println!("MISSING from storage (cataloged, not served): {m}");
    }
    if r.missing_files > r.missing.len() as u64 {
        println!(
            "MISSING from storage: {} files in all (the first {} are listed above)",
            r.missing_files,
            r.missing.len()
        );
    }
}
