//! The one error type of this crate.
//!
//! Rules, so that a caller (the streaming receiver, the backup job) can act without parsing text:
//!
//! - Every variant says whether retrying the same operation later can help:
//!   [`ReplError::is_retryable`]. Network trouble and timeouts can; a wrong password, a missing
//!   `pg_hba.conf` line, a missing `REPLICATION` attribute or a bad conninfo cannot until a human
//!   changes something.
//! - [`ReplError::hint`] tells that human what to change, in DBA terms.
//! - Errors the server sent keep their SQLSTATE (`code`), so callers can match on it instead of on
//!   (translated) message text. See the PostgreSQL documentation, appendix "PostgreSQL Error
//!   Codes", and protocol section "Error and Notice Message Fields".
//! - The password never appears in any message.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// SQLSTATE `55006` object_in_use: a replication slot is active for another PID.
pub const SQLSTATE_OBJECT_IN_USE: &str = "55006";
/// SQLSTATE `42501` insufficient_privilege: "must be superuser or replication role to start
/// walsender".
pub const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `28000` invalid_authorization_specification: no or a rejecting `pg_hba.conf` line,
/// unknown role.
pub const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `28P01` invalid_password: password authentication failed.
pub const SQLSTATE_INVALID_PASSWORD: &str = "28P01";
/// SQLSTATE `53400` configuration_limit_exceeded: "all replication slots are in use".
pub const SQLSTATE_CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// SQLSTATE `42704` undefined_object: e.g. the replication slot does not exist.
pub const SQLSTATE_UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE `42710` duplicate_object: e.g. the replication slot already exists.
pub const SQLSTATE_DUPLICATE_OBJECT: &str = "42710";

/// Anything that can go wrong talking to PostgreSQL.
// `Server` carries the fields of an ErrorResponse inline (callers match on them by name), which
// makes the type larger than clippy's default; errors are the cold path of a network client.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The TCP or Unix-socket connection could not be opened, or the TLS handshake failed on the
    /// network level. Retryable: the server may be restarting or unreachable for a moment.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },

    /// An established connection broke (reset, closed by the server without an ErrorResponse).
    /// Retryable with a new connection.
    #[error("connection to PostgreSQL lost while {during}: {source}")]
    ConnectionLost {
        during: String,
        #[source]
        source: io::Error,
    },

    /// An operation did not finish in time. Retryable; the connection it happened on is in an
    /// unknown state and must be dropped (except for [`crate::stream::ReplicationStream::next`],
    /// which is built to be cancelled).
    #[error("timed out after {after:?} while {during}")]
    Timeout { during: String, after: Duration },

    /// TLS could not be set up as the conninfo's `sslmode` demands: the server refuses TLS, the
    /// certificate does not verify, the root certificate file is unreadable. Not retryable.
    #[error("TLS: {message}")]
    Tls { message: String },

    /// Authentication failed: wrong password, no matching `pg_hba.conf` line, unknown role, an
    /// authentication method this client does not speak, no password available. Not retryable
    /// until a DBA changes the role, `pg_hba.conf` or the password given to this client.
    #[error("authentication of role \"{user}\" failed: {message}")]
    Auth {
        user: String,
        message: String,
        /// The SQLSTATE when the server reported it (`28P01`, `28000`), `None` when this client
        /// gave up on its own.
        code: Option<String>,
        /// The address the connection came from as the server saw it (for a `pg_hba.conf` hint);
        /// `None` for Unix sockets.
        client_addr: Option<IpAddr>,
    },

    /// The server answered with an ErrorResponse (protocol section "ErrorResponse"; fields from
    /// "Error and Notice Message Fields").
    #[error("{severity} {code}: {message}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server {
        /// `S` field, e.g. `ERROR`, `FATAL`.
        severity: String,
        /// `C` field: the SQLSTATE, e.g. `55006`.
        code: String,
        /// `M` field.
        message: String,
        /// `D` field.
        detail: Option<String>,
        /// `H` field: the server's own hint.
        hint: Option<String>,
        /// The role this connection logged in as, for our hints.
        user: Option<String>,
    },

    /// The server sent something the protocol does not allow at this point, or a malformed
    /// message. Not retryable: it is a bug here or an incompatible server.
    #[error("protocol violation: {message}")]
    Protocol { message: String },

    /// The conninfo string or an option is invalid. Not retryable.
    #[error("invalid connection settings: {message}")]
    Config { message: String },
}

