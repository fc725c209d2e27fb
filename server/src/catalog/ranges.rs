//! `wal_ranges` (`migrations/0009_wal_ranges.sql`): the runs of consecutive stored segments of
//! each timeline, so that `wal`, `check` and the status page read the ranges and gaps of a
//! million-segment archive from a few rows instead of listing every name.
//!
//! Invariant: for every cluster and timeline, the runs are disjoint, not adjacent, and cover
//! exactly the segment numbers of its `wal_files` rows of kind `segment` in state `ok`. The
//! catalog's own code keeps it in the same transaction as each change of those rows (a trigger
//! cannot turn a name into a segment number without knowing the cluster's segment size). A
//! reader that finds the runs disagreeing with the `wal_timelines` counts (a catalog edited by
//! hand) rebuilds them from the rows: [`rebuild`].

use pgwal::name::WalFileName;
use pgwal::segment::SegmentSize;
use rusqlite::{params, Connection, OptionalExtension};

/// One run of consecutive stored segments of a timeline, by segment number, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub timeline: u32,
    pub first: u64,
    pub last: u64,
}

/// The cluster's segment size, once it is bound.
pub fn segment_size(c: &Connection, cluster: &str) -> rusqlite::Result<Option<SegmentSize>> {
    let size: Option<Option<u64>> = c
        .query_row(
            "SELECT segment_size FROM clusters WHERE name = ?1",
            params![cluster],
            |r| r.get(0),
        )
        .optional()?;
    Ok(size.flatten().and_then(|z| SegmentSize::new(z).ok()))
}

/// Records that the row `name` of `kind` went from `was_ok` to `is_ok` (a new row is
/// `was_ok = false`, a deleted one `is_ok = false`). Only segments matter.
pub fn row_changed(
    c: &Connection,
    cluster: &str,
    name: &str,
    kind: &str,
    was_ok: bool,
    is_ok: bool,
) -> rusqlite::Result<()> {
    if kind != "segment" || was_ok == is_ok {
        return Ok(());
    }
    let Ok(parsed @ WalFileName::Segment { .. }) = name.parse::<WalFileName>() else {
        return Ok(());
    };
    // Without a bound size there can be no runs to keep; a reader's consistency check
    // rebuilds them should such a row exist.
    let Some(segno) = segment_size(c, cluster)?.and_then(|size| parsed.segno(size)) else {
        return Ok(());
    };
    if is_ok {
        add(c, cluster, parsed.timeline(), segno)
    } else {
        remove(c, cluster, parsed.timeline(), segno)
    }
}

/// The run of `timeline` holding `segno`, if any.
fn containing(
    c: &Connection,
    cluster: &str,
    timeline: u32,
    segno: u64,
) -> rusqlite::Result<Option<(u64, u64)>> {
    let run: Option<(u64, u64)> = c
        .prepare_cached(
            "SELECT first_segno, last_segno FROM wal_ranges
             WHERE cluster = ?1 AND timeline = ?2 AND first_segno <= ?3
             ORDER BY first_segno DESC LIMIT 1",
        )?
        .query_row(params![cluster, timeline, segno], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(run.filter(|&(_, last)| last >= segno))
}

fn insert(
    c: &Connection,
    cluster: &str,
    timeline: u32,
    first: u64,
    last: u64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO wal_ranges (cluster, timeline, first_segno, last_segno) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![cluster, timeline, first, last])?;
    Ok(())
}

fn delete(c: &Connection, cluster: &str, timeline: u32, first: u64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "DELETE FROM wal_ranges WHERE cluster = ?1 AND timeline = ?2 AND first_segno = ?3",
    )?
    .execute(params![cluster, timeline, first])?;
    Ok(())
}

