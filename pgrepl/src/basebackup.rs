//! `BASE_BACKUP` with PostgreSQL 15's syntax and wire format (protocol section "Streaming
//! Replication Protocol", BASE_BACKUP).
//!
//! The server answers with, in order:
//! 1. a result set with the backup's start position and timeline,
//! 2. a result set listing the tablespaces (OID, location, size in kB when PROGRESS),
//! 3. ONE CopyOutResponse whose CopyData messages start with a type byte: 'n' a new tar archive
//!    begins (base.tar, then one per tablespace), 'd' archive or manifest bytes, 'p' progress,
//!    'm' the backup manifest follows; then CopyDone,
//! 4. a result set with the end position and timeline, CommandComplete, ReadyForQuery.
//!
//! [`BaseBackupStream`] turns that into [`BackupEvent`]s one message at a time: the archives are
//! never held in memory, a caller streams `Data` to storage as it comes.
//!
//! No `WAL` option: the backup carries no WAL, it comes from the archive (DESIGN.md section 7.4:
//! a backup is done only once its WAL range is archived).

use std::time::Duration;

use bytes::Bytes;
use pgwal::{Lsn, TimeLineId};

use crate::conn::{parse_lsn, parse_num, unexpected, ReplicationConnection};
use crate::error::ReplError;
use crate::frames::{self, BackupMessage};
use crate::wire::Message;

/// What `BASE_BACKUP` should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// `LABEL`: shown in `backup_label` and `pg_stat_progress_basebackup`.
    pub label: String,
    /// `PROGRESS`: have the server estimate sizes (tablespace sizes, 'p' messages).
    pub progress: bool,
    /// `CHECKPOINT 'fast'` instead of a spread checkpoint (which can take
    /// `checkpoint_timeout * checkpoint_completion_target` before the first event: raise the
    /// timeout with [`BaseBackupStream::set_timeout`] for that).
    pub checkpoint_fast: bool,
    /// `MANIFEST 'yes'` with `MANIFEST_CHECKSUMS 'CRC32C'`: PostgreSQL's default and the
    /// cheapest for the primary; the server computes the SHA-256 of every file it stores anyway.
    pub manifest: bool,
    /// `WAIT`: whether the server waits until the backup's WAL is archived by its own
    /// archive_command before it ends the backup. Off by default: the WAL arrives in our archive
    /// through archive_command or streaming, which the caller waits for.
    pub wait_for_wal_archive: bool,
    /// `MAX_RATE` in kB/s (32 to 1048576).
    pub max_rate: Option<u32>,
    /// `TABLESPACE_MAP`: include a `tablespace_map` file in base.tar, which restore needs to
    /// recreate the `pg_tblspc` links.
    pub tablespace_map: bool,
}

impl BaseBackupOptions {
    /// Defaults: manifest with SHA-256 checksums, tablespace map, fast checkpoint off, no wait.
    pub fn new(label: impl Into<String>) -> Self {
        BaseBackupOptions {
            label: label.into(),
            progress: false,
            checkpoint_fast: false,
            manifest: true,
            wait_for_wal_archive: false,
            max_rate: None,
            tablespace_map: true,
        }
    }

    /// The command text, e.g. `BASE_BACKUP (LABEL 'x', PROGRESS true, ...)`.
    pub fn command(&self) -> Result<String, ReplError> {
        if self.label.contains('\0') {
            return Err(ReplError::config(
                "the backup label may not contain a zero byte",
            ));
        }
        // The replication command scanner reads SQL string literals: '' is a quote.
        let mut opts = vec![format!("LABEL '{}'", self.label.replace('\'', "''"))];
        opts.push(format!("PROGRESS {}", self.progress));
        opts.push(format!(
            "CHECKPOINT '{}'",
            if self.checkpoint_fast {
                "fast"
            } else {
                "spread"
            }
        ));
        opts.push(format!("WAIT {}", self.wait_for_wal_archive));
        opts.push("WAL false".to_string());
        opts.push(format!("TABLESPACE_MAP {}", self.tablespace_map));
        if self.manifest {
            opts.push("MANIFEST 'yes'".to_string());
            opts.push("MANIFEST_CHECKSUMS 'CRC32C'".to_string());
        } else {
            opts.push("MANIFEST 'no'".to_string());
        }
        if let Some(rate) = self.max_rate {
            // basebackup.c: MAX_RATE_LOWER 32, MAX_RATE_UPPER 1048576 (kB/s).
            if !(32..=1_048_576).contains(&rate) {
                return Err(ReplError::config(format!(
                    "max_rate {rate} kB/s is out of range (32 to 1048576)"
                )));
            }
            opts.push(format!("MAX_RATE {rate}"));
        }
        Ok(format!("BASE_BACKUP ({})", opts.join(", ")))
    }
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions::new("wal-archive base backup")
    }
}

