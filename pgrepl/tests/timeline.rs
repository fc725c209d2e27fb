//! The end-of-timeline handshake against real PostgreSQL 15: stream timeline 1 from a standby,
//! promote it, receive CopyDone, learn timeline 2 and where it starts, fetch 00000002.history,
//! and continue on timeline 2.

mod common;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgrepl::{ReplicationConnection, StreamEvent};
use pgwal::Lsn;
use wal_archive_e2e::{parse_lsn, wait_until, BaseBackupOptions, Pg, SEG_SIZE};

#[tokio::test]
async fn promotion_ends_the_timeline_and_streaming_continues_on_the_next() -> Result<()> {
    // Default wal_sender_timeout (60 s): the test blocks in psql and pg_ctl while streaming. The
    // cascading walsender notices the promotion when the new timeline's first WAL is flushed.
    let (dir, primary) = common::started("pgrepl-tli", "")?;
    primary.psql("create table t (id int); insert into t select generate_series(1, 1000)")?;
    let standby = Pg::from_basebackup(&primary, &dir, "standby", BaseBackupOptions::standby())?;
    standby.start()?;
    standby.wait_ready(common::DEADLINE)?;

    let mut conn = ReplicationConnection::connect(&common::tcp(&standby, "postgres", "")?).await?;
    let id = conn.identify_system().await?;
    assert_eq!(id.timeline, 1);
    let start = common::segment_start(id.xlogpos.0, SEG_SIZE);
    let mut stream = conn.start_physical(None, Lsn(start), 1).await?;

    // Some WAL through the standby, then promotion.
    primary.psql("insert into t select generate_series(1, 1000)")?;
    let primary_lsn = primary.current_lsn()?;
    wait_until(
        common::DEADLINE,
        "the standby replayed the primary's WAL",
        || Ok(parse_lsn(&standby.psql("select pg_last_wal_replay_lsn()")?)? >= primary_lsn),
    )?;
    standby.promote()?;

    // WAL up to the switch point, then CopyDone.
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        if tokio::time::Instant::now() > deadline {
            bail!("no end of timeline within {:?}", common::DEADLINE);
        }
        match stream.next(Duration::from_millis(500)).await? {
            Some(StreamEvent::EndOfTimeline) => break,
            Some(StreamEvent::Keepalive {
                reply_requested: true,
                ..
            }) => {
                let pos = stream.received();
                stream.send_status(pos, pos, Lsn::INVALID, false).await?;
            }
            Some(_) | None => {}
        }
    }
    let received_on_tli1 = stream.received();
    let (next, mut conn) = stream.finish_timeline().await?;
    let (next_tli, switchpoint) = next.context("the server names the next timeline")?;
    assert_eq!(next_tli, 2);
    assert_eq!(
        received_on_tli1, switchpoint,
        "timeline 1 was streamed exactly up to the switch point"
    );
    assert!(
        switchpoint.0 >= primary_lsn,
        "{switchpoint} < {primary_lsn:X}"
    );

    // The connection is back in command mode: TIMELINE_HISTORY matches the server's file.
    let (name, content) = conn.timeline_history(2).await?;
    assert_eq!(name, "00000002.history");
    let on_disk = std::fs::read(standby.data_dir().join("pg_wal").join(&name))?;
    assert_eq!(content, on_disk);
    let text = String::from_utf8(content)?;
    let first = text.lines().next().context("history has a line")?;
    let mut fields = first.split('\t');
    assert_eq!(fields.next(), Some("1"));
    assert_eq!(
        fields.next().map(str::to_string),
        Some(switchpoint.to_string())
    );
    assert_eq!(conn.identify_system().await?.timeline, 2);

    // START_REPLICATION on timeline 2 continues where timeline 1 ended.
    let mut stream = conn.start_physical(None, switchpoint, 2).await?;
    standby.psql("insert into t select generate_series(1, 1000); select pg_switch_wal()")?;
    let data = common::receive_bytes(&mut stream, switchpoint.0, 1024).await?;
    assert_eq!(data.len(), 1024);
    assert_eq!(stream.timeline(), 2);
    Ok(())
}
