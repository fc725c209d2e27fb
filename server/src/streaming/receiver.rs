//! The streaming receiver: one thread per cluster with `streaming = true` pulls WAL through a
//! physical replication slot (like `pg_receivewal`) into the same checksummed storage as pushed
//! WAL, so that no WAL is lost while `archive_command` is broken.
//!
//! ## The promise to the slot
//! PostgreSQL moves a physical slot's `restart_lsn` to the flush position we report, and may then
//! recycle older WAL. So the flush position reported is only ever the end of bytes that are on
//! stable storage here: fsynced in the working file of the segment in progress
//! (`DATA_DIR/receiver/CLUSTER/NAME.partial`), or stored in the archive. A completed segment is
//! renamed durably to `NAME` in the working directory before its end is reported, and deleted
//! only once the archive has stored it (201, or 200 when `archive_command` got there first).
//! Completed segments left over by a crash are stored at the next start, before streaming.
//!
//! ## Where streaming starts
//! At a segment boundary, so every segment stored is complete: the start of the segment holding
//! the slot's `restart_lsn`, or later when the archive already holds the following segments
//! (then the archive's end), but never past the server's own flush position.
//!
//! ## Timelines
//! At the end of a timeline (the server was promoted or we followed a standby that was) the
//! segment in progress is stored as `NAME.partial`, the new timeline's history file is fetched
//! (`TIMELINE_HISTORY`) and stored, and streaming continues on the new timeline from the segment
//! holding the switch point.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrepl::conn::ReplicationConnection;
use pgrepl::conninfo::ConnInfo;
use pgrepl::error::ReplError;
use pgrepl::stream::{ReplicationStream, StreamEvent};
use pgwal::api::ReceiverStatus;
use pgwal::name::WalFileName;
use pgwal::segment::SegmentSize;
use pgwal::Lsn;
use tokio::sync::watch;

use crate::catalog::now_rfc3339;
use crate::config::{
    ClusterConfig, DEFAULT_APPLICATION_NAME, DEFAULT_RECEIVER_TIMEOUT, DEFAULT_SLOT,
};
use crate::storage::durability;
use crate::wal::archive::{Archive, ArchiveError, Upload};

/// How long to wait for a message before sending a status update anyway. PostgreSQL's
/// `wal_sender_timeout` (60 s by default) ends a connection that stays silent longer.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// In asynchronous mode, fsync and report at least this often while data flows.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Shared, observable state of one receiver.
pub type SharedStatus = Arc<Mutex<ReceiverStatus>>;

