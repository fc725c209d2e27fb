//! The `drills` table (`migrations/0008_drills.sql`) and the drills' records in storage
//! (`meta/drills/CLUSTER/ID.json`, see [`crate::meta`]).
//!
//! A drill's row is inserted `running` when it starts; its end is written to storage first and
//! then to its row ([`finish`]), so that what `check` reports survives the loss of the catalog
//! (DESIGN §7.9).

use pgwal::api::{DrillReport, DrillSummary};
use rusqlite::{params, OptionalExtension};

use crate::catalog::{Catalog, CatalogError};
use crate::wal::archive::Archive;

fn encode(report: &DrillReport) -> Result<String, CatalogError> {
    serde_json::to_string(report)
        .map_err(|e| CatalogError::Task(format!("encoding a drill report: {e}")))
}

fn decode(row: &rusqlite::Row<'_>) -> rusqlite::Result<DrillReport> {
    let id: i64 = row.get(0)?;
    let text: String = row.get(1)?;
    let mut report: DrillReport = serde_json::from_str(&text).unwrap_or_default();
    // The columns are what the row says, whatever the JSON holds.
    report.id = id;
    report.result = row.get(2)?;
    report.error = row.get(3)?;
    report.ended_at = row.get(4)?;
    Ok(report)
}

const SELECT: &str = "SELECT id, report, result, error, ended_at FROM drills";

/// Inserts a drill as `running`; returns its id (also set in the stored report).
pub async fn insert(cat: &Catalog, report: &DrillReport) -> Result<i64, CatalogError> {
    let report = report.clone();
    cat.call(move |c| {
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO drills (cluster, backup_id, job_id, started_at, result, report)
             VALUES (?1, ?2, ?3, ?4, 'running', '{}')",
            params![
                report.cluster,
                report.backup_id,
                report.job_id,
                report.started_at
            ],
        )?;
        let id = tx.last_insert_rowid();
        let mut with_id = report;
        with_id.id = id;
        with_id.result = "running".into();
        tx.execute(
            "UPDATE drills SET report = ?2 WHERE id = ?1",
            params![id, encode(&with_id)?],
        )?;
        tx.commit()?;
        Ok(id)
    })
    .await
}

/// Records how a drill ended: its record in storage first, then its row. A record that cannot
/// be written fails the call (the row stays `running` and the drill is failed at the next
/// start, when its record is written again).
pub async fn finish(archive: &Archive, report: &DrillReport) -> Result<(), String> {
    let key = crate::meta::drill_key(&report.cluster, report.id);
    crate::meta::put(&*archive.blobs, &key, report)
        .await
        .map_err(|e| format!("cannot record drill {} in storage: {e}", report.id))?;
    update(&archive.catalog, report)
        .await
        .map_err(|e| format!("cannot record drill {} in the catalog: {e}", report.id))
}

async fn update(cat: &Catalog, report: &DrillReport) -> Result<(), CatalogError> {
    let report = report.clone();
    cat.call(move |c| {
        c.execute(
            "UPDATE drills SET result = ?2, error = ?3, ended_at = ?4, report = ?5 WHERE id = ?1",
            params![
                report.id,
                report.result,
                report.error,
                report.ended_at,
                encode(&report)?
            ],
        )?;
        Ok(())
    })
    .await
}

/// A drill from its record in storage (a rebuild); a drill of that id already there is kept.
pub async fn restore(cat: &Catalog, report: DrillReport) -> Result<(), CatalogError> {
    cat.call(move |c| {
        c.execute(
            "INSERT OR IGNORE INTO drills (id, cluster, backup_id, job_id, started_at, ended_at,
                 result, error, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                report.id,
                report.cluster,
                report.backup_id,
                report.job_id,
                report.started_at,
                report.ended_at,
                report.result,
                report.error,
                encode(&report)?
            ],
        )?;
        Ok(())
    })
    .await
}

