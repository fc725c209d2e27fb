//! A small client for the server's HTTP API (v1), plus a raw HTTP/1.1 request for paths that an
//! HTTP library would normalise or refuse.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One HTTP response, fully read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {:?}", self.status, self.short()))
    }

    /// Status and (at most 300 bytes of) body, for assertion messages.
    pub fn short(&self) -> String {
        let text = self.text();
        let cut: String = text.chars().take(300).collect();
        format!("HTTP {} {cut:?}", self.status)
    }
}

/// Client of one server's API.
#[derive(Clone)]
pub struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(base: &str) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Api {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /healthz` answered 200.
    pub fn healthz(&self) -> Result<bool> {
        let resp = self
            .agent
            .get(format!("{}/healthz", self.base))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call()?;
        Ok(resp.status().as_u16() == 200)
    }

    fn wal_url(cluster: &str, name: &str) -> String {
        format!("/v1/clusters/{cluster}/wal/{name}")
    }

    /// `PUT /v1/clusters/{cluster}/wal/{name}`.
    ///
    /// Sent over a plain socket rather than ureq: the server may refuse a file after reading its
    /// first page and close the connection before the body is sent; the answer is still there to
    /// read, where an HTTP library reports a broken pipe instead.
    pub fn put_wal(
        &self,
        cluster: &str,
        name: &str,
        body: &[u8],
        token: Option<&str>,
        sha256: Option<&str>,
    ) -> Result<Response> {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("Authorization".to_string(), format!("Bearer {token}")));
        }
        if let Some(sha) = sha256 {
            headers.push(("X-Content-Sha256".to_string(), sha.to_string()));
        }
        raw_once(
            &self.base,
            "PUT",
            &Api::wal_url(cluster, name),
            &headers,
            body,
        )
    }

    /// `GET /v1/clusters/{cluster}/wal/{name}`.
    pub fn get_wal(&self, cluster: &str, name: &str, token: Option<&str>) -> Result<Response> {
        self.get(&Api::wal_url(cluster, name), token)
    }

    /// `HEAD /v1/clusters/{cluster}/wal/{name}`.
    pub fn head_wal(&self, cluster: &str, name: &str, token: Option<&str>) -> Result<Response> {
        let mut req = self
            .agent
            .head(format!("{}{}", self.base, Api::wal_url(cluster, name)));
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        read_response(req.call()?)
    }

    /// `GET PATH` (PATH starts with `/`).
    pub fn get(&self, path: &str, token: Option<&str>) -> Result<Response> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        read_response(req.call()?)
    }

    /// `GET /v1/clusters/{cluster}/wal` as JSON; fails unless 200.
    pub fn wal_listing(&self, cluster: &str, token: Option<&str>) -> Result<serde_json::Value> {
        let resp = self.get(&format!("/v1/clusters/{cluster}/wal"), token)?;
        if resp.status != 200 {
            bail!("listing of cluster {cluster}: {}", resp.short());
        }
        resp.json()
    }

    /// The names in `GET /v1/clusters/{cluster}/wal`, sorted; none while the cluster is unknown
    /// (404 before its first file).
    pub fn wal_names(&self, cluster: &str, token: Option<&str>) -> Result<Vec<String>> {
        let resp = self.get(&format!("/v1/clusters/{cluster}/wal"), token)?;
        if resp.status == 404 {
            return Ok(Vec::new());
        }
        if resp.status != 200 {
            bail!("listing of cluster {cluster}: {}", resp.short());
        }
        let listing = resp.json()?;
        let files = listing
            .get("files")
            .and_then(|f| f.as_array())
            .with_context(|| format!("listing has no \"files\" array: {listing}"))?;
        let mut names = files
            .iter()
            .map(|f| {
                f.get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
                    .with_context(|| format!("listing entry without a name: {f}"))
            })
            .collect::<Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    /// Sends exactly `METHOD PATH HTTP/1.1` with `body`, without any client-side normalisation of
    /// PATH. If the server answers before reading the body and resets the connection, the request
    /// is repeated with an empty body so that the status can still be read.
    pub fn raw(&self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        match raw_once(&self.base, method, path, &[], body) {
            Ok(resp) => Ok(resp),
            Err(first) if !body.is_empty() => raw_once(&self.base, method, path, &[], &[])
                .with_context(|| format!("(with the body, the request failed with: {first:#})")),
            Err(e) => Err(e),
        }
    }
}

fn read_response(resp: ureq::http::Response<ureq::Body>) -> Result<Response> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .into_with_config()
        .limit(1 << 30)
        .read_to_vec()?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn raw_once(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Response> {
    let host = base
        .strip_prefix("http://")
        .context("raw requests need an http:// base URL")?;
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // The server may answer (and close) before it reads the whole body: a failed write is not an
    // error as long as a response can be read.
    for chunk in body.chunks(64 * 1024) {
        if stream.write_all(chunk).is_err() {
            break;
        }
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let read_error = loop {
        match stream.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        }
    };
    match (parse_response(&raw), read_error) {
        (Ok(resp), _) => Ok(resp),
        (Err(e), Some(io)) => {
            Err(io).with_context(|| format!("reading the response to {method} {path} ({e:#})"))
        }
        (Err(e), None) => Err(e).with_context(|| format!("response to {method} {path}")),
    }
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).context("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).context("truncated chunk end")?;
    }
}
