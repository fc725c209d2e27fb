//! The checks of `GET /v1/clusters/{c}/check` beyond the archive's own state: the monitored
//! PostgreSQL (connection, privileges, `wal_level`, archiving settings and failures, system
//! identifier, replication slots and standbys through [`super::replication`]), the backups (age, `minimum_redundancy`, the newest one failed), WAL continuity
//! from the oldest retained backup, the newest WAL's age, and free space. Every failed line has a
//! hint saying what to do. Also `pg_switch_wal()` for `POST /v1/clusters/{c}/switch-wal`.
//!
//! Cost: the PostgreSQL part is bounded by [`PG_CHECK_TIMEOUT`]; the catalog part reads
//! aggregates (`wal_stats`, `wal_timelines`) and primary-key lookups, and lists WAL names only
//! when the aggregates show a gap, to say where it is.

use std::time::{Duration, SystemTime};

use pgrepl::{ConnInfo, ReplError, ReplicationConnection};
use pgwal::api::{ArchiverStatus, CheckItem, PostgresStatus};
use pgwal::name::WalFileName;
use pgwal::SegmentSize;

use crate::catalog::ranges;
use crate::config::ClusterConfig;
use crate::state::AppState;

/// Every PostgreSQL check together gets at most this long.
const PG_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

fn ok(name: &str, message: String) -> CheckItem {
    CheckItem {
        name: name.into(),
        ok: true,
        message,
        hint: None,
    }
}

fn failed(name: &str, message: String, hint: String) -> CheckItem {
    CheckItem {
        name: name.into(),
        ok: false,
        message,
        hint: Some(hint),
    }
}

pub fn conninfo(cfg: &ClusterConfig, cluster: &str) -> Result<ConnInfo, String> {
    let text = cfg.conninfo.as_deref().ok_or_else(|| {
        format!("cluster {cluster:?} has no conninfo in the server configuration")
    })?;
    let ci = ConnInfo::parse(text)
        .map_err(|e| format!("the conninfo of cluster {cluster:?} is invalid: {e}"))?;
    Ok(ci.with_password(cfg.password.clone()))
}

fn describe(e: &ReplError) -> (String, String) {
    (
        e.to_string(),
        e.hint().unwrap_or_else(|| {
            "check conninfo, pg_hba.conf, the password, and that PostgreSQL is running".into()
        }),
    )
}

/// The first row of the first result set, as text values.
async fn row(
    conn: &mut ReplicationConnection,
    sql: &str,
) -> Result<Vec<Option<String>>, ReplError> {
    let sets = conn.query(sql).await?;
    // No result set (not expected from a SELECT): empty values, which every check reads as
    // "not as wanted".
    let Some(set) = sets
        .iter()
        .find(|s| !s.columns.is_empty() && !s.rows.is_empty())
    else {
        return Ok(Vec::new());
    };
    let mut values = Vec::with_capacity(set.columns.len());
    for c in 0..set.columns.len() {
        values.push(set.text(0, c)?.map(str::to_string));
    }
    Ok(values)
}

fn col(r: &[Option<String>], i: usize) -> String {
    r.get(i).cloned().flatten().unwrap_or_default()
}

