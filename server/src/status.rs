//! The status report: what the status page (`GET /`), `GET /v1/status` and `wal-archive status`
//! show, built from the domain alone (this module never imports the HTTP layer).
//!
//! Per cluster: the WAL archive (newest segment and its age, timelines and gaps from the
//! `wal_timelines` aggregate, WAL per hour from `wal_hours`), the receiver, what `conninfo`
//! reads from PostgreSQL (`pg_stat_archiver`, slots, standbys), the backups with their
//! retention class, keep flag, sizes, duration and newest drill, and every `check` line. The
//! storage's used and free bytes for all of them.
//!
//! Cost: aggregates and primary-key lookups; WAL names are listed only for a timeline whose
//! aggregate shows missing segments, to say where. The clusters' checks run concurrently, each
//! bounded as `check` is.

use std::time::{Duration, SystemTime};

use pgwal::api::{
    BackupStatus, ClusterStatus, StatusReport, StorageStatus, TimelineStatus, WalArchiveStatus,
    WalHour,
};
use pgwal::name::WalFileName;
use pgwal::SegmentSize;

use crate::catalog::{CatalogError, TimelineStats};
use crate::state::AppState;

/// Hours of WAL volume shown.
pub const WAL_HOURS: u64 = 48;

/// Every cluster the archive knows: in the catalog or in the configuration.
pub async fn known_clusters(state: &AppState) -> Result<Vec<String>, CatalogError> {
    let mut names = state.archive.catalog.cluster_names().await?;
    names.extend(state.config.clusters.keys().cloned());
    names.sort();
    names.dedup();
    Ok(names)
}

/// The report of `clusters` (those the caller may read).
pub async fn report(state: &AppState, clusters: &[String]) -> Result<StatusReport, CatalogError> {
    let now = state.backups.now();
    let built = futures::future::join_all(clusters.iter().map(|c| cluster_status(state, c, now)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let used_bytes = built
        .iter()
        .map(|c| c.wal.stored_bytes + c.backup_stored_bytes)
        .sum();
    Ok(StatusReport {
        generated_at: crate::catalog::rfc3339(now),
        version: env!("CARGO_PKG_VERSION").to_string(),
        storage: storage_status(state, used_bytes),
        clusters: built,
    })
}

fn storage_status(state: &AppState, used_bytes: u64) -> StorageStatus {
    let cfg = &state.config;
    let (location, fs) = match cfg.storage.kind.as_str() {
        "s3" => (
            format!(
                "s3://{}/{}",
                cfg.storage.bucket.as_deref().unwrap_or_default(),
                cfg.storage.prefix.as_deref().unwrap_or_default()
            ),
            None,
        ),
        _ => (
            cfg.data_dir.display().to_string(),
            rustix::fs::statvfs(&cfg.data_dir).ok(),
        ),
    };
    StorageStatus {
        kind: cfg.storage.kind.clone(),
        location,
        used_bytes,
        free_bytes: fs
            .as_ref()
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize)),
        total_bytes: fs
            .as_ref()
            .map(|st| st.f_blocks.saturating_mul(st.f_frsize)),
    }
}

