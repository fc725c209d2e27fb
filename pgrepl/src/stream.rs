//! Physical streaming after `START_REPLICATION` (protocol section "Streaming Replication
//! Protocol", START_REPLICATION, and "Message Flow", "COPY Operations" for COPY both mode).
//!
//! The server sends XLogData and keepalives as CopyData; the client answers with Standby status
//! updates. When the server's timeline ends (the server was promoted, or we stream a historic
//! timeline) it sends CopyDone; the client replies CopyDone and receives a result set naming the
//! next timeline and where it starts — the "end-of-timeline handshake" —
//! [`ReplicationStream::finish_timeline`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgwal::{Lsn, TimeLineId};
use postgres_protocol::message::frontend;

use crate::conn::{log_notice, ReplicationConnection};
use crate::error::ReplError;
use crate::frames::{self, ReplicationMessage};
use crate::wire::Message;

/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00:00 UTC
/// (`POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE` days).
const POSTGRES_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// What the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// WAL bytes `data` for positions `start .. start + data.len()`; `end` is the server's WAL
    /// end when it sent them. Consecutive messages are contiguous (checked).
    XLogData {
        start: Lsn,
        end: Lsn,
        server_time_us: i64,
        data: Bytes,
    },
    /// Primary keepalive. With `reply_requested`, answer with
    /// [`ReplicationStream::send_status`] at once or the server disconnects after
    /// `wal_sender_timeout`.
    Keepalive {
        end: Lsn,
        server_time_us: i64,
        reply_requested: bool,
    },
    /// The server ended COPY mode (CopyDone): the timeline is complete. Call
    /// [`ReplicationStream::finish_timeline`].
    EndOfTimeline,
}

enum State {
    /// COPY both mode.
    Streaming,
    /// The server sent CopyDone; we have not answered yet.
    ServerDone,
    /// The server skipped COPY mode (start at the exact end of a historic timeline) and already
    /// sent the end-of-timeline result, read during `start_physical`.
    Ended(Option<(TimeLineId, Lsn)>),
}

/// A running `START_REPLICATION ... PHYSICAL`.
pub struct ReplicationStream {
    conn: ReplicationConnection,
    state: State,
    timeline: TimeLineId,
    /// The WAL position right after the last byte received (the next XLogData must start here).
    received: Lsn,
    /// A message read by `confirm_started`, handled by the next `next()`.
    pending: Option<Message>,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("timeline", &self.timeline)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    pub(crate) fn new(conn: ReplicationConnection, start: Lsn, timeline: TimeLineId) -> Self {
        ReplicationStream {
            conn,
            state: State::Streaming,
            timeline,
            received: start,
            pending: None,
        }
    }

    pub(crate) fn ended(
        conn: ReplicationConnection,
        start: Lsn,
        timeline: TimeLineId,
        next: Option<(TimeLineId, Lsn)>,
    ) -> Self {
        ReplicationStream {
            conn,
            state: State::Ended(next),
            timeline,
            received: start,
            pending: None,
        }
    }

    /// Waits for the first message after CopyBothResponse: an ErrorResponse means streaming did
    /// not start (returned as the error, after the server's ReadyForQuery); anything else is kept
    /// for `next()`.
    pub(crate) async fn confirm_started(mut self, sql: &str) -> Result<Self, ReplError> {
        let msg = self.conn.read_command_message(sql).await?;
        if msg.tag == b'E' {
            let f = frames::parse_error_fields(&msg.body)?;
            let err = self.conn.server_error(f);
            let _ = self.conn.drain_to_ready(sql).await;
            return Err(err);
        }
        self.pending = Some(msg);
        Ok(self)
    }

    /// The timeline being streamed.
    pub fn timeline(&self) -> TimeLineId {
        self.timeline
    }

    /// The position after the last WAL byte received.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// The walsender's process ID.
    pub fn backend_pid(&self) -> i32 {
        self.conn.backend_pid()
    }