impl ReplError {
    /// Whether trying again later, unchanged, can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplError::Connect { .. } | ReplError::ConnectionLost { .. } => true,
            ReplError::Timeout { .. } => true,
            ReplError::Tls { .. } | ReplError::Auth { .. } => false,
            ReplError::Protocol { .. } | ReplError::Config { .. } => false,
            ReplError::Server { code, .. } => sqlstate_is_transient(code),
        }
    }

    /// The SQLSTATE, for errors the server reported.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplError::Server { code, .. } => Some(code),
            ReplError::Auth { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The replication slot is active for another process (`55006` object_in_use: "replication
    /// slot \"x\" is active for PID n").
    pub fn is_slot_in_use(&self) -> bool {
        self.sqlstate() == Some(SQLSTATE_OBJECT_IN_USE)
    }

    /// The role lacks the `REPLICATION` attribute (`42501`, or `28000` "must be superuser or
    /// replication role" in older servers).
    pub fn is_no_replication_privilege(&self) -> bool {
        match self.sqlstate() {
            Some(SQLSTATE_INSUFFICIENT_PRIVILEGE) => true,
            Some(SQLSTATE_INVALID_AUTHORIZATION) => self
                .server_message()
                .is_some_and(|m| m.contains("replication role")),
            _ => false,
        }
    }

    /// `max_replication_slots` is exhausted (`53400` configuration_limit_exceeded: "all
    /// replication slots are in use").
    pub fn is_too_many_slots(&self) -> bool {
        self.sqlstate() == Some(SQLSTATE_CONFIGURATION_LIMIT_EXCEEDED)
            && self
                .server_message()
                .is_some_and(|m| m.contains("replication slot"))
    }

    /// The named replication slot does not exist (`42704` undefined_object).
    pub fn is_slot_missing(&self) -> bool {
        self.sqlstate() == Some(SQLSTATE_UNDEFINED_OBJECT)
    }

    /// The slot to be created exists already (`42710` duplicate_object).
    pub fn is_slot_exists(&self) -> bool {
        self.sqlstate() == Some(SQLSTATE_DUPLICATE_OBJECT)
    }

    /// The primary message the server sent, for errors the server reported.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            ReplError::Server { message, .. } | ReplError::Auth { message, .. } => Some(message),
            _ => None,
        }
    }

    /// What a DBA can do about this error, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            ReplError::Auth {
                user,
                message,
                code,
                client_addr,
            } => Some(auth_hint(user, message, code.as_deref(), *client_addr)),
            ReplError::Server { .. } if self.is_no_replication_privilege() => {
                let role = self.role_or_placeholder();
                Some(format!(
                    "grant REPLICATION to the role: ALTER ROLE {role} REPLICATION"
                ))
            }
            ReplError::Server { .. } if self.is_slot_in_use() => {
                let pid = self
                    .server_message()
                    .and_then(pid_in_message)
                    .map(|p| format!(" (PID {p})"))
                    .unwrap_or_default();
                Some(format!(
                    "the slot is used by another client{pid}: stop it or use another slot name"
                ))
            }
            ReplError::Server { .. } if self.is_too_many_slots() => Some(
                "raise max_replication_slots (needs a restart) or drop an unused slot: \
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active"
                    .to_string(),
            ),
            ReplError::Server { code, message, hint, .. } => {
                if code == "53300" {
                    Some(
                        "the server has no free connection or WAL sender: raise max_connections / \
                         max_wal_senders, or stop an unused client"
                            .to_string(),
                    )
                } else if message.contains("has already been removed") {
                    Some(
                        "the server recycled WAL this client still needed: use a replication \
                         slot, or fetch the missing segments from the archive"
                            .to_string(),
                    )
                } else {
                    hint.clone()
                }
            }
            ReplError::Tls { .. } => Some(
                "check the server's ssl settings and the sslmode / sslrootcert of the conninfo"
                    .to_string(),
            ),
            ReplError::Config { .. } => Some(
                "fix the conninfo (libpq key=value or postgresql:// URI syntax)".to_string(),
            ),
            ReplError::Connect { .. } => Some(
                "check that PostgreSQL runs, listens on that address (listen_addresses, port) \
                 and that no firewall is in the way"
                    .to_string(),
            ),
            ReplError::ConnectionLost { .. }
            | ReplError::Timeout { .. }
            | ReplError::Protocol { .. } => None,
        }
    }

    fn role_or_placeholder(&self) -> String {
        match self {
            ReplError::Server { user: Some(u), .. } | ReplError::Auth { user: u, .. } => {
                quote_ident(u)
            }
            _ => "<role>".to_string(),
        }
    }

    pub fn protocol(message: impl Into<String>) -> ReplError {
        ReplError::Protocol {
            message: message.into(),
        }
    }

    pub fn config(message: impl Into<String>) -> ReplError {
        ReplError::Config {
            message: message.into(),
        }
    }

    pub(crate) fn lost(during: impl Into<String>, source: io::Error) -> ReplError {
        ReplError::ConnectionLost {
            during: during.into(),
            source,
        }
    }
}

impl From<crate::frames::FrameError> for ReplError {
    fn from(e: crate::frames::FrameError) -> Self {
        ReplError::protocol(e.to_string())
    }
}

