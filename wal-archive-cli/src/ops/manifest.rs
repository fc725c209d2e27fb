//! PostgreSQL's `backup_manifest` (format version 1, written by `BASE_BACKUP ... MANIFEST`): the
//! file list restore checks every downloaded file against, independently of the server's own
//! catalog, and the one edit restore makes to it.
//!
//! Layout (src/backend/backup/backup_manifest.c): a JSON object with `"Files"`, an array of
//! `{"Path" | "Encoded-Path", "Size", "Last-Modified", ["Checksum-Algorithm", "Checksum"]}`,
//! `"WAL-Ranges"`, and last `"Manifest-Checksum"`: the SHA-256 of every byte of the file up to
//! and including its second-to-last newline (pg_verifybackup's verify_manifest_checksum).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use pgwal::checksum::sha256_hex;
use serde::Deserialize;

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "Manifest-Checksum")]
    manifest_checksum: Option<String>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// What the manifest says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub size: u64,
    /// Lowercase hex SHA-256, when the backup was taken with `MANIFEST_CHECKSUMS 'SHA256'`.
    pub sha256: Option<String>,
    /// The algorithm when it is not SHA-256 (`CRC32C`, ...), or `None`.
    pub other_algorithm: Option<String>,
}

/// The files of a manifest by path (`pg_tblspc/OID/...` for tablespace files).
pub struct Manifest {
    pub files: HashMap<String, ManifestFile>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).context("the backup_manifest is not valid JSON")?;
        if raw.version != 1 {
            bail!(
                "backup_manifest version {} is not supported (only 1)",
                raw.version
            );
        }
        if let Some(expected) = raw.manifest_checksum {
            let actual = sha256_hex(checksummed_part(bytes)?);
            if !actual.eq_ignore_ascii_case(&expected) {
                bail!(
                    "the backup_manifest fails its own checksum (Manifest-Checksum {expected}, \
                     computed {actual}): it is damaged"
                );
            }
        }
        let mut files = HashMap::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), _) => p,
                (None, Some(hexed)) => {
                    let bytes = hex::decode(&hexed).with_context(|| {
                        format!("bad Encoded-Path {hexed:?} in backup_manifest")
                    })?;
                    String::from_utf8(bytes).with_context(|| {
                        format!("backup_manifest lists a file whose name is not UTF-8 ({hexed})")
                    })?
                }
                (None, None) => bail!("backup_manifest lists a file without a path"),
            };
            let algorithm = f.algorithm.map(|a| a.to_ascii_uppercase());
            let (sha256, other_algorithm) = match algorithm.as_deref() {
                Some("SHA256") => (
                    Some(
                        f.checksum
                            .with_context(|| format!("{path}: SHA256 without a checksum"))?
                            .to_ascii_lowercase(),
                    ),
                    None,
                ),
                None | Some("NONE") => (None, None),
                Some(other) => (None, Some(other.to_string())),
            };
            files.insert(
                path,
                ManifestFile {
                    size: f.size,
                    sha256,
                    other_algorithm,
                },
            );
        }
        Ok(Manifest { files })
    }
}

/// The bytes `Manifest-Checksum` covers: up to and including the second-to-last newline.
fn checksummed_part(bytes: &[u8]) -> Result<&[u8]> {
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    match newlines.len() {
        n if n >= 2 => Ok(&bytes[..=newlines[n - 2]]),
        _ => bail!("the backup_manifest ends early (fewer than two lines)"),
    }
}

/// The manifest with one file's entry changed to `size` and SHA-256 `sha256`, and the
/// `Manifest-Checksum` recomputed, keeping PostgreSQL's layout (one file per line).
///
/// Restore uses it for `tablespace_map` when tablespaces move: PostgreSQL recreates the
/// `pg_tblspc` links from that file at the start of recovery, so it must name the new locations,
/// and the manifest written beside the data must describe what is really there.
pub fn with_file_replaced(bytes: &[u8], path: &str, size: u64, sha256: &str) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(bytes).context("the backup_manifest is not UTF-8")?;
    let needle = format!("\"Path\": {}", serde_json::to_string(path)?);
    let mut found = false;
    let mut out = String::with_capacity(text.len() + 64);
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    // The last line holds Manifest-Checksum; it is rewritten below.
    let last = lines.pop().context("empty backup_manifest")?;
    if !last.contains("\"Manifest-Checksum\"") {
        bail!("the backup_manifest does not end with its Manifest-Checksum line");
    }
    for line in lines {
        if line.contains(&needle) {
            found = true;
            let trailer = if line.trim_end().ends_with("},") {
                ",\n"
            } else {
                "\n"
            };
            let mut entry: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line.trim_end().trim_end_matches(','))
                    .with_context(|| format!("cannot read the manifest line of {path}"))?;
            entry.insert("Size".into(), size.into());
            entry.insert("Checksum-Algorithm".into(), "SHA256".into());
            entry.insert("Checksum".into(), sha256.into());
            let fields: Vec<String> = entry
                .iter()
                .map(|(k, v)| format!("{}: {v}", serde_json::Value::from(k.as_str())))
                .collect();
            out.push_str(&format!("{{ {} }}{trailer}", fields.join(", ")));
        } else {
            out.push_str(line);
        }
    }
    if !found {
        bail!("the backup_manifest has no entry for {path}");
    }
    let checksum = sha256_hex(out.as_bytes());
    out.push_str(&format!("\"Manifest-Checksum\": \"{checksum}\"}}\n"));
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\
\"Files\": [\n\
{ \"Path\": \"backup_label\", \"Size\": 3, \"Last-Modified\": \"2026-11-21 22:00:00 GMT\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\" },\n\
{ \"Path\": \"tablespace_map\", \"Size\": 0, \"Last-Modified\": \"2026-11-21 22:00:00 GMT\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\" },\n\
{ \"Encoded-Path\": \"6162\", \"Size\": 0, \"Last-Modified\": \"2026-11-21 22:00:00 GMT\" }\n\
],\n\
\"WAL-Ranges\": [\n\
{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n\
],\n";
        let sum = sha256_hex(body.as_bytes());
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
    }

    #[test]
    fn parses_and_checks_its_own_checksum() {
        let m = Manifest::parse(&sample()).expect("parse");
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.files["backup_label"].size, 3);
        assert!(m.files["ab"].sha256.is_none());
        let mut bad = sample();
        bad[60] ^= 1;
        assert!(Manifest::parse(&bad).is_err());
    }

    #[test]
    fn replaces_one_entry_and_stays_valid() {
        let new = with_file_replaced(&sample(), "tablespace_map", 5, "00ff").expect("edit");
        let m = Manifest::parse(&new).expect("still valid");
        assert_eq!(m.files["tablespace_map"].size, 5);
        assert_eq!(m.files["tablespace_map"].sha256.as_deref(), Some("00ff"));
        assert_eq!(m.files["backup_label"].size, 3);
        assert!(with_file_replaced(&sample(), "nope", 1, "00").is_err());
    }
}
