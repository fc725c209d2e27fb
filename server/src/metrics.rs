//! Prometheus metrics (`GET /metrics`). Counters and histograms are recorded where the work
//! happens (`api.rs`); gauges describing state (last archived WAL, storage bytes, receiver lag)
//! are computed from the catalog and the receivers at each scrape, so they are never stale.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from a cached 200 to a slow 1 GiB upload.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            // Gauges are all set at scrape time; one not set at the last scrape (the name of an
            // older segment in `wal_archive_last_archived_info`) disappears instead of lingering.
            let recorder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(1)))
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// A finished `PUT` of a WAL file. `outcome`: `stored`, `already_stored`, or an error kind.
pub fn record_push(cluster: &str, outcome: &str, bytes: u64, elapsed: Duration) {
    let labels = [
        ("cluster", cluster.to_string()),
        ("outcome", outcome.to_string()),
    ];
    metrics::counter!("wal_archive_push_total", &labels).increment(1);
    if outcome == "stored" || outcome == "already_stored" {
        metrics::counter!("wal_archive_push_bytes_total", "cluster" => cluster.to_string())
            .increment(bytes);
    } else {
        metrics::counter!("wal_archive_push_errors_total", &labels).increment(1);
    }
    metrics::histogram!("wal_archive_push_duration_seconds", "cluster" => cluster.to_string())
        .record(elapsed.as_secs_f64());
}

/// A finished `GET` of a WAL file. `outcome`: `served`, `not_found`, or an error kind.
pub fn record_fetch(cluster: &str, outcome: &str, bytes: u64, elapsed: Duration) {
    let labels = [
        ("cluster", cluster.to_string()),
        ("outcome", outcome.to_string()),
    ];
    metrics::counter!("wal_archive_fetch_total", &labels).increment(1);
    match outcome {
        "served" => {
            metrics::counter!("wal_archive_fetch_bytes_total", "cluster" => cluster.to_string())
                .increment(bytes)
        }
        "not_found" => {}
        _ => metrics::counter!("wal_archive_fetch_errors_total", &labels).increment(1),
    }
    metrics::histogram!("wal_archive_fetch_duration_seconds", "cluster" => cluster.to_string())
        .record(elapsed.as_secs_f64());
}

/// State gauges of one cluster, set at scrape time.
pub struct ClusterGauges<'a> {
    pub cluster: &'a str,
    pub wal_files: u64,
    pub wal_bytes: u64,
    pub stored_bytes: u64,
    pub last_archived: Option<(&'a str, f64)>,
    pub receiver_lag_bytes: Option<u64>,
    pub receiver_streaming: Option<bool>,
}

pub fn set_cluster_gauges(g: &ClusterGauges<'_>) {
    let c = g.cluster.to_string();
    metrics::gauge!("wal_archive_wal_files", "cluster" => c.clone()).set(g.wal_files as f64);
    metrics::gauge!("wal_archive_wal_bytes", "cluster" => c.clone()).set(g.wal_bytes as f64);
    metrics::gauge!("wal_archive_storage_bytes", "cluster" => c.clone()).set(g.stored_bytes as f64);
    if let Some((name, at)) = g.last_archived {
        metrics::gauge!("wal_archive_last_archived_timestamp_seconds", "cluster" => c.clone())
            .set(at);
        metrics::gauge!(
            "wal_archive_last_archived_info",
            "cluster" => c.clone(),
            "wal" => name.to_string()
        )
        .set(1.0);
    }
    if let Some(lag) = g.receiver_lag_bytes {
        metrics::gauge!("wal_archive_receiver_lag_bytes", "cluster" => c.clone()).set(lag as f64);
    }
    if let Some(streaming) = g.receiver_streaming {
        metrics::gauge!("wal_archive_receiver_streaming", "cluster" => c).set(if streaming {
            1.0
        } else {
            0.0
        });
    }
}

/// A finished job run (`kind`: `backup`, `retention`; `result`: `ok`, `failed`, `skipped`).
pub fn record_job(cluster: &str, kind: &str, result: &str) {
    metrics::counter!(
        "wal_archive_jobs_total",
        "cluster" => cluster.to_string(),
        "kind" => kind.to_string(),
        "result" => result.to_string()
    )
    .increment(1);
}

/// A retention run that removed something.
pub fn record_retention(cluster: &str, backups: u64, wal_files: u64) {
    let c = cluster.to_string();
    metrics::counter!("wal_archive_retention_runs_total", "cluster" => c.clone()).increment(1);
    metrics::counter!("wal_archive_retention_removed_backups_total", "cluster" => c.clone())
        .increment(backups);
    metrics::counter!("wal_archive_retention_removed_wal_files_total", "cluster" => c)
        .increment(wal_files);
}