/// Every line of `check` for `cluster`: the archive's own state (newest WAL, storage, the
/// receiver), then PostgreSQL through `conninfo`, then backups, WAL continuity and free space.
/// Also returns what was read from PostgreSQL, for the status page.
pub async fn run(
    state: &AppState,
    cluster: &str,
) -> Result<(Vec<CheckItem>, Option<PostgresStatus>), crate::catalog::CatalogError> {
    let mut checks = vec![CheckItem {
        name: "server".into(),
        ok: true,
        message: "reachable and authorised".into(),
        hint: None,
    }];
    let catalog = &state.archive.catalog;
    let stats = catalog.cluster_stats(cluster).await?;
    checks.push(match stats.as_ref().and_then(|s| s.last_segment.as_ref().zip(s.last_archived_at.as_ref())) {
        Some((name, at)) => CheckItem {
            name: "wal archive".into(),
            ok: true,
            message: format!(
                "{} files; newest segment {name} stored at {at}",
                stats.as_ref().map_or(0, |s| s.files)
            ),
            hint: None,
        },
        None => CheckItem {
            name: "wal archive".into(),
            ok: false,
            message: "no WAL segment archived yet".into(),
            hint: Some(format!(
                "set archive_command = 'wal-archive push --cluster {cluster} %p' or streaming = true"
            )),
        },
    });
    let missing = stats.as_ref().map_or(0, |s| s.missing);
    let shown = if missing > 0 {
        catalog.missing_wal(cluster, 20).await?
    } else {
        Vec::new()
    };
    checks.push(CheckItem {
        name: "storage".into(),
        ok: missing == 0,
        message: if missing == 0 {
            "every cataloged file has its object".into()
        } else {
            format!(
                "{missing} cataloged files have no object: {}{}",
                shown.join(", "),
                if missing > shown.len() as u64 {
                    ", ..."
                } else {
                    ""
                }
            )
        },
        hint: (missing > 0).then(|| "restore the objects, or push the same files again".into()),
    });
    let cfg = state.config.cluster(cluster);
    if cfg.streaming {
        let r = state.receiver_status(cluster);
        let slot = r.slot.clone().unwrap_or_default();
        checks.push(CheckItem {
            name: "receiver".into(),
            ok: r.state == "streaming",
            message: match &r.reason {
                Some(reason) => format!("{} since {}: {reason}", r.state, r.since),
                None => format!(
                    "{} since {} (timeline {})",
                    r.state,
                    r.since,
                    r.timeline.map_or("?".into(), |t| t.to_string())
                ),
            },
            hint: r.hint.clone(),
        });
        checks.push(CheckItem {
            name: "replication slot".into(),
            ok: r.slot_active,
            message: format!("slot {slot} {}", if r.slot_active { "active" } else { "not in use by the receiver" }),
            hint: (!r.slot_active).then(|| "see the receiver line above; the slot retains WAL on the primary until the receiver streams again".into()),
        });
        let max = cfg
            .max_lag_bytes
            .unwrap_or(crate::config::DEFAULT_MAX_LAG_BYTES);
        let lag_ok = r.lag_bytes.is_some_and(|l| l <= max);
        checks.push(CheckItem {
            name: "receiver lag".into(),
            ok: lag_ok,
            message: match r.lag_bytes {
                Some(l) => format!(
                    "{l} bytes behind the server (flushed {}, server {})",
                    r.flushed_lsn.unwrap_or_default(),
                    r.server_lsn.unwrap_or_default()
                ),
                None => "unknown: nothing received yet".into(),
            },
            hint: (!lag_ok).then(|| {
                format!("lag above {max} bytes: check the receiver and the archive's disk")
            }),
        });
    }
    let seen = postgres_checks(state, cluster, &mut checks).await;
    archive_checks(state, cluster, &mut checks).await;
    Ok((checks, seen))
}

/// Appends the PostgreSQL checks (one OK line when the cluster has no conninfo) and returns
/// what was read for the status page: `None` without conninfo.
pub async fn postgres_checks(
    state: &AppState,
    cluster: &str,
    checks: &mut Vec<CheckItem>,
) -> Option<PostgresStatus> {
    let cfg = state.config.cluster(cluster);
    if cfg.conninfo.is_none() {
        checks.push(ok(
            "PostgreSQL",
            "no conninfo: PostgreSQL checks skipped".into(),
        ));
        return None;
    }
    let mut found = Vec::new();
    let mut seen = PostgresStatus::default();
    let result = tokio::time::timeout(
        PG_CHECK_TIMEOUT,
        pg_checks(state, cluster, &cfg, &mut found, &mut seen),
    )
    .await;
    checks.extend(found);
    if result.is_err() {
        let message = format!("no answer within {PG_CHECK_TIMEOUT:?}");
        seen.error.get_or_insert(message.clone());
        checks.push(failed(
            "PostgreSQL",
            message,
            "check that PostgreSQL is running and reachable from the archive server".into(),
        ));
    }
    Some(seen)
}

