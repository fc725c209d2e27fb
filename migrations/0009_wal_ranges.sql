-- Runs of consecutive stored segments (kind 'segment', state 'ok') per timeline, by segment
-- number, inclusive. Kept by the catalog's code in the same transaction as the wal_files rows
-- (server/src/catalog/ranges.rs; a trigger cannot compute a segment number from a name), so
-- that `wal`, `check` and the status page read ranges and gaps from a few rows. Filled from the
-- existing rows by the migration's hook.
CREATE TABLE wal_ranges (
    cluster     TEXT NOT NULL,
    timeline    INTEGER NOT NULL,
    first_segno INTEGER NOT NULL,
    last_segno  INTEGER NOT NULL,
    PRIMARY KEY (cluster, timeline, first_segno)
) WITHOUT ROWID;

CREATE INDEX wal_ranges_by_last ON wal_ranges(cluster, timeline, last_segno);
