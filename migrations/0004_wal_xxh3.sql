-- XXH3-128 of each WAL file's uncompressed bytes, recorded at ingest: sent to the helper with
-- the file so it can check the bytes it received cheaply. NULL for files archived before.
ALTER TABLE wal_files ADD COLUMN xxh3 TEXT;
