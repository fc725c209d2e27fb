#!/bin/sh
# The README's quickstart, exactly: on one machine, from nothing to a primary archiving into
# wal-archive-server, a base backup, a recovery drill, and a standby brought back from the
# archive after an outage. Run it as an ordinary user (not root: PostgreSQL refuses root),
# with wal-archive, wal-archive-server and PostgreSQL 15's binaries on PATH.
#
# Everything lives in $WORK (default: a new temporary directory) and listens on loopback or
# in $WORK only. Ports: ARCHIVE_PORT (8420), PRIMARY_PORT (5440), STANDBY_PORT (5441).
# Whatever it started is stopped when it ends, also on failure.
set -eu

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
WORK=${WORK:-$(mktemp -d)}
ARCHIVE_PORT=${ARCHIVE_PORT:-8420}
PRIMARY_PORT=${PRIMARY_PORT:-5440}
STANDBY_PORT=${STANDBY_PORT:-5441}
export PATH="$PG_BIN:$PATH"
export WAL_ARCHIVE_URL="http://127.0.0.1:$ARCHIVE_PORT"
cd "$WORK"

cleanup() {
    pg_ctl -D "$WORK/standby" -m immediate stop >/dev/null 2>&1 || true
    pg_ctl -D "$WORK/primary" -m immediate stop >/dev/null 2>&1 || true
    if [ -f "$WORK/server.pid" ]; then kill "$(cat "$WORK/server.pid")" 2>/dev/null || true; fi
}
trap cleanup EXIT

# Waits up to 60 s for a command to succeed.
wait_for() {
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -ge 300 ]; then echo "quickstart: timed out waiting for: $*" >&2; exit 1; fi
        sleep 0.2
    done
}

# --- quickstart ---
# 1. The archive server, with the primary as cluster "main".
cat > server.toml <<TOML
listen = "127.0.0.1:$ARCHIVE_PORT"
data_dir = "$WORK/archive"

[clusters.main]
conninfo = "host=$WORK port=$PRIMARY_PORT user=$(id -un) dbname=postgres"
pg_bin_dir = "$PG_BIN"
TOML
wal-archive-server --config server.toml > server.log 2>&1 &
echo $! > server.pid
wait_for curl -fsS "$WAL_ARCHIVE_URL/healthz"

# 2. A primary that archives every WAL segment into it.
initdb -D primary --auth=trust > initdb.log
cat >> primary/postgresql.conf <<CONF
port = $PRIMARY_PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
archive_mode = on
archive_command = 'wal-archive push --cluster main %p'
CONF
pg_ctl -D primary -l primary.log -w start
psql -h "$WORK" -p "$PRIMARY_PORT" -d postgres -qc \
    "create table t as select g as id, md5(g::text) as payload from generate_series(1, 100000) g"

# 3. A base backup, taken by the server.
wal-archive backup --cluster main --wait
wal-archive list --cluster main

# 4. A recovery drill: the server restores the backup and replays the archive in a throwaway
#    PostgreSQL, then says how long recovery took.
wal-archive switch-wal --cluster main --archive
wal-archive drill --cluster main

# 5. A standby restored from the archive, streaming from the primary.
wal-archive restore --cluster main latest --target-dir standby --standby \
    --primary-conninfo "host=$WORK port=$PRIMARY_PORT"
echo "port = $STANDBY_PORT" >> standby/postgresql.auto.conf
pg_ctl -D standby -l standby.log -w start

# 6. An outage: the standby stops while the primary writes and recycles its WAL...
pg_ctl -D standby -w stop
for i in 1 2 3 4 5; do
    psql -h "$WORK" -p "$PRIMARY_PORT" -d postgres -qc \
        "insert into t select g, md5(g::text) from generate_series(1, 20000) g"
done
wal-archive switch-wal --cluster main --archive
psql -h "$WORK" -p "$PRIMARY_PORT" -d postgres -qc checkpoint

# 7. ...and catches up from the archive when it comes back.
pg_ctl -D standby -l standby.log -w start
primary_rows=$(psql -h "$WORK" -p "$PRIMARY_PORT" -d postgres -Atc "select count(*) from t")
wait_for sh -c "test \"\$(psql -h '$WORK' -p $STANDBY_PORT -d postgres -Atc 'select count(*) from t')\" = $primary_rows"
echo "the standby has all $primary_rows rows"
wal-archive check --cluster main
# --- end of quickstart ---
