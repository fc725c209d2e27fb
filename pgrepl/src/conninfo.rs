//! Connection settings in libpq's two syntaxes (PostgreSQL documentation, libpq chapter,
//! "Connection Strings"): `host=db1 port=5432 user=x` and `postgresql://x@db1:5432/db?sslmode=require`.
//!
//! Only the keys this client acts on are accepted; any other key is an error that names it, so a
//! typo (`sslmod=require`) cannot silently weaken a connection.
//!
//! The password is a secret: [`ConnInfo`]'s `Debug` and `Display` never show it.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ReplError;

/// libpq's default port (`DEF_PGPORT`).
pub const DEFAULT_PORT: u16 = 5432;
/// `connect_timeout` when none is given. libpq waits forever by default; this client never does.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The Unix-socket directory used when no host is given: Debian's libpq is built with
/// `DEFAULT_PGSOCKET_DIR` = `/var/run/postgresql` (upstream's default is `/tmp`, tried second).
pub const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// `sslmode` (libpq "SSL Support", table "SSL Mode Descriptions").
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only if the server insists (a plain attempt rejected by `pg_hba.conf`).
    Allow,
    /// TLS if the server offers it, else plain. No certificate check.
    #[default]
    Prefer,
    /// TLS or fail; no certificate check (unless `sslrootcert` is given, then as `verify-ca`).
    Require,
    /// TLS, certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// TLS, chain checked and the host name must match the certificate.
    VerifyFull,
}

impl SslMode {
    /// The conninfo spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, ReplError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ReplError::config(format!(
                    "invalid sslmode value {:?}: use disable, allow, prefer, require, verify-ca or verify-full",
                    echo(other)
                )))
            }
        })
    }

    /// Whether the connection must be encrypted.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// `channel_binding` (libpq "Parameter Key Words"): whether SCRAM must bind to the TLS channel.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum ChannelBindingMode {
    /// Never use channel binding.
    Disable,
    /// Use it when the server offers SCRAM-SHA-256-PLUS over TLS.
    #[default]
    Prefer,
    /// Fail unless the server authenticated us with SCRAM-SHA-256-PLUS.
    Require,
}

impl ChannelBindingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBindingMode::Disable => "disable",
            ChannelBindingMode::Prefer => "prefer",
            ChannelBindingMode::Require => "require",
        }
    }

    fn parse(value: &str) -> Result<Self, ReplError> {
        Ok(match value {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            other => {
                return Err(ReplError::config(format!(
                    "invalid channel_binding value {:?}: use disable, prefer or require",
                    echo(other)
                )))
            }
        })
    }
}

/// Where to connect, after defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP host name or address (what `hostaddr` says wins over `host` for the address).
    Tcp { host: String, port: u16 },
    /// A Unix socket: `DIR/.s.PGSQL.PORT`.
    Unix { path: PathBuf },
}

/// Parsed connection settings. Fields are public; build one with [`ConnInfo::parse`] or by hand.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name, IP address, or a directory (starting with `/`) holding the Unix socket.
    /// `None`: the default socket directory.
    pub host: Option<String>,
    /// Numeric address to connect to instead of resolving `host` (which still names the server
    /// for TLS verification and `.pgpass`).
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    /// `None`: a physical replication connection that is not bound to a database.
    pub dbname: Option<String>,
    /// Never shown by `Debug` / `Display`.
    pub password: Option<String>,
    /// The `.pgpass` file to use instead of `$PGPASSFILE` / `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    pub sslmode: SslMode,
    /// PEM file of the certificate authorities to trust for `verify-ca` / `verify-full`
    /// (default `~/.postgresql/root.crt`, as libpq).
    pub sslrootcert: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
    pub application_name: Option<String>,
    /// Bound on establishing the connection: TCP connect, TLS, authentication, start-up.
    /// From the conninfo in whole seconds, raised to at least 2 (as libpq) and capped at 3600.
    pub connect_timeout: Duration,
    /// TCP keepalives (libpq's `keepalives`, `keepalives_idle`, `keepalives_interval`,
    /// `keepalives_count`), on by default with [`DEFAULT_KEEPALIVES`], so that a peer that
    /// vanished behind a silent network partition is noticed by the kernel too. `None`: off.
    pub keepalives: Option<Keepalives>,
    /// libpq's `tcp_user_timeout`: how long sent data may stay unacknowledged before the kernel
    /// gives up on the connection (`None`: the system's default).
    pub tcp_user_timeout: Option<Duration>,
}