fn update(status: &SharedStatus, f: impl FnOnce(&mut ReceiverStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

fn set_state(status: &SharedStatus, state: &str, reason: Option<String>, hint: Option<String>) {
    update(status, |s| {
        if s.state != state || s.reason != reason {
            s.since = now_rfc3339();
        }
        s.state = state.to_string();
        s.reason = reason;
        s.hint = hint;
        s.slot_active = state == "streaming";
    });
}

/// Why a streaming session ended.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("{0}")]
    Repl(Box<ReplError>),
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("working file: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Protocol(String),
}

impl From<ReplError> for ReceiverError {
    fn from(e: ReplError) -> Self {
        ReceiverError::Repl(Box::new(e))
    }
}

impl ReceiverError {
    fn hint(&self) -> Option<String> {
        match self {
            ReceiverError::Repl(e) => e.hint(),
            ReceiverError::Archive(ArchiveError::OutOfSpace(_)) => {
                Some("free space on the archive's storage".into())
            }
            ReceiverError::Config(_) => {
                Some("fix conninfo in the cluster's section of the server configuration".into())
            }
            _ => None,
        }
    }
}

/// Everything one receiver needs.
pub struct Receiver {
    pub cluster: String,
    pub config: ClusterConfig,
    pub archive: Archive,
    pub work_dir: PathBuf,
    pub status: SharedStatus,
    /// The server's runtime, where completed segments are stored (see [`Receiver::spawn`]).
    pub store_on: tokio::runtime::Handle,
}

impl Receiver {
    /// Runs the receiver on a thread of its own, as `pg_receivewal` runs: socket, writes and
    /// fsyncs on one thread, so a synchronous commit waits for the disk and nothing else (no
    /// hand-off between threads, no worker shared with HTTP requests). Storing a completed
    /// segment (compression, hashing, the object store) runs on the server's runtime
    /// (`store_on`). The returned task ends when the thread does.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let cluster = self.cluster.clone();
        let thread = std::thread::Builder::new()
            .name(format!("receiver-{}", self.cluster))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(self.run(shutdown)),
                    Err(e) => tracing::error!(
                        cluster = %self.cluster,
                        "receiver: cannot start its runtime: {e}; not streaming"
                    ),
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = thread {
            tracing::error!(cluster = %cluster, "receiver: cannot start its thread: {e}; not streaming");
        }
        tokio::spawn(async move {
            let _ = done_rx.await;
        })
    }

    fn slot(&self) -> &str {
        self.config.slot.as_deref().unwrap_or(DEFAULT_SLOT)
    }

    /// Runs until `shutdown` turns true, reconnecting with backoff after every error.
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let slot = self.slot().to_string();
        update(&self.status, |s| {
            s.slot = Some(slot.clone());
            s.synchronous = self.config.synchronous;
        });
        let mut backoff = Duration::from_secs(1);
        loop {
            if *shutdown.borrow() {
                break;
            }
            set_state(&self.status, "starting", None, None);
            let result = tokio::select! {
                r = self.session() => r,
                _ = shutdown.changed() => break,
            };
            if let Err(e) = result {
                let hint = e.hint();
                tracing::warn!(
                    cluster = %self.cluster, slot = %slot,
                    hint = hint.as_deref().unwrap_or(""),
                    "receiver: {e}; reconnecting in {}s", backoff.as_secs()
                );
                set_state(&self.status, "reconnecting", Some(e.to_string()), hint);
                update(&self.status, |s| s.failed_attempts += 1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                let max = self
                    .config
                    .reconnect_max_delay
                    .map(Duration::from_secs)
                    .unwrap_or(MAX_BACKOFF)
                    .max(Duration::from_secs(1));
                backoff = (backoff * 2).min(max);
            } else {
                backoff = Duration::from_secs(1);
            }
        }
        set_state(&self.status, "stopped", None, None);
        tracing::info!(cluster = %self.cluster, "receiver stopped");
    }

    fn conninfo(&self) -> Result<ConnInfo, ReceiverError> {
        let text = self.config.conninfo.as_deref().ok_or_else(|| {
            ReceiverError::Config("streaming = true but no conninfo is configured".into())
        })?;
        let mut ci = ConnInfo::parse(text)?;
        if ci.application_name.is_none() {
            ci.application_name = Some(
                self.config
                    .application_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string()),
            );
        }
        Ok(ci.with_password(self.config.password.clone()))
    }

    /// One connection: connect, check the system, make sure of the slot, stream until an error.
    async fn session(&self) -> Result<(), ReceiverError> {
        durability::create_dir_all_durable(&self.work_dir)?;
        let ci = self.conninfo()?;
        let mut conn = ReplicationConnection::connect(&ci).await?;
        let system = conn.identify_system().await?;
        let size = parse_segment_size(&conn.show("wal_segment_size").await?)?;
        if let Some(bound) = self.archive.catalog.cluster(&self.cluster).await? {
            if let Some(id) = bound
                .system_identifier
                .filter(|id| *id != system.system_identifier)
            {
                return Err(ReceiverError::Config(format!(
                    "conninfo reaches database system {}, but cluster {:?} is bound to system {id}",
                    system.system_identifier, self.cluster
                )));
            }
        }
        // Segments completed before a crash are stored before anything else.
        self.store_leftovers(size).await?;

        let slot = self.slot().to_string();
        let info = match conn.read_replication_slot(&slot).await? {
            Some(info) => info,
            None => {
                conn.create_physical_slot(&slot, true).await?;
                tracing::info!(cluster = %self.cluster, slot = %slot, "receiver: created replication slot");
                conn.read_replication_slot(&slot).await?.ok_or_else(|| {
                    ReceiverError::Protocol(format!("slot {slot} vanished after creation"))
                })?
            }
        };
        if info.slot_type != "physical" {
            return Err(ReceiverError::Config(format!(
                "slot {slot} is a {} slot; the receiver needs a physical one (set another `slot`)",
                info.slot_type
            )));
        }
        let spans = self.history_spans(&mut conn, system.timeline).await?;
        let restart = info.restart_lsn.unwrap_or(system.xlogpos);
        let slot_start = size.segment_start(size.segno_of(restart));
        let server_end = size.segment_start(size.segno_of(system.xlogpos));
        // Resume where the archive ends when the server still has that WAL: after a failover
        // the new primary's slot is new, and starting at its position would leave a hole.
        let mut start = slot_start;
        if let Some(next) = self.archive_next(&spans, size).await? {
            start = next.min(server_end);
        }
        let mut timeline =
            pgwal::history::timeline_of_point(start, &spans).unwrap_or(system.timeline);
        self.remove_stale_partials(&WalFileName::segment(timeline, size.segno_of(start), size))
            .await?;
        if start < slot_start {
            tracing::info!(
                cluster = %self.cluster, start = %start, slot_restart = %restart,
                "receiver: resuming at the archive's end, before the slot's position"
            );
        }

        let mut fell_back = false;
        loop {
            // The server reports WAL it no longer has once streaming has begun (SQLSTATE 58P01,
            // "requested WAL segment has already been removed"). When we asked for the archive's
            // end, before the slot's position, that is a hole the receiver cannot fill: say so
            // loudly and continue from the slot.
            let gone = |e: &ReplError| e.sqlstate() == Some("58P01");
            let stream = match conn.start_physical(Some(&slot), start, timeline).await {
                Ok(stream) => stream,
                Err(e) if start < slot_start && !fell_back && gone(&e) => {
                    self.log_hole(start, slot_start, &e);
                    (start, fell_back) = (slot_start, true);
                    timeline =
                        pgwal::history::timeline_of_point(start, &spans).unwrap_or(system.timeline);
                    conn = ReplicationConnection::connect(&self.conninfo()?).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            tracing::info!(
                cluster = %self.cluster, slot = %slot, timeline, start = %start,
                "receiver: streaming"
            );
            set_state(&self.status, "streaming", None, None);
            update(&self.status, |s| {
                s.timeline = Some(timeline);
                s.failed_attempts = 0;
            });
            let (next, c, partial) = match self.stream_timeline(stream, start, timeline, size).await
            {
                Ok(v) => v,
                Err(ReceiverError::Repl(e)) if start < slot_start && !fell_back && gone(&e) => {
                    self.log_hole(start, slot_start, &e);
                    (start, fell_back) = (slot_start, true);
                    timeline =
                        pgwal::history::timeline_of_point(start, &spans).unwrap_or(system.timeline);
                    conn = ReplicationConnection::connect(&self.conninfo()?).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            conn = c;
            let Some((next_tli, next_start)) = next else {
                return Err(ReceiverError::Protocol(
                    "the server ended streaming without naming a next timeline".into(),
                ));
            };
            // The history first: it names the switch point, which tells a `.partial` that
            // PostgreSQL archives under the same name from one with other WAL.
            self.store_history(&mut conn, next_tli).await?;
            if let Some(partial) = partial {
                self.store_partial(&partial).await?;
            }
            tracing::info!(
                cluster = %self.cluster, from = timeline, to = next_tli, at = %next_start,
                "receiver: following the timeline switch"
            );
            timeline = next_tli;
            start = size.segment_start(size.segno_of(next_start));
        }
    }

    fn log_hole(&self, from: Lsn, to: Lsn, e: &ReplError) {
        tracing::error!(
            cluster = %self.cluster, from = %from, to = %to,
            "receiver: the server no longer has the WAL after the archive's end ({e}); the \
             archive has a gap there unless archive_command fills it; continuing from the slot"
        );
    }

    /// Streams one timeline until the server ends it; returns the next timeline, the
    /// connection back in command mode, and the timeline's last segment, made durable as
    /// `NAME.partial.ready`, for the caller to store once the next timeline's history is.
    async fn stream_timeline(
        &self,
        mut stream: ReplicationStream,
        start: Lsn,
        timeline: u32,
        size: SegmentSize,
    ) -> Result<TimelineEnd, ReceiverError> {
        let mut writer = SegmentWriter::new(&self.work_dir, timeline, start, size);
        let mut last_flush = Instant::now();
        let mut server_lsn = start;
        // Like `wal_receiver_timeout`: a server that says nothing for this long is presumed
        // gone (a silent network partition looks exactly like a quiet primary otherwise); at
        // half of it, a status update asks for a reply.
        let timeout = self
            .config
            .receiver_timeout
            .unwrap_or(DEFAULT_RECEIVER_TIMEOUT);
        let timeout = (timeout > 0).then(|| Duration::from_secs(timeout));
        let mut last_message = Instant::now();
        let mut asked = false;
        loop {
            if let Some(timeout) = timeout {
                let silent = last_message.elapsed();
                if silent >= timeout {
                    return Err(ReceiverError::Protocol(format!(
                        "no message from the server for {}s (receiver_timeout): the connection \
                         is presumed dead; reconnecting",
                        silent.as_secs()
                    )));
                }
                if silent >= timeout / 2 && !asked {
                    self.flush_and_report(&mut stream, &mut writer, server_lsn, true)
                        .await?;
                    last_flush = Instant::now();
                    asked = true;
                }
            }
            // How long to wait for the next message before flushing and reporting anyway:
            // synchronous mode takes only what is already buffered (one poll), so a commit
            // waits for one write + fsync and no timer; otherwise unflushed bytes are made
            // durable within FLUSH_INTERVAL even when the stream goes quiet, and an idle
            // stream still reports every STATUS_INTERVAL.
            let wait = if !writer.unflushed() {
                STATUS_INTERVAL
            } else if self.config.synchronous {
                Duration::ZERO
            } else {
                FLUSH_INTERVAL.saturating_sub(last_flush.elapsed())
            };
            let wait = match timeout {
                Some(t) => {
                    let next_check = if asked { t } else { t / 2 };
                    wait.min(next_check.saturating_sub(last_message.elapsed()))
                }
                None => wait,
            };
            let event = stream.next(wait).await?;
            if event.is_some() {
                last_message = Instant::now();
                asked = false;
            }
            match event {
                Some(StreamEvent::XLogData { start, data, .. }) => {
                    let completed = writer.write(start, &data)?;
                    for name in completed {
                        self.store_completed(&name).await?;
                        update(&self.status, |s| s.last_stored = Some(name.to_string()));
                    }
                    server_lsn = server_lsn.max(writer.received());
                    let due = !self.config.synchronous && last_flush.elapsed() >= FLUSH_INTERVAL;
                    if due {
                        self.flush_and_report(&mut stream, &mut writer, server_lsn, false)
                            .await?;
                        last_flush = Instant::now();
                    }
                }
                Some(StreamEvent::Keepalive {
                    end,
                    reply_requested,
                    ..
                }) => {
                    server_lsn = server_lsn.max(end);
                    if reply_requested {
                        self.flush_and_report(&mut stream, &mut writer, server_lsn, false)
                            .await?;
                        last_flush = Instant::now();
                    }
                }
                Some(StreamEvent::EndOfTimeline) => {
                    writer.flush()?;
                    let partial = writer.finish_partial()?;
                    let (next, conn) = stream.finish_timeline().await?;
                    return Ok((next, conn, partial));
                }
                None => {
                    self.flush_and_report(&mut stream, &mut writer, server_lsn, false)
                        .await?;
                    last_flush = Instant::now();
                }
            }
        }
    }

    async fn flush_and_report(
        &self,
        stream: &mut ReplicationStream,
        writer: &mut SegmentWriter,
        server_lsn: Lsn,
        reply: bool,
    ) -> Result<(), ReceiverError> {
        writer.flush()?;
        let (received, flushed) = (writer.received(), writer.flushed());
        stream
            .send_status(received, flushed, flushed, reply)
            .await?;
        update(&self.status, |s| {
            s.received_lsn = Some(received.to_string());
            s.flushed_lsn = Some(flushed.to_string());
            s.server_lsn = Some(server_lsn.max(received).to_string());
            s.lag_bytes = Some(server_lsn.0.saturating_sub(flushed.0));
            s.partial_segment = writer.partial_name().map(|n| format!("{n}.partial"));
        });
        Ok(())
    }

    /// The server's timeline history as spans (one open span when it is on timeline 1).
    async fn history_spans(
        &self,
        conn: &mut ReplicationConnection,
        current: u32,
    ) -> Result<Vec<pgwal::history::TimelineSpan>, ReceiverError> {
        if current <= 1 {
            return Ok(pgwal::history::timeline_spans(current, &[]));
        }
        let (_, content) = conn.timeline_history(current).await?;
        let entries = pgwal::history::parse_history_bytes(current, &content)
            .map_err(|e| ReceiverError::Protocol(format!("timeline history: {e}")))?;
        Ok(pgwal::history::timeline_spans(current, &entries))
    }

    /// Start of the segment after the last one the archive holds on the server's history: a
    /// segment counts when its name's timeline is the one its last byte belongs to (the file
    /// PostgreSQL itself would archive for that segment number). Read from the catalog's runs of
    /// consecutive segments, not a listing: within a run, the segments counting on a span of
    /// the history are those whose last byte lies in it, the highest of which is checked.
    async fn archive_next(
        &self,
        spans: &[pgwal::history::TimelineSpan],
        size: SegmentSize,
    ) -> Result<Option<Lsn>, ReceiverError> {
        let runs = self.archive.catalog.wal_summary(&self.cluster).await?.runs;
        let last_byte = |segno: u64| Lsn(size.segment_start(segno + 1).0 - 1);
        let counts = |tli: u32, segno: u64| {
            pgwal::history::timeline_of_point(last_byte(segno), spans) == Some(tli)
        };
        let last = runs
            .iter()
            .flat_map(|run| {
                spans
                    .iter()
                    .filter(move |span| span.tli == run.timeline)
                    .filter_map(move |span| {
                        // The highest segment of the run whose last byte is before the span's end.
                        let highest = match span.end {
                            Some(end) => (end.0 / size.bytes()).checked_sub(1)?.min(run.last),
                            None => run.last,
                        };
                        (highest >= run.first && counts(run.timeline, highest)).then_some(highest)
                    })
            })
            .max();
        Ok(last.map(|segno| size.segment_start(segno + 1)))
    }

    async fn store_history(
        &self,
        conn: &mut ReplicationConnection,
        tli: u32,
    ) -> Result<(), ReceiverError> {
        let (filename, content) = conn.timeline_history(tli).await?;
        let name: WalFileName = filename.parse().map_err(|e| {
            ReceiverError::Protocol(format!("TIMELINE_HISTORY named {filename:?}: {e}"))
        })?;
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(content))]);
        self.ingest(&name, body).await
    }

    /// Stores a completed working segment and removes it from the working directory.
    async fn store_completed(&self, name: &WalFileName) -> Result<(), ReceiverError> {
        let path = self.work_dir.join(name.to_string());
        self.ingest(name, file_stream(&path).await?).await?;
        tokio::fs::remove_file(&path).await?;
        Ok(())
    }

    async fn store_partial(&self, path: &Path) -> Result<(), ReceiverError> {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ready"))
            .and_then(|n| n.parse::<WalFileName>().ok())
        else {
            return Ok(());
        };
        match self.ingest(&name, file_stream(path).await?).await {
            Ok(()) => {}
            // Another `.partial` of this name with other WAL before the switch point: the
            // stored copy is kept, and this one too, for a person to look at.
            Err(ReceiverError::Archive(ArchiveError::Conflict(m))) => {
                let kept = self.work_dir.join(format!("{name}.conflict"));
                tracing::error!(cluster = %self.cluster, kept = %kept.display(), "receiver: {m}");
                tokio::fs::rename(path, &kept).await?;
                durability::fsync_dir(&self.work_dir)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        tokio::fs::remove_file(path).await?;
        Ok(())
    }

    /// Stores `name` from `body` through the archive, on the server's runtime.
    async fn ingest<S>(&self, name: &WalFileName, body: S) -> Result<(), ReceiverError>
    where
        S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send + 'static,
    {
        let upload = Upload {
            body,
            zstd: false,
            claimed_sha256: None,
            claimed_xxh3: None,
            idle_timeout: crate::wal::archive::BODY_IDLE_TIMEOUT,
        };
        let (archive, cluster, file) = (self.archive.clone(), self.cluster.clone(), name.clone());
        let level = self.config.compression_level;
        let r = self
            .store_on
            .spawn(async move { archive.ingest(&cluster, &file, upload, level).await })
            .await
            .map_err(|e| {
                ReceiverError::Io(std::io::Error::other(format!("storing {name}: {e}")))
            })??;
        tracing::debug!(cluster = %self.cluster, file = %name, outcome = ?r.stored, "receiver: stored");
        Ok(())
    }

    /// Removes segments-in-progress of earlier sessions other than `keep` (the one this session
    /// starts with, which it rewrites from its first byte).
    async fn remove_stale_partials(&self, keep: &WalFileName) -> Result<(), ReceiverError> {
        let keep = format!("{keep}.partial");
        let mut entries = tokio::fs::read_dir(&self.work_dir).await?;
        while let Some(e) = entries.next_entry().await? {
            let file = e.file_name().to_string_lossy().to_string();
            let in_progress = file
                .parse::<WalFileName>()
                .is_ok_and(|n| matches!(n, WalFileName::Partial { .. }));
            if file != keep && (in_progress || file.ends_with(".init")) {
                tokio::fs::remove_file(e.path()).await?;
            }
        }
        Ok(())
    }

    /// Stores complete segments (full-size files named as segments) left in the working
    /// directory by an earlier run, and removes stale partial files: streaming restarts at the
    /// beginning of the segment they belong to.
    async fn store_leftovers(&self, size: SegmentSize) -> Result<(), ReceiverError> {
        let mut entries = tokio::fs::read_dir(&self.work_dir).await?;
        let mut complete = Vec::new();
        let mut partials = Vec::new();
        while let Some(e) = entries.next_entry().await? {
            let file = e.file_name().to_string_lossy().to_string();
            let full = e.metadata().await?.len() == size.bytes();
            if file.ends_with(READY_PARTIAL_SUFFIX) {
                // A timeline's last segment, left by `finish_partial`.
                partials.push(e.path());
                continue;
            }
            match file.parse::<WalFileName>() {
                Ok(name @ WalFileName::Segment { .. }) if full => complete.push(name),
                _ => {}
            }
        }
        complete.sort();
        for name in complete {
            self.store_completed(&name).await?;
            tracing::info!(cluster = %self.cluster, file = %name, "receiver: stored a segment completed before a restart");
        }
        for path in partials {
            self.store_partial(&path).await?;
        }
        Ok(())
    }
}

async fn file_stream(
    path: &Path,
) -> Result<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin, std::io::Error> {
    let file = tokio::fs::File::open(path).await?;
    Ok(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ))
}

/// `SHOW wal_segment_size` answers like `16MB` or `1GB`.
pub fn parse_segment_size(text: &str) -> Result<SegmentSize, ReceiverError> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("GB") {
        (n, 1u64 << 30)
    } else if let Some(n) = t.strip_suffix("MB") {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix("kB") {
        (n, 1 << 10)
    } else {
        (t, 1)
    };
    let bytes = num
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| ReceiverError::Protocol(format!("wal_segment_size = {text:?}")))?;
    SegmentSize::new(bytes).map_err(|e| ReceiverError::Protocol(format!("wal_segment_size: {e}")))
}

/// Writes streamed WAL into per-segment working files.
///
/// Plain blocking file calls, on the receiver's own thread ([`Receiver::spawn`]), as in
/// `pg_receivewal`: a message is one `pwrite` into the page cache, and a synchronous commit
/// waits for that, one `fdatasync` and the status update, with no hand-off to another thread.
struct SegmentWriter {
    dir: PathBuf,
    timeline: u32,
    size: SegmentSize,
    /// Next byte expected.
    received: Lsn,
    /// End of the bytes on stable storage.
    flushed: Lsn,
    current: Option<(WalFileName, std::fs::File)>,
}

impl SegmentWriter {
    fn new(dir: &Path, timeline: u32, start: Lsn, size: SegmentSize) -> Self {
        SegmentWriter {
            dir: dir.to_path_buf(),
            timeline,
            size,
            received: start,
            flushed: start,
            current: None,
        }
    }

    fn received(&self) -> Lsn {
        self.received
    }

    fn flushed(&self) -> Lsn {
        self.flushed
    }

    fn unflushed(&self) -> bool {
        self.received > self.flushed
    }

    fn partial_name(&self) -> Option<&WalFileName> {
        self.current.as_ref().map(|(n, _)| n)
    }

    fn partial_path(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}.partial"))
    }

    /// Appends `data`, which must start where the last write ended. Returns the segments this
    /// write completed (made durable under their final name, ready to store).
    fn write(&mut self, start: Lsn, mut data: &[u8]) -> Result<Vec<WalFileName>, ReceiverError> {
        use std::os::unix::fs::FileExt;
        if start != self.received {
            return Err(ReceiverError::Protocol(format!(
                "the server sent WAL from {start} but {} was expected",
                self.received
            )));
        }
        let mut completed = Vec::new();
        while !data.is_empty() {
            let segno = self.size.segno_of(self.received);
            let offset = self.size.offset_in_segment(self.received);
            if self.current.is_none() {
                let name = WalFileName::segment(self.timeline, segno, self.size);
                let path = self.partial_path(&name);
                let file = open_preallocated(&path, &self.dir, self.size.bytes())?;
                self.current = Some((name, file));
            }
            let room = (self.size.bytes() - offset) as usize;
            let n = room.min(data.len());
            let (_, file) = self
                .current
                .as_ref()
                .ok_or_else(|| ReceiverError::Protocol("no working segment".into()))?;
            file.write_all_at(&data[..n], offset)?;
            data = &data[n..];
            self.received = Lsn(self.received.0 + n as u64);
            if n == room {
                // Segment complete: data, then name, made durable before its end is reported.
                let (name, file) = self
                    .current
                    .take()
                    .ok_or_else(|| ReceiverError::Protocol("no working segment".into()))?;
                let from = self.partial_path(&name);
                let to = self.dir.join(name.to_string());
                file.sync_all()?;
                std::fs::rename(&from, &to)?;
                durability::fsync_dir(&self.dir)?;
                self.flushed = self.received;
                completed.push(name);
            }
        }
        Ok(completed)
    }

    /// fsync of the segment in progress; afterwards everything received is durable.
    fn flush(&mut self) -> Result<(), ReceiverError> {
        if !self.unflushed() {
            return Ok(());
        }
        if let Some((_, file)) = self.current.as_ref() {
            file.sync_data()?;
        }
        self.flushed = self.received;
        Ok(())
    }

    /// At the end of a timeline: the segment in progress becomes `NAME.partial`, zero-filled
    /// after the switch point as PostgreSQL's own `.partial` files are, and renamed to
    /// `NAME.partial.ready` (durably) until the archive has stored it.
    fn finish_partial(&mut self) -> Result<Option<PathBuf>, ReceiverError> {
        let Some((name, file)) = self.current.take() else {
            return Ok(None);
        };
        let valid = self.size.offset_in_segment(self.received);
        let path = self.partial_path(&name);
        let out = self.dir.join(format!("{name}{READY_PARTIAL_SUFFIX}"));
        // Cut what a previous session may have left past the switch point, then zero-fill.
        file.set_len(valid)?;
        file.set_len(self.size.bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&path, &out)?;
        durability::fsync_dir(&self.dir)?;
        Ok(Some(out))
    }
}

