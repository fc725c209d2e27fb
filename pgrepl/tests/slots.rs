//! Slot errors against a real PostgreSQL 15: a slot used by another client, max_replication_slots
//! exhausted, a slot that does not exist.

mod common;

use anyhow::{Context, Result};
use pgrepl::ReplicationConnection;
use pgwal::Lsn;
use wal_archive_e2e::SEG_SIZE;

#[tokio::test]
async fn slot_in_use_too_many_slots_and_missing_slot() -> Result<()> {
    let (_dir, pg) = common::started("pgrepl-slots", "max_replication_slots = 2")?;
    let info = common::tcp(&pg, "postgres", "")?;
    let mut conn = ReplicationConnection::connect(&info).await?;
    let tli = conn.identify_system().await?.timeline;

    let restart = conn
        .create_physical_slot("slot_one", true)
        .await?
        .context("reserved")?;
    conn.create_physical_slot("slot_two", false).await?;
    let err = conn
        .create_physical_slot("slot_three", false)
        .await
        .expect_err("max_replication_slots = 2");
    assert!(err.is_too_many_slots(), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        err.hint()
            .unwrap_or_default()
            .contains("max_replication_slots"),
        "{:?}",
        err.hint()
    );

    // A first client streams from slot_one ...
    let start = Lsn(common::segment_start(restart.0, SEG_SIZE));
    let first = conn.start_physical(Some("slot_one"), start, tli).await?;
    // ... a second one is refused, with the first one's PID in the message and the hint.
    let second = ReplicationConnection::connect(&info).await?;
    let err = second
        .start_physical(Some("slot_one"), start, tli)
        .await
        .expect_err("the slot is active");
    assert!(err.is_slot_in_use(), "{err:?}");
    assert!(err.is_retryable(), "the other client may go away");
    let pid = first.backend_pid().to_string();
    assert!(
        err.hint()
            .unwrap_or_default()
            .contains(&format!("PID {pid}")),
        "{:?}",
        err.hint()
    );

    // A slot that does not exist.
    let third = ReplicationConnection::connect(&info).await?;
    let err = third
        .start_physical(Some("no_such_slot"), start, tli)
        .await
        .expect_err("missing slot");
    assert!(err.is_slot_missing(), "{err:?}");
    assert!(!err.is_retryable());
    drop(first);
    Ok(())
}
