//! Encryption at rest (DESIGN §5 `[encryption]`), with a real PostgreSQL 15 archiving into the
//! real server. What this file promises, in `sealed_at_rest_and_opened_only_with_its_key`:
//!
//! - **Nothing readable at rest.** A row holding a unique marker is written and its segment
//!   archived: no file under the server's storage directory holds the marker's bytes, and every
//!   file there (WAL objects, records, the archive's identity) starts with the sealed header
//!   naming the configured key's id. The same segment pushed to a server without
//!   `[encryption]` leaves the marker findable in its storage, which proves the search sees
//!   plaintext when there is some.
//! - **Served exactly.** `fetch` of the sealed segment returns the bytes PostgreSQL archived.
//! - **Only with its key.** Restarted with another key alone, the server refuses to start
//!   (its own identity is sealed with the old key) and says which key id is missing and to add
//!   it to `old_key_files`; `fetch` fails and writes nothing.
//! - **Rotation.** With the new key and the old one in `old_key_files`, old objects are served
//!   again and new pushes are sealed with the new key id.
//! - **A running server lacking one object's key** answers that object with an error naming
//!   the key id and `old_key_files` (fetch fails, writes nothing) and still serves the others.
//! - **Keys are never logged**: the server log holds key ids, never key bytes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};
use wal_archive_e2e::{
    archive_command, list_files, toml_string, Output, Pg, PgOptions, Server, TestDir, DEADLINE,
};

const MAGIC: &[u8] = b"WALAENC1";

/// The key id the server derives: SHA-256("wal-archive key id\0" ‖ key), first 8 bytes.
fn key_id(key: &[u8; 32]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    hasher.update(b"wal-archive key id\0");
    hasher.update(key);
    let digest = hasher.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

fn encryption_config(key_file: &Path, old_key_files: &[&Path]) -> String {
    let old: Vec<String> = old_key_files
        .iter()
        .map(|p| toml_string(&p.display().to_string()))
        .collect();
    format!(
        "[encryption]\nkey_file = {}\nold_key_files = [{}]\n",
        toml_string(&key_file.display().to_string()),
        old.join(", ")
    )
}

/// The files under `root` whose bytes contain `needle`.
fn files_holding(root: &Path, needle: &[u8]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for rel in list_files(root)? {
        let path = root.join(&rel);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.windows(needle.len()).any(|w| w == needle) {
            found.push(rel);
        }
    }
    Ok(found)
}

/// The key id in the header of each file under `root`; fails on a file without the header.
fn sealed_key_ids(root: &Path) -> Result<Vec<(PathBuf, [u8; 8])>> {
    let mut ids = Vec::new();
    for rel in list_files(root)? {
        let bytes = std::fs::read(root.join(&rel))?;
        ensure!(
            bytes.len() >= 25 && bytes.starts_with(MAGIC) && bytes[8] == 1,
            "{} in storage is not sealed (starts with {:?})",
            rel.display(),
            &bytes[..bytes.len().min(16)]
        );
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[9..17]);
        ids.push((rel, id));
    }
    ensure!(!ids.is_empty(), "no files under {}", root.display());
    Ok(ids)
}

/// The key id of the stored object of `walname`.
fn object_key_id(server: &Server, walname: &str) -> Result<[u8; 8]> {
    let path = server
        .stored_object(walname)?
        .with_context(|| format!("no stored object for {walname}"))?;
    let bytes = std::fs::read(&path)?;
    ensure!(bytes.starts_with(MAGIC), "{} is not sealed", path.display());
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[9..17]);
    Ok(id)
}

