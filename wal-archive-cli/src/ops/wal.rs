//! `wal-archive wal`: the archive's timelines, contiguous ranges and gaps.

use pgwal::api::WalListing;
use pgwal::name::WalFileName;
use pgwal::ranges::{summarize, TimelineSummary};
use pgwal::segment::SegmentSize;
use serde::Serialize;

use crate::client::{status_failure, Client, Failure};

#[derive(Serialize)]
pub struct WalReport {
    pub cluster: String,
    pub system_identifier: Option<String>,
    pub segment_size: Option<u64>,
    pub files: usize,
    pub timelines: Vec<TimelineSummary>,
    pub missing: Vec<String>,
}

pub fn report(client: &Client, cluster: &str) -> Result<WalReport, Failure> {
    let mut resp = client.get(&format!("/v1/clusters/{cluster}/wal"), false)?;
    if resp.status().as_u16() != 200 {
        return Err(status_failure(resp));
    }
    let listing: WalListing = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_json()
        .map_err(|e| Failure::Fatal(format!("unexpected answer from the server: {e}")))?;
    let names: Vec<WalFileName> = listing
        .files
        .iter()
        .filter_map(|f| f.name.parse().ok())
        .collect();
    let size = listing
        .segment_size
        .and_then(|z| SegmentSize::new(z).ok())
        .unwrap_or(SegmentSize::DEFAULT);
    Ok(WalReport {
        cluster: listing.cluster,
        system_identifier: listing.system_identifier,
        segment_size: listing.segment_size,
        files: listing.files.len(),
        timelines: summarize(names.iter(), size),
        missing: listing.missing,
    })
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
}