/// One row of the tablespace result set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tablespace {
    /// `spcoid`: NULL for the main data directory.
    pub oid: Option<u32>,
    /// `spclocation`: NULL for the main data directory.
    pub location: Option<String>,
    /// `size` in kB: only with PROGRESS.
    pub size_kb: Option<i64>,
}

/// What the backup produced, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupEvent {
    /// The backup started: the checkpoint's redo position and the timeline.
    Start {
        start_lsn: Lsn,
        timeline: TimeLineId,
    },
    /// The tablespaces that will follow as archives (the main data directory included).
    Tablespaces(Vec<Tablespace>),
    /// A tar archive starts; `Data` until the next `Archive` or `ManifestStart` belongs to it.
    Archive {
        name: String,
        /// `None` for the main data directory.
        tablespace_location: Option<String>,
    },
    /// Bytes of the current archive or of the manifest.
    Data(Bytes),
    /// Bytes of the current tablespace processed so far.
    Progress(u64),
    /// The backup manifest (JSON) follows as `Data`.
    ManifestStart,
    /// The backup ended: the end position and timeline.
    End { end_lsn: Lsn, timeline: TimeLineId },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the CopyOutResponse: result sets 1 and 2.
    Header,
    /// In COPY out mode.
    Copy,
    /// After CopyDone: the end result set.
    Trailer,
    /// ReadyForQuery seen.
    Done,
    /// An error was returned; the connection is unusable.
    Failed,
}

/// A running `BASE_BACKUP`.
pub struct BaseBackupStream {
    conn: ReplicationConnection,
    phase: Phase,
    timeout: Duration,
    /// Result sets completed so far (start, tablespaces, end).
    results_seen: u8,
    /// Rows of the result set being read.
    rows: Vec<Vec<Option<Bytes>>>,
    in_result: bool,
    /// 'd' is only valid after 'n' or 'm'.
    data_allowed: bool,
    /// A message read ahead that must be handled next.
    pending: Option<Message>,
}