/// Inserts a row holding a fresh marker, switches WAL and waits until the segment holding it
/// is archived; returns the marker and the segment's name.
///
/// The marker sits inside 250 kB of random bytes (stored as they are: `storage external`, no
/// TOAST compression). Alone among WAL's varied bytes, zstd would entropy-code it and even an
/// unencrypted object would not show it; among random bytes, which zstd cannot shrink, it is
/// stored verbatim, so the unencrypted control finds it and the search means something.
fn archive_marker(pg: &Pg) -> Result<(String, String)> {
    let marker = pg.psql(
        "with m as (select 'marker-' || md5(random()::text || clock_timestamp()::text) as text) \
         insert into secret (v) select \
           (select decode(string_agg(md5(random()::text), ''), 'hex') from generate_series(1, 6250)) \
           || convert_to(m.text, 'UTF8') \
           || (select decode(string_agg(md5(random()::text), ''), 'hex') from generate_series(1, 9375)) \
         from m returning convert_from(substring(v from 100001 for 39), 'UTF8')",
    )?;
    ensure!(
        marker.starts_with("marker-") && marker.len() == 39,
        "insert returned {marker:?}"
    );
    let segment = pg.switch_wal()?;
    pg.wait_archived(&segment, DEADLINE)?;
    Ok((marker, segment))
}

/// `fetch` of `name` into a fresh directory; returns its outcome and the file, if one was
/// written.
fn fetch(
    server: &Server,
    dir: &TestDir,
    name: &str,
    into: &str,
) -> Result<(Output, Option<Vec<u8>>)> {
    let dest_dir = dir.subdir(into)?;
    let dest = dest_dir.join("RECOVERYXLOG");
    let out = server.cli()?.timeout(Duration::from_secs(60)).run([
        "--retry-for",
        "2",
        "fetch",
        "--cluster",
        "main",
        name,
        &dest.to_string_lossy(),
    ])?;
    let left = list_files(&dest_dir)?;
    let file = if out.success() {
        Some(std::fs::read(&dest)?)
    } else {
        ensure!(
            left.is_empty(),
            "a failed fetch left files behind: {left:?}\n{}",
            out.describe()
        );
        None
    };
    Ok((out, file))
}

