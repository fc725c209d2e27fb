//! TLS against a real PostgreSQL 15 with `ssl = on` and a certificate for "localhost" issued by
//! a test CA: every sslmode, certificate verification, SCRAM channel binding.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use pgrepl::{ConnInfo, ReplError, ReplicationConnection};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use wal_archive_e2e::Pg;

const HBA: &str = "\
local all all trust
hostssl replication scram_tls 127.0.0.1/32 scram-sha-256
host replication postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 trust
";

/// A CA certificate (PEM) and an issuer to sign with.
fn make_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn write_pem(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
}

async fn connect(case: &str, info: &ConnInfo) -> Result<ReplicationConnection> {
    let mut conn = ReplicationConnection::connect(info)
        .await
        .with_context(|| format!("case {case}: connecting with {info}"))?;
    conn.identify_system().await?;
    Ok(conn)
}

async fn fails(case: &str, info: &ConnInfo) -> Result<ReplError> {
    match ReplicationConnection::connect(info).await {
        Ok(_) => bail!("case {case}: connecting with {info} should fail"),
        Err(e) => Ok(e),
    }
}

/// Whether the walsender with application_name `app` runs over TLS, as pg_stat_ssl says.
fn ssl_of(pg: &Pg, app: &str) -> Result<String> {
    pg.psql(&format!(
        "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) \
         where a.application_name = '{app}'"
    ))
}

#[tokio::test]
async fn sslmodes_verification_and_channel_binding() -> Result<()> {
    let (dir, pg) = common::cluster("pgrepl-tls", "ssl = on")?;
    let (ca_pem, ca) = make_ca("pgrepl test CA")?;
    let (other_ca_pem, _) = make_ca("some other CA")?;
    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&server_key, &ca)?;
    // server.crt / server.key are the default ssl_cert_file / ssl_key_file; the key must be
    // owned by the server's user with mode 0600.
    pg.write_file("server.crt", &server_cert.pem())?;
    pg.write_file("server.key", &server_key.serialize_pem())?;
    std::fs::set_permissions(
        pg.data_dir().join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    pg.write_file("pg_hba.conf", HBA)?;
    pg.start()?;
    pg.psql("CREATE ROLE scram_tls LOGIN REPLICATION PASSWORD 'tls secret'")?;

    let certs = dir.subdir("certs")?;
    let ca_file = certs.join("ca.pem");
    let other_ca_file = certs.join("other-ca.pem");
    write_pem(&ca_file, &ca_pem)?;
    write_pem(&other_ca_file, &other_ca_pem)?;
    let port = pg.port();
    let info = |extra: &str| -> Result<ConnInfo> {
        let s =
            format!("port={port} user=postgres connect_timeout=20 passfile=/nonexistent {extra}");
        Ok(ConnInfo::parse(&s)?)
    };

    // require: encrypted, as the server sees it too.
    let conn = connect(
        "require",
        &info("host=127.0.0.1 sslmode=require application_name=tls_require")?,
    )
    .await?;
    assert!(conn.is_encrypted());
    assert_eq!(ssl_of(&pg, "tls_require")?, "t");
    drop(conn);

    // prefer (the default) uses TLS when the server has it; disable never does.
    let conn = connect("prefer", &info("host=127.0.0.1 sslmode=prefer")?).await?;
    assert!(conn.is_encrypted());
    let conn = connect(
        "disable",
        &info("host=127.0.0.1 sslmode=disable application_name=tls_disable")?,
    )
    .await?;
    assert!(!conn.is_encrypted());
    assert_eq!(ssl_of(&pg, "tls_disable")?, "f");
    drop(conn);

    // verify-full with the right CA and name.
    let ca_arg = format!("sslrootcert={}", ca_file.display());
    let conn = connect(
        "verify-full",
        &info(&format!(
            "host=localhost hostaddr=127.0.0.1 sslmode=verify-full {ca_arg}"
        ))?,
    )
    .await?;
    assert!(conn.is_encrypted());

    // verify-full with another CA: refused, not retryable.
    let e = fails(
        "verify-full, wrong CA",
        &info(&format!(
            "host=localhost hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
            other_ca_file.display()
        ))?,
    )
    .await?;
    assert!(matches!(e, ReplError::Tls { .. }), "{e:?}");
    assert!(!e.is_retryable());
    // require with a root certificate file behaves as verify-ca (libpq compatibility).
    let e = fails(
        "require + wrong sslrootcert",
        &info(&format!(
            "host=127.0.0.1 sslmode=require sslrootcert={}",
            other_ca_file.display()
        ))?,
    )
    .await?;
    assert!(matches!(e, ReplError::Tls { .. }), "{e:?}");

    // The certificate names "localhost", not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let e = fails(
        "verify-full, wrong name",
        &info(&format!("host=127.0.0.1 sslmode=verify-full {ca_arg}"))?,
    )
    .await?;
    assert!(matches!(e, ReplError::Tls { .. }), "{e:?}");
    connect(
        "verify-ca, other name",
        &info(&format!("host=127.0.0.1 sslmode=verify-ca {ca_arg}"))?,
    )
    .await?;

    // SCRAM-SHA-256-PLUS: channel_binding=require succeeds only if the binding was used.
    let conn = connect(
        "scram with channel binding",
        &info("host=127.0.0.1 sslmode=require user=scram_tls password='tls secret' channel_binding=require")?,
    )
    .await?;
    assert!(conn.is_encrypted());
    // Without TLS there is no channel to bind to.
    let e = fails(
        "channel binding without TLS",
        &info("host=127.0.0.1 sslmode=disable user=scram_tls password='tls secret' channel_binding=require")?,
    )
    .await?;
    assert!(matches!(e, ReplError::Auth { .. }), "{e:?}");
    // trust authentication cannot satisfy channel_binding=require either.
    let e = fails(
        "channel binding with trust",
        &info("host=127.0.0.1 sslmode=require channel_binding=require")?,
    )
    .await?;
    assert!(e.to_string().contains("channel binding"), "{e}");
    // hostssl-only role over plain text: no pg_hba line matches.
    let e = fails(
        "hostssl role without TLS",
        &info("host=127.0.0.1 sslmode=disable user=scram_tls password='tls secret'")?,
    )
    .await?;
    assert_eq!(e.sqlstate(), Some("28000"), "{e}");
    // sslmode=allow retries with TLS when the plain attempt is rejected by pg_hba.conf.
    let conn = connect(
        "allow retries with TLS",
        &info("host=127.0.0.1 sslmode=allow user=scram_tls password='tls secret'")?,
    )
    .await?;
    assert!(conn.is_encrypted());
    Ok(())
}