async fn pg_checks(
    state: &AppState,
    cluster: &str,
    cfg: &ClusterConfig,
    checks: &mut Vec<CheckItem>,
    seen: &mut PostgresStatus,
) {
    let ci = match conninfo(cfg, cluster) {
        Ok(ci) => ci,
        Err(m) => {
            seen.error = Some(m.clone());
            checks.push(failed(
                "PostgreSQL",
                m,
                format!("fix [clusters.{cluster}] conninfo in the server configuration"),
            ));
            return;
        }
    };
    let target = ci.target();
    let mut conn = match ReplicationConnection::connect_database(&ci).await {
        Ok(c) => c,
        Err(e) => {
            let (m, hint) = describe(&e);
            let message = format!("cannot connect to {target}: {m}");
            seen.error = Some(message.clone());
            checks.push(failed("PostgreSQL", message, hint));
            return;
        }
    };
    seen.server_version = conn.parameter("server_version").map(str::to_string);
    checks.push(ok(
        "PostgreSQL",
        format!(
            "connected to {target} (PostgreSQL {}) as {}",
            conn.parameter("server_version").unwrap_or("?"),
            conn.user()
        ),
    ));
    if let Err(e) = queries(state, cluster, cfg, &mut conn, checks, seen).await {
        let (m, hint) = describe(&e);
        seen.error = Some(m.clone());
        checks.push(failed("PostgreSQL queries", m, hint));
    }
    conn.close().await;
}