/// TCP keepalive settings: probe after `idle` without traffic, every `interval`, give up after
/// `count` unanswered probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalives {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// Keepalives when the conninfo says nothing: a dead peer is noticed within about a minute
/// (30 s idle, then 3 probes 10 s apart), where the system's defaults would take two hours.
pub const DEFAULT_KEEPALIVES: Keepalives = Keepalives {
    idle: Duration::from_secs(30),
    interval: Duration::from_secs(10),
    count: 3,
};

impl ConnInfo {
    /// Settings with every default: the local Unix socket, port 5432, user `$USER`.
    pub fn new(user: impl Into<String>) -> ConnInfo {
        ConnInfo {
            host: None,
            hostaddr: None,
            port: DEFAULT_PORT,
            user: user.into(),
            dbname: None,
            password: None,
            passfile: None,
            sslmode: SslMode::default(),
            sslrootcert: None,
            channel_binding: ChannelBindingMode::default(),
            application_name: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalives: Some(DEFAULT_KEEPALIVES),
            tcp_user_timeout: None,
        }
    }

    /// Parses a libpq connection string: `key=value` pairs or a `postgresql://` /
    /// `postgres://` URI. `user` defaults to `$USER`.
    pub fn parse(s: &str) -> Result<ConnInfo, ReplError> {
        let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_keyword_value(s)?
        };
        let mut out = ConnInfo::new(String::new());
        let mut user = None;
        for (key, value) in pairs {
            out.set(&key, value, &mut user)?;
        }
        out.user = match user {
            Some(u) => u,
            None => default_user()?,
        };
        Ok(out)
    }

    fn set(
        &mut self,
        key: &str,
        value: String,
        user: &mut Option<String>,
    ) -> Result<(), ReplError> {
        let non_empty = |v: String| if v.is_empty() { None } else { Some(v) };
        match key {
            "host" => {
                if value.contains(',') {
                    return Err(ReplError::config(
                        "several hosts in one conninfo are not supported: give one host",
                    ));
                }
                self.host = non_empty(value);
            }
            "hostaddr" => {
                self.hostaddr = if value.is_empty() {
                    None
                } else {
                    Some(value.parse().map_err(|_| {
                        ReplError::config(format!(
                            "invalid hostaddr {:?}: must be a numeric IP address",
                            echo(&value)
                        ))
                    })?)
                }
            }
            "port" => {
                self.port = if value.is_empty() {
                    DEFAULT_PORT
                } else {
                    match value.parse::<u16>() {
                        Ok(p) if p != 0 => p,
                        _ => {
                            return Err(ReplError::config(format!(
                                "invalid port {:?}: must be 1 to 65535",
                                echo(&value)
                            )))
                        }
                    }
                }
            }
            "user" => *user = non_empty(value),
            "dbname" => self.dbname = non_empty(value),
            "password" => self.password = Some(value),
            "passfile" => self.passfile = non_empty(value).map(PathBuf::from),
            "sslmode" => self.sslmode = SslMode::parse(&value)?,
            // libpq's URI alias: `ssl=true` means sslmode=require.
            "ssl" => {
                if value == "true" {
                    self.sslmode = SslMode::Require
                } else {
                    return Err(ReplError::config(format!(
                        "invalid ssl value {:?}: only ssl=true is accepted (or use sslmode)",
                        echo(&value)
                    )));
                }
            }
            "sslrootcert" => self.sslrootcert = non_empty(value).map(PathBuf::from),
            "channel_binding" => self.channel_binding = ChannelBindingMode::parse(&value)?,
            "application_name" => self.application_name = non_empty(value),
            "connect_timeout" => {
                // libpq: whole seconds; values below 2 are raised to 2. 0 would mean "forever",
                // which this client refuses (DESIGN.md section 7.6: nothing hangs forever).
                let secs: i64 = value.trim().parse().map_err(|_| {
                    ReplError::config(format!(
                        "invalid connect_timeout {:?}: must be a number of seconds",
                        echo(&value)
                    ))
                })?;
                if secs <= 0 {
                    return Err(ReplError::config(
                        "connect_timeout must be at least 1 second: this client never waits forever",
                    ));
                }
                self.connect_timeout = Duration::from_secs(secs.clamp(2, 3600) as u64);
            }
            "keepalives" => match value.trim() {
                "0" => self.keepalives = None,
                "1" => self.keepalives = Some(self.keepalives.unwrap_or(DEFAULT_KEEPALIVES)),
                _ => {
                    return Err(ReplError::config(format!(
                        "invalid keepalives {:?}: 1 (on) or 0 (off)",
                        echo(&value)
                    )))
                }
            },
            "keepalives_idle" | "keepalives_interval" | "keepalives_count" => {
                let n: u32 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        ReplError::config(format!(
                            "invalid {key} {:?}: a whole number of at least 1",
                            echo(&value)
                        ))
                    })?;
                if let Some(k) = self.keepalives.as_mut() {
                    match key {
                        "keepalives_idle" => k.idle = Duration::from_secs(n.into()),
                        "keepalives_interval" => k.interval = Duration::from_secs(n.into()),
                        _ => k.count = n,
                    }
                }
            }
            "tcp_user_timeout" => {
                let ms: u64 = value.trim().parse().map_err(|_| {
                    ReplError::config(format!(
                        "invalid tcp_user_timeout {:?}: milliseconds",
                        echo(&value)
                    ))
                })?;
                self.tcp_user_timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            other => {
                return Err(ReplError::config(format!(
                    "unknown connection option {:?}: supported are host, hostaddr, port, user, \
                     dbname, password, passfile, sslmode, sslrootcert, channel_binding, \
                     application_name, connect_timeout, keepalives, keepalives_idle, \
                     keepalives_interval, keepalives_count, tcp_user_timeout",
                    echo(other)
                )))
            }
        }
        Ok(())
    }

    /// Sets the password the caller knows from elsewhere (a configured secret, like
    /// `PGPASSWORD`). A `password` inside the conninfo string wins over it; a `.pgpass` entry is
    /// consulted only when neither is present.
    pub fn with_password(mut self, password: Option<String>) -> ConnInfo {
        if self.password.is_none() {
            self.password = password;
        }
        self
    }

    /// Whether this connects through a Unix socket.
    pub fn is_unix_socket(&self) -> bool {
        self.hostaddr.is_none() && self.host.as_deref().is_none_or(|h| h.starts_with('/'))
    }

    /// Where to connect. Without a host, the first default socket directory that exists.
    pub fn endpoint(&self) -> Endpoint {
        if let Some(addr) = self.hostaddr {
            return Endpoint::Tcp {
                host: addr.to_string(),
                port: self.port,
            };
        }
        let dir = match self.host.as_deref() {
            Some(h) if !h.starts_with('/') => {
                return Endpoint::Tcp {
                    host: h.to_string(),
                    port: self.port,
                }
            }
            Some(dir) => PathBuf::from(dir),
            None => DEFAULT_SOCKET_DIRS
                .iter()
                .map(PathBuf::from)
                .find(|d| d.is_dir())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIRS[0])),
        };
        Endpoint::Unix {
            path: dir.join(format!(".s.PGSQL.{}", self.port)),
        }
    }

    /// A short description of where this connects, for messages: `db1:5432` or the socket path.
    pub fn target(&self) -> String {
        match self.endpoint() {
            Endpoint::Tcp { host, port } => match &self.host {
                Some(h) if self.hostaddr.is_some() => format!("{h} ({host}):{port}"),
                _ if host.contains(':') => format!("[{host}]:{port}"),
                _ => format!("{host}:{port}"),
            },
            Endpoint::Unix { path } => path.display().to_string(),
        }
    }

    /// The password to use: this conninfo's (including one given through
    /// [`ConnInfo::with_password`]), else the matching `.pgpass` line.
    pub fn resolve_password(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let file = crate::pgpass::passfile_path(self.passfile.as_deref())?;
        let host = match (&self.host, self.hostaddr) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(a)) => Some(a.to_string()),
            (None, None) => None,
        };
        // pg_basebackup / pg_receivewal (streamutil.c) connect with dbname "replication" when
        // none is given, which is how the .pgpass database field "replication" matches them.
        let dbname = self.dbname.as_deref().unwrap_or("replication");
        crate::pgpass::lookup(
            &file,
            host.as_deref(),
            &self.port.to_string(),
            dbname,
            &self.user,
        )
    }

    fn write_pairs(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut pair = |f: &mut fmt::Formatter<'_>, k: &str, v: &str| -> fmt::Result {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{k}={}", quote_value(v))
        };
        if let Some(h) = &self.host {
            pair(f, "host", h)?;
        }
        if let Some(a) = &self.hostaddr {
            pair(f, "hostaddr", &a.to_string())?;
        }
        pair(f, "port", &self.port.to_string())?;
        pair(f, "user", &self.user)?;
        if let Some(d) = &self.dbname {
            pair(f, "dbname", d)?;
        }
        if let Some(p) = &self.passfile {
            pair(f, "passfile", &p.to_string_lossy())?;
        }
        pair(f, "sslmode", self.sslmode.as_str())?;
        if let Some(c) = &self.sslrootcert {
            pair(f, "sslrootcert", &c.to_string_lossy())?;
        }
        if self.channel_binding != ChannelBindingMode::default() {
            pair(f, "channel_binding", self.channel_binding.as_str())?;
        }
        if let Some(a) = &self.application_name {
            pair(f, "application_name", a)?;
        }
        match self.keepalives {
            None => pair(f, "keepalives", "0")?,
            Some(k) if k != DEFAULT_KEEPALIVES => {
                pair(f, "keepalives_idle", &k.idle.as_secs().to_string())?;
                pair(f, "keepalives_interval", &k.interval.as_secs().to_string())?;
                pair(f, "keepalives_count", &k.count.to_string())?;
            }
            Some(_) => {}
        }
        if let Some(t) = self.tcp_user_timeout {
            pair(f, "tcp_user_timeout", &t.as_millis().to_string())?;
        }
        pair(
            f,
            "connect_timeout",
            &self.connect_timeout.as_secs().to_string(),
        )
    }
}

