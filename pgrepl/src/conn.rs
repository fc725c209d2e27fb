//! A physical replication connection in command mode: start-up, authentication, and the
//! replication commands of protocol section "Streaming Replication Protocol".
//!
//! Connecting follows protocol section "Message Flow", "Start-up": optional SSLRequest
//! ("SSL Session Encryption"), StartupMessage with `replication=true` (a physical replication
//! walsender, which accepts only replication commands and `SHOW`), the authentication exchange
//! ("Authentication" / "SASL Authentication"), then ParameterStatus and BackendKeyData until
//! ReadyForQuery. Commands are sent as simple queries ("Simple Query").
//!
//! Every read and write is bounded: connecting by the conninfo's `connect_timeout`, commands by
//! [`ReplicationConnection::command_timeout`] (60 s unless changed).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use pgwal::{Lsn, TimeLineId};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::net::{TcpStream, UnixStream};

use crate::basebackup::{BaseBackupOptions, BaseBackupStream};
use crate::conninfo::{ChannelBindingMode, ConnInfo, Endpoint, SslMode};
use crate::error::{ReplError, SQLSTATE_INVALID_AUTHORIZATION, SQLSTATE_INVALID_PASSWORD};
use crate::frames::{self, AuthRequest};
use crate::stream::ReplicationStream;
use crate::tls::{self, Negotiated};
use crate::wire::{Message, Socket, Wire};

/// Bound on one replication command (and on each message of a running command).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `IDENTIFY_SYSTEM`'s single row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    /// `systemid`: the cluster's unique identifier (`pg_control_system().system_identifier`).
    pub system_identifier: u64,
    /// `timeline`: the server's current timeline.
    pub timeline: TimeLineId,
    /// `xlogpos`: the current WAL flush location.
    pub xlogpos: Lsn,
    /// `dbname`: NULL for a physical replication connection.
    pub dbname: Option<String>,
}

/// `READ_REPLICATION_SLOT`'s row for an existing slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// NULL until WAL was reserved.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn` in the server's history.
    pub restart_tli: Option<TimeLineId>,
}

/// One result set of a simple query, values in text format as the server sent them.
#[derive(Clone, Debug, Default)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The CommandComplete tag, when the server sent one for this set.
    pub tag: Option<String>,
}

impl ResultSet {
    /// The text of column `col` in row `row`; `Ok(None)` for NULL; an error if missing.
    pub fn text(&self, row: usize, col: usize) -> Result<Option<&str>, ReplError> {
        let value = self.rows.get(row).and_then(|r| r.get(col)).ok_or_else(|| {
            ReplError::protocol(format!(
                "result has no row {row} column {col} (columns {:?}, {} rows)",
                self.columns,
                self.rows.len()
            ))
        })?;
        match value {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b).map(Some).map_err(|_| {
                ReplError::protocol(format!("column {col} of row {row} is not UTF-8"))
            }),
        }
    }
}

/// A connection to a walsender, in command mode.
pub struct ReplicationConnection {
    pub(crate) wire: Wire,
    pub(crate) user: String,
    pub(crate) command_timeout: Duration,
    params: Vec<(String, String)>,
    backend_pid: i32,
    encrypted: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("user", &self.user)
            .field("backend_pid", &self.backend_pid)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

/// What kind of session the startup message asks for.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Mode {
    /// `replication=true`: a physical walsender.
    Replication,
    /// An ordinary backend.
    Database,
}

/// Whether to send SSLRequest on this attempt.
#[derive(Copy, Clone, PartialEq, Eq)]
enum TlsAttempt {
    Never,
    Try,
}