async fn queries(
    state: &AppState,
    cluster: &str,
    cfg: &ClusterConfig,
    conn: &mut ReplicationConnection,
    checks: &mut Vec<CheckItem>,
    seen: &mut PostgresStatus,
) -> Result<(), ReplError> {
    let user = conn.user().to_string();
    let r = row(
        conn,
        "SELECT rolsuper OR rolreplication FROM pg_catalog.pg_roles WHERE rolname = current_user",
    )
    .await?;
    checks.push(if col(&r, 0) == "t" {
        ok(
            "role privileges",
            format!("role {user} may take backups and stream WAL (superuser or REPLICATION)"),
        )
    } else {
        failed(
            "role privileges",
            format!("role {user} has neither SUPERUSER nor REPLICATION"),
            format!(
                "ALTER ROLE {user} REPLICATION; and allow it a replication line in pg_hba.conf"
            ),
        )
    });

    let r = row(
        conn,
        "SELECT current_setting('wal_level'), current_setting('archive_mode'), \
         current_setting('archive_command')",
    )
    .await?;
    let (wal_level, archive_mode, archive_command) = (col(&r, 0), col(&r, 1), col(&r, 2));
    checks.push(if wal_level == "replica" || wal_level == "logical" {
        ok("wal_level", format!("wal_level = {wal_level}"))
    } else {
        failed(
            "wal_level",
            format!("wal_level = {wal_level}: WAL of this level cannot restore a backup"),
            "set wal_level = replica in postgresql.conf and restart PostgreSQL".into(),
        )
    });
    let wanted = format!("--cluster {cluster}");
    // Shown to every reader of the cluster (check, the status page): never a secret in it.
    let archive_command_raw = archive_command;
    let archive_command = &redact_secrets(&archive_command_raw);
    let archiving_on = archive_mode == "on" || archive_mode == "always";
    checks.push(if cfg.streaming {
        ok(
            "archive_command",
            format!(
                "streaming = true: the receiver pulls WAL, so archive_command may be anything \
                 (archive_mode = {archive_mode}, archive_command = {archive_command:?})"
            ),
        )
    } else if archiving_on
        && archive_command_raw.contains("wal-archive")
        && archive_command_raw.contains(&wanted)
    {
        ok(
            "archive_command",
            format!("archive_mode = {archive_mode}, archive_command = {archive_command:?}"),
        )
    } else {
        failed(
            "archive_command",
            format!("archive_mode = {archive_mode}, archive_command = {archive_command:?}"),
            format!(
                "set archive_mode = on (needs a restart) and archive_command = \
                 'wal-archive push --cluster {cluster} %p', or streaming = true in the server's \
                 [clusters.{cluster}]"
            ),
        )
    });

    let r = row(
        conn,
        "SELECT failed_count, last_failed_wal, last_failed_time, last_archived_wal, \
         last_archived_time, (last_failed_time IS NOT NULL AND (last_archived_time IS NULL OR \
         last_failed_time > last_archived_time)), archived_count FROM pg_catalog.pg_stat_archiver",
    )
    .await?;
    let failing = col(&r, 5) == "t";
    let some = |i: usize| Some(col(&r, i)).filter(|v| !v.is_empty());
    seen.archiver = Some(ArchiverStatus {
        archived_count: col(&r, 6).parse().unwrap_or(0),
        last_archived_wal: some(3),
        last_archived_time: some(4),
        failed_count: col(&r, 0).parse().unwrap_or(0),
        last_failed_wal: some(1),
        last_failed_time: some(2),
        failing,
    });
    let last_ok = match col(&r, 3) {
        s if s.is_empty() => "none yet".to_string(),
        s => format!("{s} at {}", col(&r, 4)),
    };
    checks.push(if !failing {
        ok(
            "continuous archiving",
            format!("no failure since the last success (last archived: {last_ok})"),
        )
    } else if cfg.streaming {
        ok(
            "continuous archiving",
            format!(
                "archive_command fails ({} failures, last on {} at {}), but the receiver streams \
                 WAL, so the archive does not depend on it",
                col(&r, 0),
                col(&r, 1),
                col(&r, 2)
            ),
        )
    } else {
        failed(
            "continuous archiving",
            format!(
                "archive_command is failing: {} failures, the last on {} at {} (last archived: \
                 {last_ok})",
                col(&r, 0),
                col(&r, 1),
                col(&r, 2)
            ),
            format!(
                "read the archive_command error in the PostgreSQL log; run `wal-archive push \
                 --cluster {cluster} pg_wal/{}` by hand as the postgres user to see it. \
                 PostgreSQL keeps the WAL until archiving succeeds (watch pg_wal's size)",
                col(&r, 1)
            ),
        )
    });

    let r = row(
        conn,
        "SELECT system_identifier FROM pg_catalog.pg_control_system()",
    )
    .await?;
    let pg_sysid = col(&r, 0);
    let bound = state
        .archive
        .catalog
        .cluster(cluster)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.system_identifier);
    checks.push(match bound {
        None => ok(
            "system identifier",
            format!("PostgreSQL is system {pg_sysid}; the archive is not bound to a system yet"),
        ),
        Some(b) if b.to_string() == pg_sysid => ok(
            "system identifier",
            format!("{pg_sysid}, as in the archive"),
        ),
        Some(b) => failed(
            "system identifier",
            format!(
                "PostgreSQL at the conninfo is system {pg_sysid}, but the archive of cluster \
                 {cluster:?} holds WAL of system {b}"
            ),
            format!(
                "conninfo points at another database system: fix [clusters.{cluster}] conninfo, \
                 or archive this system under another cluster name"
            ),
        ),
    });

    seen.slots = super::replication::slots(conn).await?;
    checks.extend(super::replication::slot_checks(cfg, cluster, &seen.slots));
    seen.standbys = super::replication::standbys(conn).await?;
    checks.push(super::replication::standby_check(&seen.standbys));
    Ok(())
}

