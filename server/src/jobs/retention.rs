//! Retention policies (DESIGN §5, §7.4): which backups a cluster keeps, and which WAL they and
//! the recovery window still need.
//!
//! Classification of `done` backups, newest first:
//! - `kept`: the operator pinned it (`wal-archive keep`); never removed by the policy and
//!   outside its counting;
//! - `redundancy N`: the N newest others are `valid`, the rest `obsolete`;
//! - `recovery window of D`: every backup that ended inside the window is `valid`, and so is
//!   the newest one that ended before the window started (it is where recovery to the window's
//!   start begins); older ones are `obsolete`;
//! - `minimum_redundancy` then turns the newest `obsolete` ones back into `valid` until that
//!   many `done` backups remain.
//!
//! Failed backups older than the oldest retained one are `obsolete` too.
//!
//! WAL: every segment (and `.partial`, `.backup` file) whose segment number is at least that of
//! the oldest `valid` (or in-progress) backup's begin segment is kept, on every timeline — the
//! simplest rule that keeps what any timeline reachable from a retained backup needs. So is each
//! kept backup's own begin..end range. `.history` files are always kept. With no `valid` backup,
//! no WAL is removed.
//!
//! Crash safety: the plan (backups marked `deleting`, WAL names in `retention_pending`) is
//! committed in one transaction before anything is removed. Backups: rows in one transaction,
//! then the objects nothing references (as `delete` does). WAL: objects first, then rows and plan
//! in one transaction. [`resume`] finishes a plan at start, before reconciliation, which would
//! otherwise re-index a planned object that still exists or report a row whose object is gone.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use pgwal::api::RetentionReport;
use pgwal::name::WalFileName;
use pgwal::SegmentSize;
use rusqlite::params;

use crate::backup::{self, catalog::BackupRow, BackupError, Backups};
use crate::catalog::{Catalog, CatalogError};
use crate::config::ClusterConfig;
use crate::wal::archive::Archive;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Redundancy(u32),
    RecoveryWindow(Duration),
}

impl Policy {
    /// `redundancy N` (N ≥ 1) or `recovery window of N day(s)|week(s)|month(s)` (a month is
    /// 31 days, so a window never comes out shorter than asked).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let words: Vec<String> = text
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let number = |w: &str| {
            w.parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("{w:?} is not a whole number of at least 1"))
        };
        match words.as_slice() {
            ["redundancy", n] => Ok(Policy::Redundancy(number(n)?)),
            ["recovery", "window", "of", n, unit] => {
                let n = u64::from(number(n)?);
                let days = match *unit {
                    "day" | "days" => 1,
                    "week" | "weeks" => 7,
                    "month" | "months" => 31,
                    other => {
                        return Err(format!("unknown unit {other:?}: use days, weeks or months"))
                    }
                };
                Ok(Policy::RecoveryWindow(Duration::from_secs(
                    n * days * 86_400,
                )))
            }
            _ => Err("use \"redundancy N\" or \"recovery window of N days|weeks|months\"".into()),
        }
    }
}

/// The classification of each backup by id (`valid`, `obsolete`, `kept`); backups in
/// progress, being deleted, or failed but recent have none.
pub fn classify(
    policy: &Policy,
    minimum_redundancy: u32,
    rows: &[BackupRow],
    now: SystemTime,
) -> HashMap<String, &'static str> {
    let mut rows: Vec<&BackupRow> = rows.iter().collect();
    rows.sort_by(|a, b| b.info.id.cmp(&a.info.id));
    let mut class: HashMap<String, &'static str> = HashMap::new();
    let done: Vec<&BackupRow> = rows
        .iter()
        .copied()
        .filter(|r| r.info.status == "done")
        .collect();
    let mut counted = 0u32;
    let mut window_anchor_found = false;
    for r in &done {
        if r.info.keep {
            class.insert(r.info.id.clone(), "kept");
            continue;
        }
        let valid = match policy {
            Policy::Redundancy(n) => counted < *n,
            Policy::RecoveryWindow(w) => {
                let start = now.checked_sub(*w).unwrap_or(SystemTime::UNIX_EPOCH);
                let t = r
                    .info
                    .end_time
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .or_else(|| humantime::parse_rfc3339_weak(&r.info.begin_time).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if t >= start {
                    true
                } else if !window_anchor_found {
                    window_anchor_found = true;
                    true
                } else {
                    false
                }
            }
        };
        counted += 1;
        class.insert(r.info.id.clone(), if valid { "valid" } else { "obsolete" });
    }
    // minimum_redundancy: done backups that are not obsolete, at least this many.
    let mut remaining = done
        .iter()
        .filter(|r| class.get(&r.info.id) != Some(&"obsolete"))
        .count();
    for r in &done {
        if remaining >= minimum_redundancy as usize {
            break;
        }
        if class.get(&r.info.id) == Some(&"obsolete") {
            class.insert(r.info.id.clone(), "valid");
            remaining += 1;
        }
    }
    let oldest_retained = done
        .iter()
        .filter(|r| class.get(&r.info.id) != Some(&"obsolete"))
        .map(|r| r.info.id.clone())
        .min();
    if let Some(oldest) = oldest_retained {
        for r in &rows {
            if r.info.status == "failed" && r.info.id < oldest {
                class.insert(r.info.id.clone(), "obsolete");
            }
        }
    }
    class
}