/// `key=value` form without the password; parses back to the same settings (less password).
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_pairs(f)
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("channel_binding", &self.channel_binding)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Quotes a value for the `key=value` form when it needs it (libpq `conninfo_parse` rules:
/// single quotes, backslash escapes `\'` and `\\`).
pub fn quote_value(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !is_space(c) && c != '\'' && c != '\\' && c != '=');
    if plain {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn default_user() -> Result<String, ReplError> {
    for var in ["USER", "LOGNAME"] {
        if let Some(u) = std::env::var_os(var).and_then(|v| v.into_string().ok()) {
            if !u.is_empty() {
                return Ok(u);
            }
        }
    }
    Err(ReplError::config(
        "no user in the conninfo and $USER is not set: add user=ROLE",
    ))
}

/// Shortens untrusted text before it goes into an error message.
fn echo(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// libpq treats the C locale's `isspace` characters as separators.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// The `key = value ...` form, following libpq's `conninfo_parse`: blanks separate pairs and may
/// surround `=`; a value is either unquoted (up to the next blank; `\` escapes one character) or
/// in single quotes (`\` escapes one character, `''` is the empty string).
fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>, ReplError> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        if is_space(chars[i]) {
            i += 1;
            continue;
        }
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !is_space(chars[i]) {
            key.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && is_space(chars[i]) {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(ReplError::config(format!(
                "missing \"=\" after {:?} in connection info string",
                echo(&key)
            )));
        }
        i += 1;
        while i < chars.len() && is_space(chars[i]) {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ReplError::config(
                            "unterminated quoted string in connection info string",
                        ))
                    }
                    Some('\\') => {
                        i += 1;
                        if let Some(&c) = chars.get(i) {
                            value.push(c);
                            i += 1;
                        }
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !is_space(chars[i]) {
                if chars[i] == '\\' {
                    i += 1;
                    if let Some(&c) = chars.get(i) {
                        value.push(c);
                        i += 1;
                    }
                } else {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// The URI form (libpq "Connection URIs"):
/// `postgresql://[user[:password]@][host][:port][/dbname][?param1=value1&...]`, every part
/// percent-decoded, IPv6 hosts in brackets, `%2F`-encoded socket directories as host.
fn parse_uri(s: &str) -> Result<Vec<(String, String)>, ReplError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| ReplError::config("URI must start with postgresql:// or postgres://"))?;
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let mut out = Vec::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".to_string(), percent_decode(user)?));
            }
            if let Some(p) = password {
                out.push(("password".to_string(), percent_decode(p)?));
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(ReplError::config(
            "several hosts in one URI are not supported: give one host",
        ));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| {
            ReplError::config(format!(
                "missing \"]\" in IPv6 host address in URI {:?}",
                echo(hostport)
            ))
        })?;
        if addr.is_empty() {
            return Err(ReplError::config(
                "IPv6 host address may not be empty in URI",
            ));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                ReplError::config(format!(
                    "unexpected character after IPv6 host address in URI {:?}",
                    echo(hostport)
                ))
            })?),
        };
        (addr.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (percent_decode(h)?, Some(p)),
            None => (percent_decode(hostport)?, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".to_string(), host));
    }
    if let Some(p) = port {
        out.push(("port".to_string(), percent_decode(p)?));
    }
    if let Some(db) = path {
        if !db.is_empty() {
            out.push(("dbname".to_string(), percent_decode(db)?));
        }
    }
    if let Some(q) = query {
        for param in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = param.split_once('=').ok_or_else(|| {
                ReplError::config(format!(
                    "missing key/value separator \"=\" in URI query parameter {:?}",
                    echo(param)
                ))
            })?;
            out.push((percent_decode(k)?, percent_decode(v)?));
        }
    }
    Ok(out)
}