fn age_text(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The period of a schedule (between its next two fire times).
fn schedule_period(spec: &str) -> Option<Duration> {
    let s = crate::jobs::scheduler::parse_schedule(spec).ok()?;
    let mut it = s.upcoming(chrono::Utc);
    let a = it.next()?;
    let b = it.next()?;
    (b - a).to_std().ok()
}

/// Appends the checks that read the catalog and the file system.
pub async fn archive_checks(state: &AppState, cluster: &str, checks: &mut Vec<CheckItem>) {
    let cfg = state.config.cluster(cluster);
    let now = state.backups.now();
    let cat = &state.archive.catalog;

    // Newest archived segment's age (the wal_stats aggregate).
    let max_wal_age = cfg
        .wal_maximum_age
        .as_deref()
        .unwrap_or(crate::config::DEFAULT_WAL_MAXIMUM_AGE);
    let newest = cat
        .cluster_stats(cluster)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.last_segment.zip(s.last_archived_at));
    if let (Ok(max), Some((newest_name, newest_at))) =
        (humantime::parse_duration(max_wal_age), newest)
    {
        let age = humantime::parse_rfc3339_weak(&newest_at)
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        checks.push(if age <= max {
            ok(
                "newest WAL age",
                format!("{newest_name} archived {} ago", age_text(age)),
            )
        } else {
            failed(
                "newest WAL age",
                format!(
                    "the newest segment {newest_name} was archived {} ago, more than \
                     wal_maximum_age = {max_wal_age}",
                    age_text(age)
                ),
                format!(
                    "check archiving (archive_command or the receiver); on a quiet primary set \
                     archive_timeout, or run `wal-archive switch-wal --cluster {cluster}`"
                ),
            )
        });
    }

    // Backups.
    let mut rows = crate::backup::catalog::list(cat, cluster)
        .await
        .unwrap_or_default();
    let backups_matter =
        cfg.backup_schedule.is_some() || cfg.retention.is_some() || !rows.is_empty();
    if backups_matter {
        crate::jobs::retention::annotate(&cfg, &mut rows, now);
        let done: Vec<_> = rows.iter().filter(|r| r.info.status == "done").collect();
        let max_age = match &cfg.last_backup_maximum_age {
            Some(t) => humantime::parse_duration(t).ok(),
            None => cfg
                .backup_schedule
                .as_deref()
                .and_then(schedule_period)
                .map(|p| p * 2),
        };
        match done.first() {
            None => checks.push(failed(
                "last backup",
                "no done backup".into(),
                format!("take one: wal-archive backup --cluster {cluster}"),
            )),
            Some(newest) => {
                let at = newest
                    .info
                    .end_time
                    .as_deref()
                    .unwrap_or(&newest.info.begin_time);
                let age = humantime::parse_rfc3339_weak(at)
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or_default();
                checks.push(match max_age {
                    Some(max) if age > max => failed(
                        "last backup",
                        format!(
                            "the newest done backup {} ended {} ago, more than the maximum age {}",
                            newest.info.id,
                            age_text(age),
                            age_text(max)
                        ),
                        format!(
                            "take one (wal-archive backup --cluster {cluster}) and see why the \
                             scheduled ones did not run (GET /v1/clusters/{cluster}/jobs)"
                        ),
                    ),
                    _ => ok(
                        "last backup",
                        format!("{} ended {} ago", newest.info.id, age_text(age)),
                    ),
                });
            }
        }
        let min = cfg.minimum_redundancy as usize;
        checks.push(if done.len() >= min {
            ok(
                "minimum redundancy",
                format!("{} done backups (minimum_redundancy = {min})", done.len()),
            )
        } else {
            failed(
                "minimum redundancy",
                format!(
                    "{} done backups, fewer than minimum_redundancy = {min}",
                    done.len()
                ),
                format!("take a backup: wal-archive backup --cluster {cluster}"),
            )
        });
        if let Some(newest) = rows.iter().find(|r| r.info.status != "deleting") {
            checks.push(if newest.info.status == "failed" {
                failed(
                    "failed backups",
                    format!(
                        "the newest backup {} failed: {}",
                        newest.info.id,
                        newest
                            .info
                            .reason
                            .as_deref()
                            .unwrap_or("no reason recorded")
                    ),
                    "fix the cause named in the reason, then take a new backup".into(),
                )
            } else {
                ok(
                    "failed backups",
                    format!(
                        "the newest backup {} is {}",
                        newest.info.id, newest.info.status
                    ),
                )
            });
        }
        checks.extend(wal_continuity(state, cluster, &rows).await);
    }

    checks.extend(drill_check(state, cluster).await);

    // Free space.
    let min_free = cfg
        .min_free_space_bytes
        .unwrap_or(crate::config::DEFAULT_MIN_FREE_SPACE_BYTES);
    checks.push(match free_space(&state.config.data_dir) {
        Ok(free) if free >= min_free => ok(
            "free space",
            format!("{free} bytes free in {}", state.config.data_dir.display()),
        ),
        Ok(free) => failed(
            "free space",
            format!(
                "{free} bytes free in {}, less than min_free_space_bytes = {min_free}",
                state.config.data_dir.display()
            ),
            "free space or grow the volume; a tighter retention policy removes old backups and WAL"
                .into(),
        ),
        Err(e) => failed(
            "free space",
            format!(
                "cannot read the free space of {}: {e}",
                state.config.data_dir.display()
            ),
            "check that the data directory exists and is readable".into(),
        ),
    });
}