async fn cluster_status(
    state: &AppState,
    cluster: &str,
    now: SystemTime,
) -> Result<ClusterStatus, CatalogError> {
    let cat = &state.archive.catalog;
    let cfg = state.config.cluster(cluster);
    let row = cat.cluster(cluster).await?;
    let size = row
        .as_ref()
        .and_then(|r| r.segment_size)
        .and_then(|z| SegmentSize::new(z).ok());

    let (checks, postgres) = crate::jobs::checks::run(state, cluster).await?;

    let stats = cat.cluster_stats(cluster).await?;
    let timelines = cat.wal_timelines(cluster).await?;
    let since = SystemTime::checked_sub(&now, Duration::from_secs((WAL_HOURS - 1) * 3600))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since_hour: String = crate::catalog::rfc3339(since).chars().take(13).collect();
    let hours = cat
        .wal_hours(cluster, &since_hour)
        .await?
        .into_iter()
        .map(|h| WalHour {
            hour: h.hour,
            files: h.files,
            bytes: h.bytes,
        })
        .collect();
    let timelines: Vec<TimelineStatus> = timelines
        .iter()
        .map(|t| TimelineStatus {
            timeline: t.timeline,
            first: t.first.clone(),
            last: t.last.clone(),
            segments: t.segments,
            missing_segments: missing_segments(t, size),
        })
        .collect();
    let gaps = if timelines.iter().any(|t| t.missing_segments > 0) {
        gaps(state, cluster).await?
    } else {
        Vec::new()
    };
    let last_archived_at = stats.as_ref().and_then(|s| s.last_archived_at.clone());
    let wal = WalArchiveStatus {
        files: stats.as_ref().map_or(0, |s| s.files),
        bytes: stats.as_ref().map_or(0, |s| s.bytes),
        stored_bytes: stats.as_ref().map_or(0, |s| s.stored_bytes),
        last_segment: stats.as_ref().and_then(|s| s.last_segment.clone()),
        last_archived_age_seconds: last_archived_at
            .as_deref()
            .and_then(|t| age(t, now))
            .map(|d| d.as_secs()),
        last_archived_at,
        missing: stats.as_ref().map_or(0, |s| s.missing),
        timelines,
        gaps,
        hours,
    };

    let mut rows = crate::backup::catalog::list(cat, cluster).await?;
    crate::jobs::retention::annotate(&cfg, &mut rows, now);
    let drills = crate::jobs::drill::catalog::last_per_backup(cat, cluster).await?;
    let backup_stored_bytes = rows.iter().map(|r| r.info.stored_bytes).sum();
    let backups = rows
        .into_iter()
        .map(|r| {
            let i = r.info;
            let duration_seconds = i.end_time.as_deref().and_then(|end| {
                let b = humantime::parse_rfc3339_weak(&i.begin_time).ok()?;
                let e = humantime::parse_rfc3339_weak(end).ok()?;
                e.duration_since(b).ok().map(|d| d.as_secs())
            });
            BackupStatus {
                last_drill: drills.get(&i.id).cloned(),
                id: i.id,
                status: i.status,
                timeline: i.timeline,
                begin_time: i.begin_time,
                end_time: i.end_time,
                duration_seconds,
                size_bytes: i.size_bytes,
                stored_bytes: i.stored_bytes,
                retention: i.retention,
                keep: i.keep,
            }
        })
        .collect();

    Ok(ClusterStatus {
        cluster: cluster.to_string(),
        system_identifier: row.and_then(|r| r.system_identifier).map(|s| s.to_string()),
        wal,
        receiver: cfg.streaming.then(|| state.receiver_status(cluster)),
        postgres,
        backups,
        backup_stored_bytes,
        checks,
    })
}

/// How long ago `t` (RFC 3339) was.
fn age(t: &str, now: SystemTime) -> Option<Duration> {
    let t = humantime::parse_rfc3339_weak(t).ok()?;
    Some(now.duration_since(t).unwrap_or_default())
}

/// Segments between a timeline's first and last that the archive does not hold.
fn missing_segments(t: &TimelineStats, size: Option<SegmentSize>) -> u64 {
    let segno = |name: &str| size.and_then(|z| name.parse::<WalFileName>().ok()?.segno(z));
    match (segno(&t.first), segno(&t.last)) {
        (Some(a), Some(b)) if b >= a => (b - a + 1).saturating_sub(t.segments),
        _ => 0,
    }
}

/// The gaps inside each timeline, `FIRST .. LAST` of each missing run (from the catalog's
/// ranges, not a listing).
async fn gaps(state: &AppState, cluster: &str) -> Result<Vec<String>, CatalogError> {
    Ok(state
        .archive
        .catalog
        .wal_summary(cluster)
        .await?
        .timelines
        .iter()
        .flat_map(|t| t.gaps.iter().map(|(a, b)| format!("{a} .. {b}")))
        .collect())
}