/// Fills `info.retention` of `rows` (all backups of one cluster) when it has a policy.
pub fn annotate(cfg: &ClusterConfig, rows: &mut [BackupRow], now: SystemTime) {
    let Some(policy) = cfg.retention.as_deref().and_then(|p| Policy::parse(p).ok()) else {
        return;
    };
    let class = classify(&policy, cfg.minimum_redundancy, rows, now);
    for r in rows {
        r.info.retention = class.get(&r.info.id).map(|c| c.to_string());
    }
}

/// What to remove.
struct Plan {
    report: RetentionReport,
    /// WAL rows to remove: (name, object key).
    wal: Vec<(String, String)>,
}

async fn plan(
    archive: &Archive,
    cfg: &ClusterConfig,
    cluster: &str,
    now: SystemTime,
    dry_run: bool,
) -> Result<Plan, BackupError> {
    let mut rows = backup::catalog::list(&archive.catalog, cluster).await?;
    let mut report = RetentionReport {
        cluster: cluster.to_string(),
        policy: cfg.retention.clone(),
        dry_run,
        ..Default::default()
    };
    let Some(policy) = cfg.retention.as_deref() else {
        report.backups = rows.into_iter().map(|r| r.info).collect();
        return Ok(Plan {
            report,
            wal: Vec::new(),
        });
    };
    let policy = Policy::parse(policy).map_err(BackupError::BadRequest)?;
    let class = classify(&policy, cfg.minimum_redundancy, &rows, now);
    for r in &mut rows {
        r.info.retention = class.get(&r.info.id).map(|c| c.to_string());
    }
    report.removed_backups = rows
        .iter()
        .filter(|r| r.info.retention.as_deref() == Some("obsolete"))
        .map(|r| r.info.id.clone())
        .collect();
    report.removed_backups.sort();

    let size = archive
        .catalog
        .cluster(cluster)
        .await?
        .and_then(|c| c.segment_size)
        .and_then(|z| SegmentSize::new(z).ok());
    let mut wal = Vec::new();
    if let Some(size) = size {
        let segno = |name: Option<&str>| -> Option<(u32, u64)> {
            let n: WalFileName = name?.parse().ok()?;
            Some((n.timeline(), n.segno(size)?))
        };
        // The oldest begin segment of a valid or in-progress backup.
        let cutoff = rows
            .iter()
            .filter(|r| {
                r.info.retention.as_deref() == Some("valid")
                    || matches!(r.info.status.as_str(), "running" | "waiting_for_wal")
            })
            .filter_map(|r| segno(r.info.begin_wal.as_deref()))
            .min_by_key(|(_, n)| *n);
        let any_valid = rows
            .iter()
            .any(|r| r.info.retention.as_deref() == Some("valid"));
        let kept: Vec<(u64, u64)> = rows
            .iter()
            .filter(|r| r.info.retention.as_deref() == Some("kept"))
            .filter_map(|r| {
                let (_, a) = segno(r.info.begin_wal.as_deref())?;
                let (_, b) = segno(r.info.end_wal.as_deref())?;
                Some((a, b))
            })
            .collect();
        if let (Some((tli, cutoff)), true) = (cutoff, any_valid) {
            report.wal_kept_from = Some(WalFileName::segment(tli, cutoff, size).to_string());
            for w in archive.catalog.list_wal(cluster).await? {
                let Ok(name) = w.name.parse::<WalFileName>() else {
                    continue;
                };
                if matches!(name, WalFileName::History { .. }) {
                    continue;
                }
                let Some(n) = name.segno(size) else { continue };
                if n >= cutoff || kept.iter().any(|(a, b)| (*a..=*b).contains(&n)) {
                    continue;
                }
                wal.push((w.name, w.object_key));
            }
        }
    }
    report.removed_wal = wal.iter().map(|(n, _)| n.clone()).collect();
    report.backups = rows.into_iter().map(|r| r.info).collect();
    Ok(Plan { report, wal })
}

