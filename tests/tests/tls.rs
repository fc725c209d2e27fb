//! HTTPS (DESIGN §5 `[tls]`): the server serves over TLS with the configured certificate; the
//! helper pushes and fetches through it when it trusts the CA (`--ca-file`), and refuses a server
//! it cannot authenticate.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use wal_archive_e2e::{util::free_port, wait_until, Cli, TestDir, WalFactory};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn push_and_fetch_over_https() -> Result<()> {
    let dir = TestDir::new("tls")?;
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .context("generating a certificate")?;
    let root = dir.subdir("tls")?;
    let cert = root.join("server.crt");
    let key = root.join("server.key");
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let port = free_port()?;
    let config = root.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            root.join("data").display(),
            cert.display(),
            key.display()
        ),
    )?;
    let log = root.join("server.log");
    let server = Command::new(dir.server_bin()?)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(root.join("server.err"))?)
        .spawn()
        .context("starting the server")?;
    let _server = Running(server);
    wait_until(Duration::from_secs(30), "the TLS server listens", || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;

    let factory = WalFactory::start(&dir, "tlspg")?;
    let names = factory.make_segments(1)?;
    let segment = factory.path(&names[0]);
    let https = format!("https://127.0.0.1:{port}");
    let cli = Cli::new(&dir)?;

    // Without the CA the server cannot be authenticated: refused, nothing claimed stored.
    let out = cli.run([
        "--url",
        &https,
        "--retry-for",
        "1",
        "push",
        "--cluster",
        "main",
        segment.to_str().context("path")?,
    ])?;
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.to_lowercase().contains("certificate") || out.stderr.contains("issuer"),
        "{}",
        out.describe()
    );

    let ca = cert.to_str().context("path")?;
    let out = cli.run([
        "--url",
        &https,
        "--ca-file",
        ca,
        "push",
        "--cluster",
        "main",
        segment.to_str().context("path")?,
    ])?;
    assert_eq!(out.code, Some(0), "{}", out.describe());

    let dest = root.join("restored");
    let out = cli.run([
        "--url",
        &https,
        "--ca-file",
        ca,
        "fetch",
        "--cluster",
        "main",
        &names[0],
        dest.to_str().context("path")?,
    ])?;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(std::fs::read(&dest)?, factory.read(&names[0])?);

    // Plain HTTP to the TLS port does not get through.
    let out = cli.run([
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--retry-for",
        "1",
        "push",
        "--cluster",
        "main",
        segment.to_str().context("path")?,
    ])?;
    assert_ne!(out.code, Some(0), "{}", out.describe());
    Ok(())
}