/// `%XX` decoding as libpq's `conninfo_uri_decode`: invalid escapes and `%00` are errors.
fn percent_decode(s: &str) -> Result<String, ReplError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit())
                .ok_or_else(|| {
                    ReplError::config(format!(
                        "invalid percent-encoded token in URI: {:?}",
                        echo(s)
                    ))
                })?;
            if hex == 0 {
                return Err(ReplError::config(format!(
                    "forbidden value %00 in percent-encoded value {:?}",
                    echo(s)
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        ReplError::config(format!(
            "percent-decoded URI part is not UTF-8: {:?}",
            echo(s)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnInfo {
        match ConnInfo::parse(s) {
            Ok(c) => c,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match ConnInfo::parse(s) {
            Ok(c) => panic!("{s:?} should not parse, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn keyword_value_basics() {
        let c = parse("host=db1 port=5433 user=wal_archive dbname=postgres application_name=x");
        assert_eq!(c.host.as_deref(), Some("db1"));
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "wal_archive");
        assert_eq!(c.dbname.as_deref(), Some("postgres"));
        assert_eq!(c.application_name.as_deref(), Some("x"));
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            c.endpoint(),
            Endpoint::Tcp {
                host: "db1".into(),
                port: 5433
            }
        );
    }

    #[test]
    fn keyword_value_quoting_like_libpq() {
        let c = parse(r"user = 'a b\'c\\d'   password='' application_name=x\ y  dbname  =z");
        assert_eq!(c.user, r"a b'c\d");
        assert_eq!(c.password.as_deref(), Some(""));
        assert_eq!(c.application_name.as_deref(), Some("x y"));
        assert_eq!(c.dbname.as_deref(), Some("z"));
        // A closing quote ends the value even without a blank after it.
        let c = parse("user='u'dbname=d");
        assert_eq!(c.user, "u");
        assert_eq!(c.dbname.as_deref(), Some("d"));
        // Later keys win.
        assert_eq!(parse("port=1 port=2 user=u").port, 2);
    }

    #[test]
    fn keyword_value_errors() {
        assert!(err("host").contains("missing \"=\""));
        assert!(err("user='abc").contains("unterminated"));
        assert!(err("user=u sslmod=require").contains("\"sslmod\""));
        assert!(err("user=u sslmode=on").contains("sslmode"));
        assert!(err("user=u port=0").contains("port"));
        assert!(err("user=u port=70000").contains("port"));
        assert!(err("user=u hostaddr=db1").contains("hostaddr"));
        assert!(err("user=u connect_timeout=0").contains("connect_timeout"));
        assert!(err("user=u host=a,b").contains("several hosts"));
    }

    #[test]
    fn connect_timeout_like_libpq() {
        assert_eq!(
            parse("user=u connect_timeout=1").connect_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            parse("user=u connect_timeout=30").connect_timeout,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn unix_socket_directory() {
        let c = parse("host=/run/pg port=5444 user=u");
        assert!(c.is_unix_socket());
        assert_eq!(
            c.endpoint(),
            Endpoint::Unix {
                path: PathBuf::from("/run/pg/.s.PGSQL.5444")
            }
        );
        let c = parse("host=/run/pg hostaddr=127.0.0.1 user=u");
        assert!(!c.is_unix_socket());
    }

    #[test]
    fn uri_form() {
        let c = parse("postgresql://rep%40l:p%3Ass@db1.example:5433/my%20db?sslmode=require&application_name=x");
        assert_eq!(c.user, "rep@l");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.host.as_deref(), Some("db1.example"));
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname.as_deref(), Some("my db"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("x"));

        let c = parse("postgres://[::1]:6000?user=u");
        assert_eq!(c.host.as_deref(), Some("::1"));
        assert_eq!(c.port, 6000);
        assert_eq!(c.target(), "[::1]:6000");

        let c = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/db?user=u&ssl=true");
        assert!(c.is_unix_socket());
        assert_eq!(c.sslmode, SslMode::Require);

        let c = parse("postgresql:///?user=u&host=/tmp&port=5999");
        assert_eq!(
            c.endpoint(),
            Endpoint::Unix {
                path: PathBuf::from("/tmp/.s.PGSQL.5999")
            }
        );

        assert!(err("postgresql://u@h/db?bogus=1").contains("\"bogus\""));
        assert!(err("postgresql://u@h/db?sslmode").contains("separator"));
        assert!(err("postgresql://u@h/d%zzb").contains("percent"));
        assert!(err("postgresql://u@h/d%00b").contains("%00"));
        assert!(err("postgresql://u@[::1/db").contains("]"));
    }

    #[test]
    fn password_never_shown() {
        let c = parse("host=h user=u password=s3cr3t-value");
        assert!(!format!("{c}").contains("s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(format!("{c:?}").contains("<redacted>"));
    }

    #[test]
    fn with_password_order() {
        let c = parse("user=u password=inline").with_password(Some("cfg".into()));
        assert_eq!(c.password.as_deref(), Some("inline"));
        let c = parse("user=u").with_password(Some("cfg".into()));
        assert_eq!(c.password.as_deref(), Some("cfg"));
        assert_eq!(c.resolve_password().as_deref(), Some("cfg"));
    }

    #[test]
    fn quoting_covers_every_separator() {
        // Found by the conninfo fuzz target: vertical tab separates pairs (C isspace) but is
        // not char::is_ascii_whitespace.
        for sep in [" ", "\t", "\n", "\r", "\x0b", "\x0c"] {
            let user = format!("a{sep}b");
            let c = parse(&format!("user={}", quote_value(&user)));
            assert_eq!(c.user, user);
        }
        let c = parse("postgresql://%0B@h");
        assert_eq!(parse(&c.to_string()).user, "\x0b");
    }

    #[test]
    fn display_round_trips() {
        let c = parse(
            "host=db1 hostaddr=10.0.0.1 port=6543 user='o\\'brien' dbname='a b' sslmode=verify-full \
             sslrootcert=/etc/ca.pem application_name=wal-archive connect_timeout=7 passfile=/p",
        );
        let again = parse(&c.to_string());
        assert_eq!(c, again);
        for text in [
            "host=db1 user=u keepalives=0",
            "host=db1 user=u keepalives_idle=5 keepalives_interval=2 keepalives_count=9 tcp_user_timeout=1500",
        ] {
            let c = parse(text);
            assert_eq!(parse(&c.to_string()), c, "{text}");
        }
    }

    #[test]
    fn keepalives_are_on_by_default_and_follow_libpq_keys() {
        assert_eq!(
            parse("host=db1 user=u").keepalives,
            Some(DEFAULT_KEEPALIVES)
        );
        assert_eq!(parse("host=db1 user=u keepalives=0").keepalives, None);
        let k = parse("host=db1 user=u keepalives_idle=5 keepalives_count=2").keepalives;
        assert_eq!(
            k,
            Some(Keepalives {
                idle: Duration::from_secs(5),
                interval: DEFAULT_KEEPALIVES.interval,
                count: 2
            })
        );
        assert!(ConnInfo::parse("host=db1 user=u keepalives=yes").is_err());
        assert!(ConnInfo::parse("host=db1 user=u keepalives_idle=0").is_err());
    }
}
