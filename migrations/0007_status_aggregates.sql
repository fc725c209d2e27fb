-- Aggregates for the status page and `check`, kept by triggers in the same transaction as the
-- rows they count (like wal_stats, 0005), so that neither reads more than a few rows per
-- cluster however many WAL files the catalog holds:
-- - wal_timelines: stored segments per timeline. With the first and last segment of a timeline
--   (two primary-key lookups), a count below last - first + 1 means a gap in the WAL;
-- - wal_hours: segments and .partial files stored per hour of archived_at, for the chart of
--   WAL volume over the last 48 hours.

CREATE TABLE wal_timelines (
    cluster  TEXT NOT NULL,
    timeline INTEGER NOT NULL,
    -- Rows of kind 'segment' in state 'ok'.
    segments INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cluster, timeline)
) WITHOUT ROWID;

CREATE TABLE wal_hours (
    cluster TEXT NOT NULL,
    -- 'YYYY-MM-DDTHH' of archived_at (RFC 3339, UTC).
    hour    TEXT NOT NULL,
    files   INTEGER NOT NULL DEFAULT 0,
    bytes   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cluster, hour)
) WITHOUT ROWID;

INSERT INTO wal_timelines (cluster, timeline, segments)
SELECT cluster, timeline, count(*) FROM wal_files
WHERE kind = 'segment' AND state = 'ok' GROUP BY cluster, timeline;

INSERT INTO wal_hours (cluster, hour, files, bytes)
SELECT cluster, substr(archived_at, 1, 13), count(*), sum(size) FROM wal_files
WHERE kind IN ('segment', 'partial') GROUP BY cluster, substr(archived_at, 1, 13);

CREATE TRIGGER wal_timelines_insert AFTER INSERT ON wal_files
WHEN NEW.kind = 'segment' AND NEW.state = 'ok' BEGIN
    INSERT OR IGNORE INTO wal_timelines (cluster, timeline) VALUES (NEW.cluster, NEW.timeline);
    UPDATE wal_timelines SET segments = segments + 1
    WHERE cluster = NEW.cluster AND timeline = NEW.timeline;
END;

CREATE TRIGGER wal_timelines_delete AFTER DELETE ON wal_files
WHEN OLD.kind = 'segment' AND OLD.state = 'ok' BEGIN
    UPDATE wal_timelines SET segments = segments - 1
    WHERE cluster = OLD.cluster AND timeline = OLD.timeline;
END;

CREATE TRIGGER wal_timelines_update AFTER UPDATE OF state ON wal_files
WHEN NEW.kind = 'segment' AND (OLD.state = 'ok') <> (NEW.state = 'ok') BEGIN
    INSERT OR IGNORE INTO wal_timelines (cluster, timeline) VALUES (NEW.cluster, NEW.timeline);
    UPDATE wal_timelines SET segments = segments + CASE WHEN NEW.state = 'ok' THEN 1 ELSE -1 END
    WHERE cluster = NEW.cluster AND timeline = NEW.timeline;
END;

CREATE TRIGGER wal_hours_insert AFTER INSERT ON wal_files
WHEN NEW.kind IN ('segment', 'partial') BEGIN
    INSERT OR IGNORE INTO wal_hours (cluster, hour)
    VALUES (NEW.cluster, substr(NEW.archived_at, 1, 13));
    UPDATE wal_hours SET files = files + 1, bytes = bytes + NEW.size
    WHERE cluster = NEW.cluster AND hour = substr(NEW.archived_at, 1, 13);
END;

CREATE TRIGGER wal_hours_delete AFTER DELETE ON wal_files
WHEN OLD.kind IN ('segment', 'partial') BEGIN
    UPDATE wal_hours SET files = files - 1, bytes = bytes - OLD.size
    WHERE cluster = OLD.cluster AND hour = substr(OLD.archived_at, 1, 13);
    DELETE FROM wal_hours
    WHERE cluster = OLD.cluster AND hour = substr(OLD.archived_at, 1, 13) AND files <= 0;
END;