impl ReplicationConnection {
    /// Connects and authenticates, all within `info.connect_timeout`.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection, ReplError> {
        Self::connect_mode(info, Mode::Replication).await
    }

    /// An ordinary (non-replication) session for catalog look-ups that a walsender refuses,
    /// such as `SELECT oid, spcname FROM pg_tablespace`. Same authentication and timeouts; only
    /// [`ReplicationConnection::query`] is meant to be used on it. Without a dbname in the
    /// conninfo it connects to `postgres` (libpq would use the user name, which is rarely a
    /// database on a server a backup role logs into).
    pub async fn connect_database(info: &ConnInfo) -> Result<ReplicationConnection, ReplError> {
        Self::connect_mode(info, Mode::Database).await
    }

    async fn connect_mode(info: &ConnInfo, mode: Mode) -> Result<ReplicationConnection, ReplError> {
        let target = info.target();
        let attempt = async {
            let first = match info.sslmode {
                SslMode::Disable | SslMode::Allow => TlsAttempt::Never,
                _ => TlsAttempt::Try,
            };
            match Self::connect_once(info, &target, first, mode).await {
                // sslmode=allow: "first try a non-SSL connection; if that fails, try an SSL
                // connection" — typically a pg_hba.conf with only hostssl lines.
                Err(e)
                    if info.sslmode == SslMode::Allow
                        && !info.is_unix_socket()
                        && e.sqlstate() == Some(SQLSTATE_INVALID_AUTHORIZATION) =>
                {
                    Self::connect_once(info, &target, TlsAttempt::Try, mode).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(info.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ReplError::Timeout {
                during: format!("connecting to {target} (connect_timeout)"),
                after: info.connect_timeout,
            }),
        }
    }

    async fn connect_once(
        info: &ConnInfo,
        target: &str,
        tls: TlsAttempt,
        mode: Mode,
    ) -> Result<ReplicationConnection, ReplError> {
        let connect_err = |source| ReplError::Connect {
            target: target.to_string(),
            source,
        };
        let (socket, client_addr) = match info.endpoint() {
            Endpoint::Unix { path } => {
                // Unix sockets never use TLS, whatever sslmode says (libpq does the same).
                let s = UnixStream::connect(&path).await.map_err(connect_err)?;
                (Socket::Unix(s), None)
            }
            Endpoint::Tcp { host, port } => {
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(connect_err)?;
                // Status updates are small and latency matters for the flush position.
                let _ = tcp.set_nodelay(true);
                set_keepalives(&tcp, info);
                let local = tcp.local_addr().ok().map(|a| a.ip());
                let socket = if tls == TlsAttempt::Try {
                    match tls::negotiate(tcp, info, target).await? {
                        Negotiated::Tls(s) => Socket::Tls(s),
                        Negotiated::Refused(_) if info.sslmode.requires_tls() => {
                            return Err(ReplError::Tls {
                                message: format!(
                                    "the server at {target} does not support SSL, but \
                                     sslmode={} requires it (set ssl = on on the server)",
                                    info.sslmode.as_str()
                                ),
                            })
                        }
                        Negotiated::Refused(tcp) => Socket::Tcp(tcp),
                    }
                } else {
                    Socket::Tcp(tcp)
                };
                (socket, local)
            }
        };
        let encrypted = matches!(socket, Socket::Tls(_));
        let mut conn = ReplicationConnection {
            wire: Wire::new(socket),
            user: info.user.clone(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            params: Vec::new(),
            backend_pid: 0,
            encrypted,
        };
        conn.startup(info, client_addr, mode).await?;
        Ok(conn)
    }

    /// StartupMessage, authentication, and the messages up to ReadyForQuery.
    async fn startup(
        &mut self,
        info: &ConnInfo,
        client_addr: Option<IpAddr>,
        mode: Mode,
    ) -> Result<(), ReplError> {
        // "Message Formats", StartupMessage: protocol 3.0 and name/value pairs.
        // `replication=true` makes the backend a physical walsender (section "Streaming
        // Replication Protocol"); `database` is only sent when a dbname was given.
        let mut params: Vec<(&str, &str)> = vec![("user", &info.user)];
        match mode {
            Mode::Replication => {
                params.push(("replication", "true"));
                if let Some(db) = &info.dbname {
                    params.push(("database", db));
                }
            }
            Mode::Database => {
                params.push(("database", info.dbname.as_deref().unwrap_or("postgres")));
            }
        }
        if let Some(app) = &info.application_name {
            params.push(("application_name", app));
        }
        frontend::startup_message(params, &mut self.wire.wbuf).map_err(|_| {
            ReplError::config("user, dbname and application_name may not contain a zero byte")
        })?;
        // Connecting is bounded as a whole by connect_timeout; this is only a backstop.
        let t = info.connect_timeout;
        self.wire.flush(t, "sending the startup message").await?;

        let auth_error = |message: String, code: Option<String>| ReplError::Auth {
            user: info.user.clone(),
            message,
            code,
            client_addr,
        };
        let mut scram: Option<ScramSha256> = None;
        let mut used_channel_binding = false;
        loop {
            let msg = self.wire.read_timeout(t, "authenticating").await?;
            match msg.tag {
                b'R' => match frames::parse_auth(&msg.body)? {
                    AuthRequest::Ok => break,
                    AuthRequest::Cleartext => {
                        // "AuthenticationCleartextPassword": PasswordMessage with the password.
                        let password = self.password(info, &auth_error)?;
                        frontend::password_message(password.as_bytes(), &mut self.wire.wbuf)
                            .map_err(|_| {
                                auth_error("the password contains a zero byte".into(), None)
                            })?;
                        self.wire.flush(t, "sending the password").await?;
                    }
                    AuthRequest::Md5 { salt } => {
                        // "AuthenticationMD5Password": "md5" || md5(md5(password || user) || salt).
                        let password = self.password(info, &auth_error)?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            info.user.as_bytes(),
                            password.as_bytes(),
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut self.wire.wbuf).map_err(
                            |_| auth_error("cannot encode the md5 response".into(), None),
                        )?;
                        self.wire.flush(t, "sending the md5 password").await?;
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        // "SASL Authentication": pick SCRAM-SHA-256-PLUS (channel binding
                        // tls-server-end-point) over TLS when offered, else SCRAM-SHA-256.
                        let password = self.password(info, &auth_error)?;
                        let plus_offered = mechanisms.contains(&"SCRAM-SHA-256-PLUS");
                        let cb_data = match (self.wire.socket(), info.channel_binding) {
                            (Socket::Tls(s), mode)
                                if plus_offered && mode != ChannelBindingMode::Disable =>
                            {
                                s.get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .and_then(|c| tls::tls_server_end_point(c))
                            }
                            _ => None,
                        };
                        let (mechanism, binding) = match cb_data {
                            Some(data) => {
                                used_channel_binding = true;
                                (
                                    "SCRAM-SHA-256-PLUS",
                                    ChannelBinding::tls_server_end_point(data),
                                )
                            }
                            None if info.channel_binding == ChannelBindingMode::Require => {
                                return Err(auth_error(
                                    "channel binding required, but the server did not offer \
                                     SCRAM-SHA-256-PLUS over TLS"
                                        .into(),
                                    None,
                                ));
                            }
                            None if mechanisms.contains(&"SCRAM-SHA-256") => {
                                // GS2 header "y": we could bind but the server did not offer it
                                // (detects a downgrade); "n" without TLS or when we cannot
                                // compute the binding for this certificate.
                                let binding = if self.encrypted
                                    && !plus_offered
                                    && info.channel_binding != ChannelBindingMode::Disable
                                {
                                    ChannelBinding::unrequested()
                                } else {
                                    ChannelBinding::unsupported()
                                };
                                ("SCRAM-SHA-256", binding)
                            }
                            None => {
                                return Err(auth_error(
                                    format!(
                                        "unsupported authentication: the server offers only SASL \
                                         mechanisms {mechanisms:?}"
                                    ),
                                    None,
                                ))
                            }
                        };
                        let s = ScramSha256::new(password.as_bytes(), binding);
                        frontend::sasl_initial_response(
                            mechanism,
                            s.message(),
                            &mut self.wire.wbuf,
                        )
                        .map_err(|_| auth_error("cannot encode the SASL response".into(), None))?;
                        self.wire
                            .flush(t, "sending the SASL initial response")
                            .await?;
                        scram = Some(s);
                    }
                    AuthRequest::SaslContinue { data } => {
                        let s = scram.as_mut().ok_or_else(|| {
                            ReplError::protocol("AuthenticationSASLContinue without SASL start")
                        })?;
                        s.update(data)
                            .map_err(|e| auth_error(format!("SCRAM exchange failed: {e}"), None))?;
                        frontend::sasl_response(s.message(), &mut self.wire.wbuf).map_err(
                            |_| auth_error("cannot encode the SASL response".into(), None),
                        )?;
                        self.wire.flush(t, "sending the SASL response").await?;
                    }
                    AuthRequest::SaslFinal { data } => {
                        let s = scram.as_mut().ok_or_else(|| {
                            ReplError::protocol("AuthenticationSASLFinal without SASL start")
                        })?;
                        // Verifies the server's signature: the server, too, knows the password.
                        s.finish(data).map_err(|e| {
                            auth_error(
                                format!("the server's SCRAM signature does not verify: {e}"),
                                None,
                            )
                        })?;
                    }
                    AuthRequest::Unsupported { code } => {
                        return Err(auth_error(
                            format!(
                                "unsupported authentication method {} (code {code})",
                                AuthRequest::method_name(code)
                            ),
                            None,
                        ))
                    }
                },
                b'E' => {
                    let f = frames::parse_error_fields(&msg.body)?;
                    return Err(match f.code.as_str() {
                        SQLSTATE_INVALID_PASSWORD | SQLSTATE_INVALID_AUTHORIZATION
                            if !f.message.contains("replication role") =>
                        {
                            auth_error(f.message, Some(f.code))
                        }
                        _ => self.server_error(f),
                    });
                }
                b'N' => log_notice(&msg),
                // NegotiateProtocolVersion: only sent when we ask for a newer minor version or
                // _pq_ options, which we never do.
                other => {
                    return Err(ReplError::protocol(format!(
                        "unexpected message {:?} during authentication",
                        char::from(other)
                    )))
                }
            }
        }
        if info.channel_binding == ChannelBindingMode::Require && !used_channel_binding {
            // libpq: "channel binding required, but server authenticated client without
            // channel binding" (e.g. a trust line).
            return Err(auth_error(
                "channel binding required, but the server authenticated this client without \
                 channel binding"
                    .into(),
                None,
            ));
        }
        // After AuthenticationOk: ParameterStatus*, BackendKeyData, ReadyForQuery; an
        // ErrorResponse here is a start-up failure (e.g. no REPLICATION attribute).
        loop {
            let msg = self.wire.read_timeout(t, "starting the session").await?;
            match msg.tag {
                b'Z' => return Ok(()),
                b'K' => {
                    let (pid, _secret) = frames::parse_backend_key_data(&msg.body)?;
                    self.backend_pid = pid;
                }
                b'S' => self.parameter_status(&msg)?,
                b'N' => log_notice(&msg),
                b'E' => {
                    let f = frames::parse_error_fields(&msg.body)?;
                    return Err(self.server_error(f));
                }
                other => {
                    return Err(ReplError::protocol(format!(
                        "unexpected message {:?} during start-up",
                        char::from(other)
                    )))
                }
            }
        }
    }

    fn password(
        &self,
        info: &ConnInfo,
        auth_error: &impl Fn(String, Option<String>) -> ReplError,
    ) -> Result<String, ReplError> {
        info.resolve_password().ok_or_else(|| {
            auth_error(
                "the server asks for a password, but none was given: set password in the \
                 conninfo or the configuration, or add a line to the .pgpass file \
                 (database field 'replication')"
                    .into(),
                None,
            )
        })
    }

    fn parameter_status(&mut self, msg: &Message) -> Result<(), ReplError> {
        let (name, value) = frames::parse_parameter_status(&msg.body)?;
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.params.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    pub(crate) fn server_error(&self, f: frames::ErrorFields) -> ReplError {
        ReplError::Server {
            severity: f.severity,
            code: f.code,
            message: f.message,
            detail: f.detail,
            hint: f.hint,
            user: Some(self.user.clone()),
        }
    }

    /// The bound on each command (and each message of a running command).
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Changes the bound on commands; also inherited by streams made from this connection.
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// The walsender's process ID (BackendKeyData), as in `pg_stat_replication.pid`.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// A parameter the server reported (ParameterStatus), e.g. `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the session is TLS-encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The role this connection logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Runs one command as a simple query and collects its result sets. An ErrorResponse is
    /// returned as [`ReplError::Server`] after the server's ReadyForQuery, so the connection
    /// stays usable.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<ResultSet>, ReplError> {
        self.send_query(sql).await?;
        let mut sets = Vec::new();
        let mut current: Option<ResultSet> = None;
        let mut error = None;
        loop {
            let msg = self.read_command_message(sql).await?;
            match msg.tag {
                b'T' => {
                    if let Some(done) = current.take() {
                        sets.push(done);
                    }
                    let columns = frames::parse_row_description(&msg.body)?;
                    current = Some(ResultSet {
                        columns: columns.into_iter().map(str::to_string).collect(),
                        ..ResultSet::default()
                    });
                }
                b'D' => {
                    let set = current
                        .as_mut()
                        .ok_or_else(|| ReplError::protocol("DataRow without RowDescription"))?;
                    let values = frames::parse_data_row(&msg.body)?;
                    set.rows.push(
                        values
                            .into_iter()
                            .map(|v| v.map(|s| msg.body.slice_ref(s)))
                            .collect(),
                    );
                }
                b'C' => {
                    let tag = frames::parse_command_complete(&msg.body)?.to_string();
                    match current.take() {
                        Some(mut set) => {
                            set.tag = Some(tag);
                            sets.push(set);
                        }
                        None => sets.push(ResultSet {
                            tag: Some(tag),
                            ..ResultSet::default()
                        }),
                    }
                }
                b'I' => {}
                b'E' => {
                    let f = frames::parse_error_fields(&msg.body)?;
                    error = Some(self.server_error(f));
                }
                b'Z' => {
                    if let Some(e) = error {
                        return Err(e);
                    }
                    if let Some(set) = current.take() {
                        sets.push(set);
                    }
                    return Ok(sets);
                }
                b'H' | b'G' | b'W' => {
                    return Err(ReplError::protocol(format!(
                        "{sql:?} started a COPY; use the dedicated method for it"
                    )))
                }
                other => return Err(unexpected(other, sql)),
            }
        }
    }

    pub(crate) async fn send_query(&mut self, sql: &str) -> Result<(), ReplError> {
        // "Simple Query": Query ('Q') with the command string.
        frontend::query(sql, &mut self.wire.wbuf)
            .map_err(|_| ReplError::config("the command contains a zero byte"))?;
        let t = self.command_timeout;
        self.wire.flush(t, &format!("sending {sql:?}")).await
    }

    /// The next message of a running command, skipping (and logging) notices and absorbing
    /// ParameterStatus, bounded by the command timeout.
    pub(crate) async fn read_command_message(&mut self, what: &str) -> Result<Message, ReplError> {
        loop {
            let t = self.command_timeout;
            let msg = self
                .wire
                .read_timeout(t, &format!("waiting for the answer to {what}"))
                .await?;
            match msg.tag {
                b'N' => log_notice(&msg),
                b'S' => self.parameter_status(&msg)?,
                _ => return Ok(msg),
            }
        }
    }

    /// The single result set of a command that returns exactly one.
    async fn query_one(&mut self, sql: &str) -> Result<ResultSet, ReplError> {
        let mut sets = self.query(sql).await?;
        let pos = sets
            .iter()
            .position(|s| !s.columns.is_empty())
            .ok_or_else(|| ReplError::protocol(format!("{sql:?} returned no result set")))?;
        Ok(sets.swap_remove(pos))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ReplError> {
        let rs = self.query_one("IDENTIFY_SYSTEM").await?;
        let required = |col| -> Result<&str, ReplError> {
            rs.text(0, col)?.ok_or_else(|| {
                ReplError::protocol(format!("IDENTIFY_SYSTEM returned NULL in column {col}"))
            })
        };
        let system_identifier = parse_num::<u64>(required(0)?, "IDENTIFY_SYSTEM systemid")?;
        let timeline = parse_num::<u32>(required(1)?, "IDENTIFY_SYSTEM timeline")?;
        let xlogpos = parse_lsn(required(2)?, "IDENTIFY_SYSTEM xlogpos")?;
        let dbname = if rs.columns.len() > 3 {
            rs.text(0, 3)?.map(str::to_string)
        } else {
            None
        };
        Ok(IdentifySystem {
            system_identifier,
            timeline,
            xlogpos,
            dbname,
        })
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+). `None` when the slot does not exist
    /// (the server answers one row of NULLs).
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<SlotInfo>, ReplError> {
        check_slot_name(name)?;
        let rs = self
            .query_one(&format!("READ_REPLICATION_SLOT {name}"))
            .await?;
        let Some(slot_type) = rs.text(0, 0)? else {
            return Ok(None);
        };
        let restart_lsn = rs
            .text(0, 1)?
            .map(|s| parse_lsn(s, "READ_REPLICATION_SLOT restart_lsn"))
            .transpose()?;
        let restart_tli = rs
            .text(0, 2)?
            .map(|s| parse_num::<u32>(s, "READ_REPLICATION_SLOT restart_tli"))
            .transpose()?;
        Ok(Some(SlotInfo {
            slot_type: slot_type.to_string(),
            restart_lsn,
            restart_tli,
        }))
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL [RESERVE_WAL]`. Returns the WAL position the slot
    /// reserved (its `restart_lsn`), `None` without `reserve_wal`.
    ///
    /// The command's `consistent_point` column is meant for this, but PostgreSQL (15 at least)
    /// fills it from the slot's `confirmed_flush`, which a physical slot never sets: it always
    /// reads `0/0`. So when it is not valid, the position is read back with
    /// `READ_REPLICATION_SLOT`.
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        reserve_wal: bool,
    ) -> Result<Option<Lsn>, ReplError> {
        check_slot_name(name)?;
        let sql = if reserve_wal {
            format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL")
        } else {
            format!("CREATE_REPLICATION_SLOT {name} PHYSICAL")
        };
        let rs = self.query_one(&sql).await?;
        let point = rs
            .text(0, 1)?
            .map(|s| parse_lsn(s, "CREATE_REPLICATION_SLOT consistent_point"))
            .transpose()?
            .filter(|l| l.is_valid());
        if point.is_some() || !reserve_wal {
            return Ok(point);
        }
        Ok(self
            .read_replication_slot(name)
            .await?
            .and_then(|slot| slot.restart_lsn))
    }

    /// `DROP_REPLICATION_SLOT name`.
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), ReplError> {
        check_slot_name(name)?;
        self.query(&format!("DROP_REPLICATION_SLOT {name}")).await?;
        Ok(())
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and content. The content column is
    /// declared bytea but sent as the file's raw bytes.
    pub async fn timeline_history(
        &mut self,
        tli: TimeLineId,
    ) -> Result<(String, Vec<u8>), ReplError> {
        let rs = self.query_one(&format!("TIMELINE_HISTORY {tli}")).await?;
        let filename = rs
            .text(0, 0)?
            .ok_or_else(|| ReplError::protocol("TIMELINE_HISTORY returned a NULL filename"))?
            .to_string();
        let content = rs
            .rows
            .first()
            .and_then(|r| r.get(1))
            .cloned()
            .flatten()
            .ok_or_else(|| ReplError::protocol("TIMELINE_HISTORY returned no content"))?;
        Ok((filename, content.to_vec()))
    }

    /// `SHOW setting` (allowed on a replication connection), e.g. `wal_segment_size` → `1MB`.
    pub async fn show(&mut self, setting: &str) -> Result<String, ReplError> {
        if setting.is_empty()
            || !setting
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(ReplError::config(format!(
                "{setting:?} is not a setting name"
            )));
        }
        let rs = self.query_one(&format!("SHOW {setting}")).await?;
        Ok(rs.text(0, 0)?.unwrap_or_default().to_string())
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL X/Y TIMELINE n`: switches to COPY both mode.
    ///
    /// Errors the server gives (SQLSTATE exposed, see [`ReplError::sqlstate`]): "requested
    /// starting point is ahead of the WAL flush position", "requested WAL segment has already
    /// been removed", slot active for another PID (`55006`), slot does not exist (`42704`).
    pub async fn start_physical(
        mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimeLineId,
    ) -> Result<ReplicationStream, ReplError> {
        let slot_clause = match slot {
            Some(s) => {
                check_slot_name(s)?;
                format!("SLOT {s} ")
            }
            None => String::new(),
        };
        let sql = format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {timeline}");
        self.send_query(&sql).await?;
        let msg = self.read_command_message(&sql).await?;
        match msg.tag {
            // CopyBothResponse. PostgreSQL sends it before it checks the start point
            // ("requested starting point ... is ahead of the WAL flush position" comes after
            // it), so confirm that streaming really started: ask for a keepalive (Standby
            // status update with the reply flag, no positions). The walsender answers it first
            // thing in its loop; a start-up error precedes the answer. Should the server
            // already be back in command mode, it ignores the CopyData (PostgresMain: "Accept
            // but ignore these messages, per protocol spec").
            b'W' => {
                let mut stream = ReplicationStream::new(self, start, timeline);
                stream
                    .send_status(Lsn::INVALID, Lsn::INVALID, Lsn::INVALID, true)
                    .await?;
                stream.confirm_started(&sql).await
            }
            // "If the client requests streaming at exactly the end of an old timeline, the
            // server skips COPY mode entirely": the result set of the end-of-timeline handshake
            // comes at once.
            b'T' => {
                let next = self.read_end_of_timeline_result(Some(msg)).await?;
                Ok(ReplicationStream::ended(self, start, timeline, next))
            }
            b'E' => {
                let f = frames::parse_error_fields(&msg.body)?;
                let err = self.server_error(f);
                // Drain to ReadyForQuery so the error is complete; the connection is consumed
                // anyway.
                let _ = self.drain_to_ready(&sql).await;
                Err(err)
            }
            other => Err(unexpected(other, &sql)),
        }
    }

    /// After COPY mode of START_REPLICATION ended: the optional result set (next_tli,
    /// next_tli_startpos), CommandComplete(s), ReadyForQuery.
    pub(crate) async fn read_end_of_timeline_result(
        &mut self,
        first: Option<Message>,
    ) -> Result<Option<(TimeLineId, Lsn)>, ReplError> {
        let what = "the end of START_REPLICATION";
        let mut next = None;
        let mut pending = first;
        let mut error = None;
        loop {
            let msg = match pending.take() {
                Some(m) => m,
                None => self.read_command_message(what).await?,
            };
            match msg.tag {
                b'T' => {}
                b'D' => {
                    let values = frames::parse_data_row(&msg.body)?;
                    let text = |i: usize| -> Result<&str, ReplError> {
                        values
                            .get(i)
                            .copied()
                            .flatten()
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .ok_or_else(|| {
                                ReplError::protocol("malformed end-of-timeline result row")
                            })
                    };
                    let tli = parse_num::<u32>(text(0)?, "next_tli")?;
                    let lsn = parse_lsn(text(1)?, "next_tli_startpos")?;
                    next = Some((tli, lsn));
                }
                b'C' => {}
                // Leftover WAL the server sent before it saw our CopyDone.
                b'd' | b'c' => {}
                b'E' => {
                    let f = frames::parse_error_fields(&msg.body)?;
                    error = Some(self.server_error(f));
                }
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(next),
                    }
                }
                other => return Err(unexpected(other, what)),
            }
        }
    }

    pub(crate) async fn drain_to_ready(&mut self, what: &str) -> Result<(), ReplError> {
        loop {
            if self.read_command_message(what).await?.tag == b'Z' {
                return Ok(());
            }
        }
    }

    /// `BASE_BACKUP (...)` (PostgreSQL 15+ syntax). See [`crate::basebackup`].
    pub async fn base_backup(
        mut self,
        opts: BaseBackupOptions,
    ) -> Result<BaseBackupStream, ReplError> {
        let sql = opts.command()?;
        self.send_query(&sql).await?;
        Ok(BaseBackupStream::new(self))
    }

    /// Ends the session politely (Terminate), bounded by the command timeout.
    pub async fn close(self) {
        let t = self.command_timeout;
        self.wire.terminate(t).await;
    }
}

pub(crate) fn log_notice(msg: &Message) {
    match frames::parse_error_fields(&msg.body) {
        Ok(f) => tracing::info!(
            severity = %f.severity,
            code = %f.code,
            detail = f.detail.as_deref().unwrap_or(""),
            "PostgreSQL: {}",
            f.message
        ),
        Err(e) => tracing::warn!("malformed NoticeResponse from PostgreSQL: {e}"),
    }
}

pub(crate) fn unexpected(tag: u8, during: &str) -> ReplError {
    ReplError::protocol(format!(
        "unexpected message {:?} while waiting for the answer to {during}",
        char::from(tag)
    ))
}

pub(crate) fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ReplError> {
    s.trim()
        .parse()
        .map_err(|_| ReplError::protocol(format!("{what}: {s:?} is not a valid number")))
}

pub(crate) fn parse_lsn(s: &str, what: &str) -> Result<Lsn, ReplError> {
    s.parse()
        .map_err(|e| ReplError::protocol(format!("{what}: {e}")))
}

/// Slot names are interpolated into commands, so they are checked first: PostgreSQL allows
/// only lower-case letters, digits and underscores, at most 63 characters
/// (`ReplicationSlotValidateName`).
fn check_slot_name(name: &str) -> Result<(), ReplError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplError::config(format!(
            "invalid replication slot name {:?}: use 1 to 63 lower-case letters, digits and underscores",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// TCP keepalives and the user timeout of `info` on a new connection. Failing to set them is
/// not fatal (the receiver's own inactivity timeout still applies), only logged.
fn set_keepalives(tcp: &TcpStream, info: &ConnInfo) {
    let sock = socket2::SockRef::from(tcp);
    let result = match info.keepalives {
        Some(k) => sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count),
        ),
        None => sock.set_keepalive(false),
    }
    .and_then(|()| match info.tcp_user_timeout {
        Some(t) => sock.set_tcp_user_timeout(Some(t)),
        None => Ok(()),
    });
    if let Err(e) = result {
        tracing::warn!(target_host = %info.target(), "cannot set TCP keepalives: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(check_slot_name("wal_archive_1").is_ok());
        assert!(check_slot_name("").is_err());
        assert!(check_slot_name("Upper").is_err());
        assert!(check_slot_name("x; DROP").is_err());
        assert!(check_slot_name(&"a".repeat(64)).is_err());
    }
}
