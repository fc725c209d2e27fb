//! Authentication against a real PostgreSQL 15: trust, cleartext password, md5, SCRAM-SHA-256,
//! wrong passwords, pg_hba.conf rejections, a role without REPLICATION, .pgpass files.
//!
//! One cluster, its pg_hba.conf written before start so no reload has to be waited for; every
//! case runs in sequence and says which case failed.

mod common;

use std::os::unix::fs::PermissionsExt;

use anyhow::{bail, Context, Result};
use pgrepl::{ConnInfo, ReplError, ReplicationConnection};
use wal_archive_e2e::Pg;

/// pg_hba.conf: specific replication lines first, then trust for the harness (psql over the
/// socket) and for `postgres`. `nohba` has no replication line at all.
const HBA: &str = "\
local all all trust
local replication all trust
host replication md5_user 127.0.0.1/32 md5
host replication scram_user 127.0.0.1/32 scram-sha-256
host replication pass_user 127.0.0.1/32 password
host replication norepl 127.0.0.1/32 scram-sha-256
host replication rejected 127.0.0.1/32 reject
host replication pgpass_user 127.0.0.1/32 scram-sha-256
host replication postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 trust
";

const ROLES: &str = "\
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret';
RESET password_encryption;
CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram secret';
CREATE ROLE pass_user LOGIN REPLICATION PASSWORD 'clear';
CREATE ROLE norepl LOGIN PASSWORD 'norepl';
CREATE ROLE rejected LOGIN REPLICATION PASSWORD 'x';
CREATE ROLE nohba LOGIN REPLICATION PASSWORD 'x';
CREATE ROLE pgpass_user LOGIN REPLICATION PASSWORD 'from:pgpass';
";

async fn connects(case: &str, info: &ConnInfo) -> Result<ReplicationConnection> {
    let mut conn = ReplicationConnection::connect(info)
        .await
        .with_context(|| format!("case {case}: connecting with {info}"))?;
    conn.identify_system()
        .await
        .with_context(|| format!("case {case}: IDENTIFY_SYSTEM"))?;
    Ok(conn)
}

async fn fails(case: &str, info: &ConnInfo) -> Result<ReplError> {
    match ReplicationConnection::connect(info).await {
        Ok(_) => bail!("case {case}: connecting with {info} should fail"),
        Err(e) => Ok(e),
    }
}

fn conninfo(pg: &Pg, user: &str, extra: &str) -> Result<ConnInfo> {
    // passfile points nowhere so that no ~/.pgpass of the machine can interfere.
    common::tcp(pg, user, &format!("passfile=/nonexistent/pgpass {extra}"))
}

