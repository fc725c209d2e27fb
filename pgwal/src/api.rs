//! Types exchanged over the HTTP API (DESIGN section 6), shared by the server and the helper so
//! that both sides agree on one definition.

use serde::{Deserialize, Serialize};

/// Header carrying the lowercase hex SHA-256 of a file's uncompressed bytes, in both directions.
pub const CONTENT_SHA256_HEADER: &str = "x-content-sha256";
/// Header carrying the lowercase hex XXH3-128 of a file's uncompressed bytes, in both
/// directions: the helper's cheap check of bytes in transit (see `pgwal::checksum::Xxh3`). On
/// `PUT` the server refuses a body that does not match it (422 `checksum_mismatch`), as it does
/// for `X-Content-Sha256`; `GET`/`HEAD` send it for files archived with it recorded.
pub const CONTENT_XXH3_HEADER: &str = "x-content-xxh3";
/// Header carrying the uncompressed size of a file served by `GET`/`HEAD`.
pub const CONTENT_SIZE_HEADER: &str = "x-content-size";

/// Header on every response: the identity of the archive instance that answered, created with
/// its storage. The helper trusts what it recorded of an earlier answer (an acknowledgement) only
/// from the same instance: a server rolled back or replaced at the same URL is another one.
pub const INSTANCE_HEADER: &str = "x-wal-archive-instance";

/// The JSON body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A stable machine-readable kind, such as `conflict` or `wrong_system`.
    pub error: String,
    /// What happened and what to do, for a person.
    pub message: String,
    /// The cluster the answer is about, when it is about one. `fetch` reads a 404 as "the
    /// archive has no such file" only when it says `not_found` for the very cluster asked
    /// about: any other 404 (a wrong URL, a proxy, an unknown cluster) is a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// `error` of a 404 that means "this cluster's archive has no file of that name".
pub const NOT_IN_ARCHIVE: &str = "not_found";

/// One archived WAL file, as listed by `GET /v1/clusters/{cluster}/wal`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalEntry {
    pub name: String,
    /// `segment`, `partial`, `history` or `backup`.
    pub kind: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the uncompressed bytes.
    pub sha256: String,
    /// Size of the stored (compressed) object in bytes.
    pub stored_size: u64,
    /// RFC 3339 time at which the file was stored.
    pub archived_at: String,
}

/// Timelines, ranges and gaps of one cluster's stored WAL (`GET /v1/clusters/{cluster}/timelines`),
/// what `wal-archive wal` shows: read from the catalog's aggregates, without listing the files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalSummary {
    pub cluster: String,
    /// As in [`WalListing`].
    pub system_identifier: Option<String>,
    pub segment_size: Option<u64>,
    /// Files stored (every kind).
    pub files: u64,
    /// Every timeline with a stored file, in order.
    pub timelines: Vec<crate::ranges::TimelineSummary>,
    /// Files the catalog lists but storage no longer holds: how many, and the first names
    /// (at most 1000) in WAL order.
    pub missing_files: u64,
    pub missing: Vec<String>,
}

/// The WAL catalog of one cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalListing {
    pub cluster: String,
    /// The PostgreSQL system identifier the cluster is bound to, as a decimal string
    /// (it does not fit in a JSON number without loss), or `None` before the first segment.
    pub system_identifier: Option<String>,
    /// WAL segment size in bytes, known once the first segment has arrived.
    pub segment_size: Option<u64>,
    pub files: Vec<WalEntry>,
    /// Files the catalog lists but storage no longer holds (found at start-up reconciliation).
    #[serde(default)]
    pub missing: Vec<String>,
}

/// Answer to a successful `PUT` of a WAL file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutResponse {
    pub name: String,
    /// `stored` (201) or `already_stored` (200).
    pub outcome: String,
    pub sha256: String,
    /// XXH3-128 of the uncompressed bytes (absent from older servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    pub size: u64,
    pub stored_size: u64,
}