/// Backup state gauges of one cluster, set at scrape time.
pub struct BackupGauges<'a> {
    pub cluster: &'a str,
    /// Backups per status.
    pub by_status: &'a [(String, u64)],
    /// Seconds since the newest done backup ended.
    pub newest_done_age_seconds: Option<f64>,
    /// `size_bytes` and `stored_bytes` of the newest done backup.
    pub newest_done_sizes: Option<(u64, u64)>,
}

pub fn set_backup_gauges(g: &BackupGauges<'_>) {
    let c = g.cluster.to_string();
    for (status, n) in g.by_status {
        metrics::gauge!("wal_archive_backups", "cluster" => c.clone(), "status" => status.clone())
            .set(*n as f64);
    }
    if let Some(age) = g.newest_done_age_seconds {
        metrics::gauge!("wal_archive_last_backup_age_seconds", "cluster" => c.clone()).set(age);
    }
    if let Some((size, stored)) = g.newest_done_sizes {
        metrics::gauge!("wal_archive_last_backup_size_bytes", "cluster" => c.clone())
            .set(size as f64);
        metrics::gauge!("wal_archive_last_backup_stored_bytes", "cluster" => c).set(stored as f64);
    }
}

/// What `/metrics` read from a cluster's primary: its physical slots and standbys, or why it
/// could not (`wal_archive_postgres_up` 0).
pub fn set_replication_gauges(
    cluster: &str,
    seen: &Result<(Vec<pgwal::api::SlotStatus>, Vec<pgwal::api::StandbyStatus>), String>,
) {
    let c = cluster.to_string();
    metrics::gauge!("wal_archive_postgres_up", "cluster" => c.clone()).set(if seen.is_ok() {
        1.0
    } else {
        0.0
    });
    let Ok((slots, standbys)) = seen else {
        return;
    };
    for s in slots {
        let labels = [("cluster", c.clone()), ("slot", s.slot_name.clone())];
        metrics::gauge!("wal_archive_slot_active", &labels).set(if s.active { 1.0 } else { 0.0 });
        if let Some(b) = s.retained_bytes {
            metrics::gauge!("wal_archive_slot_retained_bytes", &labels).set(b as f64);
        }
        metrics::gauge!(
            "wal_archive_slot_wal_status",
            "cluster" => c.clone(),
            "slot" => s.slot_name.clone(),
            "wal_status" => s.wal_status.clone().unwrap_or_else(|| "none".into())
        )
        .set(1.0);
    }
    for s in standbys {
        for (kind, lag) in [
            ("sent", s.sent_lag_bytes),
            ("write", s.write_lag_bytes),
            ("flush", s.flush_lag_bytes),
            ("replay", s.replay_lag_bytes),
        ] {
            if let Some(lag) = lag {
                metrics::gauge!(
                    "wal_archive_standby_lag_bytes",
                    "cluster" => c.clone(),
                    "application_name" => s.application_name.clone(),
                    "client" => s.client.clone(),
                    "kind" => kind
                )
                .set(lag as f64);
            }
        }
        if let Some(ms) = s.replay_lag_ms {
            metrics::gauge!(
                "wal_archive_standby_replay_lag_seconds",
                "cluster" => c.clone(),
                "application_name" => s.application_name.clone(),
                "client" => s.client.clone()
            )
            .set(ms as f64 / 1000.0);
        }
    }
}

/// Gauges of a cluster's newest ended recovery drill, set at scrape time: its result (1 passed,
/// 0 failed), the time it took to recover, the WAL it replayed; and when a drill last passed.
pub fn set_drill_gauges(
    cluster: &str,
    newest: Option<&pgwal::api::DrillReport>,
    last_success_unix: Option<f64>,
) {
    let c = cluster.to_string();
    if let Some(d) = newest {
        metrics::gauge!("wal_archive_drill_last_result", "cluster" => c.clone())
            .set(if d.result == "ok" { 1.0 } else { 0.0 });
        if let Some(s) = d.recovery_seconds {
            metrics::gauge!("wal_archive_drill_last_recovery_seconds", "cluster" => c.clone())
                .set(s);
        }
        metrics::gauge!("wal_archive_drill_last_wal_files", "cluster" => c.clone())
            .set(d.wal_files as f64);
        metrics::gauge!("wal_archive_drill_last_wal_bytes", "cluster" => c.clone())
            .set(d.wal_bytes as f64);
    }
    if let Some(t) = last_success_unix {
        metrics::gauge!("wal_archive_drill_last_success_timestamp_seconds", "cluster" => c).set(t);
    }
}
