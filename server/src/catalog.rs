//! The SQLite catalog (schema in `migrations/`): an index over storage of clusters and WAL files.
//!
//! One writing connection behind a mutex, and one reading connection beside it, so that queries
//! (listings, `/metrics`, `check`) never wait behind ingest and ingest never waits behind them
//! (WAL mode lets one writer and readers work at once); every call runs on the blocking pool so
//! the async workers never wait on SQLite. The catalog is rebuildable from storage (see [`crate::wal::reconcile`]), which is
//! why rows are written only after their object is durable.
//!
//! WAL rows are group-committed: [`Catalog::insert_wal`] queues its row, and whichever caller
//! gets the connection first writes every queued row in one transaction (a savepoint per row, so
//! one failing row fails only its own caller); the callers whose rows it wrote find the queue
//! empty. Under many concurrent uploads this turns one transaction per file into one per burst.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

pub mod ranges;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("catalog migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("catalog task failed: {0}")]
    Task(String),
    #[error("catalog holds an invalid value: {0}")]
    Corrupt(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRow {
    pub name: String,
    pub system_identifier: Option<u64>,
    pub segment_size: Option<u64>,
    pub pg_major: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRow {
    pub cluster: String,
    pub name: String,
    pub kind: String,
    pub timeline: u32,
    pub size: u64,
    pub sha256: String,
    /// XXH3-128 of the uncompressed bytes; `None` for rows written before it was recorded.
    pub xxh3: Option<String>,
    pub stored_size: u64,
    pub object_key: String,
    pub archived_at: String,
    pub state: String,
}

/// How many missing files a summary names (all are counted).
pub const MISSING_LISTED: u32 = 1000;

/// What [`Catalog::wal_summary`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSummaryRows {
    pub files: u64,
    /// Rows whose object storage no longer holds; the first [`MISSING_LISTED`] are `missing`.
    pub missing_files: u64,
    /// The runs of consecutive stored segments, by timeline then segment number.
    pub runs: Vec<ranges::Run>,
    pub timelines: Vec<pgwal::ranges::TimelineSummary>,
    pub missing: Vec<String>,
}

/// Aggregates of one cluster's WAL catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalStats {
    pub cluster: String,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub last_segment: Option<String>,
    pub last_archived_at: Option<String>,
    /// Cataloged files whose object is missing from storage.
    pub missing: u64,
}

/// The stored segments of one timeline (`migrations/0007_status_aggregates.sql`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineStats {
    pub timeline: u32,
    pub segments: u64,
    pub first: String,
    pub last: String,
}

/// WAL stored in one hour: `YYYY-MM-DDTHH` (UTC), files, bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourStats {
    pub hour: String,
    pub files: u64,
    pub bytes: u64,
}

/// Result of binding a cluster to a system identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The cluster is (now) bound to this system and segment size.
    Ok,
    /// The cluster belongs to another system or segment size.
    Mismatch {
        system_identifier: u64,
        segment_size: u64,
    },
}

#[derive(Clone)]
pub struct Catalog {
    conn: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    wal_queue: Arc<Mutex<Vec<QueuedWalRow>>>,
}

