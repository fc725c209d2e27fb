//! An S3-compatible bucket as storage (`[storage] kind = "s3"`): the `object_store` client, built
//! from the configuration and credentials that never come from the TOML file.
//!
//! - **Credentials**: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`)
//!   from the environment, else the `[profile]` of an AWS-style credentials file
//!   (`credentials_file`, profile `profile` or `$AWS_PROFILE`, else `default`). Both keys are
//!   required: without them `object_store` would ask the EC2 metadata service, which a backup
//!   server must never do behind the operator's back. They are never logged.
//! - **Plain HTTP** only to a loopback endpoint (a local test store, a sidecar proxy); anything
//!   else must be `https://`.
//! - **Create-only copies** (`copy_if_not_exists`) use a multipart copy completed with
//!   `If-None-Match: *`, which AWS S3 and SeaweedFS honour; conditional PUTs send
//!   `If-None-Match: *` / `If-Match`.
//! - Every request has a timeout; failures are retried a bounded number of times.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3CopyIfNotExists};
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::StorageError;

/// What the server needs to reach its bucket.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// `https://…`, or `http://` on loopback; `None`: AWS S3 itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Keys start with this (no leading `/`; a trailing `/` is added if missing).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The longest one request may take.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    // The secret never reaches a log or an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where the credentials of the bucket come from.
#[derive(Clone, Debug, Default)]
pub struct CredentialSources {
    /// An AWS-style credentials file (`aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_session_token` under `[profile]`).
    pub credentials_file: Option<std::path::PathBuf>,
    pub profile: Option<String>,
}

impl S3Settings {
    /// Settings from the configuration's values and the credential sources; every error says
    /// what to fix.
    pub fn resolve(
        bucket: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
        prefix: Option<&str>,
        sources: &CredentialSources,
    ) -> Result<S3Settings, String> {
        if bucket.is_empty() {
            return Err("[storage] kind = \"s3\" needs bucket = \"...\"".into());
        }
        if let Some(url) = endpoint {
            check_endpoint(url)?;
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (access_key_id, secret_access_key, session_token) =
            match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN")),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together".into(),
                    )
                }
                (None, None) => match &sources.credentials_file {
                    Some(path) => {
                        let profile = sources
                            .profile
                            .clone()
                            .or_else(|| env("AWS_PROFILE"))
                            .unwrap_or_else(|| "default".into());
                        read_credentials_file(path, &profile)?
                    }
                    None => {
                        return Err("no credentials for the bucket: set AWS_ACCESS_KEY_ID and \
                                AWS_SECRET_ACCESS_KEY in the server's environment, or \
                                [storage] credentials_file = \"...\" (never the keys themselves \
                                in the configuration file)"
                            .into())
                    }
                },
            };
        let mut prefix = prefix.unwrap_or("").trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(S3Settings {
            bucket: bucket.to_string(),
            endpoint: endpoint.map(str::to_string),
            region: region.unwrap_or("us-east-1").to_string(),
            prefix,
            access_key_id,
            secret_access_key,
            session_token,
            request_timeout: Duration::from_secs(120),
        })
    }

    /// The `object_store` client of the bucket (no request is made yet).
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        // HTTPS to the bucket goes through rustls with the ring provider, as the server's own
        // TLS does; installed once per process (a second install is refused, harmlessly).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let loopback_http = self
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let options = ClientOptions::new()
            .with_allow_http(loopback_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(self.request_timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 6,
            retry_timeout: Duration::from_secs(60),
        };
        // `with_client_options` replaces all client options: it comes first.
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_virtual_hosted_style_request(false)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
            .with_retry(retry);
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(loopback_http);
        }
        let store = builder.build().map_err(|e| {
            StorageError::Io(format!(
                "cannot set up the S3 client for bucket {}: {e}",
                self.bucket
            ))
        })?;
        Ok(if self.prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, self.prefix.as_str()))
        })
    }
}

/// `https://` anywhere; `http://` only to a loopback address.
fn check_endpoint(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "storage endpoint {url:?} must start with https:// (or http:// on loopback)"
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "storage endpoint {url:?}: plain http:// is allowed only to a loopback address; \
             use https:// so that WAL and credentials are not sent in clear"
        ))
    }
}

/// The keys of `[profile]` in an AWS credentials file.
fn read_credentials_file(
    path: &std::path::Path,
    profile: &str,
) -> Result<(String, String, Option<String>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?;
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name
                .trim()
                .trim_start_matches("profile ")
                .trim()
                .to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret, token)),
        _ => Err(format!(
            "the credentials file {} has no aws_access_key_id and aws_secret_access_key under \
             [{profile}]",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "https://s3.eu-west-1.amazonaws.com",
            "http://127.0.0.1:9000",
            "http://localhost:9000/",
            "http://[::1]:9000",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in ["http://10.0.0.5:9000", "http://s3.example.com", "ftp://x"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n\
             [profile backup]\naws_access_key_id=AKIABACKUP\naws_secret_access_key=s2\n\
             aws_session_token = t\n",
        )
        .expect("write");
        assert_eq!(
            read_credentials_file(&path, "default").expect("default"),
            ("AKIADEFAULT".into(), "s1".into(), None)
        );
        assert_eq!(
            read_credentials_file(&path, "backup").expect("backup"),
            ("AKIABACKUP".into(), "s2".into(), Some("t".into()))
        );
        assert!(read_credentials_file(&path, "other").is_err());
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let s = S3Settings {
            bucket: "b".into(),
            endpoint: None,
            region: "r".into(),
            prefix: String::new(),
            access_key_id: "AKIA".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("token-secret".into()),
            request_timeout: Duration::from_secs(1),
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains("token-secret"),
            "{shown}"
        );
    }
}
