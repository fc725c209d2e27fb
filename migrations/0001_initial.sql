-- The catalog is an index over storage: every row here can be rebuilt from the stored objects
-- (see server/src/reconcile.rs). Storage is the source of truth; a row is written only after its
-- object is durable.

CREATE TABLE clusters (
    name              TEXT PRIMARY KEY,
    -- Decimal PostgreSQL system identifier (u64 does not fit SQLite's signed INTEGER),
    -- bound by the first segment that arrives and never changed afterwards.
    system_identifier TEXT,
    segment_size      INTEGER,
    pg_major          INTEGER,
    created_at        TEXT NOT NULL
);

CREATE TABLE wal_files (
    cluster      TEXT NOT NULL REFERENCES clusters(name),
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('segment', 'partial', 'history', 'backup')),
    timeline     INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    stored_size  INTEGER NOT NULL,
    object_key   TEXT NOT NULL,
    archived_at  TEXT NOT NULL,
    -- 'ok', or 'missing' when reconciliation found no object for this row.
    state        TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'missing')),
    PRIMARY KEY (cluster, name)
) WITHOUT ROWID;

CREATE INDEX wal_files_by_key ON wal_files(object_key);
