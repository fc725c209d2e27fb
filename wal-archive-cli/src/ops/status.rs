//! `wal-archive status [--cluster C]`: what the server's status page shows, as text, or as the
//! page's own JSON (`GET /v1/status`) with `--json`. Exit 0 when every check passes, 1 when one
//! fails or the server cannot be asked.

use pgwal::api::StatusReport;

use crate::client::{status_failure, Client, Failure};
use crate::ops::progress::human_bytes;

pub fn report(client: &Client, cluster: Option<&str>) -> Result<StatusReport, Failure> {
    let path = match cluster {
        Some(c) => format!("/v1/clusters/{c}/status"),
        None => "/v1/status".to_string(),
    };
    let mut resp = client.get(&path, false)?;
    if resp.status().as_u16() != 200 {
        return Err(status_failure(resp));
    }
    resp.body_mut()
        .with_config()
        .limit(64 << 20)
        .read_json()
        .map_err(|e| Failure::Fatal(format!("unexpected answer from the server: {e}")))
}

/// True when every check of every cluster passes.
pub fn all_ok(r: &StatusReport) -> bool {
    r.clusters.iter().all(|c| c.checks.iter().all(|k| k.ok))
}

fn age_text(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn print_human(r: &StatusReport) {
    let st = &r.storage;
    let free = match (st.free_bytes, st.total_bytes) {
        (Some(f), Some(t)) => format!(", {} free of {}", human_bytes(f), human_bytes(t)),
        _ => String::new(),
    };
    println!(
        "storage {} {}: {} used{free}",
        st.kind,
        st.location,
        human_bytes(st.used_bytes)
    );
    for c in &r.clusters {
        let failed: Vec<_> = c.checks.iter().filter(|k| !k.ok).collect();
        println!();
        println!(
            "cluster {} ({})",
            c.cluster,
            if failed.is_empty() {
                format!("all {} checks pass", c.checks.len())
            } else {
                format!("{} checks FAILED", failed.len())
            }
        );
        let w = &c.wal;
        match (&w.last_segment, w.last_archived_age_seconds) {
            (Some(s), Some(a)) => println!("  last WAL archived: {s}, {} ago", age_text(a)),
            _ => println!("  last WAL archived: none"),
        }
        println!(
            "  WAL: {} files, {} ({} stored); gaps: {}",
            w.files,
            human_bytes(w.bytes),
            human_bytes(w.stored_bytes),
            if w.gaps.is_empty() {
                "none".to_string()
            } else {
                w.gaps.join(", ")
            }
        );
        let last_day: u64 = w.hours.iter().rev().take(24).map(|h| h.bytes).sum();
        println!(
            "  WAL archived in the last 24 hours: {}",
            human_bytes(last_day)
        );
        if let Some(rcv) = &c.receiver {
            println!(
                "  receiver: {} (lag {})",
                rcv.state,
                rcv.lag_bytes.map_or("?".into(), human_bytes)
            );
        }
        if let Some(pg) = &c.postgres {
            if let Some(e) = &pg.error {
                println!("  PostgreSQL: {e}");
            }
            if let Some(a) = &pg.archiver {
                println!(
                    "  archiver: {} archived, {} failed{}",
                    a.archived_count,
                    a.failed_count,
                    if a.failing { " (FAILING now)" } else { "" }
                );
            }
            for s in &pg.slots {
                println!(
                    "  slot {}: {}, wal_status {}, retains {}",
                    s.slot_name,
                    if s.active { "active" } else { "inactive" },
                    s.wal_status.as_deref().unwrap_or("none"),
                    s.retained_bytes.map_or("?".into(), human_bytes)
                );
            }
            for s in &pg.standbys {
                let lag = |v: Option<u64>| v.map_or("?".into(), human_bytes);
                println!(
                    "  standby {} ({}, {}): sent {} / flush {} / replay {} behind",
                    s.application_name,
                    s.client,
                    s.state,
                    lag(s.sent_lag_bytes),
                    lag(s.flush_lag_bytes),
                    lag(s.replay_lag_bytes)
                );
            }
        }
        println!(
            "  backups: {} ({} stored)",
            c.backups.len(),
            human_bytes(c.backup_stored_bytes)
        );
        for b in c.backups.iter().take(5) {
            println!(
                "    {} {} {} took {} {}{} drill: {}",
                b.id,
                b.status,
                human_bytes(b.size_bytes),
                b.duration_seconds.map_or("?".into(), age_text),
                b.retention.as_deref().unwrap_or("-"),
                if b.keep { " kept" } else { "" },
                b.last_drill
                    .as_ref()
                    .map_or("no drill".to_string(), |d| d.result.clone())
            );
        }
        for k in failed {
            match &k.hint {
                Some(h) => println!("  {}: FAILED ({}) — fix: {h}", k.name, k.message),
                None => println!("  {}: FAILED ({})", k.name, k.message),
            }
        }
    }
}
