#!/usr/bin/env bash
# Archive throughput: how fast PostgreSQL's archiver drains a backlog of WAL segments through
# `wal-archive push`, against `cp` into a local directory, on the same generated WAL in one run.
#
#   bash bench/archive.sh            # ROUNDS=3 SCALE=20 by default
#
# A template cluster is built once: archive_mode = on with an empty archive_command, so a
# pgbench workload (plus a poorly compressible table) leaves its segments `.ready`. Each round
# copies the template, sets archive_command for one contender, reloads, and times until
# pg_stat_archiver's last_archived_wal is the template's last segment. Prints segments/s per
# contender (median of the rounds), the ratio to cp, and the archive's compression ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-40}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-55432}
SRV_PORT=${SRV_PORT:-18499}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

echo "bench: building release binaries" >&2
cargo build --release --bins --quiet

WORK=$(mktemp -d /tmp/wal-archive-bench.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
cleanup() {
  for d in "$WORK"/pg-*; do
    [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  done
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/bin" "$WORK/sock" "$WORK/logs"
cp target/release/wal-archive target/release/wal-archive-server "$WORK/bin/"
chmod 755 "$WORK/bin"/*
if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/sock" "$WORK/logs"; fi

# --- the template: a backlog of .ready segments --------------------------------------------
T="$WORK/template"
mkdir -p "$T"; if [ "$(id -u)" -eq 0 ]; then chown postgres "$T"; fi
as_pg "$PGBIN/initdb" -D "$T" -A trust -N >/dev/null
cat >> "$T/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
archive_mode = on
archive_command = ''
max_wal_size = 8GB
checkpoint_timeout = 1h
wal_level = replica
CONF
psql_t() { as_pg psql -X -qAt -h "$WORK/sock" -p "$PORT" -d postgres -c "$1"; }
as_pg "$PGBIN/pg_ctl" -D "$T" -w -l "$WORK/logs/template.log" start >/dev/null
echo "bench: generating WAL (pgbench scale $SCALE and random bytes)" >&2
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -t 2000 -c 2 postgres >/dev/null 2>&1
psql_t "create table noise as select decode(md5(random()::text) || md5(random()::text), 'hex') as b from generate_series(1, 1500000)" >/dev/null
psql_t "select pg_switch_wal()" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$T" -m fast -w stop >/dev/null
# A clean shutdown may complete one more segment: the last one to archive is the newest .ready.
LAST=$(ls "$T/pg_wal/archive_status" | grep '\.ready$' | sort | tail -1)
LAST=${LAST%.ready}
NSEG=$(ls "$T/pg_wal/archive_status" | grep -c '\.ready$' || true)
WALBYTES=$(du -sb "$T/pg_wal" | cut -f1)
echo "bench: template has $NSEG segments .ready (last $LAST), pg_wal $((WALBYTES >> 20)) MiB" >&2

# --- the server -----------------------------------------------------------------------------
"$WORK/bin/wal-archive-server" --data-dir "$WORK/server" --listen "127.0.0.1:$SRV_PORT" \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$SRV_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$SRV_PORT/healthz" >/dev/null || { cat "$WORK/server.log"; exit 1; }

# --- one round: copy the template, point archive_command at a contender, time the drain -----
round() { # name command
  local name=$1 cmd=$2 d="$WORK/pg-$1"
  rm -rf "$d"; cp -a "$T" "$d"
  sed -i "s|^archive_command = ''|archive_command = '$cmd'|" "$d/postgresql.conf"
  local t0 t1
  t0=$(date +%s.%N)
  as_pg "$PGBIN/pg_ctl" -D "$d" -w -l "$WORK/logs/$name.log" start >/dev/null
  local deadline=$(( $(date +%s) + 900 ))
  until [ "$(psql_t "select coalesce(last_archived_wal, '') from pg_stat_archiver")" = "$LAST" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "bench: $name did not drain in time" >&2; tail "$WORK/logs/$name.log" >&2; exit 1; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
  rm -rf "$d"
  echo "$t0 $t1" | awk '{printf "%.3f\n", $2 - $1}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A TIMES
for r in $(seq 1 "$ROUNDS"); do
  mkdir -p "$WORK/cp-dest"; if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/cp-dest"; fi
  rm -f "$WORK/cp-dest"/*
  TIMES[cp]+="$(round cp "cp %p $WORK/cp-dest/%f") "
  # Each round archives into a new cluster name, so every segment is really stored.
  TIMES[wal-archive]+="$(round wal-archive "$WORK/bin/wal-archive --url http://127.0.0.1:$SRV_PORT push --cluster bench$r %p") "
  echo "bench: round $r done" >&2
done

printf '\n%-14s %10s %12s %12s\n' contender "median s" "segments/s" "vs cp (time)"
CP=$(echo "${TIMES[cp]}" | tr ' ' '\n' | grep . | median)
for c in cp wal-archive; do
  m=$(echo "${TIMES[$c]}" | tr ' ' '\n' | grep . | median)
  awk -v c="$c" -v m="$m" -v n="$NSEG" -v cp="$CP" \
    'BEGIN {printf "%-14s %10.2f %12.1f %11.2fx\n", c, m, n / m, m / cp}'
done
echo "rounds: $ROUNDS; per-round times: cp [${TIMES[cp]}] wal-archive [${TIMES[wal-archive]}]"

curl -fs "http://127.0.0.1:$SRV_PORT/v1/clusters/bench1/wal" | python3 -c '
import json, sys
l = json.load(sys.stdin)
size = sum(f["size"] for f in l["files"]); stored = sum(f["stored_size"] for f in l["files"])
n = len(l["files"])
print(f"archive: {n} files, {size/2**20:.0f} MiB of WAL stored as {stored/2**20:.0f} MiB: compression ratio {size/stored:.2f}")
'