/// The newest recovery drill: fails when it failed, when none passed, or when the newest
/// passing one is older than `drill_maximum_age` (default: twice the `drill_schedule`
/// period). Absent for a cluster with no drill schedule, no maximum age and no drill yet.
async fn drill_check(state: &AppState, cluster: &str) -> Option<CheckItem> {
    let cfg = state.config.cluster(cluster);
    let (ended, passed) =
        match crate::jobs::drill::catalog::newest_ended(&state.archive.catalog, cluster).await {
            Ok(v) => v,
            Err(e) => {
                return Some(failed(
                    "last drill",
                    format!("cannot read the drills from the catalog: {e}"),
                    "look at the server log".into(),
                ))
            }
        };
    let max_age = match &cfg.drill_maximum_age {
        Some(t) => humantime::parse_duration(t).ok(),
        None => cfg
            .drill_schedule
            .as_deref()
            .and_then(schedule_period)
            .map(|p| p * 2),
    };
    if ended.is_none() && max_age.is_none() {
        return None;
    }
    let run = format!("run one: wal-archive drill --cluster {cluster}");
    let Some(newest) = ended else {
        return Some(failed(
            "last drill",
            "no recovery drill has run".into(),
            run,
        ));
    };
    if newest.result != "ok" {
        return Some(failed(
            "last drill",
            format!(
                "the newest drill {} (backup {}, {}) failed: {}",
                newest.id,
                newest.backup_id,
                newest.ended_at.as_deref().unwrap_or(&newest.started_at),
                newest.error.as_deref().unwrap_or("no reason recorded")
            ),
            format!("fix the cause it names, then {run}"),
        ));
    }
    let Some(passed) = passed else {
        return Some(failed(
            "last drill",
            "no recovery drill has passed".into(),
            run,
        ));
    };
    let at = passed.ended_at.as_deref().unwrap_or(&passed.started_at);
    let age = humantime::parse_rfc3339_weak(at)
        .ok()
        .and_then(|t| state.backups.now().duration_since(t).ok())
        .unwrap_or_default();
    Some(match max_age {
        Some(max) if age > max => failed(
            "last drill",
            format!(
                "the newest passing drill {} (backup {}) ended {} ago, more than the maximum \
                 age {}",
                passed.id,
                passed.backup_id,
                age_text(age),
                age_text(max)
            ),
            format!(
                "{run}, and see why the scheduled ones did not (wal-archive jobs --cluster \
                 {cluster})"
            ),
        ),
        _ => ok(
            "last drill",
            format!(
                "drill {} of backup {} passed {} ago, recovered in {:.1} s",
                passed.id,
                passed.backup_id,
                age_text(age),
                passed.recovery_seconds.unwrap_or_default()
            ),
        ),
    })
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// WAL gaps from the oldest retained backup's begin segment to the newest archived segment.
///
/// From the aggregates when they show none: every timeline complete from its first to its last
/// segment, and one of them holding the begin segment, leave no gap after it. Only otherwise are
/// the segment names listed, to say where the gaps are.
async fn wal_continuity(
    state: &AppState,
    cluster: &str,
    rows: &[crate::backup::catalog::BackupRow],
) -> Option<CheckItem> {
    let size = state
        .archive
        .catalog
        .cluster(cluster)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.segment_size)
        .and_then(|z| SegmentSize::new(z).ok())?;
    let oldest = rows
        .iter()
        .filter(|r| r.info.status == "done" && r.info.retention.as_deref() != Some("obsolete"))
        .filter_map(|r| r.info.begin_wal.as_deref()?.parse::<WalFileName>().ok())
        .filter_map(|n| Some((n.segno(size)?, n)))
        .min_by_key(|(n, _)| *n)?;
    let no_gap = ok(
        "WAL continuity",
        format!(
            "no gap from {} (the oldest retained backup's begin)",
            oldest.1
        ),
    );
    let timelines = state
        .archive
        .catalog
        .wal_timelines(cluster)
        .await
        .unwrap_or_default();
    let segno = |name: &str| name.parse::<WalFileName>().ok().and_then(|n| n.segno(size));
    let complete = timelines.iter().all(|t| {
        matches!((segno(&t.first), segno(&t.last)),
            (Some(a), Some(b)) if b >= a && b - a + 1 == t.segments)
    });
    let holds_begin = timelines.iter().any(|t| {
        matches!((segno(&t.first), segno(&t.last)),
            (Some(a), Some(b)) if a <= oldest.0 && oldest.0 <= b)
    });
    if complete && holds_begin {
        return Some(no_gap);
    }
    // A gap somewhere: the catalog's runs of consecutive segments, from the oldest begin on.
    let runs = state.archive.catalog.wal_summary(cluster).await.ok()?.runs;
    let clipped: Vec<ranges::Run> = runs
        .iter()
        .filter(|r| r.last >= oldest.0)
        .map(|r| ranges::Run {
            first: r.first.max(oldest.0),
            ..*r
        })
        .collect();
    let first = clipped.iter().map(|r| r.first).min();
    let mut gaps: Vec<String> = Vec::new();
    match first {
        Some(f) if f > oldest.0 => gaps.push(format!(
            "{} .. {}",
            oldest.1,
            WalFileName::segment(oldest.1.timeline(), f - 1, size)
        )),
        None => gaps.push(format!("{} and after", oldest.1)),
        _ => {}
    }
    for w in clipped.windows(2) {
        if w[0].timeline == w[1].timeline {
            gaps.push(format!(
                "{} .. {}",
                WalFileName::segment(w[0].timeline, w[0].last + 1, size),
                WalFileName::segment(w[1].timeline, w[1].first - 1, size)
            ));
        }
    }
    Some(if gaps.is_empty() {
        no_gap
    } else {
        failed(
            "WAL continuity",
            format!(
                "WAL missing after the oldest retained backup's begin {}: {}",
                oldest.1,
                gaps.join(", ")
            ),
            format!(
                "point-in-time recovery cannot cross a gap: push the missing segments from \
                 pg_wal if PostgreSQL still has them, else take a new backup \
                 (wal-archive backup --cluster {cluster})"
            ),
        )
    })
}

