//! Stage two of the command line: flags, environment and the client config file merged into the
//! validated [`Settings`] every command uses. Precedence: flag, then environment (both through
//! clap), then the config file, then defaults.

use std::path::Path;
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
}

impl std::fmt::Debug for Settings {
    // The token never reaches a log or an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .field("retry_for", &self.retry_for)
            .field("ca_certs", &self.ca_certs.as_ref().map(|c| c.len()))
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
        let ca_certs = match g.ca_file.clone().or(file.ca_file) {
            Some(path) => Some(
                std::fs::read(&path)
                    .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Settings {
            url,
            token,
            json: g.json,
            retry_for: g.retry_for.or(file.retry_for).map(Duration::from_secs),
            ca_certs,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}
