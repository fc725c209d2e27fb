-- Scheduled jobs and crash-safe retention (DESIGN §5, §7.4).

-- Every run of a job (scheduled backup, retention), with its outcome. The scheduler compares
-- the newest run of a job with the schedule's last fire time to run a missed one once at start.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('backup', 'retention')),
    trigger      TEXT NOT NULL CHECK (trigger IN ('schedule', 'missed', 'api')),
    scheduled_at TEXT,
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    result       TEXT NOT NULL CHECK (result IN ('running', 'ok', 'failed', 'skipped')),
    error        TEXT,
    detail       TEXT
);

CREATE INDEX jobs_by_cluster ON jobs(cluster, kind, id);

-- A backup retention decided to remove: set in the same transaction that records the plan, so
-- a run killed half-way never leaves a half-deleted backup shown as usable; the deletion is
-- resumed at the next start.
ALTER TABLE backups ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;

-- WAL files retention decided to remove. Objects are deleted first, then the rows (with their
-- plan rows) in one transaction; at start, before reconciliation, a leftover plan is finished,
-- so reconciliation neither re-indexes a planned object nor reports its row as missing.
CREATE TABLE retention_pending (
    cluster TEXT NOT NULL,
    name    TEXT NOT NULL,
    PRIMARY KEY (cluster, name)
) WITHOUT ROWID;