#[tokio::test]
async fn authentication_methods_and_failures() -> Result<()> {
    let (dir, pg) = common::cluster("pgrepl-auth", "")?;
    pg.write_file("pg_hba.conf", HBA)?;
    pg.start()?;
    pg.psql(ROLES)?;
    assert_eq!(
        pg.psql("select left(rolpassword, 3) from pg_authid where rolname = 'md5_user'")?,
        "md5",
        "the md5 case needs an md5-hashed password"
    );

    // trust
    connects("trust", &conninfo(&pg, "postgres", "")?).await?;

    // md5, SCRAM-SHA-256 and cleartext password
    connects("md5", &conninfo(&pg, "md5_user", "password=md5-secret")?).await?;
    connects(
        "scram",
        &conninfo(&pg, "scram_user", "password='scram secret'")?,
    )
    .await?;
    connects("password", &conninfo(&pg, "pass_user", "password=clear")?).await?;
    // The URI form with a percent-encoded password.
    let uri = ConnInfo::parse(&format!(
        "postgresql://scram_user:scram%20secret@127.0.0.1:{}?sslmode=disable&passfile=/nonexistent",
        pg.port()
    ))?;
    connects("scram via URI", &uri).await?;

    // A password given by the caller is used when the conninfo has none ...
    let info = conninfo(&pg, "scram_user", "")?.with_password(Some("scram secret".into()));
    connects("with_password", &info).await?;
    // ... but the conninfo's own password wins.
    let info =
        conninfo(&pg, "scram_user", "password=wrong")?.with_password(Some("scram secret".into()));
    let e = fails("conninfo password wins", &info).await?;
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");

    // Wrong passwords: Auth errors with 28P01, not retryable, with a hint about the password.
    for (case, user) in [("wrong scram", "scram_user"), ("wrong md5", "md5_user")] {
        let e = fails(case, &conninfo(&pg, user, "password=nope")?).await?;
        assert!(matches!(e, ReplError::Auth { .. }), "case {case}: {e:?}");
        assert_eq!(e.sqlstate(), Some("28P01"), "case {case}: {e}");
        assert!(!e.is_retryable(), "case {case}");
        let hint = e.hint().unwrap_or_default();
        assert!(hint.contains("password"), "case {case}: {hint}");
        assert!(
            !e.to_string().contains("nope"),
            "the password is never shown"
        );
    }

    // No password anywhere.
    let e = fails("no password", &conninfo(&pg, "scram_user", "")?).await?;
    assert!(matches!(e, ReplError::Auth { code: None, .. }), "{e:?}");
    assert!(e.to_string().contains("none was given"), "{e}");

    // pg_hba.conf: an explicit reject line, and no line at all.
    let e = fails("reject", &conninfo(&pg, "rejected", "password=x")?).await?;
    assert_eq!(e.sqlstate(), Some("28000"), "{e}");
    assert!(!e.is_retryable());
    assert!(
        e.hint().unwrap_or_default().contains("reject"),
        "{:?}",
        e.hint()
    );
    let e = fails("no pg_hba entry", &conninfo(&pg, "nohba", "password=x")?).await?;
    assert_eq!(e.sqlstate(), Some("28000"), "{e}");
    assert!(!e.is_retryable());
    let hint = e.hint().unwrap_or_default();
    assert!(
        hint.contains("host replication nohba 127.0.0.1/32 scram-sha-256"),
        "{hint}"
    );

    // A role without REPLICATION authenticates, then the walsender refuses it.
    let e = fails(
        "no REPLICATION",
        &conninfo(&pg, "norepl", "password=norepl")?,
    )
    .await?;
    assert!(e.is_no_replication_privilege(), "{e:?}");
    assert!(!e.is_retryable());
    assert_eq!(
        e.hint().as_deref(),
        Some("grant REPLICATION to the role: ALTER ROLE norepl REPLICATION")
    );

    // sslmode=require against a server without ssl.
    let e = fails(
        "require without server ssl",
        &conninfo(&pg, "postgres", "sslmode=require")?,
    )
    .await?;
    assert!(matches!(e, ReplError::Tls { .. }), "{e:?}");
    assert!(!e.is_retryable());
    // sslmode=prefer falls back to plain text.
    let conn = connects(
        "prefer falls back",
        &conninfo(&pg, "postgres", "sslmode=prefer")?,
    )
    .await?;
    assert!(!conn.is_encrypted());

    // .pgpass: matching line (database field "replication", escaped ':' in the password),
    // used only with mode 0600.
    let passfile = dir.subdir("home")?.join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# test\n127.0.0.1:{}:postgres:pgpass_user:not-this-one\n\
             127.0.0.1:{}:replication:pgpass_user:from\\:pgpass\n*:*:*:*:fallback\n",
            pg.port(),
            pg.port()
        ),
    )?;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600))?;
    let info = common::tcp(
        &pg,
        "pgpass_user",
        &format!("passfile={}", passfile.display()),
    )?;
    connects(".pgpass 0600", &info).await?;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o640))?;
    let e = fails(".pgpass 0640 is ignored", &info).await?;
    assert!(e.to_string().contains("none was given"), "{e}");
    Ok(())
}