/// SQLSTATEs after which the same request can succeed later without anyone changing anything.
/// Classes from appendix "PostgreSQL Error Codes".
fn sqlstate_is_transient(code: &str) -> bool {
    matches!(
        code,
        // object_in_use: the slot's other user may go away (e.g. our own previous connection
        // whose walsender has not exited yet).
        "55006"
        // too_many_connections, disk_full, out_of_memory
        | "53300" | "53100" | "53200"
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up / shutting down)
        | "57P01" | "57P02" | "57P03"
        // serialization_failure, deadlock_detected
        | "40001" | "40P01"
    ) || code.starts_with("08") // connection_exception class
}

fn auth_hint(user: &str, message: &str, code: Option<&str>, addr: Option<IpAddr>) -> String {
    let role = quote_ident(user);
    let hba_line = match addr {
        Some(IpAddr::V4(a)) => format!("host replication {role} {a}/32 scram-sha-256"),
        Some(IpAddr::V6(a)) => format!("host replication {role} {a}/128 scram-sha-256"),
        None => format!("local replication {role} scram-sha-256"),
    };
    if message.contains("no pg_hba.conf entry") {
        format!(
            "add a pg_hba.conf line: {hba_line} (then SELECT pg_reload_conf()); \
             replication connections match only lines whose database field is 'replication'"
        )
    } else if message.contains("pg_hba.conf rejects") {
        format!(
            "a 'reject' line in pg_hba.conf matches this connection: put an allowing line \
             before it, e.g. {hba_line}, and SELECT pg_reload_conf()"
        )
    } else if message.contains("does not exist") {
        format!(
            "create the role: CREATE ROLE {role} LOGIN REPLICATION PASSWORD '...', \
             or fix the user in the conninfo"
        )
    } else if code == Some(SQLSTATE_INVALID_PASSWORD) || message.contains("password") {
        format!(
            "check the password for role {role}: the conninfo's password, the configured \
             password, or the matching .pgpass line (chmod 0600); set it on the server with \
             ALTER ROLE {role} PASSWORD '...'"
        )
    } else if message.contains("channel binding") {
        "the server did not use SCRAM channel binding: connect with TLS and scram-sha-256 \
         authentication, or drop channel_binding=require"
            .to_string()
    } else if message.contains("unsupported authentication") {
        format!(
            "this client speaks trust, password, md5 and scram-sha-256 authentication: \
             change the pg_hba.conf line for this connection, e.g. {hba_line}"
        )
    } else {
        format!("check pg_hba.conf and the role {role}; e.g. {hba_line}")
    }
}

/// The number after "PID " in a message like `replication slot "s" is active for PID 1234`.
fn pid_in_message(message: &str) -> Option<u32> {
    let rest = &message[message.find("PID ")? + 4..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Quotes a role name for SQL when it needs quoting (`quote_ident`).
fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> ReplError {
        ReplError::Server {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
            user: Some("wal_archive".into()),
        }
    }

    #[test]
    fn classifies_server_errors() {
        let in_use = server("55006", "replication slot \"s\" is active for PID 4242");
        assert!(in_use.is_slot_in_use());
        assert!(in_use.is_retryable());
        let hint = in_use.hint().unwrap_or_default();
        assert!(hint.contains("PID 4242"), "{hint}");

        let priv_ = server(
            "42501",
            "must be superuser or replication role to start walsender",
        );
        assert!(priv_.is_no_replication_privilege());
        assert!(!priv_.is_retryable());
        assert_eq!(
            priv_.hint().as_deref(),
            Some("grant REPLICATION to the role: ALTER ROLE wal_archive REPLICATION")
        );

        let full = server("53400", "all replication slots are in use");
        assert!(full.is_too_many_slots());
        assert!(!full.is_retryable());
        assert!(full
            .hint()
            .unwrap_or_default()
            .contains("max_replication_slots"));

        assert!(server("57P03", "the database system is starting up").is_retryable());
        assert!(server("08006", "x").is_retryable());
        assert!(!server("XX000", "requested starting point is ahead").is_retryable());
    }

    #[test]
    fn auth_hints_name_the_fix() {
        let e = ReplError::Auth {
            user: "Repl".into(),
            message: "no pg_hba.conf entry for replication connection from host \"127.0.0.1\""
                .into(),
            code: Some("28000".into()),
            client_addr: Some("127.0.0.1".parse().expect("literal address")),
        };
        assert!(!e.is_retryable());
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains("host replication \"Repl\" 127.0.0.1/32 scram-sha-256"),
            "{hint}"
        );
    }

    #[test]
    fn pid_parsing() {
        assert_eq!(pid_in_message("is active for PID 17"), Some(17));
        assert_eq!(pid_in_message("no pid here"), None);
        assert_eq!(pid_in_message("PID "), None);
    }
}