    /// The next event, or `Ok(None)` when nothing arrived within `timeout` (send a status update
    /// then); a zero `timeout` takes only what has already arrived, without waiting at all.
    /// Cancel-safe: a timeout never loses or splits a message.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<StreamEvent>, ReplError> {
        if !matches!(self.state, State::Streaming) {
            return Ok(Some(StreamEvent::EndOfTimeline));
        }
        let read = async {
            loop {
                let msg = match self.pending.take() {
                    Some(m) => m,
                    None => self.conn.wire.read().await?,
                };
                match msg.tag {
                    b'd' => {
                        let event = match frames::parse_replication_message(&msg.body)? {
                            ReplicationMessage::XLogData {
                                start,
                                end,
                                server_time_us,
                                data,
                            } => {
                                if start != self.received {
                                    return Err(ReplError::protocol(format!(
                                        "XLogData starts at {start}, but the stream is at {}: \
                                         WAL would have a gap or overlap",
                                        self.received
                                    )));
                                }
                                // Cannot overflow: checked by parse_replication_message.
                                self.received = Lsn(start.0 + data.len() as u64);
                                StreamEvent::XLogData {
                                    start,
                                    end,
                                    server_time_us,
                                    data: msg.body.slice_ref(data),
                                }
                            }
                            ReplicationMessage::Keepalive {
                                end,
                                server_time_us,
                                reply_requested,
                            } => StreamEvent::Keepalive {
                                end,
                                server_time_us,
                                reply_requested,
                            },
                        };
                        return Ok(event);
                    }
                    b'c' => {
                        self.state = State::ServerDone;
                        return Ok(StreamEvent::EndOfTimeline);
                    }
                    b'E' => {
                        let f = frames::parse_error_fields(&msg.body)?;
                        return Err(self.conn.server_error(f));
                    }
                    b'N' => log_notice(&msg),
                    b'S' => {}
                    // A walsender shutting down (smart or fast shutdown of PostgreSQL) ends the
                    // COPY with CommandComplete without CopyDone (`WalSndDone` in walsender.c):
                    // the stream ended, nothing is wrong with either side; reconnect later.
                    b'C' => {
                        return Err(ReplError::lost(
                            "streaming",
                            std::io::Error::new(
                                std::io::ErrorKind::ConnectionAborted,
                                "PostgreSQL ended streaming (the server is shutting down)",
                            ),
                        ));
                    }
                    other => {
                        return Err(ReplError::protocol(format!(
                            "unexpected message {:?} during streaming",
                            char::from(other)
                        )))
                    }
                }
            }
        };
        if timeout.is_zero() {
            // Only what is already here: one poll. `tokio::time::timeout` would not do for
            // this, because its timer fires on the next millisecond tick at the earliest, which
            // a synchronous commit would wait for on every round trip.
            use std::future::Future;
            let mut read = std::pin::pin!(read);
            return std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match read.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => r.map(Some),
                    std::task::Poll::Pending => Ok(None),
                })
            })
            .await;
        }
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sends a Standby status update ('r'): the positions after the last byte written, flushed
    /// (durably stored) and applied. For a physical slot the server moves `restart_lsn` to
    /// `flush`, so report only what is durable. `reply_requested` asks the server to answer with
    /// a keepalive at once.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplError> {
        if !matches!(self.state, State::Streaming) {
            // After CopyDone the server takes no more CopyData from us.
            return Ok(());
        }
        let payload =
            frames::standby_status_update(write, flush, apply, now_pg_micros(), reply_requested);
        frontend::CopyData::new(&payload[..])
            .map_err(|e| ReplError::protocol(format!("encoding a status update: {e}")))?
            .write(&mut self.conn.wire.wbuf);
        let t = self.conn.command_timeout;
        self.conn
            .wire
            .flush(t, "sending a standby status update")
            .await
    }

    /// Completes the end-of-timeline handshake after [`StreamEvent::EndOfTimeline`]: replies
    /// CopyDone, reads the result set (next_tli, next_tli_startpos), CommandComplete and
    /// ReadyForQuery, and returns the connection in command mode. `None` when the server did not
    /// name a next timeline.
    pub async fn finish_timeline(
        self,
    ) -> Result<(Option<(TimeLineId, Lsn)>, ReplicationConnection), ReplError> {
        let mut conn = self.conn;
        match self.state {
            State::Streaming => Err(ReplError::protocol(
                "finish_timeline called before the server ended the timeline; use stop() to end \
                 streaming early",
            )),
            State::Ended(next) => Ok((next, conn)),
            State::ServerDone => {
                frontend::copy_done(&mut conn.wire.wbuf);
                let t = conn.command_timeout;
                conn.wire.flush(t, "sending CopyDone").await?;
                let next = conn.read_end_of_timeline_result(None).await?;
                Ok((next, conn))
            }
        }
    }

    /// Ends streaming from our side: CopyDone, then whatever WAL was in flight is discarded until
    /// the server's CopyDone, CommandComplete and ReadyForQuery. Returns the connection in
    /// command mode.
    pub async fn stop(self) -> Result<ReplicationConnection, ReplError> {
        match self.state {
            State::Streaming => {
                let mut conn = self.conn;
                frontend::copy_done(&mut conn.wire.wbuf);
                let t = conn.command_timeout;
                conn.wire.flush(t, "sending CopyDone").await?;
                conn.read_end_of_timeline_result(None).await?;
                Ok(conn)
            }
            _ => self.finish_timeline().await.map(|(_, conn)| conn),
        }
    }
}

/// Now, in microseconds since 2000-01-01 (the clock fields of the replication messages).
fn now_pg_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let micros = since_unix.as_micros() as i64;
    micros - (POSTGRES_EPOCH_UNIX_SECS as i64) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_epoch() {
        // 2000-01-01 is 10957 days after 1970-01-01.
        assert_eq!(POSTGRES_EPOCH_UNIX_SECS, 10_957 * 86_400);
        assert!(now_pg_micros() > 700_000_000_000_000); // after 2022
    }
}