type QueuedWalRow = (
    WalRow,
    tokio::sync::oneshot::Sender<Result<bool, CatalogError>>,
);

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/0001_initial.sql")),
        M::up(include_str!("../../migrations/0002_backups.sql")),
        M::up(include_str!("../../migrations/0003_jobs_retention.sql")),
        M::up(include_str!("../../migrations/0004_wal_xxh3.sql")),
        M::up(include_str!("../../migrations/0005_wal_stats.sql")),
        M::up(include_str!("../../migrations/0006_jobs.sql")),
        M::up(include_str!("../../migrations/0007_status_aggregates.sql")),
        M::up(include_str!("../../migrations/0008_drills.sql")),
        M::up_with_hook(
            include_str!("../../migrations/0009_wal_ranges.sql"),
            |tx: &rusqlite::Transaction| Ok(ranges::rebuild_all(tx)?),
        ),
    ])
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit is on disk before it returns, so whatever the server has reported
        // (a backup done, a keep flag, a retention plan whose objects are being removed)
        // survives a power loss. In WAL mode that is one fsync of the -wal file per
        // transaction (about 0.2 ms on the test machine); WAL rows are group-committed.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrations().to_latest(&mut conn)?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            wal_queue: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Runs the read-only query `f` on the reading connection (blocking pool): it sees every
    /// transaction committed before it starts, and neither waits for nor holds up writers.
    pub async fn read<T, F>(&self, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, CatalogError> + Send + 'static,
    {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| CatalogError::Task("catalog reader lock poisoned".into()))?;
            f(&guard)
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, CatalogError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| CatalogError::Task("catalog lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }

    pub async fn ensure_cluster(&self, name: &str) -> Result<ClusterRow, CatalogError> {
        let name = name.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO clusters (name, created_at) VALUES (?1, ?2)",
                params![name, now_rfc3339()],
            )?;
            get_cluster(c, &name)?.ok_or_else(|| CatalogError::Corrupt("cluster vanished".into()))
        })
        .await
    }

    pub async fn cluster(&self, name: &str) -> Result<Option<ClusterRow>, CatalogError> {
        let name = name.to_string();
        self.read(move |c| get_cluster(c, &name)).await
    }

    /// Binds `cluster` to a system identifier and segment size on first arrival; afterwards
    /// reports whether they match.
    pub async fn bind_cluster(
        &self,
        cluster: &str,
        system_identifier: u64,
        segment_size: u64,
        pg_major: u32,
    ) -> Result<Binding, CatalogError> {
        let cluster = cluster.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO clusters (name, created_at) VALUES (?1, ?2)",
                params![cluster, now_rfc3339()],
            )?;
            c.execute(
                "UPDATE clusters SET system_identifier = ?2, segment_size = ?3, pg_major = ?4
                 WHERE name = ?1 AND system_identifier IS NULL",
                params![
                    cluster,
                    system_identifier.to_string(),
                    segment_size,
                    pg_major
                ],
            )?;
            let row = get_cluster(c, &cluster)?
                .ok_or_else(|| CatalogError::Corrupt("cluster vanished".into()))?;
            match (row.system_identifier, row.segment_size) {
                (Some(s), Some(z)) if s == system_identifier && z == segment_size => {
                    Ok(Binding::Ok)
                }
                (Some(s), Some(z)) => Ok(Binding::Mismatch {
                    system_identifier: s,
                    segment_size: z,
                }),
                _ => Err(CatalogError::Corrupt(format!(
                    "cluster {cluster} has a partial binding"
                ))),
            }
        })
        .await
    }

    /// Inserts a row for a durable object. Returns false if a row of that name already existed
    /// (then nothing is changed).
    pub async fn insert_wal(&self, row: WalRow) -> Result<bool, CatalogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.wal_queue
            .lock()
            .map_err(|_| CatalogError::Task("catalog queue lock poisoned".into()))?
            .push((row, tx));
        let queue = self.wal_queue.clone();
        self.call(move |c| {
            let batch = std::mem::take(
                &mut *queue
                    .lock()
                    .map_err(|_| CatalogError::Task("catalog queue lock poisoned".into()))?,
            );
            if !batch.is_empty() {
                insert_wal_batch(c, batch);
            }
            Ok(())
        })
        .await?;
        rx.await
            .map_err(|_| CatalogError::Task("catalog batch dropped the row".into()))?
    }

    pub async fn wal(&self, cluster: &str, name: &str) -> Result<Option<WalRow>, CatalogError> {
        let (cluster, name) = (cluster.to_string(), name.to_string());
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{WAL_SELECT} WHERE cluster = ?1 AND name = ?2"),
                params![cluster, name],
                wal_from_row,
            )
            .optional()?)
        })
        .await
    }

    pub async fn list_wal(&self, cluster: &str) -> Result<Vec<WalRow>, CatalogError> {
        let cluster = cluster.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(&format!("{WAL_SELECT} WHERE cluster = ?1 ORDER BY name"))?;
            let rows = stmt.query_map(params![cluster], wal_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The rows of one kind (`segment`, `partial`, `history`, `backup`) of a cluster.
    pub async fn list_wal_kind(
        &self,
        cluster: &str,
        kind: &'static str,
    ) -> Result<Vec<WalRow>, CatalogError> {
        let cluster = cluster.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "{WAL_SELECT} WHERE cluster = ?1 AND kind = ?2 ORDER BY name"
            ))?;
            let rows = stmt.query_map(params![cluster, kind], wal_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// After a missing or damaged object was stored again from the same bytes: the row points
    /// at the new object and is served again.
    pub async fn repair_wal(&self, row: WalRow) -> Result<(), CatalogError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let before: Option<(String, String)> = tx
                .query_row(
                    "SELECT kind, state FROM wal_files
                     WHERE cluster = ?1 AND name = ?2 AND sha256 = ?3",
                    params![row.cluster, row.name, row.sha256],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            tx.execute(
                "UPDATE wal_files SET stored_size = ?3, xxh3 = COALESCE(?4, xxh3), state = 'ok'
                 WHERE cluster = ?1 AND name = ?2 AND sha256 = ?5",
                params![row.cluster, row.name, row.stored_size, row.xxh3, row.sha256],
            )?;
            if let Some((kind, state)) = before {
                ranges::row_changed(&tx, &row.cluster, &row.name, &kind, state == "ok", true)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Inserts many rows in one transaction (a rebuild); rows of names already there are
    /// left as they are.
    pub async fn insert_wal_rows(&self, rows: Vec<WalRow>) -> Result<(), CatalogError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.call(move |c| {
            let tx = c.transaction()?;
            for row in &rows {
                insert_wal(&tx, row)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Records the XXH3-128 of a file that has none (rows rebuilt from storage, or archived
    /// before it was recorded), once it was computed from the verified content.
    pub async fn set_wal_xxh3(
        &self,
        cluster: &str,
        name: &str,
        xxh3: String,
    ) -> Result<(), CatalogError> {
        let (cluster, name) = (cluster.to_string(), name.to_string());
        self.call(move |c| {
            c.execute(
                "UPDATE wal_files SET xxh3 = ?3 WHERE cluster = ?1 AND name = ?2 AND xxh3 IS NULL",
                params![cluster, name, xxh3],
            )?;
            Ok(())
        })
        .await
    }

    /// The directories (`wal/CLUSTER/DIR/`) the cataloged WAL objects are in.
    pub async fn wal_dirs(&self) -> Result<Vec<String>, CatalogError> {
        self.read(move |c| {
            // object_key = DIR + name + ".zst".
            let mut stmt = c.prepare(
                "SELECT DISTINCT substr(object_key, 1, length(object_key) - length(name) - 4)
                 FROM wal_files",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// The rows whose object key starts with `dir` (an index range).
    pub async fn wal_under(&self, dir: &str) -> Result<Vec<WalRow>, CatalogError> {
        let (from, to) = (dir.to_string(), format!("{dir}\u{10FFFF}"));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "{WAL_SELECT} WHERE object_key >= ?1 AND object_key < ?2"
            ))?;
            let rows = stmt.query_map(params![from, to], wal_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Sets the state of many rows in one transaction: (cluster, name, state).
    pub async fn set_wal_states(
        &self,
        states: Vec<(String, String, &'static str)>,
    ) -> Result<(), CatalogError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            for (cluster, name, state) in &states {
                set_state(&tx, cluster, name, state)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Per cluster: files, bytes, stored bytes, and the newest archived segment with its time,
    /// from the aggregates the triggers of `migrations/0005_wal_stats.sql` keep: one row per
    /// cluster, however many WAL files.
    pub async fn wal_stats(&self) -> Result<Vec<WalStats>, CatalogError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(WAL_STATS_SQL)?;
            let rows = stmt.query_map([], |r| {
                Ok(WalStats {
                    cluster: r.get(0)?,
                    files: r.get(1)?,
                    bytes: r.get(2)?,
                    stored_bytes: r.get(3)?,
                    last_segment: r.get(4)?,
                    last_archived_at: r.get(5)?,
                    missing: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// [`Catalog::wal_stats`] of one cluster.
    pub async fn cluster_stats(&self, cluster: &str) -> Result<Option<WalStats>, CatalogError> {
        let cluster = cluster.to_string();
        Ok(self
            .wal_stats()
            .await?
            .into_iter()
            .find(|s| s.cluster == cluster))
    }

    /// Up to `limit` names of a cluster's files whose object is missing.
    pub async fn missing_wal(
        &self,
        cluster: &str,
        limit: u32,
    ) -> Result<Vec<String>, CatalogError> {
        let cluster = cluster.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name FROM wal_files INDEXED BY wal_files_not_ok
                 WHERE cluster = ?1 AND state <> 'ok' ORDER BY name LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![cluster, limit], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// Every timeline with stored segments: the count the triggers of
    /// `migrations/0007_status_aggregates.sql` keep, and its first and last segment, each found
    /// by a walk of the primary key from one end of the timeline's name range (history,
    /// `.partial` and `.backup` names there are stepped over).
    pub async fn wal_timelines(&self, cluster: &str) -> Result<Vec<TimelineStats>, CatalogError> {
        let cluster = cluster.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(TIMELINES_SQL)?;
            let counts = stmt
                .query_map(params![cluster], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, u64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::with_capacity(counts.len());
            for (timeline, segments) in counts {
                let (from, to) = timeline_name_range(timeline);
                let end = |order: &str| -> Result<Option<String>, CatalogError> {
                    Ok(c.prepare_cached(&timeline_end_sql(order))?
                        .query_row(params![cluster, from, to], |r| r.get(0))
                        .optional()?)
                };
                if let (Some(first), Some(last)) = (end("ASC")?, end("DESC")?) {
                    out.push(TimelineStats {
                        timeline,
                        segments,
                        first,
                        last,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// Timelines, ranges and gaps of the cluster's stored WAL, its file count and its missing
    /// files: from `wal_ranges`, `wal_stats` and one primary-key seek per timeline, in one read
    /// transaction, whatever the number of files. Runs found disagreeing with the
    /// `wal_timelines` counts are rebuilt from the rows first (logged).
    pub async fn wal_summary(&self, cluster: &str) -> Result<WalSummaryRows, CatalogError> {
        let name = cluster.to_string();
        if let Some(s) = self.read(move |c| wal_summary_rows(c, &name)).await? {
            return Ok(s);
        }
        tracing::warn!(
            cluster = %cluster,
            "catalog: the WAL ranges disagree with the per-timeline counts; rebuilding them"
        );
        let name = cluster.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            ranges::rebuild(&tx, &name)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        let name = cluster.to_string();
        self.read(move |c| wal_summary_rows(c, &name))
            .await?
            .ok_or_else(|| {
                CatalogError::Corrupt("WAL ranges still disagree after a rebuild".into())
            })
    }

    /// WAL stored per hour from `since_hour` (`YYYY-MM-DDTHH`) on, oldest first: a range of
    /// the `wal_hours` aggregate, at most one row per hour.
    pub async fn wal_hours(
        &self,
        cluster: &str,
        since_hour: &str,
    ) -> Result<Vec<HourStats>, CatalogError> {
        let (cluster, since) = (cluster.to_string(), since_hour.to_string());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(WAL_HOURS_SQL)?;
            let rows = stmt.query_map(params![cluster, since], |r| {
                Ok(HourStats {
                    hour: r.get(0)?,
                    files: r.get(1)?,
                    bytes: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The names of every cluster the catalog knows.
    pub async fn cluster_names(&self) -> Result<Vec<String>, CatalogError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT name FROM clusters ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    pub async fn set_wal_state(
        &self,
        cluster: &str,
        name: &str,
        state: &'static str,
    ) -> Result<(), CatalogError> {
        let (cluster, name) = (cluster.to_string(), name.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            set_state(&tx, &cluster, &name, state)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

const WAL_STATS_SQL: &str = "SELECT cluster, files, bytes, stored_bytes, last_segment, \
    last_archived_at, missing FROM wal_stats ORDER BY cluster";
const TIMELINES_SQL: &str = "SELECT timeline, segments FROM wal_timelines \
    WHERE cluster = ?1 AND segments > 0 ORDER BY timeline";
const WAL_HOURS_SQL: &str = "SELECT hour, files, bytes FROM wal_hours \
    WHERE cluster = ?1 AND hour >= ?2 AND files > 0 ORDER BY hour";

/// The summary, or `None` when the runs disagree with the `wal_timelines` counts.
fn wal_summary_rows(c: &Connection, cluster: &str) -> Result<Option<WalSummaryRows>, CatalogError> {
    // One snapshot: a commit between two of these reads would look like an inconsistency.
    let tx = c.unchecked_transaction()?;
    let runs = ranges::runs(&tx, cluster)?;
    if !ranges::consistent(&tx, cluster, &runs)? {
        return Ok(None);
    }
    let size = ranges::segment_size(&tx, cluster)?.unwrap_or(pgwal::SegmentSize::DEFAULT);
    let (files, missing_files): (u64, u64) = tx
        .query_row(
            "SELECT files, missing FROM wal_stats WHERE cluster = ?1",
            params![cluster],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, 0));
    let missing = {
        let mut stmt = tx.prepare_cached(
            "SELECT name FROM wal_files INDEXED BY wal_files_not_ok
             WHERE cluster = ?1 AND state <> 'ok' ORDER BY name LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![cluster, MISSING_LISTED], |r| r.get(0))?;
        rows.collect::<Result<Vec<String>, _>>()?
    };
    // Every timeline with a stored file: one seek to the first stored name at or after the
    // previous timeline's names.
    let mut timelines = Vec::new();
    let mut from = String::new();
    loop {
        let next: Option<String> = tx
            .prepare_cached(
                "SELECT name FROM wal_files WHERE cluster = ?1 AND name >= ?2 AND state = 'ok'
                 ORDER BY name LIMIT 1",
            )?
            .query_row(params![cluster, from], |r| r.get(0))
            .optional()?;
        let Some(tli) = next
            .as_deref()
            .and_then(|n| n.get(..8))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
        else {
            break;
        };
        let history: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM wal_files
                 WHERE cluster = ?1 AND name = ?2 AND state = 'ok')",
            )?
            .query_row(params![cluster, format!("{tli:08X}.history")], |r| r.get(0))?;
        let of_tli: Vec<(u64, u64)> = runs
            .iter()
            .filter(|r| r.timeline == tli)
            .map(|r| (r.first, r.last))
            .collect();
        timelines.push(pgwal::ranges::timeline_summary(tli, &of_tli, history, size));
        from = timeline_name_range(tli).1;
    }
    tx.commit()?;
    Ok(Some(WalSummaryRows {
        files,
        missing_files,
        runs,
        timelines,
        missing,
    }))
}

/// The first (`ASC`) or last (`DESC`) segment of a timeline's name range.
fn timeline_end_sql(order: &str) -> String {
    format!(
        "SELECT name FROM wal_files WHERE cluster = ?1 AND name >= ?2 AND name < ?3 \
         AND kind = 'segment' AND state = 'ok' ORDER BY name {order} LIMIT 1"
    )
}

/// The names of timeline `tli`'s files lie in `[TTTTTTTT, TTTTTTTT~)`: `~` sorts after every
/// hex digit and `.`.
fn timeline_name_range(tli: u32) -> (String, String) {
    (format!("{tli:08X}"), format!("{tli:08X}~"))
}

const WAL_SELECT: &str = "SELECT cluster, name, kind, timeline, size, sha256, stored_size, \
                          object_key, archived_at, state, xxh3 FROM wal_files";

fn wal_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WalRow> {
    Ok(WalRow {
        cluster: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        timeline: r.get(3)?,
        size: r.get(4)?,
        sha256: r.get(5)?,
        stored_size: r.get(6)?,
        object_key: r.get(7)?,
        archived_at: r.get(8)?,
        state: r.get(9)?,
        xxh3: r.get(10)?,
    })
}

/// Writes `batch` in one transaction and answers each row's caller.
fn insert_wal_batch(c: &mut Connection, batch: Vec<QueuedWalRow>) {
    let mut tx = match c.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(CatalogError::Task(format!("catalog transaction: {e}"))));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for (row, reply) in batch {
        let result = tx.savepoint().map_err(CatalogError::from).and_then(|sp| {
            let inserted = insert_wal(&sp, &row)?;
            sp.commit()?;
            Ok(inserted)
        });
        results.push((result, reply));
    }
    match tx.commit() {
        Ok(()) => {
            for (result, reply) in results {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            for (_, reply) in results {
                let _ = reply.send(Err(CatalogError::Task(format!("catalog commit: {e}"))));
            }
        }
    }
}

fn insert_wal(c: &Connection, row: &WalRow) -> Result<bool, CatalogError> {
    c.execute(
        "INSERT OR IGNORE INTO clusters (name, created_at) VALUES (?1, ?2)",
        params![row.cluster, now_rfc3339()],
    )?;
    let n = c.execute(
        "INSERT OR IGNORE INTO wal_files
         (cluster, name, kind, timeline, size, sha256, stored_size, object_key, archived_at, state,
          xxh3)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            row.cluster,
            row.name,
            row.kind,
            row.timeline,
            row.size,
            row.sha256,
            row.stored_size,
            row.object_key,
            row.archived_at,
            row.state,
            row.xxh3
        ],
    )?;
    if n == 1 {
        ranges::row_changed(
            c,
            &row.cluster,
            &row.name,
            &row.kind,
            false,
            row.state == "ok",
        )?;
    }
    Ok(n == 1)
}

/// Sets the state of one row, keeping `wal_ranges` in step.
fn set_state(c: &Connection, cluster: &str, name: &str, state: &str) -> rusqlite::Result<()> {
    let before: Option<(String, String)> = c
        .prepare_cached("SELECT kind, state FROM wal_files WHERE cluster = ?1 AND name = ?2")?
        .query_row(params![cluster, name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((kind, old)) = before else {
        return Ok(());
    };
    c.prepare_cached("UPDATE wal_files SET state = ?3 WHERE cluster = ?1 AND name = ?2")?
        .execute(params![cluster, name, state])?;
    ranges::row_changed(c, cluster, name, &kind, old == "ok", state == "ok")
}

/// Deletes one row (retention), keeping `wal_ranges` in step.
pub fn delete_wal_row(c: &Connection, cluster: &str, name: &str) -> rusqlite::Result<()> {
    let before: Option<(String, String)> = c
        .prepare_cached(
            "DELETE FROM wal_files WHERE cluster = ?1 AND name = ?2 RETURNING kind, state",
        )?
        .query_row(params![cluster, name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match before {
        Some((kind, state)) => ranges::row_changed(c, cluster, name, &kind, state == "ok", false),
        None => Ok(()),
    }
}

fn get_cluster(c: &Connection, name: &str) -> Result<Option<ClusterRow>, CatalogError> {
    let row = c
        .query_row(
            "SELECT name, system_identifier, segment_size, pg_major FROM clusters WHERE name = ?1",
            params![name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<u64>>(2)?,
                    r.get::<_, Option<u32>>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((name, sysid, segment_size, pg_major)) = row else {
        return Ok(None);
    };
    let system_identifier = match sysid {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| CatalogError::Corrupt(format!("system identifier {s:?}")))?,
        ),
        None => None,
    };
    Ok(Some(ClusterRow {
        name,
        system_identifier,
        segment_size,
        pg_major,
    }))
}

/// Current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A time as the catalog keeps it: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> WalRow {
        WalRow {
            cluster: "main".into(),
            name: name.into(),
            kind: "segment".into(),
            timeline: 1,
            size: 16,
            sha256: "00".repeat(32),
            xxh3: None,
            stored_size: 8,
            object_key: format!("wal/main/{name}.zst"),
            archived_at: now_rfc3339(),
            state: "ok".into(),
        }
    }

    /// What the server reports (done, kept, deleted) must survive a power loss: commits are
    /// synchronous, and the journal is the write-ahead log.
    #[tokio::test]
    async fn commits_are_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        let (sync, journal) = cat
            .call(|c| {
                let sync: i64 = c.pragma_query_value(None, "synchronous", |r| r.get(0))?;
                let journal: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
                Ok((sync, journal))
            })
            .await
            .expect("pragmas");
        assert_eq!(sync, 2, "synchronous = FULL");
        assert_eq!(journal, "wal");
    }

    type Stat = (String, u64, u64, u64, Option<String>, u64);

    /// The aggregates counted over the rows.
    async fn recount(c: &Catalog) -> Vec<Stat> {
        c.read(|c| {
            let mut stmt = c.prepare(
                "SELECT cluster, sum(state = 'ok'),
                        coalesce(sum(CASE WHEN state = 'ok' THEN size END), 0),
                        coalesce(sum(CASE WHEN state = 'ok' THEN stored_size END), 0),
                        (SELECT name FROM wal_files w WHERE w.cluster = f.cluster
                           AND kind = 'segment' AND state = 'ok'
                           ORDER BY archived_at DESC, name DESC LIMIT 1),
                        sum(state <> 'ok')
                 FROM wal_files f GROUP BY cluster ORDER BY cluster",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
            Ok(rows.collect::<Result<Vec<Stat>, _>>()?)
        })
        .await
        .expect("recount")
    }

    /// The aggregates the triggers keep, for clusters that have rows.
    async fn kept(c: &Catalog) -> Vec<Stat> {
        c.wal_stats()
            .await
            .expect("stats")
            .into_iter()
            .filter(|s| s.files + s.missing > 0)
            .map(|s| {
                (
                    s.cluster,
                    s.files,
                    s.bytes,
                    s.stored_bytes,
                    s.last_segment,
                    s.missing,
                )
            })
            .collect()
    }

    /// The aggregates the triggers keep always equal a count over the rows.
    #[tokio::test]
    async fn wal_stats_follow_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        for i in 0..30u64 {
            let mut r = row(&format!("00000001000000000000{i:04X}"));
            r.size = 100 + i;
            r.stored_size = 10 + i;
            r.cluster = if i % 3 == 0 {
                "b".into()
            } else {
                "main".into()
            };
            r.archived_at = format!("2026-01-01T00:00:{:02}Z", 59 - i);
            if i % 7 == 0 {
                r.kind = "history".into();
            }
            assert!(cat.insert_wal(r).await.expect("insert"));
        }
        assert_eq!(kept(&cat).await, recount(&cat).await);
        cat.set_wal_state("main", "000000010000000000000001", "missing")
            .await
            .expect("missing");
        cat.set_wal_state("main", "000000010000000000000002", "missing")
            .await
            .expect("missing");
        assert_eq!(kept(&cat).await, recount(&cat).await);
        cat.set_wal_state("main", "000000010000000000000002", "ok")
            .await
            .expect("ok");
        cat.call(|c| {
            c.execute(
                "DELETE FROM wal_files WHERE name IN ('000000010000000000000004', \
                 '000000010000000000000005', '000000010000000000000000')",
                [],
            )?;
            Ok(())
        })
        .await
        .expect("delete");
        assert_eq!(kept(&cat).await, recount(&cat).await);
    }

    /// The timeline and hourly aggregates (0007) equal a count over the rows after inserts,
    /// state changes and deletes.
    #[tokio::test]
    async fn status_aggregates_follow_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        for i in 0..20u64 {
            let tli = if i < 12 { 1 } else { 2 };
            let mut r = row(&format!("{tli:08X}00000000{i:08X}"));
            r.timeline = tli;
            r.archived_at = format!("2026-01-01T{:02}:30:00Z", i / 5);
            if i == 7 {
                r.kind = "partial".into();
                r.name = format!("{}.partial", r.name);
            }
            assert!(cat.insert_wal(r).await.expect("insert"));
        }
        let mut history = row("00000002.history");
        history.kind = "history".into();
        history.timeline = 2;
        assert!(cat.insert_wal(history).await.expect("insert"));
        cat.set_wal_state("main", "000000010000000000000003", "missing")
            .await
            .expect("missing");
        cat.call(|c| {
            c.execute(
                "DELETE FROM wal_files WHERE name IN ('000000010000000000000000', \
                 '000000020000000000000013')",
                [],
            )?;
            Ok(())
        })
        .await
        .expect("delete");

        let tl = cat.wal_timelines("main").await.expect("timelines");
        let counted: Vec<(u32, u64, String, String)> = cat
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT timeline, count(*), min(name), max(name) FROM wal_files
                     WHERE kind = 'segment' AND state = 'ok' GROUP BY timeline ORDER BY timeline",
                )?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .expect("recount");
        let kept: Vec<(u32, u64, String, String)> = tl
            .into_iter()
            .map(|t| (t.timeline, t.segments, t.first, t.last))
            .collect();
        assert_eq!(kept, counted);
        assert_eq!(
            kept[0].1, 9,
            "12 on timeline 1, less a partial, a missing, a deleted one"
        );

        let hours = cat.wal_hours("main", "2026-01-01T01").await.expect("hours");
        let counted: Vec<HourStats> = cat
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT substr(archived_at, 1, 13), count(*), sum(size) FROM wal_files
                     WHERE kind IN ('segment', 'partial') AND archived_at >= '2026-01-01T01'
                     GROUP BY 1 ORDER BY 1",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(HourStats {
                        hour: r.get(0)?,
                        files: r.get(1)?,
                        bytes: r.get(2)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .expect("recount");
        assert_eq!(hours, counted);
        assert_eq!(hours.len(), 3);
    }

    /// What the status page and `check` read of the WAL catalog is found through indexes: no
    /// query plan scans `wal_files`.
    #[tokio::test]
    async fn status_queries_never_scan_the_wal_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        let queries = [
            TIMELINES_SQL.to_string(),
            timeline_end_sql("ASC"),
            timeline_end_sql("DESC"),
            WAL_HOURS_SQL.to_string(),
            WAL_STATS_SQL.to_string(),
        ];
        for q in queries {
            let explain = format!("EXPLAIN QUERY PLAN {q}");
            let plan: Vec<String> = cat
                .read(move |c| {
                    let mut stmt = c.prepare(&explain)?;
                    // Parameters are NULL: the plan does not depend on their values.
                    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await
                .expect("plan");
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN wal_files")),
                "{q}: {plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn binds_once_and_inserts_idempotently() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        assert_eq!(
            cat.bind_cluster("main", 7, 1 << 24, 15)
                .await
                .expect("bind"),
            Binding::Ok
        );
        assert_eq!(
            cat.bind_cluster("main", 7, 1 << 24, 15)
                .await
                .expect("bind"),
            Binding::Ok
        );
        assert_eq!(
            cat.bind_cluster("main", 8, 1 << 24, 15)
                .await
                .expect("bind"),
            Binding::Mismatch {
                system_identifier: 7,
                segment_size: 1 << 24
            }
        );
        // u64 beyond i64 survives.
        assert_eq!(
            cat.bind_cluster("big", u64::MAX, 1 << 20, 15)
                .await
                .expect("bind"),
            Binding::Ok
        );
        assert_eq!(
            cat.cluster("big")
                .await
                .expect("get")
                .and_then(|c| c.system_identifier),
            Some(u64::MAX)
        );
        assert!(cat
            .insert_wal(row("000000010000000000000001"))
            .await
            .expect("insert"));
        assert!(!cat
            .insert_wal(row("000000010000000000000001"))
            .await
            .expect("insert"));
        assert_eq!(cat.list_wal("main").await.expect("list").len(), 1);
        // Reopening applies no migration twice.
        drop(cat);
        let cat = Catalog::open(&dir.path().join("c.db")).expect("reopen");
        assert_eq!(cat.list_wal("main").await.expect("list").len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_are_batched_and_each_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        // 64 distinct rows and 8 repeats of one name, all at once.
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let cat = cat.clone();
            tasks.push(tokio::spawn(async move {
                cat.insert_wal(row(&format!("0000000100000000000000{i:02X}")))
                    .await
            }));
        }
        for _ in 0..8 {
            let cat = cat.clone();
            tasks.push(tokio::spawn(async move {
                cat.insert_wal(row("0000000200000000000000AA")).await
            }));
        }
        let mut inserted = 0;
        for t in tasks {
            if t.await.expect("join").expect("insert") {
                inserted += 1;
            }
        }
        // Every distinct row once, the repeated name exactly once.
        assert_eq!(inserted, 65);
        assert_eq!(cat.list_wal("main").await.expect("list").len(), 65);
        // The xxh3 column round-trips.
        let mut with_tag = row("0000000300000000000000BB");
        with_tag.xxh3 = Some("ab".repeat(16));
        assert!(cat.insert_wal(with_tag).await.expect("insert"));
        let got = cat
            .wal("main", "0000000300000000000000BB")
            .await
            .expect("get")
            .expect("row");
        assert_eq!(got.xxh3, Some("ab".repeat(16)));
    }

    /// What `summarize` over the stored rows says: the reference for `wal_summary`.
    async fn summarized(c: &Catalog) -> Vec<pgwal::ranges::TimelineSummary> {
        let names: Vec<pgwal::name::WalFileName> = c
            .list_wal("main")
            .await
            .expect("list")
            .iter()
            .filter(|r| r.state == "ok")
            .filter_map(|r| r.name.parse().ok())
            .collect();
        pgwal::ranges::summarize(&names, pgwal::SegmentSize::DEFAULT)
    }

    /// The ranges kept beside the rows always equal those a full listing gives, through
    /// inserts (across an xlog id boundary, on several timelines), state changes, repairs and
    /// deletions, and are rebuilt when someone edits the rows by hand.
    #[tokio::test]
    async fn wal_ranges_follow_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        cat.bind_cluster("main", 7, 16 << 20, 15)
            .await
            .expect("bind");
        let size = pgwal::SegmentSize::DEFAULT;
        let name =
            |tli: u32, segno: u64| pgwal::name::WalFileName::segment(tli, segno, size).to_string();
        let check = |step: String| {
            let cat = cat.clone();
            async move {
                let got = cat.wal_summary("main").await.expect("summary");
                assert_eq!(got.timelines, summarized(&cat).await, "after {step}");
                let consistent = cat
                    .read(|c| Ok(wal_summary_rows(c, "main")?.is_some()))
                    .await
                    .expect("read");
                assert!(consistent, "ranges kept in step after {step}");
            }
        };
        // A fixed pseudo-random order over segments 250..270 of timelines 1 and 2.
        let mut x: u64 = 12345;
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for step in 0..120 {
            let tli = 1 + next(2) as u32;
            let segno = 250 + next(20);
            let n = name(tli, segno);
            match next(4) {
                0 | 1 => {
                    let mut r = row(&n);
                    r.timeline = tli;
                    cat.insert_wal(r).await.expect("insert");
                }
                2 => {
                    let state = if next(2) == 0 { "missing" } else { "ok" };
                    cat.set_wal_state("main", &n, state).await.expect("state");
                }
                _ => {
                    let n2 = n.clone();
                    cat.call(move |c| Ok(delete_wal_row(c, "main", &n2)?))
                        .await
                        .expect("delete");
                }
            }
            check(format!("step {step} on {n}")).await;
        }
        let mut history = row("00000002.history");
        history.kind = "history".into();
        history.timeline = 2;
        cat.insert_wal(history).await.expect("history");
        let mut repaired = row(&name(1, 260));
        cat.set_wal_state("main", &repaired.name, "missing")
            .await
            .expect("missing");
        check("a segment found missing".into()).await;
        repaired.stored_size = 9;
        cat.repair_wal(repaired).await.expect("repair");
        check("a repair".into()).await;
        // By hand, without the catalog's code: the reader notices and rebuilds.
        cat.call(|c| {
            c.execute(
                "DELETE FROM wal_files WHERE cluster = 'main' AND name = ?1",
                params![
                    pgwal::name::WalFileName::segment(1, 255, pgwal::SegmentSize::DEFAULT)
                        .to_string()
                ],
            )?;
            c.execute(
                "INSERT INTO wal_files SELECT cluster, ?1, 'segment', 1, size, sha256,
                 stored_size, object_key, archived_at, 'ok', xxh3 FROM wal_files LIMIT 1",
                params![
                    pgwal::name::WalFileName::segment(1, 400, pgwal::SegmentSize::DEFAULT)
                        .to_string()
                ],
            )?;
            Ok(())
        })
        .await
        .expect("edit by hand");
        check("an edit by hand".into()).await;
    }
}
