//! Guarantee 3 (never served corrupt): a stored object that no longer matches its checksum is an
//! error on every read path, never bytes handed to PostgreSQL.
//!
//! - `flipped_byte_is_never_served`: one byte flipped in the first half of the stored object;
//!   GET answers 5xx without the file, `fetch` exits non-zero (1 in standby mode, 255 otherwise)
//!   naming the checksum problem and leaves nothing at DEST.
//! - `valid_compression_with_wrong_content_is_never_served`: the object's zstd frame replaced by a
//!   valid frame of different content (trailer kept), so only the SHA-256 can tell.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use wal_archive_e2e::{list_files, Output, Server, TestDir, WalFactory};

/// Stores two segments and returns their names; the first is the one tests corrupt.
fn store_segments(dir: &TestDir, server: &Server) -> Result<(WalFactory, Vec<String>)> {
    let factory = WalFactory::start(dir, "pg")?;
    let names = factory.make_segments(2)?;
    let cli = server.cli()?;
    for name in &names {
        cli.run_ok([
            "push",
            "--cluster",
            "main",
            &factory.path(name).to_string_lossy(),
        ])?;
    }
    Ok((factory, names))
}

fn mentions_corruption(out: &Output) -> bool {
    let text = format!("{}\n{}", out.stdout, out.stderr).to_lowercase();
    ["checksum", "corrupt", "sha-256", "sha256", "integrity"]
        .iter()
        .any(|w| text.contains(w))
}

/// Every read path refuses `name`, while the intact `good` one is still served.
fn expect_never_served(
    dir: &TestDir,
    server: &Server,
    factory: &WalFactory,
    name: &str,
    good: &str,
) -> Result<()> {
    let original = factory.read(name)?;
    let resp = server.api().get_wal("main", name, None)?;
    ensure!(
        (500..600).contains(&resp.status),
        "GET of a corrupt object: expected 5xx, got HTTP {}",
        resp.status
    );
    ensure!(
        resp.body != original,
        "GET served the file despite the corruption"
    );

    let dest_dir = dir.subdir("dest")?;
    let dest = dest_dir.join("RECOVERYXLOG");
    let standby_dir = dir.subdir("standby-pgdata")?;
    std::fs::write(standby_dir.join("standby.signal"), "")?;
    let cli = server.cli()?;
    for (pgdata, want) in [(dir.subdir("recovery-pgdata")?, 255), (standby_dir, 1)] {
        let out = cli.run([
            "--retry-for",
            "2",
            "fetch",
            "--cluster",
            "main",
            name,
            &dest.to_string_lossy(),
            "--pgdata",
            &pgdata.to_string_lossy(),
        ])?;
        ensure!(
            out.code == Some(want),
            "fetch of a corrupt object with --pgdata {}: expected exit {want}: {}",
            pgdata.display(),
            out.describe()
        );
        ensure!(
            mentions_corruption(&out),
            "fetch's message does not name the checksum problem: {}",
            out.describe()
        );
        ensure_nothing_left(&dest_dir)?;
    }

    let log = server.log().to_lowercase();
    ensure!(
        log.contains("checksum") || log.contains("corrupt"),
        "the server did not log the corruption:\n{}",
        server.log_tail()
    );

    // The intact neighbour is still served.
    cli.run_ok(["fetch", "--cluster", "main", good, &dest.to_string_lossy()])?;
    ensure!(std::fs::read(&dest)? == factory.read(good)?);
    Ok(())
}

fn ensure_nothing_left(dir: &Path) -> Result<()> {
    let left = list_files(dir)?;
    ensure!(left.is_empty(), "files left in {}: {left:?}", dir.display());
    Ok(())
}

#[test]
fn flipped_byte_is_never_served() -> Result<()> {
    let dir = TestDir::new("corrupt-flip")?;
    let server = Server::start(&dir)?;
    let (factory, names) = store_segments(&dir, &server)?;
    let object = server.stored_object(&names[0])?.with_context(|| {
        format!(
            "no {}.zst under {}",
            names[0],
            server.storage_dir().display()
        )
    })?;
    let mut bytes = std::fs::read(&object)?;
    let at = bytes.len() / 4;
    bytes[at] ^= 0x01;
    std::fs::write(&object, &bytes)?;
    expect_never_served(&dir, &server, &factory, &names[0], &names[1])
}

#[test]
fn valid_compression_with_wrong_content_is_never_served() -> Result<()> {
    let dir = TestDir::new("corrupt-content")?;
    let server = Server::start(&dir)?;
    let (factory, names) = store_segments(&dir, &server)?;
    let object = server.stored_object(&names[0])?.with_context(|| {
        format!(
            "no {}.zst under {}",
            names[0],
            server.storage_dir().display()
        )
    })?;
    let stored = std::fs::read(&object)?;
    let frame_len = match zstd::zstd_safe::find_frame_compressed_size(&stored) {
        Ok(len) => len,
        Err(code) => bail!(
            "{} does not start with a zstd frame (error {code}); the storage layout changed",
            object.display()
        ),
    };
    let trailer = &stored[frame_len..];
    let content = zstd::decode_all(&stored[..frame_len]).context("decoding the stored frame")?;
    ensure!(
        content == factory.read(&names[0])?,
        "the stored frame is not the segment"
    );

    // Different bytes where no header check looks: inside the data of the tenth page.
    let mut altered = content.clone();
    altered[8192 * 10 + 1000] ^= 0xff;
    let mut forged = zstd::encode_all(&altered[..], 3)?;
    forged.extend_from_slice(trailer);
    std::fs::write(&object, &forged)?;
    expect_never_served(&dir, &server, &factory, &names[0], &names[1])
}
