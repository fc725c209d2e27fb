#!/usr/bin/env bash
# Streaming: wal-archive-server's receiver (a replication slot, `streaming = true`) against
# pg_receivewal on its own slot, both attached to the same PostgreSQL primary in one run.
#
#   bash bench/streaming.sh          # SCALE=10 DURATION=30 SYNC_DURATION=20 ROUNDS=1
#
# 1. Asynchronous: while `pgbench -T DURATION -c 4 -j 2` writes, pg_stat_replication is sampled
#    every 0.2 s for each receiver's lag (pg_current_wal_lsn() - flush_lsn). After pgbench, a
#    pg_switch_wal() fixes the final LSN and the time each receiver's flush_lsn reaches it is
#    taken. Prints MB/s (10^6 bytes of WAL from the load's start LSN to the final LSN, over the
#    time from the load's start until that receiver's flush reached it), lag p50/p99/max, and the
#    throughput ratio wal-archive / pg_receivewal.
#    Both receivers are measured by what they report: pg_receivewal (without --synchronous)
#    fsyncs only when a segment is complete and reports every --status-interval (10 s by
#    default; PG_RECEIVEWAL_OPTS="-s 1" to change it), wal-archive fsyncs and reports every 0.5 s.
# 2. Synchronous: the server restarted with `synchronous = true`, pg_receivewal restarted with
#    --synchronous (both from the start of this phase, so the three runs see the same receivers),
#    then pgbench -T SYNC_DURATION TPS with synchronous_standby_names = 'wal_archive', then
#    'pg_receivewal', then '' (the baseline); synchronous_commit = on.
# With ROUNDS > 1 both phases repeat, and throughput and TPS are medians of the rounds (the lag
# percentiles are over the samples of all rounds).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-1}
SCALE=${SCALE:-10}
DURATION=${DURATION:-30}
SYNC_DURATION=${SYNC_DURATION:-20}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-55433}
SRV_PORT=${SRV_PORT:-18498}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-300}   # seconds a receiver may take to reach the final LSN
PG_RECEIVEWAL_OPTS=${PG_RECEIVEWAL_OPTS:-}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
now() { date +%s.%N; }

echo "bench: building release binaries" >&2
cargo build --release --bins --quiet