/// Applies the cluster's policy now (or, with `dry_run`, only says what it would remove).
pub async fn apply(
    archive: &Archive,
    backups: &Backups,
    cfg: &ClusterConfig,
    cluster: &str,
    dry_run: bool,
) -> Result<RetentionReport, BackupError> {
    let now = backups.now();
    if dry_run {
        return Ok(plan(archive, cfg, cluster, now, true).await?.report);
    }
    // Decide and record under the lock that keep and delete take: a keep set while the plan
    // is made is either seen by it or refused (the backup is then `deleting`).
    let lock = backups.cluster_lock(cluster);
    let guard = lock.lock().await;
    let plan = plan(archive, cfg, cluster, now, false).await?;
    if plan.report.removed_backups.is_empty() && plan.report.removed_wal.is_empty() {
        return Ok(plan.report);
    }
    backups.pause_point("retention.planned").await;
    let wal: Vec<String> = plan.wal.iter().map(|(n, _)| n.clone()).collect();
    // The plan goes to storage first, so that a catalog rebuilt from storage finishes it too.
    crate::meta::put(
        &*archive.blobs,
        &crate::meta::retention_key(cluster),
        &crate::meta::RetentionPlanRecord {
            backups: plan.report.removed_backups.clone(),
            wal: wal.clone(),
        },
    )
    .await
    .map_err(|e| BackupError::Storage(crate::storage::StorageError::Io(e.to_string())))?;
    record_plan(
        &archive.catalog,
        cluster,
        plan.report.removed_backups.clone(),
        wal,
    )
    .await?;
    drop(guard);
    crate::crash::point("retention.planned");
    for id in &plan.report.removed_backups {
        backup::remove_marked(archive, backups, cluster, id).await?;
    }
    crate::crash::point("retention.backups_removed");
    finish_wal(archive, cluster).await?;
    forget_plan(archive, cluster).await;
    tracing::info!(
        cluster,
        backups = plan.report.removed_backups.len(),
        wal = plan.report.removed_wal.len(),
        kept_from = plan.report.wal_kept_from.as_deref().unwrap_or("-"),
        "retention applied"
    );
    crate::metrics::record_retention(
        cluster,
        plan.report.removed_backups.len() as u64,
        plan.report.removed_wal.len() as u64,
    );
    Ok(plan.report)
}

/// The plan, in one transaction: backups marked `deleting`, WAL names pending.
pub(crate) async fn record_plan(
    cat: &Catalog,
    cluster: &str,
    backups: Vec<String>,
    wal: Vec<String>,
) -> Result<(), CatalogError> {
    let cluster = cluster.to_string();
    cat.call(move |c| {
        let tx = c.transaction()?;
        for id in &backups {
            tx.execute(
                "UPDATE backups SET deleting = 1 WHERE cluster = ?1 AND id = ?2",
                params![cluster, id],
            )?;
        }
        for name in &wal {
            tx.execute(
                "INSERT OR IGNORE INTO retention_pending (cluster, name) VALUES (?1, ?2)",
                params![cluster, name],
            )?;
        }
        tx.commit()?;
        Ok(())
    })
    .await
}

