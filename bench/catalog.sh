#!/usr/bin/env bash
# The catalog at the size of a year of WAL, against an empty one, in the same run:
#
#   bash bench/catalog.sh        # WAL_ROWS=1000000 BACKUPS=1000 PUSHES=21 CONCURRENT=64
#
# A PostgreSQL 15 cluster (16 MiB segments) writes real segments, copied aside by its
# archive_command. Two servers take them: EMPTY, with nothing else in its catalog, and FULL, whose
# catalog gets WAL_ROWS synthetic WAL rows and BACKUPS synthetic done backups (10 files each)
# from bench/catalog_fill.py, each with an object in FULL's storage (an empty file: start-up
# lists every object, as it would in a real archive of that size, and reads none).
#
# Printed, medians of several calls each:
#   - FULL's start-up (until /healthz answers), with reconciliation of those rows;
#   - /metrics scrape, `wal --json`, `list --json`, `check --json`, `show latest` on FULL;
#   - `wal-archive push` of a real segment (p50 of PUSHES-1, look-ahead off) on EMPTY and on
#     FULL, and their ratio;
#   - FULL's peak memory (VmHWM) after all that;
#   - EMPTY's peak memory with CONCURRENT pushes of distinct real segments at once.
set -euo pipefail
cd "$(dirname "$0")/.."

WAL_ROWS=${WAL_ROWS:-1000000}
BACKUPS=${BACKUPS:-1000}
PUSHES=${PUSHES:-21}
CONCURRENT=${CONCURRENT:-64}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-55442}
EMPTY_PORT=${EMPTY_PORT:-18511}
FULL_PORT=${FULL_PORT:-18512}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
die() { echo "bench: $1" >&2; [ -n "${2:-}" ] && tail -20 "$2" >&2; exit 1; }

echo "bench: building release binaries" >&2
cargo build --release --bins --quiet

