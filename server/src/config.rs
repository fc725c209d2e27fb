//! Server configuration (DESIGN §5): the TOML file, then environment and flags, merged here into
//! one validated [`Config`]. Every key has a default so the server runs with no file at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/wal-archive";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The file as written by the operator; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    tls: Option<TlsConfig>,
    storage: Option<StorageConfig>,
    encryption: Option<EncryptionConfig>,
    max_concurrent_uploads: Option<usize>,
    metrics_require_token: Option<bool>,
    body_idle_timeout: Option<u64>,
    drill_dir: Option<PathBuf>,
    drill_user: Option<String>,
    wal_archive_path: Option<PathBuf>,
    #[serde(default)]
    tokens: Vec<TokenConfig>,
    #[serde(default)]
    clusters: BTreeMap<String, ClusterConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_storage_kind")]
    pub kind: String,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    /// An AWS-style credentials file, read when `AWS_ACCESS_KEY_ID` is not in the environment.
    pub credentials_file: Option<PathBuf>,
    /// Its profile (default `$AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// How long the ownership lease of a bucket lasts without renewal, in seconds (default
    /// 60): after a host is lost, its replacement can take the storage over after this long.
    pub lease_seconds: Option<u64>,
    /// The longest one request to the bucket may take, in seconds (default 120); a request
    /// that takes longer is abandoned and retried.
    pub request_timeout: Option<u64>,
    /// Refused with a message: keys never go in the configuration file.
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

/// `[encryption]`: objects written from now on are sealed with `key_file`; `old_key_files`
/// only open objects sealed before a key rotation.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct EncryptionConfig {
    key_file: PathBuf,
    #[serde(default)]
    old_key_files: Vec<PathBuf>,
}

fn default_storage_kind() -> String {
    "local".into()
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// push + fetch
    Archiver,
    /// fetch + read
    Reader,
    /// everything
    Admin,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// Hex SHA-256 of the secret; the secret itself is never stored.
    pub secret_sha256: String,
    pub role: Role,
    /// `None`: all clusters.
    pub clusters: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub conninfo: Option<String>,
    /// Password for `conninfo` when it has none (like `PGPASSWORD`); a `.pgpass` file is
    /// consulted after it.
    pub password: Option<String>,
    #[serde(default)]
    pub streaming: bool,
    /// Replication slot of the receiver (default `wal_archive`).
    pub slot: Option<String>,
    /// Report flush after every write batch, so the archive can be a synchronous standby.
    #[serde(default)]
    pub synchronous: bool,
    /// `application_name` of the receiver's connection, the name to use in
    /// `synchronous_standby_names` (default `wal_archive`).
    pub application_name: Option<String>,
    /// Lag of the receiver, in bytes, above which `check` fails (default 64 MiB).
    pub max_lag_bytes: Option<u64>,
    /// `check` fails when an inactive physical slot on the primary retains more WAL than this
    /// (PostgreSQL's units: `512MB`, `1GB`, or bytes; default [`DEFAULT_MAX_SLOT_RETAINED`]).
    pub max_slot_retained: Option<String>,
    /// Longest wait between two reconnection attempts of the receiver, in seconds (default 30;
    /// the wait doubles from 1 s up to this).
    pub reconnect_max_delay: Option<u64>,
    /// Seconds without any message from the server after which the receiver presumes the
    /// connection dead and reconnects, like PostgreSQL's `wal_receiver_timeout` (default 60;
    /// 0 turns it off). At half of it the receiver asks the server for a reply.
    pub receiver_timeout: Option<u64>,
    /// Crontab (5 fields, or 6 with leading seconds) of scheduled backups.
    pub backup_schedule: Option<String>,
    /// `redundancy N` or `recovery window of N days|weeks|months`.
    pub retention: Option<String>,
    /// Crontab of retention runs (default [`DEFAULT_RETENTION_SCHEDULE`], when a policy is set).
    pub retention_schedule: Option<String>,
    /// `check` fails when the newest done backup is older than this (humantime, e.g.
    /// `2 days`). Default: twice the backup schedule's period when there is a schedule.
    pub last_backup_maximum_age: Option<String>,
    /// `check` fails when the newest archived segment is older than this (default `1 hour`).
    pub wal_maximum_age: Option<String>,
    /// `check` fails when the storage has less free space (default 1 GiB).
    pub min_free_space_bytes: Option<u64>,
    #[serde(default = "default_minimum_redundancy")]
    pub minimum_redundancy: u32,
    #[serde(default = "default_compression_level")]
    pub compression_level: i32,
    /// Seconds a finished backup waits for its WAL to be archived before it fails
    /// (default [`DEFAULT_BACKUP_WAL_TIMEOUT`]).
    pub backup_wal_timeout: Option<u64>,
    /// The PostgreSQL server binaries recovery drills run (`postgres`), of the cluster's major
    /// version. Default: `/usr/lib/postgresql/MAJOR/bin` (Debian's layout) when it exists.
    pub pg_bin_dir: Option<PathBuf>,
    /// Crontab of recovery drills of the latest backup.
    pub drill_schedule: Option<String>,
    /// `check` fails when the newest passing drill is older than this (humantime). Default:
    /// twice the drill schedule's period when there is a schedule.
    pub drill_maximum_age: Option<String>,
    /// The longest a drill may take, restore and replay together (humantime, default
    /// [`DEFAULT_DRILL_TIMEOUT`]); a drill still running then fails and is cleaned up.
    pub drill_timeout: Option<String>,
}

