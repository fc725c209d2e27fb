//! Replication as the DBA watches it on the primary: every physical slot
//! (`pg_replication_slots`: active, `wal_status`, the WAL it retains) and every standby
//! (`pg_stat_replication`: how far behind it has received, written, flushed and replayed), read
//! through the cluster's `conninfo` for `check`, `/metrics` and the status page.
//!
//! An inactive slot keeps WAL on the primary until its standby comes back; left alone it fills
//! `pg_wal`. So `check` fails for a slot that is inactive and retains more than
//! `max_slot_retained`, and for any slot whose `wal_status` is `unreserved` (its WAL is past
//! `max_slot_wal_keep_size` and goes at the next checkpoint) or `lost` (already gone: the standby
//! can no longer stream from it).

use std::time::Duration;

use pgrepl::{ReplError, ReplicationConnection};
use pgwal::api::{CheckItem, SlotStatus, StandbyStatus};

use crate::config::ClusterConfig;

/// Retained bytes are measured from the primary's current WAL position; a standby has none
/// (`pg_current_wal_lsn()` fails during recovery), so there they are measured from the last
/// WAL received.
const SLOTS_SQL: &str = "WITH here AS (SELECT CASE WHEN pg_catalog.pg_is_in_recovery() \
     THEN pg_catalog.pg_last_wal_receive_lsn() ELSE pg_catalog.pg_current_wal_lsn() END AS lsn) \
     SELECT slot_name, active, wal_status, restart_lsn, \
     pg_catalog.pg_wal_lsn_diff(here.lsn, restart_lsn)::bigint \
     FROM pg_catalog.pg_replication_slots, here WHERE slot_type = 'physical' ORDER BY slot_name";

const STANDBYS_SQL: &str = "WITH here AS (SELECT CASE WHEN pg_catalog.pg_is_in_recovery() \
     THEN NULL ELSE pg_catalog.pg_current_wal_lsn() END AS lsn) \
     SELECT application_name, coalesce(client_addr::text, 'local'), state, sync_state, \
     sent_lsn, replay_lsn, \
     pg_catalog.pg_wal_lsn_diff(here.lsn, sent_lsn)::bigint, \
     pg_catalog.pg_wal_lsn_diff(here.lsn, write_lsn)::bigint, \
     pg_catalog.pg_wal_lsn_diff(here.lsn, flush_lsn)::bigint, \
     pg_catalog.pg_wal_lsn_diff(here.lsn, replay_lsn)::bigint, \
     (extract(epoch FROM replay_lag) * 1000)::bigint \
     FROM pg_catalog.pg_stat_replication, here ORDER BY application_name, pid";