/// Answer to `POST /v1/clusters/{cluster}/wal-test` (`wal-archive push --test`): the request
/// passed the authorisation of a WAL upload to this cluster. Nothing was stored or bound.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushTestResponse {
    pub cluster: String,
    /// The archive instance that answered (as in `X-Wal-Archive-Instance`).
    pub instance: String,
    /// The name of the token that was presented, or `None` when the server has no tokens
    /// (the loopback-only open mode) and needs none.
    pub token: Option<String>,
    /// The PostgreSQL system identifier the cluster is bound to, as a decimal string, or `None`
    /// while the archive holds no segment of it: the first push binds it.
    pub system_identifier: Option<String>,
}

/// State of a cluster's streaming receiver, as `GET /v1/clusters/{cluster}/receiver` reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiverStatus {
    /// `disabled`, `starting`, `streaming`, `reconnecting` or `stopped`.
    pub state: String,
    /// Why it is not streaming (the last error), for `reconnecting`.
    pub reason: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    pub slot: Option<String>,
    /// True while the receiver holds the slot (streams from it).
    pub slot_active: bool,
    pub synchronous: bool,
    pub timeline: Option<u32>,
    /// End of the WAL received so far (`X/Y`).
    pub received_lsn: Option<String>,
    /// End of the WAL durably stored (reported to PostgreSQL as flushed).
    pub flushed_lsn: Option<String>,
    /// The server's WAL end, from its last message.
    pub server_lsn: Option<String>,
    /// `server_lsn - flushed_lsn` in bytes.
    pub lag_bytes: Option<u64>,
    /// The segment being received, kept durably as `NAME.partial`.
    pub partial_segment: Option<String>,
    /// The last segment stored from the stream.
    pub last_stored: Option<String>,
    /// RFC 3339 time of the last state change.
    pub since: String,
    /// Connection attempts that failed since the last success.
    pub failed_attempts: u64,
}

/// One line of `wal-archive check`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckItem {
    pub name: String,
    pub ok: bool,
    /// What was found.
    pub message: String,
    /// How to fix it, when failed.
    pub hint: Option<String>,
}

/// Answer of `GET /v1/clusters/{cluster}/check`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckReport {
    pub cluster: String,
    pub checks: Vec<CheckItem>,
}

/// `POST /v1/clusters/{cluster}/backups` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupRequest {
    /// `fast` (default) or `spread` checkpoint at the start of the backup.
    #[serde(default)]
    pub checkpoint: Option<String>,
}

/// A tablespace of a backup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupTablespace {
    pub oid: u32,
    /// The tablespace's name when it could be looked up.
    pub name: Option<String>,
    /// Its location on the backed-up server.
    pub location: String,
}

/// One base backup, as listed and shown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupInfo {
    /// Sortable timestamp id, e.g. `20261121T223000`.
    pub id: String,
    pub cluster: String,
    /// `running`, `waiting_for_wal`, `done` or `failed`.
    pub status: String,
    /// Why it failed.
    pub reason: Option<String>,
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    pub begin_lsn: Option<String>,
    pub end_lsn: Option<String>,
    pub begin_wal: Option<String>,
    pub end_wal: Option<String>,
    /// RFC 3339.
    pub begin_time: String,
    pub end_time: Option<String>,
    /// `server_version` of PostgreSQL, e.g. `15.18`.
    pub pg_version: Option<String>,
    /// Bytes of the database files (uncompressed).
    pub size_bytes: u64,
    /// Bytes this backup added to storage (compressed, after deduplication).
    pub stored_bytes: u64,
    /// Bytes of files already stored by earlier backups, referenced instead of stored.
    pub deduplicated_bytes: u64,
    pub file_count: u64,
    pub tablespaces: Vec<BackupTablespace>,
    pub keep: bool,
    /// Progress while running: bytes received so far and the server's estimate of the total.
    pub progress_bytes: u64,
    pub estimated_bytes: Option<u64>,
    /// Retention classification (`valid`, `obsolete`, `kept`), when a policy applies.
    #[serde(default)]
    pub retention: Option<String>,
    /// The newest recovery drill of this backup, in listings and `show` (absent when it never
    /// had one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillSummary>,
}