/// How long a recovery drill may take unless `drill_timeout` says otherwise.
pub const DEFAULT_DRILL_TIMEOUT: &str = "2 hours";
/// The OS user a drill's PostgreSQL runs as when the server runs as root.
pub const DEFAULT_DRILL_USER: &str = "postgres";

pub const DEFAULT_BACKUP_WAL_TIMEOUT: u64 = 300;
/// Retention runs at 17 minutes past every hour (off the round hour most backups start at).
pub const DEFAULT_RETENTION_SCHEDULE: &str = "0 17 * * * *";
pub const DEFAULT_WAL_MAXIMUM_AGE: &str = "1 hour";
pub const DEFAULT_MIN_FREE_SPACE_BYTES: u64 = 1 << 30;

pub const DEFAULT_SLOT: &str = "wal_archive";
pub const DEFAULT_RECEIVER_TIMEOUT: u64 = 60;
/// Uploads handled at once; more get 503 with `Retry-After`, which `push` retries.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: usize = 64;
pub const DEFAULT_APPLICATION_NAME: &str = "wal_archive";
pub const DEFAULT_MAX_LAG_BYTES: u64 = 64 << 20;
pub const DEFAULT_MAX_SLOT_RETAINED: &str = "1GB";

impl ClusterConfig {
    /// `max_slot_retained` in bytes (validated when the configuration was loaded).
    pub fn max_slot_retained_bytes(&self) -> u64 {
        self.max_slot_retained
            .as_deref()
            .and_then(|s| parse_size(s).ok())
            .or_else(|| parse_size(DEFAULT_MAX_SLOT_RETAINED).ok())
            .unwrap_or(1 << 30)
    }
}

/// A size as PostgreSQL writes it in postgresql.conf: a number and a unit `B`, `kB`, `MB`,
/// `GB` or `TB` (multiples of 1024, as PostgreSQL counts them; `KiB`, `MiB`, ... too), or bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as \"1GB\" or \"512MB\""))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kb" | "kib" => 10,
        "mb" | "mib" => 20,
        "gb" | "gib" => 30,
        "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{text:?}: the unit must be B, kB, MB, GB or TB (as in postgresql.conf)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            conninfo: None,
            password: None,
            streaming: false,
            slot: None,
            synchronous: false,
            application_name: None,
            max_lag_bytes: None,
            max_slot_retained: None,
            reconnect_max_delay: None,
            receiver_timeout: None,
            backup_schedule: None,
            retention: None,
            retention_schedule: None,
            last_backup_maximum_age: None,
            wal_maximum_age: None,
            min_free_space_bytes: None,
            minimum_redundancy: default_minimum_redundancy(),
            compression_level: default_compression_level(),
            backup_wal_timeout: None,
            pg_bin_dir: None,
            drill_schedule: None,
            drill_maximum_age: None,
            drill_timeout: None,
        }
    }
}

