//! START_REPLICATION against a real PostgreSQL 15: the WAL received is byte for byte the
//! server's segment file, the flush position we report is what the slot records, and answering
//! keepalives keeps the connection past wal_sender_timeout.

mod common;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgrepl::{ReplicationConnection, StreamEvent};
use pgwal::Lsn;
use wal_archive_e2e::{format_lsn, segment_of_lsn, SEG_SIZE};

#[tokio::test]
async fn whole_segment_byte_for_byte_flush_feedback_and_keepalives() -> Result<()> {
    // A short wal_sender_timeout: keepalives ask for a reply after 1 s of silence from us, and a
    // client that does not answer is dropped after 2 s.
    let (_dir, pg) = common::started("pgrepl-stream", "wal_sender_timeout = '2s'")?;
    let info = common::tcp(&pg, "postgres", "application_name=pgrepl_stream")?;
    let mut conn = ReplicationConnection::connect(&info).await?;
    let id = conn.identify_system().await?;
    let restart = conn
        .create_physical_slot("pgrepl_stream", true)
        .await?
        .context("RESERVE_WAL reserves a position")?;
    let start = common::segment_start(restart.0, SEG_SIZE);

    // More than a segment of WAL, then a switch: the segment at `start` is complete. Written
    // before streaming starts (the slot keeps it), so no blocking command runs while the
    // walsender waits for our replies.
    pg.psql(
        "create table t (id int, payload text); \
         insert into t select g, repeat('x', 200) from generate_series(1, 6000) g; \
         select pg_switch_wal()",
    )?;
    let mut stream = conn
        .start_physical(Some("pgrepl_stream"), Lsn(start), id.timeline)
        .await?;
    let walsender_pid = stream.backend_pid();
    let received = common::receive_bytes(&mut stream, start, SEG_SIZE as usize).await?;
    let name = segment_of_lsn(id.timeline, start, SEG_SIZE);
    let on_disk = std::fs::read(pg.data_dir().join("pg_wal").join(&name))
        .with_context(|| format!("reading {name} from pg_wal"))?;
    assert_eq!(on_disk.len(), received.len());
    assert!(
        received == on_disk,
        "streamed bytes of {name} differ from the server's file"
    );

    // Report the segment as flushed: a physical slot's restart_lsn moves to the flush position,
    // and pg_stat_replication shows it.
    let flushed = Lsn(start + SEG_SIZE);
    stream
        .send_status(stream.received(), flushed, Lsn::INVALID, false)
        .await?;
    let want = format_lsn(flushed.0);
    let slot_sql = "select restart_lsn from pg_replication_slots where slot_name = 'pgrepl_stream'";
    common::poll_while_streaming(
        &mut stream,
        flushed,
        "the slot's restart_lsn is the reported flush position",
        || Ok(pg.psql(slot_sql)? == want),
    )
    .await?;
    assert_eq!(
        pg.psql(&format!(
            "select flush_lsn from pg_stat_replication where pid = {walsender_pid}"
        ))?,
        want
    );

    // Keepalives: answer those that ask, for two wal_sender_timeouts; the walsender stays.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut answered = 0;
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        match stream.next(left).await? {
            Some(StreamEvent::Keepalive {
                reply_requested: true,
                end,
                ..
            }) => {
                assert!(end >= flushed, "keepalive end {end} before {flushed}");
                stream
                    .send_status(stream.received(), flushed, Lsn::INVALID, false)
                    .await?;
                answered += 1;
            }
            Some(StreamEvent::EndOfTimeline) => bail!("unexpected end of timeline"),
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        answered >= 2,
        "only {answered} keepalives asked for a reply in 4 s"
    );
    assert_eq!(
        pg.psql(&format!(
            "select count(*) from pg_stat_replication where pid = {walsender_pid}"
        ))?,
        "1",
        "the walsender survived wal_sender_timeout because keepalives were answered"
    );

    // Ending streaming from our side gives the connection back in command mode.
    let mut conn = stream.stop().await?;
    assert_eq!(
        conn.identify_system().await?.system_identifier,
        id.system_identifier
    );
    Ok(())
}
