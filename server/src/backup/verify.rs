//! Verifying a backup: every stored file re-read and re-hashed (decompress + SHA-256), compared
//! with the catalog and with PostgreSQL's own `backup_manifest` checksums (CRC-32C, which base
//! backups ask for, or SHA-256 in older backups); and the WAL it needs,
//! from its begin to its end LSN, present in the archive. Gaps in the WAL after the backup's end
//! (up to the newest archived segment of its timeline) are reported apart: they do not prevent
//! restoring to the backup's end, only replaying past them.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use pgwal::api::VerifyReport;
use pgwal::checksum::Crc32c;
use pgwal::name::WalFileName;
use pgwal::SegmentSize;

use super::catalog::{self, BackupRow};
use super::engine::wal_range;
use super::BackupError;
use crate::catalog::ranges::Run;
use crate::wal::archive::{Archive, ArchiveError, ContentSums};
use crate::wal::object_format::Decompressor;

/// The manifest's view of one file.
struct ManifestEntry {
    size: u64,
    checksum: ManifestChecksum,
}

/// A file's `"Checksum-Algorithm"` and `"Checksum"` in the manifest.
enum ManifestChecksum {
    /// Lowercase hex.
    Sha256(String),
    /// As PostgreSQL writes it: the CRC's bytes in the primary's byte order, hex.
    Crc32c(String),
    /// `MANIFEST_CHECKSUMS 'none'`, or an algorithm not re-computed here (SHA224, SHA384, ...).
    Unchecked,
}