/// Rows of the first result set with columns, as text.
async fn rows(
    conn: &mut ReplicationConnection,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, ReplError> {
    let sets = conn.query(sql).await?;
    let Some(set) = sets.iter().find(|s| !s.columns.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(set.rows.len());
    for r in 0..set.rows.len() {
        let mut values = Vec::with_capacity(set.columns.len());
        for c in 0..set.columns.len() {
            values.push(set.text(r, c)?.map(str::to_string));
        }
        out.push(values);
    }
    Ok(out)
}

fn text(r: &[Option<String>], i: usize) -> Option<String> {
    r.get(i).cloned().flatten()
}

/// A byte count; a negative difference (a position read a moment before the other) is 0.
fn bytes(r: &[Option<String>], i: usize) -> Option<u64> {
    text(r, i)?.parse::<i64>().ok().map(|v| v.max(0) as u64)
}

/// The physical slots of the server at the other end of `conn`.
pub async fn slots(conn: &mut ReplicationConnection) -> Result<Vec<SlotStatus>, ReplError> {
    Ok(rows(conn, SLOTS_SQL)
        .await?
        .into_iter()
        .map(|r| SlotStatus {
            slot_name: text(&r, 0).unwrap_or_default(),
            active: text(&r, 1).as_deref() == Some("t"),
            wal_status: text(&r, 2),
            restart_lsn: text(&r, 3),
            retained_bytes: bytes(&r, 4),
        })
        .collect())
}

/// The standbys and WAL receivers connected to the server at the other end of `conn`.
pub async fn standbys(conn: &mut ReplicationConnection) -> Result<Vec<StandbyStatus>, ReplError> {
    Ok(rows(conn, STANDBYS_SQL)
        .await?
        .into_iter()
        .map(|r| StandbyStatus {
            application_name: text(&r, 0).unwrap_or_default(),
            client: text(&r, 1).unwrap_or_default(),
            state: text(&r, 2).unwrap_or_default(),
            sync_state: text(&r, 3).unwrap_or_default(),
            sent_lsn: text(&r, 4),
            replay_lsn: text(&r, 5),
            sent_lag_bytes: bytes(&r, 6),
            write_lag_bytes: bytes(&r, 7),
            flush_lag_bytes: bytes(&r, 8),
            replay_lag_bytes: bytes(&r, 9),
            replay_lag_ms: bytes(&r, 10),
        })
        .collect())
}

/// Slots and standbys through a connection of their own (for `/metrics`), within `timeout`.
pub async fn observe(
    cfg: &ClusterConfig,
    cluster: &str,
    timeout: Duration,
) -> Result<(Vec<SlotStatus>, Vec<StandbyStatus>), String> {
    let ci = super::checks::conninfo(cfg, cluster)?;
    let work = async {
        let mut conn = ReplicationConnection::connect_database(&ci).await?;
        let result = async {
            let s = slots(&mut conn).await?;
            let b = standbys(&mut conn).await?;
            Ok::<_, ReplError>((s, b))
        }
        .await;
        conn.close().await;
        result
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from PostgreSQL within {timeout:?}")),
    }
}

/// One `check` line per slot (one line when there is none).
pub fn slot_checks(cfg: &ClusterConfig, cluster: &str, slots: &[SlotStatus]) -> Vec<CheckItem> {
    let max = cfg.max_slot_retained_bytes();
    if slots.is_empty() {
        return vec![CheckItem {
            name: "replication slots".into(),
            ok: true,
            message: "no physical replication slot on the primary".into(),
            hint: None,
        }];
    }
    slots
        .iter()
        .map(|s| {
            let retained = s.retained_bytes.unwrap_or(0);
            let wal_status = s.wal_status.as_deref().unwrap_or("none");
            let state = if s.active { "active" } else { "inactive" };
            let message = format!(
                "slot {} {state}, wal_status {wal_status}, retains {} ({retained} bytes) of WAL",
                s.slot_name,
                human_bytes(retained)
            );
            let name = format!("slot {}", s.slot_name);
            let drop_hint = format!(
                "if its standby is gone for good, drop it on the primary: SELECT \
                 pg_drop_replication_slot('{}')",
                s.slot_name
            );
            let (ok, hint) = match wal_status {
                "lost" => (
                    false,
                    Some(format!(
                        "the WAL this slot needed is gone: its standby cannot stream from it any \
                         more and must be rebuilt or catch up from the archive (restore_command = \
                         'wal-archive fetch --cluster {cluster} %f %p'); {drop_hint}"
                    )),
                ),
                "unreserved" => (
                    false,
                    Some(format!(
                        "the slot's WAL exceeds max_slot_wal_keep_size and goes at the next \
                         checkpoint: bring its standby back now; {drop_hint}"
                    )),
                ),
                _ if !s.active && retained > max => (
                    false,
                    Some(format!(
                        "an inactive slot keeps WAL on the primary until its standby returns \
                         (more than max_slot_retained = {}): start the standby, or {drop_hint}; \
                         max_slot_wal_keep_size bounds what a slot may keep",
                        human_bytes(max)
                    )),
                ),
                _ => (true, None),
            };
            CheckItem {
                name,
                ok,
                message,
                hint,
            }
        })
        .collect()
}

/// One informational `check` line for the standbys.
pub fn standby_check(standbys: &[StandbyStatus]) -> CheckItem {
    let message = if standbys.is_empty() {
        "no standby connected".to_string()
    } else {
        standbys
            .iter()
            .map(|s| {
                let lag = |v: Option<u64>| v.map_or("?".to_string(), human_bytes);
                format!(
                    "{} ({}, {}, {}): sent {} / write {} / flush {} / replay {} behind",
                    s.application_name,
                    s.client,
                    s.state,
                    s.sync_state,
                    lag(s.sent_lag_bytes),
                    lag(s.write_lag_bytes),
                    lag(s.flush_lag_bytes),
                    lag(s.replay_lag_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    CheckItem {
        name: "standbys".into(),
        ok: true,
        message,
        hint: None,
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, active: bool, wal_status: &str, retained: u64) -> SlotStatus {
        SlotStatus {
            slot_name: name.into(),
            active,
            wal_status: Some(wal_status.into()),
            restart_lsn: Some("0/1000000".into()),
            retained_bytes: Some(retained),
        }
    }

    #[test]
    fn inactive_slots_fail_above_the_limit_and_lost_ones_always() {
        let cfg = ClusterConfig {
            max_slot_retained: Some("1MB".into()),
            ..Default::default()
        };
        let checks = slot_checks(
            &cfg,
            "main",
            &[
                slot("busy", true, "reserved", 10 << 20),
                slot("small", false, "reserved", 1 << 20),
                slot("big", false, "extended", (1 << 20) + 1),
                slot("gone", true, "lost", 0),
                slot("soon", true, "unreserved", 0),
            ],
        );
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["slot big", "slot gone", "slot soon"]);
        assert!(checks.iter().all(|c| c.ok || c.hint.is_some()));
        assert!(checks[2].message.contains("slot big inactive"));
    }

    #[test]
    fn bytes_read_humanly() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