#[test]
fn sealed_at_rest_and_opened_only_with_its_key() -> Result<()> {
    let dir = TestDir::new("encryption")?;
    let keys = dir.private_subdir("keys")?;
    let key1 = random_key()?;
    let key2 = random_key()?;
    let (id1, id2) = (hex::encode(key_id(&key1)), hex::encode(key_id(&key2)));
    // Both accepted forms: raw bytes, and hex with a newline.
    let key1_file = keys.join("key1");
    std::fs::write(&key1_file, key1)?;
    let key2_file = keys.join("key2");
    std::fs::write(&key2_file, format!("{}\n", hex::encode(key2)))?;
    for file in [&key1_file, &key2_file] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }

    let mut server = Server::start_with_config(&dir, Some(&encryption_config(&key1_file, &[])))?;
    ensure!(
        server
            .log()
            .contains(&format!("encryption at rest: key id {id1}")),
        "the server does not say which key seals:\n{}",
        server.log_tail()
    );

    // PostgreSQL archives through the helper, keeping a copy of what it archived.
    let copies = dir.pg_subdir("copies")?;
    let pg = Pg::init(&dir, "primary", PgOptions::default())?;
    let push = archive_command(&server, "main")?;
    pg.set("archive_mode", "on")?;
    pg.set(
        "archive_command",
        format!(
            "'cp %p {}/%f && {}'",
            copies.display(),
            push.trim_matches('\'')
        ),
    )?;
    pg.start()?;
    pg.psql(
        "create table secret (id bigserial primary key, v bytea); \
         alter table secret alter column v set storage external",
    )?;
    let (marker1, seg1) = archive_marker(&pg)?;
    let original1 = std::fs::read(copies.join(&seg1))?;
    ensure!(
        original1
            .windows(marker1.len())
            .any(|w| w == marker1.as_bytes()),
        "the archived segment {seg1} does not hold the marker: the test would prove nothing"
    );

    // Nothing readable at rest; everything sealed with key 1.
    let storage = server.storage_dir();
    let holding = files_holding(&storage, marker1.as_bytes())?;
    ensure!(
        holding.is_empty(),
        "stored files hold the marker in the clear: {holding:?}"
    );
    for (file, id) in sealed_key_ids(&storage)? {
        ensure!(
            hex::encode(id) == id1,
            "{} is sealed with key id {}, not {id1}",
            file.display(),
            hex::encode(id)
        );
    }

    // The control: the same segment in a server without [encryption] is findable.
    let plain_dir = TestDir::new("encryption-control")?;
    let plain = Server::start(&plain_dir)?;
    plain.cli()?.run_ok([
        "push",
        "--cluster",
        "main",
        &copies.join(&seg1).to_string_lossy(),
    ])?;
    let holding = files_holding(&plain.storage_dir(), marker1.as_bytes())?;
    ensure!(
        !holding.is_empty(),
        "the marker is not found in unencrypted storage either: the search proves nothing"
    );
    drop(plain);

    // Served exactly.
    let (out, got) = fetch(&server, &dir, &seg1, "fetch-1")?;
    ensure!(
        got.as_deref() == Some(&original1[..]),
        "fetch of {seg1} with its key: {}",
        out.describe()
    );

    // Another key alone: the server refuses to start, and says what to do.
    let other_only = encryption_config(&key2_file, &[]);
    server.stop()?;
    server.set_config(&other_only)?;
    let refused = server.start_again();
    ensure!(
        refused.is_err(),
        "the server started with a key that opens none of its objects"
    );
    let log = server.log();
    let last_run = log
        .rsplit("encryption at rest: key id")
        .next()
        .unwrap_or(&log);
    ensure!(
        last_run.contains(&id1) && last_run.contains("old_key_files"),
        "the refusal does not name the missing key id {id1} and old_key_files:\n{}",
        server.log_tail()
    );
    let (out, got) = fetch(&server, &dir, &seg1, "fetch-2")?;
    ensure!(
        got.is_none(),
        "fetch succeeded without a server: {}",
        out.describe()
    );

    // Rotation: the new key seals, the old one still opens.
    server.set_config(&encryption_config(&key2_file, &[&key1_file]))?;
    server.start_again()?;
    let (out, got) = fetch(&server, &dir, &seg1, "fetch-3")?;
    ensure!(
        got.as_deref() == Some(&original1[..]),
        "fetch of {seg1} with the old key in old_key_files: {}",
        out.describe()
    );
    let (marker2, seg2) = archive_marker(&pg)?;
    let original2 = std::fs::read(copies.join(&seg2))?;
    ensure!(
        hex::encode(object_key_id(&server, &seg2)?) == id2,
        "{seg2}, pushed after the rotation, is not sealed with the new key id {id2}"
    );
    ensure!(
        hex::encode(object_key_id(&server, &seg1)?) == id1,
        "{seg1} changed its key"
    );
    let holding = files_holding(&storage, marker2.as_bytes())?;
    ensure!(
        holding.is_empty(),
        "stored files hold the second marker in the clear: {holding:?}"
    );
    let (out, got) = fetch(&server, &dir, &seg2, "fetch-4")?;
    ensure!(
        got.as_deref() == Some(&original2[..]),
        "fetch of {seg2} with the new key: {}",
        out.describe()
    );

    // Back to the old key alone: it opens the archive's identity and seg1, not seg2.
    server.stop()?;
    server.set_config(&encryption_config(&key1_file, &[]))?;
    server.start_again()?;
    let (out, got) = fetch(&server, &dir, &seg2, "fetch-5")?;
    ensure!(
        got.is_none(),
        "{seg2} was served without the key that sealed it"
    );
    let said = format!("{}\n{}", out.stdout, out.stderr);
    ensure!(
        said.contains(&id2) && said.contains("old_key_files"),
        "fetch does not say which key is missing: {}",
        out.describe()
    );
    let resp = server.api().get_wal("main", &seg2, None)?;
    ensure!(
        resp.status == 503 && resp.text().contains(&id2),
        "GET of an object whose key is missing: {}",
        resp.short()
    );
    let (out, got) = fetch(&server, &dir, &seg1, "fetch-6")?;
    ensure!(
        got.as_deref() == Some(&original1[..]),
        "fetch of {seg1} next to an object it cannot open: {}",
        out.describe()
    );

    // Keys are never logged.
    let log = server.log();
    for key in [hex::encode(key1), hex::encode(key2)] {
        ensure!(!log.contains(&key), "the server log holds a key");
    }
    Ok(())
}