/// What [`Receiver::stream_timeline`] returns when the server ends a timeline.
type TimelineEnd = (Option<(u32, Lsn)>, ReplicationConnection, Option<PathBuf>);

/// Suffix of a timeline's last segment waiting to be stored as `NAME.partial`.
const READY_PARTIAL_SUFFIX: &str = ".partial.ready";

/// Opens the working file of a segment, creating it zero-filled to the full segment size first
/// (as PostgreSQL and pg_receivewal do): later `fdatasync`s then only write data blocks, with no
/// file-size change to journal, which keeps each flush (and a synchronous commit) short. The
/// new file and its name are made durable before any byte in it can be reported as flushed.
fn open_preallocated(path: &Path, dir: &Path, size: u64) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let open = || std::fs::OpenOptions::new().write(true).open(path);
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() == size) {
        return open();
    }
    let tmp = path.with_extension("init");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    durability::fsync_dir(dir)?;
    open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_size_setting() {
        assert_eq!(parse_segment_size("16MB").expect("16MB").bytes(), 16 << 20);
        assert_eq!(parse_segment_size("1GB").expect("1GB").bytes(), 1 << 30);
        assert_eq!(parse_segment_size("1MB").expect("1MB").bytes(), 1 << 20);
        assert!(parse_segment_size("3MB").is_err());
        assert!(parse_segment_size("x").is_err());
    }
}
