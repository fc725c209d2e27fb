-- Per-cluster aggregates of the WAL catalog, kept by triggers in the same transaction as the rows
-- they count: `/metrics`, the status page and `check` read one row per cluster instead of
-- scanning a million WAL rows under the catalog's lock.

CREATE TABLE wal_stats (
    cluster          TEXT PRIMARY KEY,
    -- Rows in state 'ok', their uncompressed and stored bytes.
    files            INTEGER NOT NULL DEFAULT 0,
    bytes            INTEGER NOT NULL DEFAULT 0,
    stored_bytes     INTEGER NOT NULL DEFAULT 0,
    -- Rows in any other state (objects found missing).
    missing          INTEGER NOT NULL DEFAULT 0,
    -- The newest archived segment: by archived_at, then name.
    last_segment     TEXT,
    last_archived_at TEXT
) WITHOUT ROWID;

CREATE INDEX wal_files_newest_segment ON wal_files(cluster, kind, archived_at, name);
CREATE INDEX wal_files_not_ok ON wal_files(cluster, name) WHERE state <> 'ok';

INSERT INTO wal_stats (cluster, files, bytes, stored_bytes, missing)
SELECT cluster,
       sum(state = 'ok'),
       coalesce(sum(CASE WHEN state = 'ok' THEN size END), 0),
       coalesce(sum(CASE WHEN state = 'ok' THEN stored_size END), 0),
       sum(state <> 'ok')
FROM wal_files GROUP BY cluster;

UPDATE wal_stats SET (last_segment, last_archived_at) = (
    SELECT name, archived_at FROM wal_files w
    WHERE w.cluster = wal_stats.cluster AND w.kind = 'segment' AND w.state = 'ok'
    ORDER BY archived_at DESC, name DESC LIMIT 1);

CREATE TRIGGER wal_stats_insert AFTER INSERT ON wal_files BEGIN
    INSERT OR IGNORE INTO wal_stats (cluster) VALUES (NEW.cluster);
    UPDATE wal_stats SET
        files = files + (NEW.state = 'ok'),
        bytes = bytes + CASE WHEN NEW.state = 'ok' THEN NEW.size ELSE 0 END,
        stored_bytes = stored_bytes + CASE WHEN NEW.state = 'ok' THEN NEW.stored_size ELSE 0 END,
        missing = missing + (NEW.state <> 'ok')
    WHERE cluster = NEW.cluster;
    UPDATE wal_stats SET last_segment = NEW.name, last_archived_at = NEW.archived_at
    WHERE cluster = NEW.cluster AND NEW.kind = 'segment' AND NEW.state = 'ok'
      AND (last_archived_at IS NULL OR NEW.archived_at > last_archived_at
           OR (NEW.archived_at = last_archived_at AND NEW.name > last_segment));
END;

CREATE TRIGGER wal_stats_delete AFTER DELETE ON wal_files BEGIN
    UPDATE wal_stats SET
        files = files - (OLD.state = 'ok'),
        bytes = bytes - CASE WHEN OLD.state = 'ok' THEN OLD.size ELSE 0 END,
        stored_bytes = stored_bytes - CASE WHEN OLD.state = 'ok' THEN OLD.stored_size ELSE 0 END,
        missing = missing - (OLD.state <> 'ok')
    WHERE cluster = OLD.cluster;
    UPDATE wal_stats SET (last_segment, last_archived_at) = (
        SELECT name, archived_at FROM wal_files w
        WHERE w.cluster = OLD.cluster AND w.kind = 'segment' AND w.state = 'ok'
        ORDER BY archived_at DESC, name DESC LIMIT 1)
    WHERE cluster = OLD.cluster AND last_segment = OLD.name;
END;

CREATE TRIGGER wal_stats_update AFTER UPDATE OF state, size, stored_size ON wal_files BEGIN
    UPDATE wal_stats SET
        files = files - (OLD.state = 'ok') + (NEW.state = 'ok'),
        bytes = bytes - CASE WHEN OLD.state = 'ok' THEN OLD.size ELSE 0 END
                      + CASE WHEN NEW.state = 'ok' THEN NEW.size ELSE 0 END,
        stored_bytes = stored_bytes - CASE WHEN OLD.state = 'ok' THEN OLD.stored_size ELSE 0 END
                                    + CASE WHEN NEW.state = 'ok' THEN NEW.stored_size ELSE 0 END,
        missing = missing - (OLD.state <> 'ok') + (NEW.state <> 'ok')
    WHERE cluster = NEW.cluster;
    UPDATE wal_stats SET (last_segment, last_archived_at) = (
        SELECT name, archived_at FROM wal_files w
        WHERE w.cluster = NEW.cluster AND w.kind = 'segment' AND w.state = 'ok'
        ORDER BY archived_at DESC, name DESC LIMIT 1)
    WHERE cluster = NEW.cluster AND OLD.state <> NEW.state AND NEW.kind = 'segment';
END;