pub async fn verify(
    archive: &Archive,
    row: &BackupRow,
    progress: Option<&crate::jobs::runs::Progress>,
) -> Result<VerifyReport, BackupError> {
    let info = &row.info;
    let cluster = info.cluster.as_str();
    let mut report = VerifyReport {
        id: info.id.clone(),
        ok: false,
        files_checked: 0,
        bytes_checked: 0,
        problems: Vec::new(),
        wal_gaps_after: Vec::new(),
    };
    if info.status != "done" {
        report.problems.push(format!(
            "backup {} is {}, not done{}",
            info.id,
            info.status,
            info.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
    }

    // 1. Every stored file, each distinct blob hashed once.
    let files = catalog::files(&archive.catalog, cluster, &info.id).await?;
    let total: u64 = files
        .iter()
        .filter(|f| f.kind == "file")
        .map(|f| f.size)
        .sum();
    let report_progress = |done: u64, step: &str| {
        if let Some(p) = progress {
            p.update(|p| {
                p.total_bytes = Some(total);
                p.done_bytes = done;
                p.step = step.to_string();
            });
        }
    };
    report_progress(0, "re-hashing the backup's files");
    // Content SHA-256 -> its CRC-32C, or why the stored object is not what it should be.
    let mut checked: HashMap<String, Result<Crc32c, String>> = HashMap::new();
    for f in files.iter().filter(|f| f.kind == "file") {
        let where_ = display_path(f.tablespace_oid, &f.path);
        let Some(sha) = f.sha256.as_deref() else {
            report
                .problems
                .push(format!("{where_}: the catalog has no checksum"));
            continue;
        };
        if !checked.contains_key(sha) {
            let result = check_blob(archive, cluster, sha, f.size).await;
            checked.insert(sha.to_string(), result);
        }
        if let Some(Err(why)) = checked.get(sha) {
            report.problems.push(format!("{where_}: {why}"));
        }
        report.files_checked += 1;
        report.bytes_checked += f.size;
        report_progress(report.bytes_checked, "re-hashing the backup's files");
    }
    report_progress(report.bytes_checked, "checking the manifest and the WAL");

    // 2. The manifest, against the catalog.
    match (&row.manifest_key, &row.manifest_sha256) {
        (Some(key), Some(sha)) => match read_manifest(archive, key, sha).await {
            Ok(manifest) => compare_manifest(&manifest, &files, &checked, &mut report.problems),
            Err(why) => report.problems.push(format!("backup_manifest: {why}")),
        },
        _ if info.status == "done" => report
            .problems
            .push("the backup has no stored backup_manifest".into()),
        _ => {}
    }

    // 3. WAL from begin to end, and gaps after the end.
    check_wal(archive, row, &mut report).await?;
    report.ok = report.problems.is_empty();
    Ok(report)
}

fn display_path(tablespace: Option<u32>, path: &str) -> String {
    match tablespace {
        Some(oid) => format!("pg_tblspc/{oid}/{path}"),
        None => path.to_string(),
    }
}

/// Re-hashes a stored file's object; its CRC-32C when it is intact.
async fn check_blob(
    archive: &Archive,
    cluster: &str,
    sha: &str,
    size: u64,
) -> Result<Crc32c, String> {
    let blob = catalog::blob(&archive.catalog, cluster, sha)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no stored object is cataloged for content {sha}"))?;
    match archive.content_sums(&blob.object_key).await {
        Ok(ContentSums {
            sha256: Some(got),
            crc32c: Some(crc),
            size: got_size,
            ..
        }) if got == sha && got_size == size => Ok(crc),
        Ok(sums) => Err(format!(
            "stored object {} is damaged: expected SHA-256 {sha} ({size} bytes), read {} \
             ({} bytes)",
            blob.object_key,
            sums.sha256.unwrap_or_default(),
            sums.size
        )),
        Err(ArchiveError::MissingObject(_)) => Err(format!(
            "stored object {} is missing from storage",
            blob.object_key
        )),
        Err(e) => Err(format!(
            "stored object {} cannot be read: {e}",
            blob.object_key
        )),
    }
}

/// Reads the stored manifest, checking its own SHA-256, and collects its file entries.
///
/// PostgreSQL writes one file entry per line (`{ "Path": ..., "Size": ..., ... },`), so the
/// manifest is parsed line by line as it is decompressed.
async fn read_manifest(
    archive: &Archive,
    key: &str,
    sha: &str,
) -> Result<HashMap<String, ManifestEntry>, String> {
    let mut stream = archive.blobs.get(key).await.map_err(|e| e.to_string())?;
    let mut dec = Decompressor::new().map_err(|e| e.to_string())?;
    let mut hasher = pgwal::checksum::Sha256::new();
    let mut line = Vec::new();
    let mut entries = HashMap::new();
    let mut bad = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        dec.write(&chunk, |plain| {
            hasher.update(plain);
            for b in plain {
                if *b == b'\n' {
                    if let Err(e) = manifest_line(&line, &mut entries) {
                        bad.get_or_insert(e);
                    }
                    line.clear();
                } else {
                    line.push(*b);
                }
            }
            Ok(())
        })
        .map_err(|e| format!("cannot be decompressed: {e}"))?;
    }
    if !line.is_empty() {
        if let Err(e) = manifest_line(&line, &mut entries) {
            bad.get_or_insert(e);
        }
    }
    let got = hasher.finish_hex();
    if got != sha {
        return Err(format!(
            "stored object {key} is damaged: expected SHA-256 {sha}, read {got}"
        ));
    }
    if let Some(e) = bad {
        return Err(e);
    }
    Ok(entries)
}

fn manifest_line(line: &[u8], entries: &mut HashMap<String, ManifestEntry>) -> Result<(), String> {
    let text = String::from_utf8_lossy(line);
    let t = text.trim();
    if !(t.starts_with('{') && (t.contains("\"Path\"") || t.contains("\"Encoded-Path\""))) {
        return Ok(());
    }
    let t = t.trim_end_matches(',');
    let v: serde_json::Value =
        serde_json::from_str(t).map_err(|e| format!("unreadable entry {t:?}: {e}"))?;
    let path = match (v.get("Path"), v.get("Encoded-Path")) {
        (Some(p), _) => p.as_str().map(str::to_string),
        (None, Some(e)) => e
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
    .ok_or_else(|| format!("entry without a path: {t:?}"))?;
    let size = v
        .get("Size")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| format!("entry {path} has no size"))?;
    let value = || {
        v.get("Checksum")
            .and_then(|c| c.as_str())
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| format!("entry {path} has a Checksum-Algorithm but no Checksum"))
    };
    let checksum = match v.get("Checksum-Algorithm").and_then(|a| a.as_str()) {
        Some(a) if a.eq_ignore_ascii_case("SHA256") => ManifestChecksum::Sha256(value()?),
        Some(a) if a.eq_ignore_ascii_case("CRC32C") => ManifestChecksum::Crc32c(value()?),
        _ => ManifestChecksum::Unchecked,
    };
    entries.insert(path, ManifestEntry { size, checksum });
    Ok(())
}