/// One entry of a backup, as `restore` needs it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupFile {
    /// `None` for the main data directory, else the tablespace's OID.
    pub tablespace_oid: Option<u32>,
    /// Path inside the data directory or tablespace, `/`-separated, relative.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the content (files only); also the blob's name.
    pub sha256: Option<String>,
    /// Unix permission bits.
    pub mode: u32,
    /// Unix time of last modification.
    pub mtime: i64,
    /// For symlinks.
    pub link_target: Option<String>,
}

/// `GET /v1/clusters/{cluster}/backups/{id}/files`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupFiles {
    pub id: String,
    pub files: Vec<BackupFile>,
}

/// `POST /v1/clusters/{cluster}/backups/{id}/verify`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// Each problem found, in words that name the file or WAL segment.
    pub problems: Vec<String>,
    /// WAL gaps after the backup's end (not fatal for restoring to its end).
    pub wal_gaps_after: Vec<String>,
}

/// `POST /v1/clusters/{cluster}/backups/{id}/keep` body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeepRequest {
    pub keep: bool,
}

/// `POST /v1/clusters/{cluster}/retention?dry_run=true|false`: what the retention policy
/// removed (or, with `dry_run`, would remove).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RetentionReport {
    pub cluster: String,
    /// The policy applied, as configured (`redundancy 2`, `recovery window of 7 days`), or
    /// `None` when the cluster has none (then nothing is removed).
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Every backup with its classification (`valid`, `obsolete`, `kept`), newest first.
    #[serde(default)]
    pub backups: Vec<BackupInfo>,
    /// Ids of the backups removed (or that would be).
    #[serde(default)]
    pub removed_backups: Vec<String>,
    /// Names of the WAL files removed (or that would be).
    #[serde(default)]
    pub removed_wal: Vec<String>,
    /// The first segment still needed by the oldest retained backup (WAL from there on, on
    /// every timeline, is kept).
    #[serde(default)]
    pub wal_kept_from: Option<String>,
}

/// One run of a scheduled (or API-started) job, as `GET /v1/clusters/{cluster}/jobs` lists it
/// and `GET /v1/clusters/{cluster}/jobs/{id}` shows it. Long operations (backup, verify,
/// retention, drill) are jobs: the request that starts one answers 202 with its run, and the
/// client follows it here; a client that goes away never interrupts it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JobRun {
    pub id: i64,
    pub cluster: String,
    /// `backup`, `retention`, `verify` or `drill`.
    pub kind: String,
    /// `schedule`, `missed` (a run the server was down for, run once at start) or `api`.
    #[serde(default)]
    pub trigger: String,
    /// RFC 3339 time the schedule fired for, when scheduled.
    #[serde(default)]
    pub scheduled_at: Option<String>,
    pub started_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    /// `running`, `ok`, `failed` or `skipped`.
    pub result: String,
    /// Why it failed or was skipped.
    #[serde(default)]
    pub error: Option<String>,
    /// What it did (a backup id, counts of removed files).
    #[serde(default)]
    pub detail: Option<String>,
    /// The backup it works on (verify, drill), or took (backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// How far it is, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// What it found, once it ended (verify, retention, drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<JobReport>,
}

/// How far a running job is; totals are known once it has looked at its work.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobProgress {
    pub done_bytes: u64,
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// What it is doing now, in words.
    #[serde(default)]
    pub step: String,
}

/// The result a job leaves, by kind.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobReport {
    Verify(VerifyReport),
    Retention(RetentionReport),
    Drill(Box<DrillReport>),
}

/// `POST /v1/clusters/{cluster}/drills` body: which backup to restore and how far to replay.
/// With no target, the drill replays to the end of the archive.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrillRequest {
    /// A backup id or `latest` (the newest done backup) [default: `latest`].
    #[serde(default)]
    pub backup: Option<String>,
    /// `recovery_target_time`, e.g. `2026-11-21 22:30:00+00`.
    #[serde(default)]
    pub target_time: Option<String>,
    /// `recovery_target_lsn`, e.g. `0/3000060`.
    #[serde(default)]
    pub target_lsn: Option<String>,
    /// `recovery_target_xid`.
    #[serde(default)]
    pub target_xid: Option<String>,
    /// `recovery_target_name` (a restore point).
    #[serde(default)]
    pub target_name: Option<String>,
    /// `recovery_target = 'immediate'`: stop once the backup is consistent.
    #[serde(default)]
    pub target_immediate: bool,
    /// `recovery_target_timeline` [default: `latest`].
    #[serde(default)]
    pub target_timeline: Option<String>,
}