fn default_minimum_redundancy() -> u32 {
    1
}
/// zstd level 1: on WAL with poorly compressible data, level 3 costs 2.3 times the CPU for a
/// result 0.4% smaller (level 3 is 16% smaller on pgbench WAL alone, at 1.6 times the CPU), and
/// compression is the largest CPU cost of archiving. Raise it per cluster to trade CPU for space.
fn default_compression_level() -> i32 {
    1
}

/// Values given on the command line or in the environment; they override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// `--rebuild-catalog`: set the catalog aside and rebuild it from storage.
    pub rebuild_catalog: bool,
    /// `--take-over`: take the storage's lease even if another server holds it.
    pub take_over: bool,
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub tls: Option<TlsConfig>,
    pub storage: StorageConfig,
    /// The keys of `[encryption]`, read and checked at load; `None`: objects are stored as
    /// they are. Its `Debug` names key ids and files, never keys.
    pub encryption: Option<std::sync::Arc<crate::storage::Keyring>>,
    /// WAL uploads handled at once (DESIGN §5).
    pub max_concurrent_uploads: usize,
    /// `/metrics` answers only requests with a valid token (of any role).
    pub metrics_require_token: bool,
    /// An upload that sends nothing for this long is abandoned (nothing stored).
    pub body_idle_timeout: std::time::Duration,
    /// Where recovery drills restore their scratch copies (default `DATA_DIR/drills`).
    pub drill_dir: PathBuf,
    /// The OS user a drill's PostgreSQL runs as when the server runs as root (default
    /// [`DEFAULT_DRILL_USER`]); otherwise it runs as the server's own user.
    pub drill_user: String,
    /// The `wal-archive` binary a drill's `restore_command` runs (default: the one next to
    /// the server's binary, else `wal-archive` on `PATH`).
    pub wal_archive_path: Option<PathBuf>,
    pub tokens: Vec<TokenConfig>,
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// See [`Overrides::rebuild_catalog`].
    pub rebuild_catalog: bool,
    /// See [`Overrides::take_over`].
    pub take_over: bool,
}

/// How long a storage lease lasts without renewal when `lease_seconds` is not set.
pub const DEFAULT_LEASE_SECONDS: u64 = 60;

