#!/usr/bin/env python3
"""Fills a wal-archive catalog with synthetic rows, for bench/catalog.sh: WAL files of cluster
`main` on timeline 1 (named after the real segments already there) and done backups with a few
files each. With STORAGE (the server's local storage root), every row gets an object there: an
empty file, so that start-up finds the archive whole and lists what a real one would list
(nothing reads an object's content at start-up).

    python3 bench/catalog_fill.py CATALOG WAL_ROWS BACKUPS [STORAGE]

The server must be stopped. Rows are inserted in large transactions, through the triggers that
keep the per-cluster aggregates, as the server would write them one by one.
"""
import os
import sqlite3
import sys
import datetime

catalog, wal_rows, backups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
storage = sys.argv[4] if len(sys.argv) > 4 else None


def touch(key):
    """An empty object at `key` under STORAGE, if given."""
    if storage is None:
        return
    path = os.path.join(storage, key)
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)

db = sqlite3.connect(catalog, isolation_level=None)
db.execute("pragma journal_mode = wal")
db.execute("pragma synchronous = normal")
(segment_size,) = db.execute("select segment_size from clusters where name = 'main'").fetchone()
per_log = (1 << 32) // segment_size
start = 0x100000  # far beyond the real segments
t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def name(segno):
    return "%08X%08X%08X" % (1, segno // per_log, segno % per_log)


def when(i, per_second):
    t = t0 + datetime.timedelta(seconds=i // per_second)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


batch = 100_000
for first in range(0, wal_rows, batch):
    db.execute("begin")
    db.executemany(
        "insert into wal_files (cluster, name, kind, timeline, size, sha256, stored_size, "
        "object_key, archived_at, state, xxh3) values ('main', ?, 'segment', 1, ?, ?, ?, ?, ?, "
        "'ok', ?)",
        (
            (
                name(start + i),
                segment_size,
                "%064x" % (start + i),
                segment_size // 8,
                "wal/main/%s/%s.zst" % (name(start + i)[:16], name(start + i)),
                when(i, 4),
                "%032x" % (start + i),
            )
            for i in range(first, min(first + batch, wal_rows))
        ),
    )
    db.execute("commit")
    for i in range(first, min(first + batch, wal_rows)):
        touch("wal/main/%s/%s.zst" % (name(start + i)[:16], name(start + i)))

db.execute("begin")
for b in range(backups):
    t = t0 + datetime.timedelta(hours=8 * b)
    bid = t.strftime("%Y%m%dT%H%M%S")
    segno = start + b * (wal_rows // max(backups, 1))
    db.execute(
        "insert into backups (cluster, id, status, system_identifier, timeline, begin_lsn, end_lsn, "
        "begin_wal, end_wal, begin_time, end_time, pg_version, size_bytes, stored_bytes, "
        "file_count) values ('main', ?, 'done', (select system_identifier from clusters where "
        "name = 'main'), 1, '0/0', '0/0', ?, ?, ?, ?, '15', 1000, 100, 10)",
        (bid, name(segno), name(segno), t.strftime("%Y-%m-%dT%H:%M:%SZ"),
         t.strftime("%Y-%m-%dT%H:%M:%SZ")),
    )
    for f in range(10):
        sha = "%064x" % (b * 16 + f)
        db.execute(
            "insert or ignore into backup_blobs (cluster, sha256, size, stored_size, object_key, "
            "created_at) values ('main', ?, 100, 10, ?, ?)",
            (sha, "backups/main/data/%s/%s.zst" % (sha[:2], sha), t.strftime("%Y-%m-%dT%H:%M:%SZ")),
        )
        touch("backups/main/data/%s/%s.zst" % (sha[:2], sha))
        db.execute(
            "insert into backup_files (cluster, backup_id, tablespace_oid, path, kind, size, sha256, "
            "mode, mtime, link_target) values ('main', ?, null, ?, 'file', 100, ?, 384, 0, null)",
            (bid, "base/1/%d" % f, sha),
        )
db.execute("commit")
db.execute("pragma wal_checkpoint(truncate)")
print(db.execute("select count(*) from wal_files").fetchone()[0], "WAL rows,",
      db.execute("select count(*) from backups").fetchone()[0], "backups")
