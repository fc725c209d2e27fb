//! Replication commands against a real PostgreSQL 15: IDENTIFY_SYSTEM, SHOW, slots,
//! START_REPLICATION errors, over TCP and the Unix socket.

mod common;

use anyhow::{Context, Result};
use pgrepl::{ConnInfo, ReplicationConnection};

#[tokio::test]
async fn identify_system_show_and_slot_commands() -> Result<()> {
    let (_dir, pg) = common::started("pgrepl-commands", "max_replication_slots = 4")?;

    let mut conn = ReplicationConnection::connect(&common::tcp(&pg, "postgres", "")?).await?;
    assert!(conn.backend_pid() > 0);
    assert!(
        conn.parameter("server_version")
            .is_some_and(|v| v.starts_with("15")),
        "server_version {:?}",
        conn.parameter("server_version")
    );
    assert!(!conn.is_encrypted());

    // IDENTIFY_SYSTEM against pg_control_system() and the server's timeline.
    let id = conn.identify_system().await?;
    let sysid: u64 = pg
        .psql("select system_identifier from pg_control_system()")?
        .parse()?;
    let tli: u32 = pg
        .psql("select timeline_id from pg_control_checkpoint()")?
        .parse()?;
    assert_eq!(id.system_identifier, sysid);
    assert_eq!(id.timeline, tli);
    assert_eq!(id.dbname, None);
    let flush = wal_archive_e2e::parse_lsn(&pg.psql("select pg_current_wal_flush_lsn()")?)?;
    assert!(
        id.xlogpos.0 <= flush && id.xlogpos.is_valid(),
        "{} vs {flush:X}",
        id.xlogpos
    );

    // SHOW works on a replication connection.
    assert_eq!(conn.show("wal_segment_size").await?, "1MB");
    assert!(conn.show("bad name;").await.is_err());

    // Slots: missing, created with reserved WAL, read back, dropped.
    assert_eq!(conn.read_replication_slot("no_such_slot").await?, None);
    let point = conn.create_physical_slot("pgrepl_a", true).await?;
    let info = conn
        .read_replication_slot("pgrepl_a")
        .await?
        .context("slot just created")?;
    assert_eq!(info.slot_type, "physical");
    let restart = info.restart_lsn.context("RESERVE_WAL sets restart_lsn")?;
    assert_eq!(info.restart_tli, Some(tli));
    let sql_restart =
        pg.psql("select restart_lsn from pg_replication_slots where slot_name = 'pgrepl_a'")?;
    assert_eq!(restart.to_string(), sql_restart);
    assert_eq!(
        point,
        Some(restart),
        "create_physical_slot returns the reserved position"
    );
    let err = conn
        .create_physical_slot("pgrepl_a", false)
        .await
        .expect_err("a second slot with the same name");
    assert!(err.is_slot_exists(), "{err}");
    assert!(!err.is_retryable());
    // The connection is still usable after an error.
    assert_eq!(conn.create_physical_slot("pgrepl_b", false).await?, None);
    let b = conn
        .read_replication_slot("pgrepl_b")
        .await?
        .context("slot b")?;
    assert_eq!(b.restart_lsn, None);
    conn.drop_slot("pgrepl_b").await?;
    assert_eq!(conn.read_replication_slot("pgrepl_b").await?, None);
    let err = conn
        .drop_slot("pgrepl_b")
        .await
        .expect_err("dropping a missing slot");
    assert!(err.is_slot_missing(), "{err}");

    // TIMELINE_HISTORY of timeline 1 does not exist.
    assert!(conn.timeline_history(1).await.is_err());

    // START_REPLICATION ahead of the flush position: the server's error, SQLSTATE exposed.
    let ahead = pgwal::Lsn(flush + 64 * 1024 * 1024);
    let err = conn
        .start_physical(Some("pgrepl_a"), ahead, tli)
        .await
        .expect_err("start ahead of the flush position");
    let msg = err.server_message().unwrap_or_default().to_string();
    assert!(msg.contains("ahead of the WAL flush position"), "{err}");
    assert!(err.sqlstate().is_some(), "{err:?}");

    // Unix socket, the key=value form with a socket directory.
    let unix = ConnInfo::parse(&format!(
        "host={} port={} user=postgres application_name=pgrepl_unix",
        pg.socket_dir().display(),
        pg.port()
    ))?;
    let mut conn = ReplicationConnection::connect(&unix).await?;
    assert_eq!(conn.identify_system().await?.system_identifier, sysid);
    let app = pg.psql(&format!(
        "select application_name from pg_stat_activity where pid = {}",
        conn.backend_pid()
    ))?;
    assert_eq!(app, "pgrepl_unix");
    conn.close().await;

    // Nobody listening: a Connect error, which is retryable.
    let mut dead = common::tcp(&pg, "postgres", "")?;
    dead.port = wal_archive_e2e::util::free_port()?;
    let err = ReplicationConnection::connect(&dead)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, pgrepl::ReplError::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.hint().is_some());
    Ok(())
}
