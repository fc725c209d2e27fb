//! `wal-archive push`: PostgreSQL's archive_command. Exit 0 only once the server says the file is
//! durably stored (201) or an identical copy already was (200) — DESIGN §4.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use pgwal::api::PutResponse;
use pgwal::checksum::Sha256;
use pgwal::name::WalFileName;

use crate::client::{status_failure, with_retries, Client, Failure};

pub const DEFAULT_RETRY: Duration = Duration::from_secs(60);

pub fn push(client: &Client, cluster: &str, path: &Path) -> Result<PutResponse, Failure> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure::Fatal(format!("{} has no file name", path.display())))?;
    let wal_name: WalFileName = name.parse().map_err(|e| {
        Failure::Fatal(format!(
            "{name:?} is not a WAL file name PostgreSQL archives: {e}"
        ))
    })?;
    let sha256 = hash_file(path)?;
    let url_path = format!("/v1/clusters/{cluster}/wal/{wal_name}");
    let window = client.settings.retry_for.unwrap_or(DEFAULT_RETRY);
    with_retries(window, &format!("push {wal_name}"), || {
        // Re-open for every attempt so each sends the file from its start.
        let file = File::open(path)
            .map_err(|e| Failure::Fatal(format!("cannot open {}: {e}", path.display())))?;
        let mut resp = client.put_file(&url_path, &file, &sha256)?;
        match resp.status().as_u16() {
            200 | 201 => resp
                .body_mut()
                .read_json::<PutResponse>()
                .map_err(|e| Failure::Fatal(format!("unexpected answer from the server: {e}"))),
            _ => Err(status_failure(resp)),
        }
    })
}

fn hash_file(path: &Path) -> Result<String, Failure> {
    let mut file = File::open(path)
        .map_err(|e| Failure::Fatal(format!("cannot open {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Failure::Fatal(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish_hex())
}
