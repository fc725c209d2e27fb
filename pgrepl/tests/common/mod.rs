//! Shared helpers of the pgrepl integration tests: a PostgreSQL 15 cluster from the e2e harness
//! and conninfo strings that reach it.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgrepl::{ConnInfo, ReplicationStream, StreamEvent};
use wal_archive_e2e::{Pg, PgOptions, TestDir};

/// How long a test waits for anything to happen on the server.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A new, not yet started cluster named `name` with `conf` appended to postgresql.conf.
pub fn cluster(name: &str, conf: &str) -> Result<(TestDir, Pg)> {
    let dir = TestDir::new(name)?;
    let pg = Pg::init(&dir, name, PgOptions::default())?;
    pg.conf(conf)?;
    Ok((dir, pg))
}

/// A started cluster.
pub fn started(name: &str, conf: &str) -> Result<(TestDir, Pg)> {
    let (dir, pg) = cluster(name, conf)?;
    pg.start()?;
    Ok((dir, pg))
}

/// conninfo for TCP to `pg` as `user`, plain text unless `extra` says otherwise.
pub fn tcp(pg: &Pg, user: &str, extra: &str) -> Result<ConnInfo> {
    let s = format!(
        "host=127.0.0.1 port={} user={user} sslmode=disable connect_timeout=20 {extra}",
        pg.port()
    );
    ConnInfo::parse(&s).with_context(|| format!("parsing {s:?}"))
}

/// The first segment-aligned position at or before `lsn`.
pub fn segment_start(lsn: u64, seg_size: u64) -> u64 {
    lsn - lsn % seg_size
}

/// Reads the stream until `want` bytes from the stream's start position have arrived, answering
/// keepalives that ask for a reply. Returns the bytes.
pub async fn receive_bytes(
    stream: &mut ReplicationStream,
    start: u64,
    want: usize,
) -> Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "received only {} of {want} bytes within {DEADLINE:?}",
                out.len()
            );
        }
        match stream.next(Duration::from_secs(1)).await? {
            Some(StreamEvent::XLogData { start: s, data, .. }) => {
                assert_eq!(s.0, start + out.len() as u64, "XLogData is contiguous");
                let take = data.len().min(want - out.len());
                out.extend_from_slice(&data[..take]);
            }
            Some(StreamEvent::Keepalive {
                reply_requested: true,
                ..
            }) => {
                let pos = stream.received();
                stream
                    .send_status(pos, pgwal::Lsn(0), pgwal::Lsn(0), false)
                    .await?;
            }
            Some(StreamEvent::Keepalive { .. }) | None => {}
            Some(StreamEvent::EndOfTimeline) => bail!("timeline ended after {} bytes", out.len()),
        }
    }
    Ok(out)
}

/// Polls `condition` (which may run blocking psql commands) until it holds, serving the stream
/// in between: keepalives that ask for a reply are answered with `flush`, so the walsender's
/// wal_sender_timeout never fires while the test waits. WAL that arrives meanwhile is dropped.
pub async fn poll_while_streaming(
    stream: &mut ReplicationStream,
    flush: pgwal::Lsn,
    what: &str,
    mut condition: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if condition()? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {DEADLINE:?} waiting until {what}");
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
            match stream.next(left).await? {
                Some(StreamEvent::Keepalive {
                    reply_requested: true,
                    ..
                }) => {
                    let pos = stream.received();
                    stream.send_status(pos, flush, pgwal::Lsn(0), false).await?;
                }
                Some(StreamEvent::EndOfTimeline) => {
                    bail!("timeline ended while waiting until {what}")
                }
                Some(_) => {}
                None => break,
            }
        }
    }
}