/// Why a WAL switch did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("{0}")]
    NoConninfo(String),
    #[error("{message}")]
    Postgres { message: String, hint: String },
    #[error("{0}")]
    Timeout(String),
}

/// `pg_switch_wal()` on the cluster; returns the segment it closed.
///
/// PostgreSQL rule (`RequestXLogSwitch` in xlog.c): a switch when the current segment has no WAL
/// since the previous switch does nothing and returns the same position, so an idle cluster
/// would hand back an already archived segment. A `CHECKPOINT` writes a record first, giving the
/// switch something to close.
pub async fn switch_wal(cfg: &ClusterConfig, cluster: &str) -> Result<String, SwitchError> {
    let ci = conninfo(cfg, cluster).map_err(SwitchError::NoConninfo)?;
    let pg = |e: ReplError| {
        let (message, hint) = describe(&e);
        SwitchError::Postgres { message, hint }
    };
    let mut conn = ReplicationConnection::connect_database(&ci)
        .await
        .map_err(pg)?;
    let result = async {
        // Is the insert position at the very start of a segment (nothing since the last switch)?
        // Right after a switch the insert position is just past the new segment's long page
        // header (40 bytes, SizeOfXLogLongPHD).
        let r = row(
            &mut conn,
            "SELECT (pg_walfile_name_offset(pg_current_wal_insert_lsn())).file_offset <= 40",
        )
        .await?;
        if col(&r, 0) == "t" {
            conn.query("CHECKPOINT").await?;
        }
        let r = row(&mut conn, "SELECT pg_walfile_name(pg_switch_wal())").await?;
        Ok::<_, ReplError>(col(&r, 0))
    }
    .await;
    conn.close().await;
    result.map_err(pg)
}