/// Drill `id` of `cluster`.
pub async fn get(
    cat: &Catalog,
    cluster: &str,
    id: i64,
) -> Result<Option<DrillReport>, CatalogError> {
    let cluster = cluster.to_string();
    cat.read(move |c| {
        Ok(c.query_row(
            &format!("{SELECT} WHERE cluster = ?1 AND id = ?2"),
            params![cluster, id],
            decode,
        )
        .optional()?)
    })
    .await
}

/// The drills of a cluster, newest first (at most `limit`).
pub async fn list(
    cat: &Catalog,
    cluster: &str,
    limit: u32,
) -> Result<Vec<DrillReport>, CatalogError> {
    let cluster = cluster.to_string();
    cat.read(move |c| {
        let mut stmt = c.prepare(&format!(
            "{SELECT} WHERE cluster = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![cluster, limit], decode)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

/// The newest drill of a cluster that has ended (`ok` or `failed`), and the newest that passed.
pub async fn newest_ended(
    cat: &Catalog,
    cluster: &str,
) -> Result<(Option<DrillReport>, Option<DrillReport>), CatalogError> {
    let cluster = cluster.to_string();
    cat.read(move |c| {
        let ended = c
            .query_row(
                &format!(
                    "{SELECT} WHERE cluster = ?1 AND result <> 'running' ORDER BY id DESC LIMIT 1"
                ),
                params![cluster],
                decode,
            )
            .optional()?;
        let passed = c
            .query_row(
                &format!("{SELECT} WHERE cluster = ?1 AND result = 'ok' ORDER BY id DESC LIMIT 1"),
                params![cluster],
                decode,
            )
            .optional()?;
        Ok((ended, passed))
    })
    .await
}

/// The newest drill of each backup of `cluster` that has one, by backup id.
pub async fn last_per_backup(
    cat: &Catalog,
    cluster: &str,
) -> Result<std::collections::HashMap<String, DrillSummary>, CatalogError> {
    let cluster = cluster.to_string();
    cat.read(move |c| {
        let mut stmt = c.prepare(&format!(
            "{SELECT} WHERE id IN (SELECT max(id) FROM drills WHERE cluster = ?1 GROUP BY backup_id)"
        ))?;
        let rows = stmt.query_map(params![cluster], decode)?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            let r = r?;
            out.insert(r.backup_id.clone(), r.summary());
        }
        Ok(out)
    })
    .await
}

/// Drills still marked `running` (interrupted by a stop of the server, at start).
pub async fn running(cat: &Catalog) -> Result<Vec<DrillReport>, CatalogError> {
    cat.call(move |c| {
        let mut stmt = c.prepare(&format!("{SELECT} WHERE result = 'running'"))?;
        let rows = stmt.query_map([], decode)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cluster: &str, backup: &str) -> DrillReport {
        DrillReport {
            cluster: cluster.into(),
            backup_id: backup.into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            target: "end of archive".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn newest_per_backup_and_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.sqlite3")).expect("open");
        let a = insert(&cat, &report("main", "B1")).await.expect("insert");
        let b = insert(&cat, &report("main", "B1")).await.expect("insert");
        let c = insert(&cat, &report("main", "B2")).await.expect("insert");
        assert!(a < b && b < c);
        let mut done = get(&cat, "main", a).await.expect("get").expect("row");
        done.result = "ok".into();
        done.ended_at = Some("2026-01-01T00:01:00Z".into());
        update(&cat, &done).await.expect("update");
        let mut failed = get(&cat, "main", c).await.expect("get").expect("row");
        failed.result = "failed".into();
        failed.error = Some("segment X is missing".into());
        update(&cat, &failed).await.expect("update");

        let per = last_per_backup(&cat, "main").await.expect("per backup");
        assert_eq!(per["B1"].id, b);
        assert_eq!(per["B1"].result, "running");
        assert_eq!(per["B2"].result, "failed");
        let (ended, passed) = newest_ended(&cat, "main").await.expect("newest");
        assert_eq!(ended.map(|r| r.id), Some(c));
        assert_eq!(passed.map(|r| r.id), Some(a));
        assert_eq!(running(&cat).await.expect("running").len(), 1);
        assert!(list(&cat, "other", 10).await.expect("list").is_empty());
    }
}