/// What a recovery drill did and measured: `GET /v1/clusters/{cluster}/drills`, the report of
/// a drill job, and the record kept in storage. Times are seconds from the drill's start
/// (the restore's first byte), so `recovery_seconds` is the time to recover: a measured RTO.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    pub id: i64,
    pub cluster: String,
    pub backup_id: String,
    /// The job run that ran it.
    #[serde(default)]
    pub job_id: Option<i64>,
    /// `running`, `ok` or `failed`.
    pub result: String,
    /// Why it failed, naming the WAL segment or file at fault when there is one.
    #[serde(default)]
    pub error: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    /// What recovery aimed at: `end of archive`, or the recovery target (`lsn 0/3000060`, ...).
    pub target: String,
    /// `postgres --version` of the binaries that replayed, e.g. `15.18`.
    #[serde(default)]
    pub postgres_version: Option<String>,
    /// Files and bytes of the backup written into the scratch directory.
    #[serde(default)]
    pub restored_files: u64,
    #[serde(default)]
    pub restored_bytes: u64,
    /// The WAL files the throwaway PostgreSQL fetched from the archive and replayed: the first
    /// and last segment names, how many files (segments and timeline history files), bytes.
    #[serde(default)]
    pub wal_first: Option<String>,
    #[serde(default)]
    pub wal_last: Option<String>,
    #[serde(default)]
    pub wal_files: u64,
    #[serde(default)]
    pub wal_bytes: u64,
    /// Where replay had to reach (the end of the newest archived segment when the drill
    /// started, or the target LSN), and where it did.
    #[serde(default)]
    pub expected_lsn: Option<String>,
    #[serde(default)]
    pub reached_lsn: Option<String>,
    /// The backup's files were all written.
    #[serde(default)]
    pub restore_seconds: Option<f64>,
    /// PostgreSQL reached a consistent state and accepted a read-only connection.
    #[serde(default)]
    pub consistent_seconds: Option<f64>,
    /// Replay reached the end of the archive (or the target): the time to recover.
    #[serde(default)]
    pub recovery_seconds: Option<f64>,
    /// The whole drill, cleanup included.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// The sanity query's answers: `pg_is_in_recovery()` and `count(*) FROM pg_class`.
    #[serde(default)]
    pub in_recovery: Option<bool>,
    #[serde(default)]
    pub pg_class_count: Option<u64>,
}

impl DrillReport {
    /// The short form shown beside a backup.
    pub fn summary(&self) -> DrillSummary {
        DrillSummary {
            id: self.id,
            result: self.result.clone(),
            started_at: self.started_at.clone(),
            ended_at: self.ended_at.clone(),
            recovery_seconds: self.recovery_seconds,
            wal_files: self.wal_files,
            error: self.error.clone(),
        }
    }
}

