//! Pure parsers (and the few encoders) of the messages this client exchanges with PostgreSQL.
//!
//! Everything here works on byte slices, does no I/O, never panics, and returns a [`FrameError`]
//! for anything malformed; the fuzz target `repl_frames` feeds it arbitrary bytes. The connection
//! code (`conn`, `stream`, `basebackup`) reads whole messages off the wire and hands their bodies
//! to these functions.
//!
//! References are to the PostgreSQL 15 documentation, chapter "Frontend/Backend Protocol":
//! section "Message Formats" for the backend messages, and section "Streaming Replication
//! Protocol" for the CopyData payloads of `START_REPLICATION` and `BASE_BACKUP`.

use pgwal::Lsn;

/// Largest backend message accepted, body included. The biggest legitimate messages are
/// XLogData (`MAX_SEND_SIZE` = 16 WAL pages = 128 KiB, plus the header) and base backup chunks
/// (32 KiB); the cap keeps a broken or hostile server from making us allocate gigabytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Why a message could not be parsed. Never retryable: the same bytes fail the same way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{what}: message too short ({have} bytes, need {need})")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: {extra} unexpected bytes after the message's fields")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("{what}: unknown message type {tag:?}")]
    UnknownType { what: &'static str, tag: char },
    #[error("{what}: string is not terminated by a zero byte")]
    UnterminatedString { what: &'static str },
    #[error("{what}: string is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("message length {len} is invalid (must be 4 to {MAX_MESSAGE_LEN})")]
    BadLength { len: i64 },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// A cursor over a message body. Every read checks the remaining length.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
    total: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader {
            buf,
            what,
            total: buf.len(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated {
                what: self.what,
                need: self.total - self.buf.len() + n,
                have: self.total,
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, FrameError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `String` field of the protocol: bytes up to a zero byte, which is consumed.
    fn cstr(&mut self) -> Result<&'a str, FrameError> {
        let bytes = self.cbytes()?;
        std::str::from_utf8(bytes).map_err(|_| FrameError::NotUtf8 { what: self.what })
    }

    fn cbytes(&mut self) -> Result<&'a [u8], FrameError> {
        let Some(end) = self.buf.iter().position(|&b| b == 0) else {
            return Err(FrameError::UnterminatedString { what: self.what });
        };
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                what: self.what,
                extra: self.buf.len(),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framing ("Message Formats": every backend message is Byte1 type, Int32 length including
// itself, then the body).
// ---------------------------------------------------------------------------------------------

/// Type byte and body length of a backend message, from its first five bytes.
pub fn parse_header(header: [u8; 5]) -> Result<(u8, usize), FrameError> {
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .filter(|&b| b + 5 <= MAX_MESSAGE_LEN);
    match body {
        Some(body) => Ok((header[0], body)),
        None => Err(FrameError::BadLength { len: len.into() }),
    }
}

// ---------------------------------------------------------------------------------------------
// Backend messages of the start-up and simple-query phases.
// ---------------------------------------------------------------------------------------------

/// What an `AuthenticationXXX` message ('R', section "Message Formats") asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// AuthenticationOk (0).
    Ok,
    /// AuthenticationCleartextPassword (3).
    Cleartext,
    /// AuthenticationMD5Password (5) with its 4-byte salt.
    Md5 { salt: [u8; 4] },
    /// AuthenticationSASL (10): the mechanisms the server offers, in its order of preference.
    Sasl { mechanisms: Vec<&'a str> },
    /// AuthenticationSASLContinue (11).
    SaslContinue { data: &'a [u8] },
    /// AuthenticationSASLFinal (12).
    SaslFinal { data: &'a [u8] },
    /// Kerberos (2), SCM credentials (6), GSSAPI (7, 8), SSPI (9) or unknown.
    Unsupported { code: i32 },
}

impl AuthRequest<'_> {
    /// The method's name, for error messages.
    pub fn method_name(code: i32) -> &'static str {
        match code {
            2 => "Kerberos V5",
            6 => "SCM credentials",
            7 | 8 => "GSSAPI",
            9 => "SSPI",
            _ => "unknown",
        }
    }
}

/// Parses the body of an 'R' message.
pub fn parse_auth(body: &[u8]) -> Result<AuthRequest<'_>, FrameError> {
    let mut r = Reader::new(body, "Authentication");
    let code = r.i32()?;
    let req = match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => AuthRequest::Md5 { salt: r.array()? },
        10 => {
            // "a list of SASL authentication mechanisms, terminated by a zero byte"
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue { data: r.rest() },
        12 => AuthRequest::SaslFinal { data: r.rest() },
        other => {
            r.rest();
            AuthRequest::Unsupported { code: other }
        }
    };
    r.finish()?;
    Ok(req)
}

/// The fields of an ErrorResponse ('E') or NoticeResponse ('N'), section "Error and Notice
/// Message Fields". Text is decoded lossily: the server's messages are in its `lc_messages`
/// encoding, and a garbled character must not hide the error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `V` (non-localized, PostgreSQL 9.6+) or else `S`.
    pub severity: String,
    /// `C`: SQLSTATE.
    pub code: String,
    /// `M`.
    pub message: String,
    /// `D`.
    pub detail: Option<String>,
    /// `H`.
    pub hint: Option<String>,
}

/// Parses the body of an 'E' or 'N' message.
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields, FrameError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut out = ErrorFields::default();
    let mut localized_severity = String::new();
    loop {
        let kind = r.u8()?;
        if kind == 0 {
            break;
        }
        let value = String::from_utf8_lossy(r.cbytes()?).into_owned();
        match kind {
            b'V' => out.severity = value,
            b'S' => localized_severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            b'D' => out.detail = Some(value),
            b'H' => out.hint = Some(value),
            // Position, where, schema, file, line, routine...: "frontends should silently
            // ignore fields of unrecognized type".
            _ => {}
        }
    }
    r.finish()?;
    if out.severity.is_empty() {
        out.severity = localized_severity;
    }
    Ok(out)
}

/// Parses a ParameterStatus ('S'): name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), FrameError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let name = r.cstr()?;
    let value = r.cstr()?;
    r.finish()?;
    Ok((name, value))
}

/// Parses a BackendKeyData ('K'): process ID and secret key.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), FrameError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let pid = r.i32()?;
    let key = r.i32()?;
    r.finish()?;
    Ok((pid, key))
}

