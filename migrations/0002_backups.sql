-- Base backups (DESIGN §3, §7.4). A backup's files are stored as content-addressed blobs,
-- deduplicated per cluster by SHA-256 (`backups/{cluster}/data/{sha[0..2]}/{sha}.zst`, the same
-- object format as WAL objects: zstd + checksum trailer). A blob row exists exactly as long as
-- some backup_files row references it; deleting a backup removes the rows in one transaction,
-- then the objects no row references any more (start-up cleanup removes leftovers of a crash in
-- between).

CREATE TABLE backups (
    cluster            TEXT NOT NULL REFERENCES clusters(name),
    -- Sortable UTC timestamp YYYYMMDDTHHMMSS, unique per cluster.
    id                 TEXT NOT NULL,
    status             TEXT NOT NULL
                       CHECK (status IN ('running', 'waiting_for_wal', 'done', 'failed')),
    reason             TEXT,
    -- Decimal, as in clusters.system_identifier.
    system_identifier  TEXT,
    timeline           INTEGER,
    begin_lsn          TEXT,
    end_lsn            TEXT,
    begin_wal          TEXT,
    end_wal            TEXT,
    begin_time         TEXT NOT NULL,
    end_time           TEXT,
    pg_version         TEXT,
    -- Uncompressed bytes of the files.
    size_bytes         INTEGER NOT NULL DEFAULT 0,
    -- Bytes this backup added to storage (compressed objects it created).
    stored_bytes       INTEGER NOT NULL DEFAULT 0,
    -- Uncompressed bytes of files whose content was already stored.
    deduplicated_bytes INTEGER NOT NULL DEFAULT 0,
    file_count         INTEGER NOT NULL DEFAULT 0,
    estimated_bytes    INTEGER,
    -- JSON array of {oid, name, location}.
    tablespaces        TEXT NOT NULL DEFAULT '[]',
    keep               INTEGER NOT NULL DEFAULT 0,
    -- The backup_manifest exactly as PostgreSQL sent it, stored as an object.
    manifest_key       TEXT,
    manifest_sha256    TEXT,
    manifest_size      INTEGER,
    PRIMARY KEY (cluster, id)
) WITHOUT ROWID;

-- At most one backup in progress per cluster.
CREATE UNIQUE INDEX backups_one_in_progress ON backups(cluster)
    WHERE status IN ('running', 'waiting_for_wal');

CREATE TABLE backup_files (
    cluster        TEXT NOT NULL,
    backup_id      TEXT NOT NULL,
    -- NULL for the main data directory.
    tablespace_oid INTEGER,
    path           TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'symlink')),
    size           INTEGER NOT NULL,
    sha256         TEXT,
    mode           INTEGER NOT NULL,
    mtime          INTEGER NOT NULL,
    link_target    TEXT,
    FOREIGN KEY (cluster, backup_id) REFERENCES backups(cluster, id) ON DELETE CASCADE
);

CREATE INDEX backup_files_by_backup ON backup_files(cluster, backup_id);
CREATE INDEX backup_files_by_sha ON backup_files(cluster, sha256);

CREATE TABLE backup_blobs (
    cluster     TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    object_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (cluster, sha256)
) WITHOUT ROWID;