/// The newest drill of a backup, as `last_drill` of a listed backup (the status page's "last
/// drill" column): its id, `result` (`running`, `ok`, `failed`), when it started and ended,
/// the time to recover in seconds, the WAL files it replayed, and why it failed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DrillSummary {
    pub id: i64,
    pub result: String,
    pub started_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    #[serde(default)]
    pub recovery_seconds: Option<f64>,
    #[serde(default)]
    pub wal_files: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /v1/clusters/{cluster}/switch-wal` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchWalRequest {
    /// Wait until the closed segment is archived.
    #[serde(default)]
    pub archive: bool,
    /// How long to wait for it (default 60 s).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Answer of `POST /v1/clusters/{cluster}/switch-wal`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchWalResponse {
    /// The segment that the switch closed.
    pub segment: String,
    /// True once the archive holds it (only waited for when asked).
    #[serde(default)]
    pub archived: bool,
}

/// A physical replication slot on the monitored primary (`pg_replication_slots`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotStatus {
    pub slot_name: String,
    /// True while a walsender streams from it.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+); `None` before the slot
    /// has reserved any WAL.
    pub wal_status: Option<String>,
    pub restart_lsn: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL the primary keeps for this slot.
    pub retained_bytes: Option<u64>,
}

/// A standby (or WAL receiver such as this server's) connected to the monitored primary
/// (`pg_stat_replication`). Lags are in bytes behind `pg_current_wal_lsn()`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StandbyStatus {
    pub application_name: String,
    /// `client_addr`, or `local` for a Unix socket.
    pub client: String,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    pub sent_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    pub sent_lag_bytes: Option<u64>,
    pub write_lag_bytes: Option<u64>,
    pub flush_lag_bytes: Option<u64>,
    pub replay_lag_bytes: Option<u64>,
    /// PostgreSQL's `replay_lag` (time), in milliseconds.
    pub replay_lag_ms: Option<u64>,
}

/// `pg_stat_archiver` of the monitored primary.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiverStatus {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    /// The last attempt failed (a failure newer than the last success).
    pub failing: bool,
}

/// What the server read from the cluster's PostgreSQL (`conninfo`) for the status page.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PostgresStatus {
    /// Why nothing could be read (connection refused, timeout, ...).
    pub error: Option<String>,
    pub server_version: Option<String>,
    pub archiver: Option<ArchiverStatus>,
    pub slots: Vec<SlotStatus>,
    pub standbys: Vec<StandbyStatus>,
}

/// One timeline of the WAL archive, from the catalog's aggregates.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimelineStatus {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// Segments between `first` and `last` that the archive does not hold.
    pub missing_segments: u64,
}

/// WAL stored in one hour (UTC).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalHour {
    /// `YYYY-MM-DDTHH`.
    pub hour: String,
    pub files: u64,
    pub bytes: u64,
}

/// The WAL archive of one cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalArchiveStatus {
    pub files: u64,
    /// Uncompressed bytes.
    pub bytes: u64,
    /// Bytes in storage (compressed).
    pub stored_bytes: u64,
    pub last_segment: Option<String>,
    /// RFC 3339.
    pub last_archived_at: Option<String>,
    pub last_archived_age_seconds: Option<u64>,
    /// Cataloged files whose object is missing from storage.
    pub missing: u64,
    pub timelines: Vec<TimelineStatus>,
    /// Gaps after the oldest retained backup's begin, as `check` words them (empty: none).
    pub gaps: Vec<String>,
    /// The last 48 hours, oldest first; hours without WAL are absent.
    pub hours: Vec<WalHour>,
}

/// One backup as the status page shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStatus {
    pub id: String,
    pub status: String,
    pub timeline: Option<u32>,
    pub begin_time: String,
    pub end_time: Option<String>,
    pub duration_seconds: Option<u64>,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    /// Retention class: `valid`, `obsolete`, `kept`, or `None` without a policy.
    pub retention: Option<String>,
    pub keep: bool,
    /// The newest recovery drill of this backup; `None`: no drill.
    pub last_drill: Option<DrillSummary>,
}

/// One cluster on the status page (`GET /v1/status`, `wal-archive status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub cluster: String,
    pub system_identifier: Option<String>,
    pub wal: WalArchiveStatus,
    /// The streaming receiver, for a cluster with `streaming = true`.
    pub receiver: Option<ReceiverStatus>,
    /// From `conninfo`, when it is set.
    pub postgres: Option<PostgresStatus>,
    /// Newest first.
    pub backups: Vec<BackupStatus>,
    /// Bytes of the backups' stored files.
    pub backup_stored_bytes: u64,
    /// Every line of `check`; the failed ones carry their fix.
    pub checks: Vec<CheckItem>,
}

/// The storage the archive writes to.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorageStatus {
    /// `local` or `s3`.
    pub kind: String,
    /// Where: the data directory, or the bucket and prefix.
    pub location: String,
    /// Bytes stored by the archive (WAL and backups, compressed).
    pub used_bytes: u64,
    /// Free and total bytes of the file system of the data directory.
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

/// Answer of `GET /v1/status`: what the status page shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// RFC 3339.
    pub generated_at: String,
    /// The server's version.
    pub version: String,
    pub storage: StorageStatus,
    pub clusters: Vec<ClusterStatus>,
}
