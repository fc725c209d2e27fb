-- Long operations are server-side jobs a client starts and then follows (DESIGN §7.6): verify
-- and drills join backups and retention, a run may name the backup it works on, and keeps its
-- report (JSON) once it ends. SQLite cannot change a CHECK constraint in place: the table is
-- rebuilt with its rows.

CREATE TABLE jobs_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('backup', 'retention', 'verify', 'drill')),
    trigger      TEXT NOT NULL CHECK (trigger IN ('schedule', 'missed', 'api')),
    scheduled_at TEXT,
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    result       TEXT NOT NULL CHECK (result IN ('running', 'ok', 'failed', 'skipped')),
    error        TEXT,
    detail       TEXT,
    backup_id    TEXT,
    report       TEXT
);

INSERT INTO jobs_new (id, cluster, kind, trigger, scheduled_at, started_at, ended_at, result,
                      error, detail)
SELECT id, cluster, kind, trigger, scheduled_at, started_at, ended_at, result, error, detail
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_by_cluster ON jobs(cluster, kind, id);