/// Polls the catalog until `segment` of `cluster` is stored.
pub async fn wait_archived(
    state: &AppState,
    cluster: &str,
    segment: &str,
    timeout: Duration,
) -> Result<(), SwitchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let started = SystemTime::now();
    loop {
        if let Ok(Some(r)) = state.archive.catalog.wal(cluster, segment).await {
            if r.state == "ok" {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SwitchError::Timeout(format!(
                "segment {segment} was not archived within {} s; check archive_command or the \
                 receiver (wal-archive check --cluster {cluster})",
                SystemTime::now()
                    .duration_since(started)
                    .unwrap_or_default()
                    .as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A command line with the values of secrets replaced by `***`: `--token S`, `--token=S`,
/// `WAL_ARCHIVE_TOKEN=S`, `PGPASSWORD=S`, `password=S` (a conninfo's).
pub fn redact_secrets(command: &str) -> String {
    const AFTER_EQUALS: [&str; 4] = ["--token=", "WAL_ARCHIVE_TOKEN=", "PGPASSWORD=", "password="];
    let mut out = Vec::new();
    let mut hide_next = false;
    for word in command.split(' ') {
        if hide_next && !word.is_empty() {
            out.push("***".to_string());
            hide_next = false;
            continue;
        }
        hide_next = word == "--token";
        let shown = AFTER_EQUALS
            .iter()
            .find_map(|key| {
                word.find(key)
                    .map(|at| format!("{}***", &word[..at + key.len()]))
            })
            .unwrap_or_else(|| word.to_string());
        out.push(shown);
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_in_a_command_are_never_shown() {
        let shown = super::redact_secrets(
            "WAL_ARCHIVE_TOKEN=s1 wal-archive --token s2 --url http://x push --token=s3 \
             --cluster main %p 'password=s4'",
        );
        for secret in ["s1", "s2", "s3", "s4"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("--cluster main %p"), "{shown}");
        assert_eq!(
            super::redact_secrets("wal-archive push --cluster main %p"),
            "wal-archive push --cluster main %p"
        );
    }
}