/// The catalog's file list against the manifest: the same paths and sizes, and each file's
/// stored content matching the manifest's checksum (`crcs`: the CRC-32C of each intact stored
/// content, by SHA-256; a damaged one is already reported).
fn compare_manifest(
    manifest: &HashMap<String, ManifestEntry>,
    files: &[pgwal::api::BackupFile],
    crcs: &HashMap<String, Result<Crc32c, String>>,
    problems: &mut Vec<String>,
) {
    let mut seen = HashSet::new();
    for f in files.iter().filter(|f| f.kind == "file") {
        let path = display_path(f.tablespace_oid, &f.path);
        match manifest.get(&path) {
            None => problems.push(format!("{path}: stored, but not listed in backup_manifest")),
            Some(m) => {
                if m.size != f.size {
                    problems.push(format!(
                        "{path}: {} bytes stored, backup_manifest says {}",
                        f.size, m.size
                    ));
                }
                let stored = f.sha256.as_deref().unwrap_or_default();
                match &m.checksum {
                    ManifestChecksum::Sha256(a) if a != stored => problems.push(format!(
                        "{path}: SHA-256 {stored} stored, backup_manifest says {a}"
                    )),
                    ManifestChecksum::Crc32c(a) => match crcs.get(stored) {
                        Some(Ok(crc)) if !crc.matches_manifest(a) => problems.push(format!(
                            "{path}: CRC-32C {:08x} stored, backup_manifest says {a}",
                            crc.finish()
                        )),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        seen.insert(path);
    }
    let mut absent: Vec<&String> = manifest.keys().filter(|p| !seen.contains(*p)).collect();
    absent.sort();
    for p in absent {
        problems.push(format!(
            "{p}: listed in backup_manifest, but not in the backup"
        ));
    }
}

async fn check_wal(
    archive: &Archive,
    row: &BackupRow,
    report: &mut VerifyReport,
) -> Result<(), BackupError> {
    let info = &row.info;
    let (Some(first), Some(last)) = (info.begin_wal.as_deref(), info.end_wal.as_deref()) else {
        if info.status == "done" {
            report
                .problems
                .push("the backup has no recorded WAL range".into());
        }
        return Ok(());
    };
    let size = archive
        .catalog
        .cluster(&info.cluster)
        .await?
        .and_then(|c| c.segment_size)
        .and_then(|z| SegmentSize::new(z).ok());
    let (Ok(first), Ok(last), Some(size)) = (
        first.parse::<WalFileName>(),
        last.parse::<WalFileName>(),
        size,
    ) else {
        report
            .problems
            .push(format!("cannot compute the WAL range {first} .. {last}"));
        return Ok(());
    };
    // The stored runs of consecutive segments: bounded by the archive's gaps, not its size.
    let runs = archive.catalog.wal_summary(&info.cluster).await?.runs;
    for name in wal_range(&first, &last, size).unwrap_or_default() {
        let stored = name
            .parse::<WalFileName>()
            .ok()
            .and_then(|n| Some((n.timeline(), n.segno(size)?)))
            .is_some_and(|(tli, segno)| stored(&runs, tli, segno));
        if !stored {
            report.problems.push(format!(
                "WAL segment {name} (needed from {first} to {last}) is not in the archive"
            ));
        }
    }
    // After the end: up to the newest archived segment of the end's timeline.
    let Some(end) = last.segno(size) else {
        return Ok(());
    };
    report.wal_gaps_after = gaps_after(&runs, last.timeline(), end, size);
    Ok(())
}

/// Whether segment `segno` of timeline `tli` is in one of the stored `runs`.
fn stored(runs: &[Run], tli: u32, segno: u64) -> bool {
    runs.iter()
        .any(|r| r.timeline == tli && r.first <= segno && segno <= r.last)
}

/// The missing stretches of timeline `tli` between segment `end` and the newest stored one
/// (`A` or `A-B`, as WAL file names).
fn gaps_after(runs: &[Run], tli: u32, end: u64, size: SegmentSize) -> Vec<String> {
    let mut after: Vec<(u64, u64)> = runs
        .iter()
        .filter(|r| r.timeline == tli && r.last > end)
        .map(|r| (r.first.max(end + 1), r.last))
        .collect();
    after.sort_unstable();
    let mut gaps = Vec::new();
    let mut next = end + 1;
    for (first, last) in after {
        if first > next {
            let a = WalFileName::segment(tli, next, size);
            let b = WalFileName::segment(tli, first - 1, size);
            gaps.push(if next == first - 1 {
                a.to_string()
            } else {
                format!("{a}-{b}")
            });
        }
        next = next.max(last + 1);
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_gaps_after_the_end_come_from_the_runs() {
        let size = SegmentSize::new(16 << 20).expect("size");
        let run = |timeline, first, last| Run {
            timeline,
            first,
            last,
        };
        let runs = [run(1, 1, 10), run(1, 12, 12), run(1, 16, 20), run(2, 5, 30)];
        assert!(stored(&runs, 1, 10) && stored(&runs, 1, 12) && stored(&runs, 2, 30));
        assert!(!stored(&runs, 1, 11) && !stored(&runs, 2, 4) && !stored(&runs, 3, 5));
        assert_eq!(
            gaps_after(&runs, 1, 8, size),
            vec![
                "00000001000000000000000B".to_string(),
                "00000001000000000000000D-00000001000000000000000F".to_string()
            ]
        );
        // A gap right after the end, none past the newest, none on a complete timeline.
        assert_eq!(
            gaps_after(&runs, 1, 13, size),
            vec!["00000001000000000000000E-00000001000000000000000F".to_string()]
        );
        assert!(gaps_after(&runs, 1, 20, size).is_empty());
        assert!(gaps_after(&runs, 2, 6, size).is_empty());
    }

    #[test]
    fn manifest_lines() {
        let mut m = HashMap::new();
        manifest_line(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,", &mut m).expect("skip");
        manifest_line(
            b"{ \"Path\": \"global/pg_control\", \"Size\": 8192, \"Last-Modified\": \"2026-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"AB\" },",
            &mut m,
        )
        .expect("entry");
        manifest_line(
            b"{ \"Encoded-Path\": \"6162\", \"Size\": 1, \"Last-Modified\": \"x\" }",
            &mut m,
        )
        .expect("encoded");
        manifest_line(
            b"{ \"Path\": \"PG_VERSION\", \"Size\": 9, \"Last-Modified\": \"x\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"839206E3\" },",
            &mut m,
        )
        .expect("crc entry");
        assert_eq!(m["global/pg_control"].size, 8192);
        assert!(
            matches!(&m["global/pg_control"].checksum, ManifestChecksum::Sha256(s) if s == "ab")
        );
        assert!(matches!(m["ab"].checksum, ManifestChecksum::Unchecked));
        assert!(
            matches!(&m["PG_VERSION"].checksum, ManifestChecksum::Crc32c(s) if s == "839206e3")
        );
    }

    #[test]
    fn a_crc32c_that_disagrees_with_the_stored_content_is_reported() {
        let file = |path: &str, sha: &str| pgwal::api::BackupFile {
            path: path.to_string(),
            kind: "file".to_string(),
            size: 9,
            sha256: Some(sha.to_string()),
            tablespace_oid: None,
            mode: 0o600,
            mtime: 0,
            link_target: None,
        };
        let files = vec![file("PG_VERSION", "s1"), file("other", "s2")];
        let mut crc = Crc32c::new();
        crc.update(b"123456789");
        let mut crcs = HashMap::new();
        crcs.insert("s1".to_string(), Ok(crc));
        let mut crc = Crc32c::new();
        crc.update(b"123456780");
        crcs.insert("s2".to_string(), Ok(crc));
        let entry = |hex: &str| ManifestEntry {
            size: 9,
            checksum: ManifestChecksum::Crc32c(hex.to_string()),
        };
        let manifest: HashMap<String, ManifestEntry> = [
            ("PG_VERSION".to_string(), entry("839206e3")),
            ("other".to_string(), entry("839206e3")),
        ]
        .into_iter()
        .collect();
        let mut problems = Vec::new();
        compare_manifest(&manifest, &files, &crcs, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("other: CRC-32C"), "{problems:?}");
    }
}