/// Removes the pending WAL of `cluster`: objects first, then rows and plan in one transaction.
async fn finish_wal(archive: &Archive, cluster: &str) -> Result<usize, BackupError> {
    let c2 = cluster.to_string();
    let pending: Vec<(String, Option<String>)> = archive
        .catalog
        .call(move |c| {
            let mut stmt = c.prepare(
                "SELECT p.name, w.object_key FROM retention_pending p
                 LEFT JOIN wal_files w ON w.cluster = p.cluster AND w.name = p.name
                 WHERE p.cluster = ?1",
            )?;
            let rows = stmt.query_map(params![c2], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for (name, key) in &pending {
        let key = match key {
            Some(k) => k.clone(),
            None => match name.parse::<WalFileName>() {
                Ok(n) => crate::wal::archive::object_key(cluster, &n),
                Err(_) => continue,
            },
        };
        archive.blobs.delete(&key).await?;
    }
    crate::crash::point("retention.wal_objects_removed");
    let c2 = cluster.to_string();
    let names: Vec<String> = pending.into_iter().map(|(n, _)| n).collect();
    let n = names.len();
    archive
        .catalog
        .call(move |c| {
            let tx = c.transaction()?;
            for name in &names {
                crate::catalog::delete_wal_row(&tx, &c2, name)?;
                tx.execute(
                    "DELETE FROM retention_pending WHERE cluster = ?1 AND name = ?2",
                    params![c2, name],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(n)
}

/// At start, before reconciliation: finishes a retention run that was interrupted.
pub async fn resume(archive: &Archive) -> Result<(), BackupError> {
    let backups = Backups::default();
    for (cluster, id) in backup::catalog::deleting(&archive.catalog).await? {
        tracing::warn!(cluster = %cluster, backup = %id, "finishing the removal of a backup an interrupted retention run had started");
        backup::remove_marked(archive, &backups, &cluster, &id).await?;
    }
    let clusters: Vec<String> = archive
        .catalog
        .call(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT cluster FROM retention_pending")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for cluster in clusters {
        let n = finish_wal(archive, &cluster).await?;
        tracing::warn!(cluster = %cluster, files = n, "finished removing WAL an interrupted retention run had planned");
    }
    // Every plan is finished now: their records go.
    for meta in archive
        .blobs
        .list("meta/retention/")
        .await
        .map_err(BackupError::Storage)?
    {
        if let Err(e) = archive.blobs.delete(&meta.key).await {
            tracing::warn!(key = %meta.key, "cannot remove a finished retention plan's record: {e}");
        }
    }
    Ok(())
}

/// Removes the record of a finished plan (logged if it cannot be: the next start retries, and
/// finishing a finished plan removes nothing).
async fn forget_plan(archive: &Archive, cluster: &str) {
    if let Err(e) = crate::meta::remove(&*archive.blobs, &crate::meta::retention_key(cluster)).await
    {
        tracing::warn!(cluster, "cannot remove the retention plan's record: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwal::api::BackupInfo;

    fn row(id: &str, status: &str, keep: bool, end: &str) -> BackupRow {
        BackupRow {
            info: BackupInfo {
                id: id.into(),
                status: status.into(),
                keep,
                begin_time: end.into(),
                end_time: Some(end.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn parses_policies() {
        assert_eq!(Policy::parse("redundancy 3"), Ok(Policy::Redundancy(3)));
        assert_eq!(
            Policy::parse("Recovery Window of 2 weeks"),
            Ok(Policy::RecoveryWindow(Duration::from_secs(14 * 86_400)))
        );
        for bad in [
            "redundancy 0",
            "redundancy",
            "recovery window of 3 years",
            "keep all",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redundancy_keep_and_minimum() {
        let rows = vec![
            row("20260104T000000", "done", false, "2026-01-04T00:00:00Z"),
            row("20260103T120000", "failed", false, "2026-01-03T12:00:00Z"),
            row("20260103T000000", "done", false, "2026-01-03T00:00:00Z"),
            row("20260102T000000", "done", true, "2026-01-02T00:00:00Z"),
            row("20260101T120000", "failed", false, "2026-01-01T12:00:00Z"),
            row("20260101T000000", "done", false, "2026-01-01T00:00:00Z"),
        ];
        let c = classify(&Policy::Redundancy(1), 1, &rows, SystemTime::now());
        assert_eq!(c["20260104T000000"], "valid");
        assert_eq!(c["20260103T000000"], "obsolete");
        assert_eq!(c["20260102T000000"], "kept");
        assert_eq!(c["20260101T000000"], "obsolete");
        assert_eq!(
            c["20260101T120000"], "obsolete",
            "older than the oldest retained"
        );
        assert_eq!(
            c.get("20260103T120000"),
            None,
            "newer than the oldest retained"
        );
        let c = classify(&Policy::Redundancy(1), 3, &rows, SystemTime::now());
        assert_eq!(c["20260103T000000"], "valid");
        assert_eq!(c["20260101T000000"], "obsolete");
        assert_eq!(c["20260101T120000"], "obsolete");
    }

    #[test]
    fn recovery_window_keeps_the_newest_before_it() {
        let rows = vec![
            row("20260110T000000", "done", false, "2026-01-10T00:00:00Z"),
            row("20260105T000000", "done", false, "2026-01-05T00:00:00Z"),
            row("20260103T000000", "done", false, "2026-01-03T00:00:00Z"),
            row("20260101T000000", "done", false, "2026-01-01T00:00:00Z"),
        ];
        let now = humantime::parse_rfc3339("2026-01-11T00:00:00Z").expect("time");
        let c = classify(
            &Policy::RecoveryWindow(Duration::from_secs(7 * 86_400)),
            1,
            &rows,
            now,
        );
        assert_eq!(c["20260110T000000"], "valid");
        assert_eq!(c["20260105T000000"], "valid");
        assert_eq!(
            c["20260103T000000"], "valid",
            "the newest before the window"
        );
        assert_eq!(c["20260101T000000"], "obsolete");
    }
}