WORK=$(mktemp -d /tmp/wal-archive-bench.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""      # wal-archive-server (our child)
RECV_PID=""        # pg_receivewal itself (not runuser), from its pid file
PGBENCH_PID=""     # the pgbench running in the background, itself
cleanup() {
  local p
  for p in "$PGBENCH_PID" "$RECV_PID" "$SERVER_PID"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  [ -f "$WORK/pg/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/bin" "$WORK/sock" "$WORK/logs" "$WORK/run" "$WORK/pg" "$WORK/receivewal"
cp target/release/wal-archive target/release/wal-archive-server "$WORK/bin/"
chmod 755 "$WORK/bin"/*
if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/sock" "$WORK/logs" "$WORK/run" "$WORK/pg" "$WORK/receivewal"; fi

die() { # message: print it with the logs' last lines, and exit
  echo "bench: $1" >&2
  for f in "$WORK/logs/pg.log" "$WORK/server.log" "$WORK/logs/receivewal.log"; do
    [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}

# --- the primary ----------------------------------------------------------------------------
as_pg "$PGBIN/initdb" -D "$WORK/pg" -A trust -N >/dev/null
cat >> "$WORK/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
archive_mode = off
max_wal_size = 4GB
checkpoint_timeout = 1h
CONF
psql_t() { as_pg "$PGBIN/psql" -X -qAt -h "$WORK/sock" -p "$PORT" -d postgres -c "$1"; }
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -w -l "$WORK/logs/pg.log" start >/dev/null
echo "bench: pgbench -i -s $SCALE" >&2
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1

# spawn_pg VAR NAME CMD...: runs CMD as postgres in the background, output in logs/NAME.log;
# sets VAR to CMD's own PID (read from a pid file the shell writes just before exec).
spawn_pg() {
  local var=$1 name=$2; shift 2
  local pidfile="$WORK/run/$name.pid"
  rm -f "$pidfile"
  as_pg sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >"$WORK/logs/$name.log" 2>&1 &
  local deadline=$(( $(date +%s) + 10 ))
  until [ -s "$pidfile" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "no pid file from $name after 10 s"
    sleep 0.02
  done
  printf -v "$var" '%s' "$(cat "$pidfile")"
}

stop_pid() { # pid what: SIGTERM, wait up to 30 s for it to go, then SIGKILL
  local pid=$1 what=$2 deadline=$(( $(date +%s) + 30 ))
  kill "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "bench: $what (pid $pid) still running 30 s after SIGTERM; SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
}

# --- the receivers --------------------------------------------------------------------------
start_server() { # synchronous: true|false
  cat > "$WORK/server.toml" <<TOML
[clusters.bench]
conninfo = "host=$WORK/sock port=$PORT user=postgres"
streaming = true
synchronous = $1
TOML
  "$WORK/bin/wal-archive-server" --config "$WORK/server.toml" --data-dir "$WORK/server" \
    --listen "127.0.0.1:$SRV_PORT" >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  local deadline=$(( $(date +%s) + 20 ))
  until curl -fs "http://127.0.0.1:$SRV_PORT/healthz" >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "wal-archive-server exited at start"
    [ "$(date +%s)" -lt "$deadline" ] || die "wal-archive-server not answering /healthz after 20 s"
    sleep 0.1
  done
}

start_receivewal() { # extra options
  # shellcheck disable=SC2086
  spawn_pg RECV_PID receivewal "$PGBIN/pg_receivewal" -D "$WORK/receivewal" -S oracle -n \
    -d "host=$WORK/sock port=$PORT user=postgres application_name=pg_receivewal" \
    $PG_RECEIVEWAL_OPTS "$@"
}

wait_streaming() { # wait until both receivers are streaming
  local deadline=$(( $(date +%s) + 60 )) got
  while :; do
    got=$(psql_t "select string_agg(application_name, ',' order by application_name) from pg_stat_replication where state = 'streaming'")
    [ "$got" = "pg_receivewal,wal_archive" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] ||
      die "waited 60 s for wal_archive and pg_receivewal to stream in pg_stat_replication; streaming: [$got]"
    sleep 0.1
  done
}

# wait_flushed LSN TIMEOUT: until both receivers' flush_lsn >= LSN. Sets REACHED[name] to the
# time (epoch seconds) each one was first seen there.
declare -A REACHED
wait_flushed() {
  local lsn=$1 timeout=$2 deadline=$(( $(date +%s) + $2 )) name ok t
  REACHED=()
  while :; do
    t=$(now)
    while IFS='|' read -r name ok; do
      [ "$ok" = t ] && [ -z "${REACHED[$name]:-}" ] && REACHED[$name]=$t
    done < <(psql_t "select application_name, coalesce(flush_lsn >= '$lsn'::pg_lsn, false) from pg_stat_replication where application_name in ('wal_archive', 'pg_receivewal')")
    [ -n "${REACHED[wal_archive]:-}" ] && [ -n "${REACHED[pg_receivewal]:-}" ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "bench: waited ${timeout} s for both receivers' flush_lsn to reach $lsn; pg_stat_replication:" >&2
      psql_t "select application_name, state, sent_lsn, write_lsn, flush_lsn, sync_state from pg_stat_replication" >&2 || true
      die "receivers did not catch up"
    fi
    sleep 0.05
  done
}

as_pg "$PGBIN/pg_receivewal" -S oracle --create-slot \
  -d "host=$WORK/sock port=$PORT user=postgres" >/dev/null
start_server false
start_receivewal
wait_streaming
echo "bench: both receivers streaming" >&2

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# percentile Q: nearest rank over the numbers on stdin (one a line)
percentile() { sort -n | awk -v q="$1" '{a[NR]=$1} END {if (NR == 0) {print "n/a"; exit} i = int(q * NR + 0.999999); if (i < 1) i = 1; print a[i]}'; }
words() { tr ' ' '\n' | grep .; }

# run_pgbench SECONDS: pgbench in the background as postgres; the caller waits with wait_pgbench.
run_pgbench() {
  spawn_pg PGBENCH_PID pgbench "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -T "$1" -c 4 -j 2 postgres
  PGBENCH_DEADLINE=$(( $(date +%s) + $1 + 120 ))
}
pgbench_running() {
  kill -0 "$PGBENCH_PID" 2>/dev/null || return 1
  [ "$(date +%s)" -lt "$PGBENCH_DEADLINE" ] || die "pgbench (pid $PGBENCH_PID) still running 120 s after its -T"
}
wait_pgbench() { # sets LAST_TPS to pgbench's TPS (without initial connection time)
  while pgbench_running; do sleep 0.1; done
  PGBENCH_PID=""
  LAST_TPS=$(awk '/^tps = / && /without initial connection time|excluding connections/ {print $3}' "$WORK/logs/pgbench.log")
  [ -n "$LAST_TPS" ] || { cat "$WORK/logs/pgbench.log" >&2; die "no tps line in pgbench's output"; }
}

# --- 1. asynchronous streaming --------------------------------------------------------------
declare -A MBS CATCHUP
: > "$WORK/lag.txt"   # t|application_name|lag bytes, during the load
WALBYTES=""
for r in $(seq 1 "$ROUNDS"); do
  # Start from both receivers caught up.
  psql_t "select pg_switch_wal()" >/dev/null
  wait_flushed "$(psql_t "select pg_current_wal_lsn()")" 120
  LSN0=$(psql_t "select pg_current_wal_lsn()")
  T0=$(now)
  run_pgbench "$DURATION"
  next=$T0
  while pgbench_running; do
    psql_t "select application_name, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint::text, 'null') from pg_stat_replication" |
      sed "s/^/$(now)|/" >> "$WORK/lag.txt"
    next=$(awk -v n="$next" 'BEGIN {printf "%.6f", n + 0.2}')
    pause=$(awk -v n="$next" -v t="$(now)" 'BEGIN {d = n - t; printf "%.3f", (d > 0 ? d : 0)}')
    sleep "$pause"
  done
  T_END=$(now)
  wait_pgbench
  psql_t "select pg_switch_wal()" >/dev/null
  FINAL=$(psql_t "select pg_current_wal_lsn()")
  wait_flushed "$FINAL" "$CATCHUP_TIMEOUT"
  BYTES=$(psql_t "select pg_wal_lsn_diff('$FINAL', '$LSN0')::bigint")
  WALBYTES+="$BYTES "
  for n in wal_archive pg_receivewal; do
    MBS[$n]+="$(awk -v b="$BYTES" -v t0="$T0" -v t1="${REACHED[$n]}" 'BEGIN {printf "%.2f", b / (t1 - t0) / 1e6}') "
    CATCHUP[$n]+="$(awk -v e="$T_END" -v t1="${REACHED[$n]}" 'BEGIN {printf "%.2f", t1 - e}') "
  done
  echo "bench: async round $r: $((BYTES >> 20)) MiB of WAL ($LSN0 .. $FINAL); MB/s wal-archive $(echo "${MBS[wal_archive]}" | awk '{print $NF}'), pg_receivewal $(echo "${MBS[pg_receivewal]}" | awk '{print $NF}')" >&2
done

# --- 2. synchronous standby -----------------------------------------------------------------
echo "bench: restarting wal-archive-server with synchronous = true, pg_receivewal with --synchronous" >&2
stop_pid "$SERVER_PID" wal-archive-server; SERVER_PID=""
start_server true
stop_pid "$RECV_PID" pg_receivewal; RECV_PID=""
start_receivewal --synchronous
wait_streaming
psql_t "alter system set synchronous_commit = on" >/dev/null

set_sync() { # application name, or '' for none; waits until pg_stat_replication agrees
  local name=$1 got deadline=$(( $(date +%s) + 30 ))
  psql_t "alter system set synchronous_standby_names = '$name'" >/dev/null
  psql_t "select pg_reload_conf()" >/dev/null
  while :; do
    got=$(psql_t "select coalesce(string_agg(application_name, ','), '') from pg_stat_replication where sync_state = 'sync'")
    [ "$got" = "$name" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] ||
      die "waited 30 s for pg_stat_replication to show [$name] as the synchronous standby; sync: [$got]"
    sleep 0.1
  done
}

declare -A TPS
for r in $(seq 1 "$ROUNDS"); do
  for s in wal_archive pg_receivewal none; do
    set_sync "$([ "$s" = none ] || echo "$s")"
    run_pgbench "$SYNC_DURATION"
    wait_pgbench
    TPS[$s]+="$LAST_TPS "
    echo "bench: sync round $r, standby $s: $(echo "${TPS[$s]}" | awk '{print $NF}') tps" >&2
  done
done
set_sync ""

# --- report ---------------------------------------------------------------------------------
med() { echo "$1" | words | median; }
lag_of() { awk -F'|' -v n="$1" '$2 == n && $3 != "null" {print $3}' "$WORK/lag.txt"; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

echo
echo "== asynchronous streaming: pgbench -T $DURATION -c 4 -j 2, scale $SCALE, rounds $ROUNDS"
echo "   WAL per round: $(for b in $WALBYTES; do printf '%s MiB ' "$(mib "$b")"; done)"
echo "   pg_receivewal options: -S oracle ${PG_RECEIVEWAL_OPTS:-(default status interval 10 s)}"
printf '%-14s %8s %11s %14s %14s %14s %8s\n' receiver "MB/s" "catch-up s" "lag p50 B" "lag p99 B" "lag max B" samples
for n in wal_archive pg_receivewal; do
  lag_of "$n" > "$WORK/lag-$n.txt"
  printf '%-14s %8s %11s %14s %14s %14s %8s\n' "$n" "$(med "${MBS[$n]}")" "$(med "${CATCHUP[$n]}")" \
    "$(percentile 0.50 < "$WORK/lag-$n.txt")" "$(percentile 0.99 < "$WORK/lag-$n.txt")" \
    "$(percentile 1 < "$WORK/lag-$n.txt")" "$(wc -l < "$WORK/lag-$n.txt")"
done
for n in wal_archive pg_receivewal; do
  echo "   $n lag MiB: p50 $(mib "$(percentile 0.50 < "$WORK/lag-$n.txt")"), p99 $(mib "$(percentile 0.99 < "$WORK/lag-$n.txt")"), max $(mib "$(percentile 1 < "$WORK/lag-$n.txt")")"
done
awk -v a="$(med "${MBS[wal_archive]}")" -v p="$(med "${MBS[pg_receivewal]}")" \
  'BEGIN {printf "throughput wal-archive / pg_receivewal: %.2fx\n", a / p}'
echo "per-round MB/s: wal_archive [${MBS[wal_archive]% }] pg_receivewal [${MBS[pg_receivewal]% }]; catch-up s (pgbench end to final LSN flushed): wal_archive [${CATCHUP[wal_archive]% }] pg_receivewal [${CATCHUP[pg_receivewal]% }]"

echo
echo "== synchronous commit: pgbench -T $SYNC_DURATION -c 4 -j 2, synchronous_commit = on, rounds $ROUNDS"
BASE=$(med "${TPS[none]}")
printf '%-22s %10s %12s\n' synchronous_standby "TPS" "vs baseline"
for s in wal_archive pg_receivewal none; do
  label=$s; [ "$s" = none ] && label="none (baseline)"
  awk -v l="$label" -v t="$(med "${TPS[$s]}")" -v b="$BASE" 'BEGIN {printf "%-22s %10.1f %11.2fx\n", l, t, t / b}'
done
awk -v a="$(med "${TPS[wal_archive]}")" -v p="$(med "${TPS[pg_receivewal]}")" \
  'BEGIN {printf "TPS wal-archive / pg_receivewal: %.2fx\n", a / p}'
echo "per-round TPS: wal_archive [${TPS[wal_archive]% }] pg_receivewal [${TPS[pg_receivewal]% }] none [${TPS[none]% }]"

echo
curl -fs "http://127.0.0.1:$SRV_PORT/v1/clusters/bench/wal" | python3 -c '
import json, sys
l = json.load(sys.stdin)
size = sum(f["size"] for f in l["files"]); stored = sum(f["stored_size"] for f in l["files"])
n = len(l["files"])
print(f"wal-archive stored {n} files, {size/2**20:.0f} MiB of WAL as {stored/2**20:.0f} MiB", end="")
' || echo -n "wal-archive: could not list the archive"
echo "; pg_receivewal has $(find "$WORK/receivewal" -maxdepth 1 -type f ! -name '*.partial' | wc -l) complete segments"