impl Config {
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match &overrides.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(file, overrides)
    }

    /// Parses configuration text (used by tests and by [`Config::load`]).
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })?;
        Config::merge(file, overrides)
    }

    fn merge(file: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
        let listen_text = o
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "listen = {listen_text:?} is not an address:port such as {DEFAULT_LISTEN}"
            ))
        })?;
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let storage = file.storage.unwrap_or(StorageConfig {
            kind: default_storage_kind(),
            ..Default::default()
        });
        match storage.kind.as_str() {
            "local" => {}
            "s3" => {
                if storage.bucket.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::Invalid(
                        "[storage] kind = \"s3\" needs bucket = \"...\"".into(),
                    ));
                }
                if storage.access_key_id.is_some() || storage.secret_access_key.is_some() {
                    return Err(ConfigError::Invalid(
                        "[storage] holds access keys: they never go in the configuration file. \
                         Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's \
                         environment (systemd: EnvironmentFile=), or credentials_file = \"...\""
                            .into(),
                    ));
                }
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "storage.kind = {other:?}: use \"local\" (files under data_dir) or \"s3\""
                )))
            }
        }
        for t in &file.tokens {
            if t.secret_sha256.len() != 64 || hex::decode(&t.secret_sha256).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "token {:?}: secret_sha256 must be 64 hex digits (sha256sum of the secret)",
                    t.name
                )));
            }
            for c in t.clusters.iter().flatten() {
                validate_cluster_name(c).map_err(ConfigError::Invalid)?;
            }
        }
        for (name, c) in &file.clusters {
            validate_cluster_name(name).map_err(ConfigError::Invalid)?;
            if c.streaming && c.conninfo.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "clusters.{name}.streaming = true needs clusters.{name}.conninfo"
                )));
            }
            if let Some(slot) = &c.slot {
                let ok = !slot.is_empty()
                    && slot.len() <= 63
                    && slot
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(ConfigError::Invalid(format!(
                        "clusters.{name}.slot = {slot:?}: a slot name is 1 to 63 lowercase letters, digits or '_'"
                    )));
                }
            }
            if let Some(r) = &c.retention {
                crate::jobs::retention::Policy::parse(r).map_err(|e| {
                    ConfigError::Invalid(format!("clusters.{name}.retention = {r:?}: {e}"))
                })?;
            }
            for (key, spec) in [
                ("backup_schedule", &c.backup_schedule),
                ("retention_schedule", &c.retention_schedule),
                ("drill_schedule", &c.drill_schedule),
            ] {
                if let Some(spec) = spec {
                    crate::jobs::scheduler::parse_schedule(spec).map_err(|e| {
                        ConfigError::Invalid(format!("clusters.{name}.{key} = {spec:?}: {e}"))
                    })?;
                }
            }
            for (key, v) in [
                ("last_backup_maximum_age", &c.last_backup_maximum_age),
                ("wal_maximum_age", &c.wal_maximum_age),
                ("drill_maximum_age", &c.drill_maximum_age),
                ("drill_timeout", &c.drill_timeout),
            ] {
                if let Some(v) = v {
                    humantime::parse_duration(v).map_err(|e| {
                        ConfigError::Invalid(format!(
                            "clusters.{name}.{key} = {v:?} is not a duration such as \"2 days\": {e}"
                        ))
                    })?;
                }
            }
            if let Some(v) = &c.max_slot_retained {
                parse_size(v).map_err(|e| {
                    ConfigError::Invalid(format!("clusters.{name}.max_slot_retained: {e}"))
                })?;
            }
            if let Some(t) = &c.drill_timeout {
                if humantime::parse_duration(t).is_ok_and(|d| d.is_zero()) {
                    return Err(ConfigError::Invalid(format!(
                        "clusters.{name}.drill_timeout = {t:?}: a drill needs some time; give \
                         a duration such as \"2 hours\""
                    )));
                }
            }
            if !(1..=22).contains(&c.compression_level) {
                return Err(ConfigError::Invalid(format!(
                    "clusters.{name}.compression_level = {} is outside zstd's 1..=22",
                    c.compression_level
                )));
            }
        }
        if file.tokens.is_empty() && !listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "listen = {listen} is not a loopback address and no [[tokens]] are configured: \
                 the archive would be open to the network. Add tokens or listen on 127.0.0.1"
            )));
        }
        if let Some(tls) = &file.tls {
            for p in [&tls.cert, &tls.key] {
                if !p.exists() {
                    return Err(ConfigError::Invalid(format!(
                        "tls: file {} does not exist",
                        p.display()
                    )));
                }
            }
        }
        let encryption = match &file.encryption {
            Some(e) => Some(std::sync::Arc::new(
                crate::storage::Keyring::load(&e.key_file, &e.old_key_files)
                    .map_err(ConfigError::Invalid)?,
            )),
            None => None,
        };
        let max_concurrent_uploads = file
            .max_concurrent_uploads
            .unwrap_or(DEFAULT_MAX_CONCURRENT_UPLOADS);
        if max_concurrent_uploads == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_uploads = 0 would refuse every upload; use 1 or more".into(),
            ));
        }
        let metrics_require_token = file.metrics_require_token.unwrap_or(false);
        if metrics_require_token && file.tokens.is_empty() {
            return Err(ConfigError::Invalid(
                "metrics_require_token = true needs [[tokens]]: no request could ever read /metrics"
                    .into(),
            ));
        }
        let body_idle_timeout =
            std::time::Duration::from_secs(file.body_idle_timeout.unwrap_or(60));
        if body_idle_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "body_idle_timeout = 0: an upload must be given at least a second".into(),
            ));
        }
        let drill_dir = file.drill_dir.unwrap_or_else(|| data_dir.join("drills"));
        let drill_user = file
            .drill_user
            .unwrap_or_else(|| DEFAULT_DRILL_USER.to_string());
        if drill_user.is_empty()
            || !drill_user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(ConfigError::Invalid(format!(
                "drill_user = {drill_user:?} is not an OS user name"
            )));
        }
        Ok(Config {
            listen,
            data_dir,
            tls: file.tls,
            storage,
            encryption,
            max_concurrent_uploads,
            metrics_require_token,
            body_idle_timeout,
            drill_dir,
            drill_user,
            wal_archive_path: file.wal_archive_path,
            tokens: file.tokens,
            clusters: file.clusters,
            rebuild_catalog: o.rebuild_catalog,
            take_over: o.take_over,
        })
    }

    /// Settings for `cluster`: its own section, else the defaults.
    pub fn cluster(&self, cluster: &str) -> ClusterConfig {
        self.clusters.get(cluster).cloned().unwrap_or_default()
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir.join("storage")
    }

    /// Working directory of a cluster's streaming receiver.
    pub fn receiver_dir(&self, cluster: &str) -> PathBuf {
        self.data_dir.join("receiver").join(cluster)
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.data_dir.join("catalog.sqlite3")
    }

    /// How long a drill of `cluster` may take.
    pub fn drill_timeout(&self, cluster: &str) -> std::time::Duration {
        self.cluster(cluster)
            .drill_timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .or_else(|| humantime::parse_duration(DEFAULT_DRILL_TIMEOUT).ok())
            .unwrap_or(std::time::Duration::from_secs(7200))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Cluster names appear in URLs and storage keys: 1–64 of `[A-Za-z0-9_-]`, starting alphanumeric.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} is invalid: use 1 to 64 letters, digits, '_' or '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_no_file() {
        let c = Config::load(&Overrides::default()).expect("defaults");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.tokens.is_empty());
    }

    #[test]
    fn flags_override_file() {
        let o = Overrides {
            listen: Some("127.0.0.1:9999".into()),
            ..Default::default()
        };
        let c =
            Config::from_toml("listen = \"127.0.0.1:1234\"\ndata_dir = \"/x\"", &o).expect("valid");
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn full_design_example_parses() {
        let text = r#"
listen   = "127.0.0.1:8420"
data_dir = "/var/lib/wal-archive"
[[tokens]]
name = "db1-archiver"
secret_sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
role = "archiver"
clusters = ["main"]
[clusters.main]
conninfo = "host=db1 port=5432 user=wal_archive dbname=postgres"
streaming = true
slot = "wal_archive"
backup_schedule = "0 3 * * *"
retention = "recovery window of 7 days"
minimum_redundancy = 1
compression_level = 3
pg_bin_dir = "/usr/lib/postgresql/15/bin"
drill_schedule = "0 5 * * 0"
drill_maximum_age = "8 days"
"#;
        let c = Config::from_toml(text, &Overrides::default()).expect("valid");
        assert_eq!(c.tokens[0].role, Role::Archiver);
        assert!(c.cluster("main").streaming);
        assert_eq!(c.cluster("main").compression_level, 3);
        assert_eq!(c.cluster("other").compression_level, 1);
        assert_eq!(c.drill_dir, PathBuf::from("/var/lib/wal-archive/drills"));
        assert_eq!(c.drill_user, DEFAULT_DRILL_USER);
        assert_eq!(
            c.drill_timeout("main"),
            std::time::Duration::from_secs(2 * 3600)
        );
    }

    #[test]
    fn refuses_open_network_listener_without_tokens() {
        let err = Config::from_toml("listen = \"0.0.0.0:8420\"", &Overrides::default())
            .expect_err("must refuse");
        assert!(err.to_string().contains("no [[tokens]]"));
    }

    #[test]
    fn refuses_unknown_keys_and_bad_tokens() {
        assert!(Config::from_toml("lisen = \"x\"", &Overrides::default()).is_err());
        let bad = "[[tokens]]\nname=\"a\"\nsecret_sha256=\"abc\"\nrole=\"admin\"";
        assert!(Config::from_toml(bad, &Overrides::default()).is_err());
    }

    #[test]
    fn refuses_bad_retention_and_schedules() {
        for bad in [
            "retention = \"keep 3\"",
            "retention = \"redundancy 0\"",
            "backup_schedule = \"every day\"",
            "wal_maximum_age = \"soon\"",
            "drill_schedule = \"weekly\"",
            "drill_maximum_age = \"a while\"",
            "drill_timeout = \"0s\"",
        ] {
            let text = format!("[clusters.main]\n{bad}");
            assert!(
                Config::from_toml(&text, &Overrides::default()).is_err(),
                "{bad}"
            );
        }
        let ok = "[clusters.main]\nretention = \"redundancy 2\"\nbackup_schedule = \"*/3 * * * * *\"\nlast_backup_maximum_age = \"2 days\"\ndrill_schedule = \"0 5 * * 0\"\ndrill_maximum_age = \"8 days\"\ndrill_timeout = \"30 minutes\"\npg_bin_dir = \"/usr/lib/postgresql/15/bin\"";
        assert!(Config::from_toml(ok, &Overrides::default()).is_ok());
    }

    #[test]
    fn encryption_keys_are_read_and_checked_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, (1..=32u8).collect::<Vec<u8>>()).expect("write");
        let hex_key = dir.path().join("hex.key");
        std::fs::write(&hex_key, format!("{}\n", "ab".repeat(31) + "cd")).expect("write");
        let text = format!(
            "[encryption]\nkey_file = {:?}\nold_key_files = [{:?}]\n",
            raw.display().to_string(),
            hex_key.display().to_string()
        );
        let c = Config::from_toml(&text, &Overrides::default()).expect("valid");
        let keys = c.encryption.expect("keys");
        assert_eq!(keys.old_ids().len(), 1);
        assert_ne!(keys.current_id(), keys.old_ids()[0]);
        // Debug names key ids and files, never key bytes.
        let shown = format!("{keys:?}");
        assert!(shown.contains(&keys.current_id().to_string()), "{shown}");
        assert!(!shown.contains(&hex::encode((1..=32u8).collect::<Vec<u8>>())));
        assert!(!shown.contains(&"ab".repeat(31)));

        let short = dir.path().join("short.key");
        std::fs::write(&short, [7u8; 31]).expect("write");
        let zeros = dir.path().join("zeros.key");
        std::fs::write(&zeros, [0u8; 32]).expect("write");
        for (bad, why) in [
            (dir.path().join("missing.key"), "cannot read"),
            (short, "32 raw bytes"),
            (zeros, "not a random key"),
        ] {
            let text = format!("[encryption]\nkey_file = {:?}\n", bad.display().to_string());
            let err = Config::from_toml(&text, &Overrides::default()).expect_err("refused");
            assert!(err.to_string().contains(why), "{err}");
        }
        let text = format!(
            "[encryption]\nkey_file = {:?}\nold_key_files = [{:?}]\n",
            raw.display().to_string(),
            dir.path().join("gone.key").display().to_string()
        );
        let err = Config::from_toml(&text, &Overrides::default()).expect_err("refused");
        assert!(err.to_string().contains("old_key_files"), "{err}");
        assert!(Config::from_toml("[encryption]\nkey = \"x\"", &Overrides::default()).is_err());
    }

    #[test]
    fn sizes_as_postgresql_writes_them() {
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("512 MB"), Ok(512 << 20));
        assert_eq!(parse_size("64kB"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "GB", "1 XB", "-1GB", "99999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(Config::from_toml(
            "[clusters.main]\nmax_slot_retained = \"lots\"",
            &Overrides::default()
        )
        .is_err());
        assert_eq!(ClusterConfig::default().max_slot_retained_bytes(), 1 << 30);
    }

    #[test]
    fn cluster_names() {
        assert!(validate_cluster_name("main").is_ok());
        assert!(validate_cluster_name("db-1_x").is_ok());
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
    }
}