/// Parses a ReadyForQuery ('Z'): the transaction status byte.
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, FrameError> {
    let mut r = Reader::new(body, "ReadyForQuery");
    let status = r.u8()?;
    r.finish()?;
    Ok(status)
}

/// Parses a CommandComplete ('C'): the command tag.
pub fn parse_command_complete(body: &[u8]) -> Result<&str, FrameError> {
    let mut r = Reader::new(body, "CommandComplete");
    let tag = r.cstr()?;
    r.finish()?;
    Ok(tag)
}

/// Parses a RowDescription ('T'): the column names.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<&str>, FrameError> {
    let mut r = Reader::new(body, "RowDescription");
    let count = r.i16()?;
    let count = usize::try_from(count).map_err(|_| FrameError::Invalid {
        what: "RowDescription",
        message: format!("negative column count {count}"),
    })?;
    let mut names = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        names.push(r.cstr()?);
        // table OID, column number, type OID, type size, type modifier, format code
        r.take(4 + 2 + 4 + 2 + 4 + 2)?;
    }
    r.finish()?;
    Ok(names)
}

/// Parses a DataRow ('D'): each column's value, `None` for NULL.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, FrameError> {
    let mut r = Reader::new(body, "DataRow");
    let count = r.i16()?;
    let count = usize::try_from(count).map_err(|_| FrameError::Invalid {
        what: "DataRow",
        message: format!("negative column count {count}"),
    })?;
    let mut values = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = r.i32()?;
        if len == -1 {
            values.push(None);
        } else {
            let len = usize::try_from(len).map_err(|_| FrameError::Invalid {
                what: "DataRow",
                message: format!("negative value length {len}"),
            })?;
            values.push(Some(r.take(len)?));
        }
    }
    r.finish()?;
    Ok(values)
}

/// Parses CopyInResponse / CopyOutResponse / CopyBothResponse ('G', 'H', 'W'): the overall
/// format (0 text, 1 binary) and the number of columns.
pub fn parse_copy_response(body: &[u8]) -> Result<(u8, usize), FrameError> {
    let mut r = Reader::new(body, "CopyResponse");
    let format = r.u8()?;
    let columns = r.i16()?;
    let columns = usize::try_from(columns).map_err(|_| FrameError::Invalid {
        what: "CopyResponse",
        message: format!("negative column count {columns}"),
    })?;
    r.take(columns.saturating_mul(2))?;
    r.finish()?;
    Ok((format, columns))
}

// ---------------------------------------------------------------------------------------------
// START_REPLICATION: CopyData payloads (section "Streaming Replication Protocol",
// START_REPLICATION, "XLogData (B)", "Primary keepalive message (B)", "Standby status update (F)").
// ---------------------------------------------------------------------------------------------