impl std::fmt::Debug for BaseBackupStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseBackupStream")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl BaseBackupStream {
    pub(crate) fn new(conn: ReplicationConnection) -> Self {
        let timeout = conn.command_timeout;
        BaseBackupStream {
            conn,
            phase: Phase::Header,
            timeout,
            results_seen: 0,
            rows: Vec::new(),
            in_result: false,
            data_allowed: false,
            pending: None,
        }
    }

    /// The bound on waiting for each message (default: the connection's command timeout).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The next event; `Ok(None)` once the backup completed.
    pub async fn next(&mut self) -> Result<Option<BackupEvent>, ReplError> {
        let result = self.next_inner().await;
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Option<BackupEvent>, ReplError> {
        loop {
            match self.phase {
                Phase::Done => return Ok(None),
                Phase::Failed => {
                    return Err(ReplError::protocol(
                        "BASE_BACKUP already failed; the connection cannot be used",
                    ))
                }
                _ => {}
            }
            let msg = match self.pending.take() {
                Some(m) => m,
                None => {
                    let t = self.timeout;
                    let msg = self
                        .conn
                        .wire
                        .read_timeout(t, "running BASE_BACKUP")
                        .await?;
                    match msg.tag {
                        b'N' => {
                            crate::conn::log_notice(&msg);
                            continue;
                        }
                        b'S' => continue,
                        _ => msg,
                    }
                }
            };
            if let Some(event) = self.handle(msg)? {
                return Ok(Some(event));
            }
        }
    }

    /// Handles one message; returns an event when one is complete.
    fn handle(&mut self, msg: Message) -> Result<Option<BackupEvent>, ReplError> {
        let what = "BASE_BACKUP";
        match (self.phase, msg.tag) {
            (_, b'E') => {
                let f = frames::parse_error_fields(&msg.body)?;
                // The server follows with ReadyForQuery; the caller gets the error now and the
                // stream is marked failed.
                Err(self.conn.server_error(f))
            }
            (Phase::Header | Phase::Trailer, b'T') => {
                if self.in_result {
                    // A new result set without CommandComplete in between: the previous one
                    // is complete. Handle this message again afterwards.
                    self.pending = Some(msg);
                    return self.finish_result();
                }
                self.in_result = true;
                self.rows.clear();
                Ok(None)
            }
            (Phase::Header | Phase::Trailer, b'D') if self.in_result => {
                let values = frames::parse_data_row(&msg.body)?;
                let row = values
                    .into_iter()
                    .map(|v| v.map(|s| msg.body.slice_ref(s)))
                    .collect();
                self.rows.push(row);
                Ok(None)
            }
            (Phase::Header | Phase::Trailer, b'C') => {
                if self.in_result {
                    self.finish_result()
                } else {
                    Ok(None)
                }
            }
            (Phase::Header, b'H') => {
                if self.in_result {
                    self.pending = Some(msg);
                    return self.finish_result();
                }
                if self.results_seen < 2 {
                    return Err(ReplError::protocol(
                        "BASE_BACKUP started COPY before sending its start position and tablespaces",
                    ));
                }
                let (_format, _cols) = frames::parse_copy_response(&msg.body)?;
                self.phase = Phase::Copy;
                Ok(None)
            }
            (Phase::Copy, b'd') => {
                let event = match frames::parse_backup_message(&msg.body)? {
                    BackupMessage::NewArchive {
                        name,
                        tablespace_location,
                    } => {
                        self.data_allowed = true;
                        BackupEvent::Archive {
                            name: name.to_string(),
                            tablespace_location: (!tablespace_location.is_empty())
                                .then(|| tablespace_location.to_string()),
                        }
                    }
                    BackupMessage::ManifestStart => {
                        self.data_allowed = true;
                        BackupEvent::ManifestStart
                    }
                    BackupMessage::Data(data) => {
                        if !self.data_allowed {
                            return Err(ReplError::protocol(
                                "BASE_BACKUP sent data before naming an archive",
                            ));
                        }
                        BackupEvent::Data(msg.body.slice_ref(data))
                    }
                    BackupMessage::Progress(done) => BackupEvent::Progress(done),
                };
                Ok(Some(event))
            }
            (Phase::Copy, b'c') => {
                self.phase = Phase::Trailer;
                Ok(None)
            }
            (Phase::Trailer, b'Z') => {
                if self.in_result {
                    self.pending = Some(msg);
                    return self.finish_result();
                }
                if self.results_seen < 3 {
                    return Err(ReplError::protocol(
                        "BASE_BACKUP ended without reporting its end position",
                    ));
                }
                self.phase = Phase::Done;
                Ok(None)
            }
            (_, other) => Err(unexpected(other, what)),
        }
    }

    /// A result set is complete: turn it into an event.
    fn finish_result(&mut self) -> Result<Option<BackupEvent>, ReplError> {
        self.in_result = false;
        let rows = std::mem::take(&mut self.rows);
        let index = self.results_seen;
        self.results_seen = self.results_seen.saturating_add(1);
        match index {
            0 => {
                let (lsn, tli) = position_row(&rows, "start")?;
                Ok(Some(BackupEvent::Start {
                    start_lsn: lsn,
                    timeline: tli,
                }))
            }
            1 => {
                let mut tablespaces = Vec::with_capacity(rows.len());
                for row in &rows {
                    let text = |i: usize| -> Result<Option<&str>, ReplError> {
                        match row.get(i) {
                            Some(Some(b)) => std::str::from_utf8(b)
                                .map(Some)
                                .map_err(|_| ReplError::protocol("tablespace row is not UTF-8")),
                            _ => Ok(None),
                        }
                    };
                    tablespaces.push(Tablespace {
                        oid: text(0)?.map(|s| parse_num(s, "spcoid")).transpose()?,
                        location: text(1)?.map(str::to_string),
                        size_kb: text(2)?.map(|s| parse_num(s, "size")).transpose()?,
                    });
                }
                Ok(Some(BackupEvent::Tablespaces(tablespaces)))
            }
            2 => {
                let (lsn, tli) = position_row(&rows, "end")?;
                Ok(Some(BackupEvent::End {
                    end_lsn: lsn,
                    timeline: tli,
                }))
            }
            _ => Err(ReplError::protocol(
                "BASE_BACKUP sent an unexpected extra result set",
            )),
        }
    }

    /// After `next()` returned `Ok(None)`: the connection, back in command mode.
    pub fn into_connection(self) -> Result<ReplicationConnection, ReplError> {
        if self.phase == Phase::Done {
            Ok(self.conn)
        } else {
            Err(ReplError::protocol(
                "BASE_BACKUP has not completed; the connection cannot be reused",
            ))
        }
    }
}

/// The single row (recptr, tli) of the start and end result sets.
fn position_row(rows: &[Vec<Option<Bytes>>], which: &str) -> Result<(Lsn, TimeLineId), ReplError> {
    let row = rows
        .first()
        .ok_or_else(|| ReplError::protocol(format!("BASE_BACKUP {which} position: no row")))?;
    let text = |i: usize| -> Result<&str, ReplError> {
        row.get(i)
            .and_then(|v| v.as_deref())
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| {
                ReplError::protocol(format!("BASE_BACKUP {which} position: missing column {i}"))
            })
    };
    let lsn = parse_lsn(text(0)?, "BASE_BACKUP recptr")?;
    let tli = parse_num::<u32>(text(1)?, "BASE_BACKUP tli")?;
    Ok((lsn, tli))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_text() -> Result<(), ReplError> {
        let mut o = BaseBackupOptions::new("it's mine");
        o.progress = true;
        o.checkpoint_fast = true;
        o.max_rate = Some(1024);
        assert_eq!(
            o.command()?,
            "BASE_BACKUP (LABEL 'it''s mine', PROGRESS true, CHECKPOINT 'fast', WAIT false, \
             WAL false, TABLESPACE_MAP true, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', MAX_RATE 1024)"
        );
        o.max_rate = Some(1);
        assert!(o.command().is_err());
        Ok(())
    }
}
