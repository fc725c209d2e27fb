-- Recovery drills (DESIGN §1, scenario 7): a backup restored into a scratch directory on the
-- server host and replayed by a throwaway PostgreSQL. One row per drill, from its start
-- (`running`) to its end (`ok` or `failed`); `report` holds the whole JSON report (the WAL it
-- replayed, the times to consistency and to the end). A drill's record in storage
-- (`meta/drills/CLUSTER/ID.json`) is written before its row says how it ended, so a rebuilt
-- catalog has the same drills. `list`, `show`, `check` and `/metrics` read the newest rows.

CREATE TABLE drills (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster    TEXT NOT NULL,
    backup_id  TEXT NOT NULL,
    -- The job run (`jobs.id`) that ran it.
    job_id     INTEGER,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    result     TEXT NOT NULL CHECK (result IN ('running', 'ok', 'failed')),
    error      TEXT,
    report     TEXT NOT NULL
);

CREATE INDEX drills_by_cluster ON drills(cluster, id);
CREATE INDEX drills_by_backup ON drills(cluster, backup_id, id);