/// A CopyData payload the server sends during physical streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage<'a> {
    /// XLogData ('w'): Int64 start of the data in WAL, Int64 current end of WAL on the server,
    /// Int64 server clock (microseconds since 2000-01-01), then the WAL bytes.
    XLogData {
        start: Lsn,
        end: Lsn,
        server_time_us: i64,
        data: &'a [u8],
    },
    /// Primary keepalive message ('k'): Int64 current end of WAL on the server, Int64 server
    /// clock, Byte1 1 if the client should reply immediately to avoid a timeout disconnect.
    Keepalive {
        end: Lsn,
        server_time_us: i64,
        reply_requested: bool,
    },
}

/// Parses one CopyData payload of `START_REPLICATION ... PHYSICAL`.
pub fn parse_replication_message(payload: &[u8]) -> Result<ReplicationMessage<'_>, FrameError> {
    let mut r = Reader::new(payload, "replication CopyData");
    match r.u8()? {
        b'w' => {
            let mut r = Reader::new(r.rest(), "XLogData");
            let start = Lsn(r.u64()?);
            let end = Lsn(r.u64()?);
            let server_time_us = r.i64()?;
            let data = r.rest();
            if start.checked_add(data.len() as u64).is_none() {
                return Err(FrameError::Invalid {
                    what: "XLogData",
                    message: format!(
                        "{} bytes at {start} run past the end of WAL space",
                        data.len()
                    ),
                });
            }
            Ok(ReplicationMessage::XLogData {
                start,
                end,
                server_time_us,
                data,
            })
        }
        b'k' => {
            let mut r = Reader::new(r.rest(), "primary keepalive");
            let end = Lsn(r.u64()?);
            let server_time_us = r.i64()?;
            let reply = r.u8()?;
            r.finish()?;
            Ok(ReplicationMessage::Keepalive {
                end,
                server_time_us,
                reply_requested: reply != 0,
            })
        }
        other => Err(FrameError::UnknownType {
            what: "replication CopyData",
            tag: char::from(other),
        }),
    }
}

