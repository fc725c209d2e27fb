//! HTTP to the server: one ureq agent with a timeout on every phase (DESIGN §7.6), and the retry
//! policy. Responses are classified, never unwrapped; the token is sent as a header and never
//! printed.

use std::time::{Duration, Instant};

use pgwal::api::ErrorBody;
use ureq::http::Response;
use ureq::Body;

use crate::settings::Settings;

/// How one attempt ended, from the caller's point of view.
#[derive(Debug)]
pub enum Failure {
    /// The server could not be reached or did not answer in time: retrying may help.
    Unreachable(String),
    /// The server answered with an error status.
    Status {
        status: u16,
        kind: String,
        message: String,
        /// The cluster the server's error body names, if any.
        cluster: Option<String>,
        /// `Retry-After` of a 503 (the server is busy): the least wait before the next try.
        retry_after: Option<Duration>,
    },
    /// Anything else, not worth retrying (a local file problem, a damaged response).
    Fatal(String),
}

impl Failure {
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Unreachable(_) => true,
            // 502/503/504: a proxy or the server is temporarily unable; 500 covers corruption
            // and is not retried.
            Failure::Status { status, .. } => matches!(status, 502..=504),
            Failure::Fatal(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(m) => write!(f, "server unreachable: {m}"),
            Failure::Status {
                status,
                kind,
                message,
                ..
            } => write!(f, "server refused ({status} {kind}): {message}"),
            Failure::Fatal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

/// The zstd window of compressed uploads: 8 MiB, the most the server accepts.
const UPLOAD_WINDOW_LOG: u32 = 23;

pub struct Client {
    pub settings: Settings,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(settings: Settings) -> Result<Client, String> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = &settings.ca_certs {
            let certs = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the CA file is not valid PEM: {e}"))?;
            if certs.is_empty() {
                return Err("the CA file holds no certificate".into());
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_send_request(Some(Duration::from_secs(30)))
            // An idle connection is abandoned; a slow but moving transfer is not.
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .user_agent(concat!("wal-archive/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            settings,
            agent: config.into(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.settings.url, path)
    }

    fn authorize<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.settings.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn get(&self, path: &str, accept_zstd: bool) -> Result<Response<Body>, Failure> {
        let mut req = self.authorize(self.agent.get(self.url(path)));
        if accept_zstd {
            req = req.header("Accept-Encoding", "zstd");
        }
        req.call().map_err(transport_failure)
    }

    /// `HEAD`: headers only.
    pub fn head(&self, path: &str) -> Result<Response<Body>, Failure> {
        self.authorize(self.agent.head(self.url(path)))
            .call()
            .map_err(transport_failure)
    }

    /// `POST` with a JSON body.
    pub fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Response<Body>, Failure> {
        self.authorize(self.agent.post(self.url(path)))
            .send_json(body)
            .map_err(transport_failure)
    }

    pub fn delete(&self, path: &str) -> Result<Response<Body>, Failure> {
        self.authorize(self.agent.delete(self.url(path)))
            .call()
            .map_err(transport_failure)
    }

    /// `GET` a JSON document: 200 is parsed as `T`, anything else is a [`Failure`].
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        read_json(self.get(path, false)?, &[200])
    }

    /// `PUT` of a file, `xxh3` being the XXH3-128 of its uncompressed bytes (`X-Content-Xxh3`).
    /// With `compress_level` above 0 the body is zstd-compressed on the fly
    /// (`Content-Encoding: zstd`) and sent chunked; the server verifies the decompressed bytes
    /// against `xxh3` and stores the compressed stream as sent.
    pub fn put_file(
        &self,
        path: &str,
        file: &std::fs::File,
        xxh3: &str,
        compress_level: i32,
    ) -> Result<Response<Body>, Failure> {
        let req = self
            .authorize(self.agent.put(self.url(path)))
            .header(pgwal::api::CONTENT_XXH3_HEADER, xxh3)
            .header("Content-Type", "application/octet-stream");
        if compress_level > 0 {
            let mut encoder = zstd::stream::read::Encoder::new(file, compress_level)
                .map_err(|e| Failure::Fatal(format!("cannot start compression: {e}")))?;
            // The server decodes uploads with at most an 8 MiB window; levels 20 to 22 would
            // ask for more (zstd's table of levels), the others use less and are left alone.
            if compress_level >= 20 {
                encoder
                    .window_log(UPLOAD_WINDOW_LOG)
                    .map_err(|e| Failure::Fatal(format!("cannot set the zstd window: {e}")))?;
            }
            req.header("Content-Encoding", "zstd")
                .send(ureq::SendBody::from_reader(&mut encoder))
                .map_err(transport_failure)
        } else {
            req.send(file).map_err(transport_failure)
        }
    }
}

fn transport_failure(e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Io(io) => Failure::Unreachable(io.to_string()),
        ureq::Error::Timeout(t) => Failure::Unreachable(format!("timed out ({t})")),
        ureq::Error::HostNotFound => Failure::Unreachable("host not found".into()),
        ureq::Error::ConnectionFailed => Failure::Unreachable("connection failed".into()),
        other => Failure::Unreachable(other.to_string()),
    }
}

/// Parses a response whose status is one of `ok` as JSON `T`; any other status is a [`Failure`].
pub fn read_json<T: serde::de::DeserializeOwned>(
    mut resp: Response<Body>,
    ok: &[u16],
) -> Result<T, Failure> {
    if !ok.contains(&resp.status().as_u16()) {
        return Err(status_failure(resp));
    }
    resp.body_mut()
        .with_config()
        .limit(1 << 30)
        .read_json()
        .map_err(|e| Failure::Fatal(format!("unexpected answer from the server: {e}")))
}

/// Turns a non-success response into a [`Failure`], reading the server's JSON error body.
pub fn status_failure(mut resp: Response<Body>) -> Failure {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(60)));
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => Failure::Status {
            status,
            kind: b.error,
            message: b.message,
            cluster: b.cluster,
            retry_after,
        },
        Err(_) => Failure::Status {
            status,
            cluster: None,
            retry_after,
            kind: "http".into(),
            message: if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text.chars().take(500).collect()
            },
        },
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `window` has passed, backing off
/// exponentially (0.1 s doubling to 5 s) between tries.
pub fn with_retries<T>(
    window: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, Failure>,
) -> Result<T, Failure> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(f) if f.is_retryable() && start.elapsed() + delay < window => {
                let pause = match &f {
                    Failure::Status {
                        retry_after: Some(after),
                        ..
                    } => delay.max(*after),
                    _ => delay,
                };
                eprintln!(
                    "wal-archive: {what}: {f}; retrying in {:.1}s",
                    pause.as_secs_f64()
                );
                std::thread::sleep(pause);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(f) => return Err(f),
        }
    }
}