WORK=$(mktemp -d /tmp/wal-archive-catalog.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  [ -f "$WORK/pg/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/bin" "$WORK/sock" "$WORK/logs" "$WORK/wal" "$WORK/pg"
cp target/release/wal-archive target/release/wal-archive-server "$WORK/bin/"
if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/sock" "$WORK/logs" "$WORK/wal" "$WORK/pg"; fi
CLI="$WORK/bin/wal-archive"

# --- real segments --------------------------------------------------------------------------
NSEG=$((PUSHES + CONCURRENT))
echo "bench: writing $NSEG real 16 MiB segments" >&2
as_pg "$PGBIN/initdb" -D "$WORK/pg" -A trust -N >/dev/null
cat >> "$WORK/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
archive_mode = on
archive_command = 'cp %p $WORK/wal/%f.tmp && mv $WORK/wal/%f.tmp $WORK/wal/%f'
max_wal_size = 4GB
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -w -l "$WORK/logs/pg.log" start >/dev/null
psql_t() { as_pg psql -X -qAt -h "$WORK/sock" -p "$PORT" -d postgres -c "$1"; }
psql_t "create table r (id bigint, payload text)"
for _ in $(seq "$NSEG"); do
  # About a segment of poorly compressible rows, then the switch.
  psql_t "insert into r select g, md5(random()::text) || md5(random()::text) from generate_series(1, 120000) g" >/dev/null
  psql_t "select pg_switch_wal()" >/dev/null
done
deadline=$(( $(date +%s) + 300 ))
while [ "$(find "$WORK/wal" -name '????????????????????????' | wc -l)" -lt "$NSEG" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "the segments were not all archived" "$WORK/logs/pg.log"
  sleep 0.2
done
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null
mapfile -t SEGS < <(find "$WORK/wal" -name '????????????????????????' -printf '%f\n' | sort | head -n "$NSEG")

# --- servers ---------------------------------------------------------------------------------
start_server() { # name port; sets NAME_PID and STARTED (seconds until /healthz answered)
  local t0; t0=$(date +%s.%N)
  "$WORK/bin/wal-archive-server" --data-dir "$WORK/$1" --listen "127.0.0.1:$2" >>"$WORK/logs/$1.log" 2>&1 &
  PIDS+=($!)
  eval "${1}_PID=$!"
  local deadline=$(( $(date +%s) + 600 ))
  until curl -sf "http://127.0.0.1:$2/healthz" >/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$1 did not start" "$WORK/logs/$1.log"
    sleep 0.05
  done
  STARTED=$(echo "$(date +%s.%N) - $t0" | bc)
}
stop_server() { # pid
  kill "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}
push_timed() { # port segment -> seconds
  local t0; t0=$(date +%s.%N)
  "$CLI" --url "http://127.0.0.1:$1" --look-ahead 0 push --cluster main "$WORK/wal/$2" >/dev/null 2>&1 \
    || die "push of $2 to port $1 failed"
  echo "$(date +%s.%N) - $t0" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }
timed() { # command... -> seconds
  local t0; t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || die "failed: $*"
  echo "$(date +%s.%N) - $t0" | bc
}
ms() { awk '{printf "%.0f ms", $1 * 1000}'; }

start_server empty "$EMPTY_PORT"
start_server full "$FULL_PORT"
# The first segment binds the cluster on both.
push_timed "$EMPTY_PORT" "${SEGS[0]}" >/dev/null
push_timed "$FULL_PORT" "${SEGS[0]}" >/dev/null
stop_server "$full_PID"
echo "bench: filling FULL's catalog: $WAL_ROWS WAL rows, $BACKUPS backups" >&2
python3 bench/catalog_fill.py "$WORK/full/catalog.sqlite3" "$WAL_ROWS" "$BACKUPS" "$WORK/full/storage" >&2
start_server full "$FULL_PORT"
STARTUP=$STARTED

URL="http://127.0.0.1:$FULL_PORT"
series() { # n command... -> median seconds
  local n=$1; shift
  for _ in $(seq "$n"); do timed "$@"; done | median
}
METRICS=$(series 10 curl -sf "$URL/metrics")
WAL=$(series 3 "$CLI" --url "$URL" --json wal --cluster main)
LIST=$(series 5 "$CLI" --url "$URL" --json list --cluster main)
CHECK=$(series 5 curl -sf "$URL/v1/clusters/main/check")
SHOW=$(series 5 "$CLI" --url "$URL" --json show --cluster main latest)

P_EMPTY=$(for s in "${SEGS[@]:1:$((PUSHES - 1))}"; do push_timed "$EMPTY_PORT" "$s"; done | median)
P_FULL=$(for s in "${SEGS[@]:1:$((PUSHES - 1))}"; do push_timed "$FULL_PORT" "$s"; done | median)
HWM_FULL=$(awk '/^VmHWM/ {print $2}' "/proc/$full_PID/status")

echo "bench: $CONCURRENT concurrent pushes of distinct segments to EMPTY" >&2
stop_server "$empty_PID"
start_server empty "$EMPTY_PORT"
HWM0=$(awk '/^VmHWM/ {print $2}' "/proc/$empty_PID/status")
CPIDS=()
for s in "${SEGS[@]:$PUSHES:$CONCURRENT}"; do
  "$CLI" --url "http://127.0.0.1:$EMPTY_PORT" --look-ahead 0 --retry-for 300 push --cluster main "$WORK/wal/$s" \
    >>"$WORK/logs/concurrent.log" 2>&1 &
  CPIDS+=($!)
done
FAILED=0
for p in "${CPIDS[@]}"; do wait "$p" || FAILED=$((FAILED + 1)); done
HWM1=$(awk '/^VmHWM/ {print $2}' "/proc/$empty_PID/status")
BUSY=$(grep -c "busy" "$WORK/logs/concurrent.log" || true)

echo
echo "catalog of $WAL_ROWS WAL rows and $BACKUPS backups (CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), sha_ni flags: $(grep -c sha_ni /proc/cpuinfo))"
printf '  start-up (reconciliation)  %s\n' "$(echo "$STARTUP" | ms)"
printf '  /metrics scrape            %s\n' "$(echo "$METRICS" | ms)"
printf '  wal --json                 %s\n' "$(echo "$WAL" | ms)"
printf '  list --json                %s\n' "$(echo "$LIST" | ms)"
printf '  check                      %s\n' "$(echo "$CHECK" | ms)"
printf '  show latest                %s\n' "$(echo "$SHOW" | ms)"
printf '  push p50: empty %s, full %s, ratio %.2f\n' "$(echo "$P_EMPTY" | ms)" "$(echo "$P_FULL" | ms)" \
  "$(echo "$P_FULL / $P_EMPTY" | bc -l)"
printf '  server VmHWM after all of it: %d MiB\n' "$((HWM_FULL / 1024))"
printf '%d concurrent pushes of distinct 16 MiB segments: VmHWM %d MiB (%d MiB after start), %d failed, %d retries after 503\n' \
  "$CONCURRENT" "$((HWM1 / 1024))" "$((HWM0 / 1024))" "$FAILED" "$BUSY"