fn add(c: &Connection, cluster: &str, timeline: u32, segno: u64) -> rusqlite::Result<()> {
    if containing(c, cluster, timeline, segno)?.is_some() {
        return Ok(());
    }
    // The run ending just before, and the run starting just after.
    let before: Option<u64> = match segno.checked_sub(1) {
        Some(prev) => c
            .prepare_cached(
                "SELECT first_segno FROM wal_ranges
                 WHERE cluster = ?1 AND timeline = ?2 AND last_segno = ?3",
            )?
            .query_row(params![cluster, timeline, prev], |r| r.get(0))
            .optional()?,
        None => None,
    };
    let after: Option<u64> = c
        .prepare_cached(
            "SELECT last_segno FROM wal_ranges
             WHERE cluster = ?1 AND timeline = ?2 AND first_segno = ?3",
        )?
        .query_row(params![cluster, timeline, segno + 1], |r| r.get(0))
        .optional()?;
    if after.is_some() {
        delete(c, cluster, timeline, segno + 1)?;
    }
    let last = after.unwrap_or(segno);
    match before {
        Some(first) => {
            c.prepare_cached(
                "UPDATE wal_ranges SET last_segno = ?4
                 WHERE cluster = ?1 AND timeline = ?2 AND first_segno = ?3",
            )?
            .execute(params![cluster, timeline, first, last])?;
            Ok(())
        }
        None => insert(c, cluster, timeline, segno, last),
    }
}

fn remove(c: &Connection, cluster: &str, timeline: u32, segno: u64) -> rusqlite::Result<()> {
    let Some((first, last)) = containing(c, cluster, timeline, segno)? else {
        return Ok(());
    };
    delete(c, cluster, timeline, first)?;
    if first < segno {
        insert(c, cluster, timeline, first, segno - 1)?;
    }
    if segno < last {
        insert(c, cluster, timeline, segno + 1, last)?;
    }
    Ok(())
}

/// The runs of `cluster`, by timeline then segment number.
pub fn runs(c: &Connection, cluster: &str) -> rusqlite::Result<Vec<Run>> {
    let mut stmt = c.prepare_cached(
        "SELECT timeline, first_segno, last_segno FROM wal_ranges
         WHERE cluster = ?1 ORDER BY timeline, first_segno",
    )?;
    let rows = stmt.query_map(params![cluster], |r| {
        Ok(Run {
            timeline: r.get(0)?,
            first: r.get(1)?,
            last: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Whether `runs` count, per timeline, the stored segments the `wal_timelines` aggregate counts.
pub fn consistent(c: &Connection, cluster: &str, runs: &[Run]) -> rusqlite::Result<bool> {
    let mut counted = std::collections::BTreeMap::<u32, u64>::new();
    for r in runs {
        *counted.entry(r.timeline).or_default() += r.last - r.first + 1;
    }
    let mut stmt = c.prepare_cached(
        "SELECT timeline, segments FROM wal_timelines WHERE cluster = ?1 AND segments > 0",
    )?;
    let expected = stmt
        .query_map(params![cluster], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, u64>(1)?))
        })?
        .collect::<rusqlite::Result<std::collections::BTreeMap<u32, u64>>>()?;
    Ok(counted == expected)
}

/// Recomputes the runs of `cluster` from its rows (one scan of its segment names).
pub fn rebuild(c: &Connection, cluster: &str) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM wal_ranges WHERE cluster = ?1",
        params![cluster],
    )?;
    let Some(size) = segment_size(c, cluster)? else {
        return Ok(());
    };
    let mut segments: Vec<(u32, u64)> = {
        let mut stmt = c.prepare(
            "SELECT name FROM wal_files WHERE cluster = ?1 AND kind = 'segment' AND state = 'ok'",
        )?;
        let names = stmt.query_map(params![cluster], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for name in names {
            if let Ok(n @ WalFileName::Segment { .. }) = name?.parse::<WalFileName>() {
                out.extend(n.segno(size).map(|s| (n.timeline(), s)));
            }
        }
        out
    };
    segments.sort_unstable();
    segments.dedup();
    let mut run: Option<Run> = None;
    for (timeline, segno) in segments {
        match run.as_mut() {
            Some(r) if r.timeline == timeline && r.last + 1 == segno => r.last = segno,
            _ => {
                if let Some(r) = run.take() {
                    insert(c, cluster, r.timeline, r.first, r.last)?;
                }
                run = Some(Run {
                    timeline,
                    first: segno,
                    last: segno,
                });
            }
        }
    }
    if let Some(r) = run {
        insert(c, cluster, r.timeline, r.first, r.last)?;
    }
    Ok(())
}

/// Recomputes the runs of every cluster (the migration that creates the table).
pub fn rebuild_all(c: &Connection) -> rusqlite::Result<()> {
    let clusters: Vec<String> = {
        let mut stmt = c.prepare("SELECT name FROM clusters")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for cluster in clusters {
        rebuild(c, &cluster)?;
    }
    Ok(())
}
