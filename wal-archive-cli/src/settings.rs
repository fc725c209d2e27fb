//! Stage two of the command line: flags, environment and the client config file merged into the
//! validated [`Settings`] every command uses. Precedence: flag, then environment (both through
//! clap), then the config file, then defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::args::GlobalArgs;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8420";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
    retry_for: Option<u64>,
    ca_file: Option<std::path::PathBuf>,
    look_ahead: Option<usize>,
    parallel: Option<u16>,
    prefetch: Option<usize>,
    prefetch_max_bytes: Option<u64>,
    spool_dir: Option<std::path::PathBuf>,
    compress_level: Option<i32>,
}

#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub token: Option<String>,
    pub json: bool,
    /// Explicit retry window, if one was given.
    pub retry_for: Option<Duration>,
    /// PEM certificates to trust instead of the web roots.
    pub ca_certs: Option<Vec<u8>>,
    /// Where `ca_certs` came from, and the client config file, if any: the prefetch worker
    /// is started with the same ones.
    pub ca_file: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// push: files marked `.ready` sent beside the requested one (0 = off).
    pub look_ahead: usize,
    /// push/fetch: look-ahead uploads or prefetch downloads at once (at least 1).
    pub parallel: usize,
    /// fetch: segments kept ahead in the spool (0 = off).
    pub prefetch: usize,
    /// fetch: most bytes the spool may hold.
    pub prefetch_max_bytes: u64,
    /// Explicit state directory; `None`: the default under the runtime directory.
    pub spool_dir: Option<PathBuf>,
    /// push: zstd level of the body (0 = send it as is).
    pub compress_level: i32,
}

pub const DEFAULT_LOOK_AHEAD: usize = 16;
pub const DEFAULT_PARALLEL: usize = 2;
pub const DEFAULT_PREFETCH: usize = 8;
pub const DEFAULT_PREFETCH_MAX_BYTES: u64 = 1 << 30;

impl std::fmt::Debug for Settings {
    // The token never reaches a log or an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .field("retry_for", &self.retry_for)
            .field("ca_certs", &self.ca_certs.as_ref().map(|c| c.len()))
            .field("ca_file", &self.ca_file)
            .field("config", &self.config)
            .field("look_ahead", &self.look_ahead)
            .field("parallel", &self.parallel)
            .field("prefetch", &self.prefetch)
            .field("prefetch_max_bytes", &self.prefetch_max_bytes)
            .field("spool_dir", &self.spool_dir)
            .field("compress_level", &self.compress_level)
            .finish()
    }
}

impl Settings {
    pub fn resolve(g: &GlobalArgs) -> Result<Settings, String> {
        let file = match &g.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let url = g
            .url
            .clone()
            .or(file.url)
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "server URL {url:?} must start with http:// or https://"
            ));
        }
        let token = g.token.clone().or(file.token).filter(|t| !t.is_empty());
        let ca_file = g.ca_file.clone().or(file.ca_file);
        let ca_certs = match &ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let parallel = usize::from(
            g.parallel
                .or(file.parallel)
                .unwrap_or(DEFAULT_PARALLEL as u16),
        )
        .max(1);
        if parallel > 64 {
            return Err(format!("parallel = {parallel}: at most 64"));
        }
        let compress_level = g.compress_level.or(file.compress_level).unwrap_or(0);
        if !(0..=22).contains(&compress_level) {
            return Err(format!(
                "compress_level = {compress_level}: 0 (off) or a zstd level from 1 to 22"
            ));
        }
        Ok(Settings {
            look_ahead: g
                .look_ahead
                .or(file.look_ahead)
                .unwrap_or(DEFAULT_LOOK_AHEAD)
                .min(1024),
            parallel,
            prefetch: g
                .prefetch
                .or(file.prefetch)
                .unwrap_or(DEFAULT_PREFETCH)
                .min(1024),
            prefetch_max_bytes: g
                .prefetch_max_bytes
                .or(file.prefetch_max_bytes)
                .unwrap_or(DEFAULT_PREFETCH_MAX_BYTES),
            spool_dir: g.spool_dir.clone().or(file.spool_dir),
            compress_level,
            url,
            token,
            json: g.json,
            retry_for: g.retry_for.or(file.retry_for).map(Duration::from_secs),
            ca_certs,
            ca_file,
            config: g.config.clone(),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn performance_keys_merge_file_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "look_ahead = 4\nparallel = 3\nprefetch = 0\nprefetch_max_bytes = 1000\n\
             spool_dir = \"/var/tmp/x\"\ncompress_level = 5\n",
        )
        .expect("write");
        let mut g = GlobalArgs {
            config: Some(path),
            ..GlobalArgs::default()
        };
        let s = Settings::resolve(&g).expect("resolve");
        assert_eq!(
            (s.look_ahead, s.parallel, s.prefetch, s.prefetch_max_bytes),
            (4, 3, 0, 1000)
        );
        assert_eq!(s.spool_dir, Some(PathBuf::from("/var/tmp/x")));
        assert_eq!(s.compress_level, 5);
        g.look_ahead = Some(0);
        g.compress_level = Some(0);
        let s = Settings::resolve(&g).expect("resolve");
        assert_eq!((s.look_ahead, s.compress_level), (0, 0));

        let defaults = Settings::resolve(&GlobalArgs::default()).expect("resolve");
        assert_eq!(
            (defaults.look_ahead, defaults.parallel, defaults.prefetch),
            (DEFAULT_LOOK_AHEAD, DEFAULT_PARALLEL, DEFAULT_PREFETCH)
        );
        assert_eq!(defaults.compress_level, 0);
        assert_eq!(defaults.prefetch_max_bytes, DEFAULT_PREFETCH_MAX_BYTES);
    }
}