/// Encodes a Standby status update ('r'): Int64 last WAL byte + 1 written, flushed and applied,
/// Int64 client clock (microseconds since 2000-01-01), Byte1 1 to ask for an immediate reply.
/// The result is the CopyData payload (without the CopyData framing).
pub fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time_us: i64,
    reply_requested: bool,
) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&write.0.to_be_bytes());
    out[9..17].copy_from_slice(&flush.0.to_be_bytes());
    out[17..25].copy_from_slice(&apply.0.to_be_bytes());
    out[25..33].copy_from_slice(&client_time_us.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

// ---------------------------------------------------------------------------------------------
// BASE_BACKUP (PostgreSQL 15+): CopyData payloads of its single CopyOutResponse (section
// "Streaming Replication Protocol", BASE_BACKUP: "new archive", "manifest", "archive or manifest
// data", "progress report").
// ---------------------------------------------------------------------------------------------

/// A CopyData payload of `BASE_BACKUP` in PostgreSQL 15+.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupMessage<'a> {
    /// 'n': a new tar archive starts. String archive name; String tablespace location (empty for
    /// the main data directory).
    NewArchive {
        name: &'a str,
        tablespace_location: &'a str,
    },
    /// 'm': the backup manifest follows (as 'd' messages).
    ManifestStart,
    /// 'd': archive or manifest bytes.
    Data(&'a [u8]),
    /// 'p': Int64 bytes of the current tablespace processed so far.
    Progress(u64),
}

/// Parses one CopyData payload of `BASE_BACKUP`.
pub fn parse_backup_message(payload: &[u8]) -> Result<BackupMessage<'_>, FrameError> {
    let mut r = Reader::new(payload, "BASE_BACKUP CopyData");
    match r.u8()? {
        b'n' => {
            let mut r = Reader::new(r.rest(), "BASE_BACKUP new archive");
            let name = r.cstr()?;
            let tablespace_location = r.cstr()?;
            r.finish()?;
            Ok(BackupMessage::NewArchive {
                name,
                tablespace_location,
            })
        }
        b'm' => {
            r.finish()?;
            Ok(BackupMessage::ManifestStart)
        }
        b'd' => Ok(BackupMessage::Data(r.rest())),
        b'p' => {
            let mut r = Reader::new(r.rest(), "BASE_BACKUP progress");
            let done = r.i64()?;
            r.finish()?;
            let done = u64::try_from(done).map_err(|_| FrameError::Invalid {
                what: "BASE_BACKUP progress",
                message: format!("negative byte count {done}"),
            })?;
            Ok(BackupMessage::Progress(done))
        }
        other => Err(FrameError::UnknownType {
            what: "BASE_BACKUP CopyData",
            tag: char::from(other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let msg = xlogdata(0x1_0000_0000, 0x1_0000_0100, 42, b"walbytes");
        assert_eq!(
            parse_replication_message(&msg),
            Ok(ReplicationMessage::XLogData {
                start: Lsn(0x1_0000_0000),
                end: Lsn(0x1_0000_0100),
                server_time_us: 42,
                data: b"walbytes",
            })
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&7u64.to_be_bytes());
        k.extend_from_slice(&(-1i64).to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_replication_message(&k),
            Ok(ReplicationMessage::Keepalive {
                end: Lsn(7),
                server_time_us: -1,
                reply_requested: true
            })
        );
        k.push(0);
        assert!(matches!(
            parse_replication_message(&k),
            Err(FrameError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert!(parse_replication_message(&[]).is_err());
        assert!(parse_replication_message(b"w123").is_err());
        assert!(matches!(
            parse_replication_message(b"x"),
            Err(FrameError::UnknownType { tag: 'x', .. })
        ));
        // Data running past 2^64.
        let msg = xlogdata(u64::MAX - 2, 0, 0, b"abcd");
        assert!(parse_replication_message(&msg).is_err());
    }

    #[test]
    fn parses_backup_messages() {
        assert_eq!(
            parse_backup_message(b"nbase.tar\0\0"),
            Ok(BackupMessage::NewArchive {
                name: "base.tar",
                tablespace_location: ""
            })
        );
        assert_eq!(
            parse_backup_message(b"n16385.tar\0/srv/ts\0"),
            Ok(BackupMessage::NewArchive {
                name: "16385.tar",
                tablespace_location: "/srv/ts"
            })
        );
        assert_eq!(parse_backup_message(b"m"), Ok(BackupMessage::ManifestStart));
        assert_eq!(
            parse_backup_message(b"dxyz"),
            Ok(BackupMessage::Data(b"xyz"))
        );
        let mut p = vec![b'p'];
        p.extend_from_slice(&1234i64.to_be_bytes());
        assert_eq!(parse_backup_message(&p), Ok(BackupMessage::Progress(1234)));
        assert!(parse_backup_message(b"nbase.tar\0").is_err());
        assert!(parse_backup_message(b"m!").is_err());
        let mut neg = vec![b'p'];
        neg.extend_from_slice(&(-5i64).to_be_bytes());
        assert!(parse_backup_message(&neg).is_err());
    }

    #[test]
    fn status_update_layout() {
        let b = standby_status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &1u64.to_be_bytes());
        assert_eq!(&b[9..17], &2u64.to_be_bytes());
        assert_eq!(&b[17..25], &3u64.to_be_bytes());
        assert_eq!(&b[25..33], &4i64.to_be_bytes());
        assert_eq!(b[33], 1);
    }

    #[test]
    fn parses_backend_messages() {
        assert_eq!(parse_header([b'Z', 0, 0, 0, 5]), Ok((b'Z', 1)));
        assert!(parse_header([b'Z', 0, 0, 0, 3]).is_err());
        assert!(parse_header([b'Z', 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_header([b'd', 0x7f, 0xff, 0xff, 0xff]).is_err());

        let mut e = Vec::new();
        for (k, v) in [
            (b'S', "FEHLER"),
            (b'V', "ERROR"),
            (b'C', "55006"),
            (b'M', "busy"),
            (b'H', "wait"),
        ] {
            e.push(k);
            e.extend_from_slice(v.as_bytes());
            e.push(0);
        }
        e.push(0);
        let f = parse_error_fields(&e).expect("valid fields");
        assert_eq!(f.severity, "ERROR");
        assert_eq!(f.code, "55006");
        assert_eq!(f.message, "busy");
        assert_eq!(f.hint.as_deref(), Some("wait"));
        assert!(parse_error_fields(&e[..e.len() - 1]).is_err());

        let mut row = 2i16.to_be_bytes().to_vec();
        row.extend_from_slice(&(-1i32).to_be_bytes());
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        assert_eq!(parse_data_row(&row), Ok(vec![None, Some(&b"abc"[..])]));
        row.pop();
        assert!(parse_data_row(&row).is_err());

        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            parse_auth(&sasl),
            Ok(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
            })
        );
        let mut md5 = 5i32.to_be_bytes().to_vec();
        md5.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            parse_auth(&md5),
            Ok(AuthRequest::Md5 { salt: [1, 2, 3, 4] })
        );
        assert!(parse_auth(&md5[..6]).is_err());
    }
}
