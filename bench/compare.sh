#!/usr/bin/env bash
# Peer comparison: wal-archive against cp and pgBackRest, on the same generated WAL, on real
# PostgreSQL 15, in one run.
#
#   bash bench/compare.sh        # ROUNDS=3 TARGET_SEGMENTS=100 by default
#
# A template cluster is built once: initdb, start (archive_mode = on, archive_command = ''), a
# pg_basebackup of it (the standbys' base: -X fetch with its pg_wal emptied, i.e. -X none without
# waiting for archiving), then pgbench and a poorly compressible table of random bytes until about
# TARGET_SEGMENTS segments are complete and `.ready`; pg_switch_wal(), clean stop. Then, each round:
#
# 1. Archive drain. For each contender: copy the template, start it (archive_command still ''),
#    set archive_command, reload, and time from the reload until pg_stat_archiver's
#    last_archived_wal is the template's last segment. Contenders:
#      wal-archive   `wal-archive push` (with --look-ahead/--parallel/--spool-dir/--compress-level
#                    when this build has them), a new --cluster every round
#      cp            `cp %p DIR/%f`
#      true          the archiver's own floor
#      pgbackrest    `pgbackrest archive-push`, archive-async=y process-max=2 compress-type=zst,
#                    a new repository (stanza-create) every round
# 2. Standby catch-up. For each contender: copy the base backup, standby.signal, restore_command
#    only (no primary_conninfo), start, and time from start until pg_last_wal_replay_lsn() reaches
#    the end of the template's last segment. Each restores from what it archived in step 1:
#      wal-archive   `wal-archive fetch` (with --prefetch when this build has it)
#      cp            `cp DIR/%f %p`
#      pgbackrest    `pgbackrest archive-get`, archive-async=y (default queue: 128 MiB)
#      floor         the segments copied into pg_wal beforehand, restore_command = 'false'
#    and, with RTT_MS > 0 (default 5), `wal-archive fetch` once more through bench/delay_proxy.py,
#    which adds RTT_MS of round trip between the standby's helper and the server (half each way,
#    without limiting throughput): this kernel has no netem qdisc, so the delay is made in user
#    space. Only wal-archive goes over a network here; cp and pgBackRest read a local directory.
# 3. Once, after the rounds (LIVE=0 to skip): live archiving. For each of wal-archive, cp,
#    pgbackrest and `true`: a new primary, pgbench -T LIVE_DURATION -c 2 -j 2 with archiving on,
#    then pg_switch_wal(); the lag is from that switch until the segment is archived (and the TPS
#    pgbench got while the archiver ran beside it).
# 4. Once (EXTRAS=0 to skip): per-call latency of `push` (every template segment, twice, into new
#    clusters, no look-ahead) and of a `fetch` miss (FETCH_MISSES calls), p50/p99; and the
#    server's peak memory (VmHWM) with 32 concurrent `wal-archive push` processes of distinct
#    segments, after a server restart so the peak is theirs.
#
# With S3=1 (bench/s3.sh): a second server stores in an S3-compatible bucket (SeaweedFS on
# loopback, /opt/seaweedfs/bin/weed as .ci/run installs it), and "wal-archive-s3" drains and
# catches up beside "wal-archive" (local storage) in every round; the report adds the ratios
# S3 / local. PEERS=0 leaves cp, true and pgBackRest out of the drains (the catch-up floor stays).
#
# A quick check of the script itself: ROUNDS=1 SCALE=1 TARGET_SEGMENTS=8 LIVE_DURATION=5.
#
# Prints the medians over the rounds, segments/s and ratios (drain: to cp, and wal-archive's
# speedup over pgBackRest async; catch-up: to the floor).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-40}                        # pgbench scale of the template's workload
TARGET_SEGMENTS=${TARGET_SEGMENTS:-100}   # complete segments in the template (at least)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-55434}
SRV_PORT=${SRV_PORT:-18497}
LOOK_AHEAD=${LOOK_AHEAD:-16}              # wal-archive push --look-ahead, when available
PARALLEL=${PARALLEL:-2}                   # push/fetch --parallel (pgBackRest here: process-max=2)
COMPRESS_LEVEL=${COMPRESS_LEVEL:-}        # push --compress-level: the helper's zstd of the body
                                          # for slow links (the server compresses what it stores
                                          # anyway); unset = the tool's default (off)
PREFETCH=${PREFETCH:-8}                   # fetch --prefetch (pgBackRest's default queue: 128 MiB)
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-900}       # seconds a drain may take
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-900}   # seconds a standby may take to catch up
FETCH_MISSES=${FETCH_MISSES:-200}
EXTRAS=${EXTRAS:-1}
LIVE=${LIVE:-1}
LIVE_DURATION=${LIVE_DURATION:-30}
LIVE_SCALE=${LIVE_SCALE:-10}
RTT_MS=${RTT_MS:-5}                       # added round trip for the second wal-archive catch-up
PROXY_PORT=${PROXY_PORT:-18498}
S3=${S3:-0}                               # 1: also a server on S3-compatible storage
PEERS=${PEERS:-1}                         # 0: no cp, true and pgBackRest contenders
S3_SRV_PORT=${S3_SRV_PORT:-18496}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
own_pg() { if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$@"; fi; }
now() { date +%s.%N; }

echo "bench: building release binaries" >&2
if ! cargo build --release --bins --quiet; then
  # The tree is shared; someone else's half-finished change must not stop the benchmark when the
  # binaries are there, but say loudly which binaries are measured.
  [ -x target/release/wal-archive ] && [ -x target/release/wal-archive-server ] || exit 1
  echo "bench: WARNING: cargo build failed; measuring the existing target/release binaries" \
    "(wal-archive $(date -r target/release/wal-archive '+%F %T'), wal-archive-server $(date -r target/release/wal-archive-server '+%F %T'))" >&2
fi

if [ "$PEERS" = 1 ] && ! command -v pgbackrest >/dev/null; then
  echo "bench: installing pgbackrest" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "bench: pgbackrest missing and not root to apt-get it" >&2; exit 1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest >/dev/null; }
fi
PGBACKREST=$(command -v pgbackrest || echo pgbackrest)
if [ "$PEERS" = 0 ] && [ "$LIVE" = 1 ]; then echo "bench: LIVE=1 needs PEERS=1" >&2; exit 2; fi

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/wal-archive-compare.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
S3_SERVER_PID=""
WEED_PID=""
PROXY_PID=""
PUSHER_PIDS=""
cleanup() {
  local d p
  for p in $PUSHER_PIDS; do kill "$p" 2>/dev/null || true; done
  for d in "$WORK"/template "$WORK"/pg-* "$WORK"/sb-*; do
    [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  done
  # pgBackRest's async archive-push/get processes exit by themselves once idle; stop any left,
  # by the PIDs in this run's lock files (checked to be pgbackrest).
  for f in "$WORK"/pgbr/lock/*.lock; do
    [ -f "$f" ] || continue
    p=$(head -n 1 "$f" | tr -dc 0-9)
    [ -n "$p" ] && tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q pgbackrest && kill "$p" 2>/dev/null || true
  done
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$S3_SERVER_PID" ] && kill "$S3_SERVER_PID" 2>/dev/null || true
  # SeaweedFS takes over 10 s to stop on SIGTERM; its data is thrown away anyway.
  [ -n "$WEED_PID" ] && { kill -9 "$WEED_PID" 2>/dev/null; wait "$WEED_PID" 2>/dev/null; } || true
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/bin" "$WORK/sock" "$WORK/logs" "$WORK/pgbr"
cp target/release/wal-archive target/release/wal-archive-server "$WORK/bin/"
chmod 755 "$WORK/bin"/*
own_pg "$WORK/sock" "$WORK/logs" "$WORK/pgbr"
WA="$WORK/bin/wal-archive"
URL="http://127.0.0.1:$SRV_PORT"

die() { # message [log files...]
  local m=$1 f; shift
  echo "bench: $m" >&2
  for f in "$@" "$WORK/server.log"; do
    [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
  done
  exit 1
}

# --- what this build of wal-archive offers ----------------------------------------------------
PUSH_HELP=$("$WA" push --help)
FETCH_HELP=$("$WA" fetch --help)
has() { grep -q -- "$2" <<<"$1"; }
PUSH_OPTS=""
has "$PUSH_HELP" --look-ahead && PUSH_OPTS+=" --look-ahead $LOOK_AHEAD"
has "$PUSH_HELP" --parallel && PUSH_OPTS+=" --parallel $PARALLEL"
has "$PUSH_HELP" --compress-level && [ -n "$COMPRESS_LEVEL" ] && PUSH_OPTS+=" --compress-level $COMPRESS_LEVEL"
HAS_SPOOL=0; has "$PUSH_HELP" --spool-dir && HAS_SPOOL=1
FETCH_OPTS=""
has "$FETCH_HELP" --prefetch && FETCH_OPTS+=" --prefetch $PREFETCH"
has "$FETCH_HELP" --prefetch && has "$FETCH_HELP" --parallel && FETCH_OPTS+=" --parallel $PARALLEL"
HAS_FETCH_SPOOL=0; has "$FETCH_HELP" --spool-dir && HAS_FETCH_SPOOL=1
PUSH_DESC="push${PUSH_OPTS}$([ "$HAS_SPOOL" = 1 ] && echo " --spool-dir DIR")"
FETCH_DESC="fetch${FETCH_OPTS}$([ "$HAS_FETCH_SPOOL" = 1 ] && echo " --spool-dir DIR")"
echo "bench: wal-archive $PUSH_DESC; $FETCH_DESC" >&2

# --- the template: a base backup, then a backlog of .ready segments --------------------------
T="$WORK/template"
mkdir -p "$T"; own_pg "$T"
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
hot_standby = on
CONF
psql_t() { as_pg "$PGBIN/psql" -X -qAt -h "$WORK/sock" -p "$PORT" -d postgres -c "$1"; }
# wait_sql CONDITION SECONDS: returns once the SQL boolean CONDITION holds, setting WAIT_T1 to
# the time it was seen. One psql process polls every 5 ms with \watch (it stops at the first
# error, which the query raises once CONDITION holds), instead of a new psql process per poll:
# those cost about an eighth of this machine's two CPUs and would slow whichever contender
# needs the CPU most. Each poll is its own short query, so it holds no snapshot that could
# delay a standby's replay. Fails after SECONDS.
wait_sql() {
  local deadline=$(( $(date +%s) + $2 ))
  while :; do
    printf '%s\n\\watch 0.005\n' "select 1 / (case when ($1) then 0 else 1 end);" |
      as_pg timeout "$2" "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$PORT" -d postgres \
      >/dev/null 2>&1 || true
    WAIT_T1=$(now)
    [ "$(psql_t "select ($1)" 2>/dev/null || true)" = t ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.05   # not up yet, or a query canceled by a recovery conflict: again
  done
}
as_pg "$PGBIN/pg_ctl" -D "$T" -w -l "$WORK/logs/template.log" start >/dev/null
SEGSIZE=$(psql_t "select setting::bigint * (case unit when 'B' then 1 when 'kB' then 1024 when 'MB' then 1048576 end) from pg_settings where name = 'wal_segment_size'")
# -X fetch, then its WAL removed: as -X none, without -X none's wait for the WAL to be archived
# (archive_command is '' here). The segments it needs stay .ready in the template, so every
# standby restores them, like the rest, from its contender's archive.
echo "bench: base backup of the template (pg_basebackup -X fetch, its pg_wal emptied)" >&2
mkdir -p "$WORK/base"; own_pg "$WORK/base"
as_pg timeout 300 "$PGBIN/pg_basebackup" -h "$WORK/sock" -p "$PORT" -D "$WORK/base" -X fetch -c fast \
  >"$WORK/logs/basebackup.log" 2>&1 ||
  die "pg_basebackup failed or took over 300 s" "$WORK/logs/basebackup.log" "$WORK/logs/template.log"
chmod 700 "$WORK/base"
find "$WORK/base/pg_wal" -maxdepth 1 -type f -delete
rm -f "$WORK/base/pg_wal/archive_status"/* "$WORK/base/standby.signal" "$WORK/base/recovery.signal"

echo "bench: generating WAL (pgbench scale $SCALE, then random bytes up to $TARGET_SEGMENTS segments)" >&2
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -t 2000 -c 2 postgres >/dev/null 2>&1
psql_t "create table noise (b bytea)" >/dev/null
segs_done() { psql_t "select (pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') / $SEGSIZE)::bigint"; }
gen_deadline=$(( $(date +%s) + 900 ))
while [ "$(segs_done)" -lt "$TARGET_SEGMENTS" ]; do
  [ "$(date +%s)" -lt "$gen_deadline" ] || die "waited 900 s for $TARGET_SEGMENTS segments of WAL; have $(segs_done)" "$WORK/logs/template.log"
  psql_t "insert into noise select decode(md5(random()::text) || md5(random()::text), 'hex') from generate_series(1, 200000)" >/dev/null
done
psql_t "select pg_switch_wal()" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$T" -m fast -w stop >/dev/null
ls "$T/pg_wal/archive_status" | sed -n 's/\.ready$//p' | sort > "$WORK/segments.txt"
# The last complete segment: with archiving on, a clean shutdown switches segments once more, so
# it is after the one pg_switch_wal() completed.
LAST=$(grep -E '^[0-9A-F]{24}$' "$WORK/segments.txt" | tail -n 1)
# Segments only (the base backup's history file is .ready too; it is archived and restored like
# them, but not counted).
NSEG=$(ls "$T/pg_wal/archive_status" | grep -cE '^[0-9A-F]{24}\.ready$' || true)
[ -f "$T/pg_wal/archive_status/$LAST.ready" ] || die "the last segment $LAST is not .ready in the template"
# End of the last segment: where a standby's replay is once the segment (ending in the switch
# record) is replayed.
END_LSN=$(python3 -c "
import sys
n = '$LAST'; seg = $SEGSIZE
per = 0x100000000 // seg
e = (int(n[8:16], 16) * per + int(n[16:24], 16) + 1) * seg
print('%X/%X' % (e >> 32, e & 0xffffffff))")
WALBYTES=$(( NSEG * SEGSIZE ))
echo "bench: template has $NSEG segments .ready (last $LAST, replay target $END_LSN), $((WALBYTES >> 20)) MiB" >&2

# --- the server -----------------------------------------------------------------------------
start_server() {
  "$WORK/bin/wal-archive-server" --data-dir "$WORK/server" --listen "127.0.0.1:$SRV_PORT" \
    >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  local deadline=$(( $(date +%s) + 20 ))
  until curl -fs "$URL/healthz" >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "wal-archive-server exited at start"
    [ "$(date +%s)" -lt "$deadline" ] || die "wal-archive-server not answering /healthz after 20 s"
    sleep 0.1
  done
}
stop_server() { # SIGTERM, wait up to 30 s, then SIGKILL
  local deadline=$(( $(date +%s) + 30 ))
  kill "$SERVER_PID" 2>/dev/null || { SERVER_PID=""; return 0; }
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "bench: wal-archive-server (pid $SERVER_PID) still running 30 s after SIGTERM; SIGKILL" >&2
      kill -9 "$SERVER_PID" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
start_server
CPU_PIDS="$SERVER_PID"

# --- S3=1: SeaweedFS on loopback and a second server storing in its bucket ----------------------
URL_S3=""
if [ "$S3" = 1 ]; then
  . bench/lib/seaweed.sh
  start_weed "$WORK/weed" "$WORK/logs/weed.log" || die "SeaweedFS did not start" "$WORK/logs/weed.log"
  WS=$WEED_S3_PORT
  cat > "$WORK/server-s3.toml" <<CONF
[storage]
kind = "s3"
bucket = "bench"
endpoint = "http://127.0.0.1:$WS"
region = "us-east-1"
prefix = "bench"
CONF
  AWS_ACCESS_KEY_ID=$WEED_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$WEED_SECRET_KEY "$WORK/bin/wal-archive-server" \
    --config "$WORK/server-s3.toml" --data-dir "$WORK/server-s3" --listen "127.0.0.1:$S3_SRV_PORT" \
    >>"$WORK/server-s3.log" 2>&1 &
  S3_SERVER_PID=$!
  URL_S3="http://127.0.0.1:$S3_SRV_PORT"
  # The first start waits for SeaweedFS to allocate a volume.
  deadline=$(( $(date +%s) + 90 ))
  until curl -fs "$URL_S3/healthz" >/dev/null 2>&1; do
    kill -0 "$S3_SERVER_PID" 2>/dev/null || die "the S3 wal-archive-server exited at start" "$WORK/server-s3.log"
    [ "$(date +%s)" -lt "$deadline" ] || die "the S3 wal-archive-server not answering /healthz after 90 s" "$WORK/server-s3.log"
    sleep 0.1
  done
  echo "bench: SeaweedFS $("$WEED" version 2>/dev/null | head -n 1 | awk '{print $3}') on 127.0.0.1:$WS; S3 server on $URL_S3" >&2
fi
PROXY_URL=""
if awk -v r="$RTT_MS" 'BEGIN {exit !(r > 0)}'; then
  python3 bench/delay_proxy.py "$PROXY_PORT" "$SRV_PORT" "$RTT_MS" > "$WORK/proxy.out" 2>"$WORK/logs/proxy.log" &
  PROXY_PID=$!
  deadline=$(( $(date +%s) + 10 ))
  until grep -q ready "$WORK/proxy.out" 2>/dev/null; do
    kill -0 "$PROXY_PID" 2>/dev/null || die "the delay proxy exited at start" "$WORK/logs/proxy.log"
    [ "$(date +%s)" -lt "$deadline" ] || die "the delay proxy is not ready after 10 s" "$WORK/logs/proxy.log"
    sleep 0.05
  done
  PROXY_URL="http://127.0.0.1:$PROXY_PORT"
  curl -fs "$PROXY_URL/healthz" >/dev/null || die "the server does not answer through the delay proxy" "$WORK/logs/proxy.log"
fi

# --- pgBackRest -------------------------------------------------------------------------------
pgbr_conf() { # file pg1-path repo spool
  cat > "$1" <<CONF
[global]
repo1-path=$3
spool-path=$4
lock-path=$WORK/pgbr/lock
log-path=$WORK/pgbr/log
log-level-console=warn
log-level-stderr=warn
archive-async=y
process-max=2
compress-type=zst

[bench]
pg1-path=$2
pg1-socket-path=$WORK/sock
pg1-port=$PORT
CONF
  mkdir -p "$3" "$4" "$WORK/pgbr/lock" "$WORK/pgbr/log"
  own_pg "$1" "$3" "$4" "$WORK/pgbr/lock" "$WORK/pgbr/log"
}

# --- 1. one drain: copy the template, start, set archive_command, time the drain -------------
drain() { # name command [pgbackrest config]: prints seconds
  local name=$1 cmd=$2 conf=${3:-} d="$WORK/pg-$1" log="$WORK/logs/drain-$1.log"
  rm -rf "$d"; cp -a "$T" "$d"
  as_pg "$PGBIN/pg_ctl" -D "$d" -w -l "$log" start >/dev/null || die "$name: primary did not start" "$log"
  if [ -n "$conf" ]; then
    as_pg "$PGBACKREST" --config="$conf" --stanza=bench stanza-create >"$WORK/logs/stanza-create.log" 2>&1 ||
      die "pgbackrest stanza-create failed" "$WORK/logs/stanza-create.log"
  fi
  sed -i "s|^archive_command = ''|archive_command = '$cmd'|" "$d/postgresql.conf"
  local t0 t1 c0 s0
  c0=$(server_cpu); s0=$(head -n 1 /proc/stat)
  t0=$(now)
  psql_t "select pg_reload_conf()" >/dev/null
  # LAST is the template's last .ready file: nothing comes after it.
  wait_sql "(select coalesce(last_archived_wal, '') from pg_stat_archiver) = '$LAST'" "$DRAIN_TIMEOUT" ||
    die "waited ${DRAIN_TIMEOUT} s for $name to archive $LAST; pg_stat_archiver: $(psql_t "select last_archived_wal, failed_count, last_failed_wal from pg_stat_archiver" 2>/dev/null || true)" "$log"
  t1=$WAIT_T1
  cpu_note "$WORK/cpu-drain-$name.txt" "$c0" "$s0"
  as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
  rm -rf "$d"
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

# --- 2. one catch-up: a standby from the base backup, restore_command only -------------------
catchup() { # name restore_command [floor]: prints seconds
  local name=$1 cmd=$2 floor=${3:-} d="$WORK/sb-$1" log="$WORK/logs/standby-$1.log"
  rm -rf "$d"; cp -a "$WORK/base" "$d"
  echo "restore_command = '$cmd'" >> "$d/postgresql.conf"
  touch "$d/standby.signal"
  if [ -n "$floor" ]; then
    xargs -I{} cp "$T/pg_wal/{}" "$d/pg_wal/" < "$WORK/segments.txt"
  fi
  own_pg "$d"
  local t0 t1 c0 s0 deadline=$(( $(date +%s) + CATCHUP_TIMEOUT ))
  c0=$(server_cpu); s0=$(head -n 1 /proc/stat)
  t0=$(now)
  as_pg "$PGBIN/pg_ctl" -D "$d" -W -l "$log" start >/dev/null
  # A hot standby accepts connections once consistent (early: the base backup's end).
  until psql_t "select 1" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "the $name standby accepted no connection in ${CATCHUP_TIMEOUT} s" "$log"
    # postmaster.pid is there from its first moments to its exit.
    if [ ! -f "$d/postmaster.pid" ] && awk -v a="$t0" -v b="$(now)" 'BEGIN {exit !(b - a > 3)}'; then
      die "the $name standby is not running (no postmaster.pid 3 s after pg_ctl start)" "$log"
    fi
    sleep 0.05
  done
  wait_sql "pg_last_wal_replay_lsn() >= '$END_LSN'::pg_lsn" "$CATCHUP_TIMEOUT" ||
    die "waited ${CATCHUP_TIMEOUT} s for the $name standby's pg_last_wal_replay_lsn() to reach $END_LSN; it is [$(psql_t "select pg_last_wal_replay_lsn()" 2>/dev/null || true)]" "$log"
  t1=$WAIT_T1
  cpu_note "$WORK/cpu-catchup-$name.txt" "$c0" "$s0"
  as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
  rm -rf "$d"
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

# CPU accounting beside the timings: the server's CPU seconds (utime + stime) and how busy the
# machine was (all CPUs, /proc/stat) between two snapshots.
# CPU_PIDS: the processes that serve the contender (the server; with S3, SeaweedFS too).
server_cpu() {
  local p t=0
  for p in $CPU_PIDS; do t=$(awk -v t="$t" '{printf "%.2f\n", t + ($14 + $15) / 100}' "/proc/$p/stat"); done
  echo "$t"
}
cpu_note() { # file server_cpu_before stat_before: appends "server_cpu_s busy_percent"
  local c1 s1; c1=$(server_cpu); s1=$(head -n 1 /proc/stat)
  awk -v c0="$2" -v c1="$c1" -v a="$3" -v b="$s1" 'BEGIN {
    split(a, x); split(b, y); t = 0; for (i = 2; i <= 9; i++) t += y[i] - x[i]
    idle = (y[5] - x[5]) + (y[6] - x[6])
    printf "%.2f %.0f\n", c1 - c0, (t > 0 ? 100 * (t - idle) / t : 0) }' >> "$1"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
percentile() { sort -n | awk -v q="$1" '{a[NR]=$1} END {if (NR == 0) {print "n/a"; exit} i = int(q * NR + 0.999999); if (i < 1) i = 1; print a[i]}'; }
words() { tr ' ' '\n' | grep .; }
med() { echo "$1" | words | median; }
last() { echo "$1" | awk '{print $NF}'; }

declare -A DRAIN CATCH STORED
for r in $(seq 1 "$ROUNDS"); do
  # Archives of this round; the standbys below restore from them.
  CPDIR="$WORK/cp-archive$r"; mkdir -p "$CPDIR"; own_pg "$CPDIR"
  SPOOL="$WORK/wa-spool$r"; mkdir -p -m 700 "$SPOOL"; own_pg "$SPOOL"
  PUSH_CMD="$WA --url $URL push --cluster bench$r$PUSH_OPTS$([ "$HAS_SPOOL" = 1 ] && echo " --spool-dir $SPOOL") %p"
  pgbr_conf "$WORK/pgbr/push$r.conf" "$WORK/pg-pgbackrest" "$WORK/pgbr/repo$r" "$WORK/pgbr/spool-push$r"

  DRAIN[wal-archive]+="$(drain wal-archive "$PUSH_CMD") "
  echo "bench: round $r drain wal-archive $(last "${DRAIN[wal-archive]}") s" >&2
  if [ "$S3" = 1 ]; then
    mkdir -p -m 700 "$SPOOL-s3"; own_pg "$SPOOL-s3"
    CPU_PIDS="$S3_SERVER_PID $WEED_PID"
    DRAIN[wal-archive-s3]+="$(drain wal-archive-s3 "$WA --url $URL_S3 push --cluster bench$r$PUSH_OPTS$([ "$HAS_SPOOL" = 1 ] && echo " --spool-dir $SPOOL-s3") %p") "
    CPU_PIDS="$SERVER_PID"
    echo "bench: round $r drain wal-archive-s3 $(last "${DRAIN[wal-archive-s3]}") s" >&2
  fi
  if [ "$PEERS" = 1 ]; then
  DRAIN[cp]+="$(drain cp "cp %p $CPDIR/%f") "
  echo "bench: round $r drain cp $(last "${DRAIN[cp]}") s" >&2
  DRAIN[true]+="$(drain true "true") "
  echo "bench: round $r drain true $(last "${DRAIN[true]}") s" >&2
  DRAIN[pgbackrest]+="$(drain pgbackrest "$PGBACKREST --config=$WORK/pgbr/push$r.conf --stanza=bench archive-push %p" "$WORK/pgbr/push$r.conf") "
  echo "bench: round $r drain pgbackrest $(last "${DRAIN[pgbackrest]}") s" >&2
  if [ "$r" = 1 ]; then
    STORED[cp]=$(du -sb "$CPDIR" | cut -f1)
    STORED[pgbackrest]=$(du -sb "$WORK/pgbr/repo1/archive" | cut -f1)
  fi
  fi

  pgbr_conf "$WORK/pgbr/get$r.conf" "$WORK/sb-pgbackrest" "$WORK/pgbr/repo$r" "$WORK/pgbr/spool-get$r"
  FSPOOL="$WORK/wa-fetch-spool$r"; mkdir -p -m 700 "$FSPOOL" "$FSPOOL-rtt"; own_pg "$FSPOOL" "$FSPOOL-rtt"
  CATCH[wal-archive]+="$(catchup wal-archive "$WA --url $URL fetch --cluster bench$r$FETCH_OPTS$([ "$HAS_FETCH_SPOOL" = 1 ] && echo " --spool-dir $FSPOOL") %f %p") "
  echo "bench: round $r catch-up wal-archive $(last "${CATCH[wal-archive]}") s" >&2
  if [ -n "$PROXY_URL" ]; then
    CATCH[wal-archive-rtt]+="$(catchup wal-archive-rtt "$WA --url $PROXY_URL fetch --cluster bench$r$FETCH_OPTS$([ "$HAS_FETCH_SPOOL" = 1 ] && echo " --spool-dir $FSPOOL-rtt") %f %p") "
    echo "bench: round $r catch-up wal-archive +${RTT_MS}ms RTT $(last "${CATCH[wal-archive-rtt]}") s" >&2
  fi
  if [ "$S3" = 1 ]; then
    mkdir -p -m 700 "$FSPOOL-s3"; own_pg "$FSPOOL-s3"
    CPU_PIDS="$S3_SERVER_PID $WEED_PID"
    CATCH[wal-archive-s3]+="$(catchup wal-archive-s3 "$WA --url $URL_S3 fetch --cluster bench$r$FETCH_OPTS$([ "$HAS_FETCH_SPOOL" = 1 ] && echo " --spool-dir $FSPOOL-s3") %f %p") "
    CPU_PIDS="$SERVER_PID"
    echo "bench: round $r catch-up wal-archive-s3 $(last "${CATCH[wal-archive-s3]}") s" >&2
  fi
  if [ "$PEERS" = 1 ]; then
  CATCH[cp]+="$(catchup cp "cp $CPDIR/%f %p") "
  echo "bench: round $r catch-up cp $(last "${CATCH[cp]}") s" >&2
  CATCH[pgbackrest]+="$(catchup pgbackrest "$PGBACKREST --config=$WORK/pgbr/get$r.conf --stanza=bench archive-get %f \"%p\"") "
  echo "bench: round $r catch-up pgbackrest $(last "${CATCH[pgbackrest]}") s" >&2
  fi
  CATCH[floor]+="$(catchup floor "false" floor) "
  echo "bench: round $r catch-up floor $(last "${CATCH[floor]}") s" >&2

  rm -rf "$CPDIR" "$SPOOL" "$SPOOL-s3" "$FSPOOL" "$FSPOOL-rtt" "$FSPOOL-s3" "$WORK/pgbr/repo$r" "$WORK/pgbr/spool-push$r" "$WORK/pgbr/spool-get$r"
done

# --- 3. live: archiving on while pgbench writes at full speed (LIVE=0 to skip) ----------------
# A new primary per contender (initdb, pgbench -i, its WAL archived first), then
# pgbench -T LIVE_DURATION -c 2 -j 2 with archive_command set; after it, pg_switch_wal(), and the
# lag is the time from that switch until last_archived_wal is the segment it completed.
archived_at_least() { # segment: whether last_archived_wal >= it (segment names sort in order)
  [ "$(psql_t "select coalesce(last_archived_wal, '') >= '$1' from pg_stat_archiver" 2>/dev/null || true)" = t ]
}
live() { # name command [pgbackrest config]: prints "lag_s tps wal_MB"
  local name=$1 cmd=$2 conf=${3:-} d="$WORK/pg-live-$1" log="$WORK/logs/live-$1.log" seg t0 t1 tps lsn0 deadline
  rm -rf "$d"; mkdir -p "$d"; own_pg "$d"
  as_pg "$PGBIN/initdb" -D "$d" -A trust -N >/dev/null
  sed -n '/^port = /,$p' "$T/postgresql.conf" >> "$d/postgresql.conf"
  as_pg "$PGBIN/pg_ctl" -D "$d" -w -l "$log" start >/dev/null || die "live $name: primary did not start" "$log"
  if [ -n "$conf" ]; then
    as_pg "$PGBACKREST" --config="$conf" --stanza=bench stanza-create >"$WORK/logs/stanza-create.log" 2>&1 ||
      die "pgbackrest stanza-create (live) failed" "$WORK/logs/stanza-create.log"
  fi
  as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -i -s "$LIVE_SCALE" -q postgres >/dev/null 2>&1
  sed -i "s|^archive_command = ''|archive_command = '$cmd'|" "$d/postgresql.conf"
  psql_t "select pg_reload_conf()" >/dev/null
  seg=$(psql_t "select pg_walfile_name(pg_switch_wal())")
  deadline=$(( $(date +%s) + DRAIN_TIMEOUT ))
  until archived_at_least "$seg"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "live $name: waited ${DRAIN_TIMEOUT} s for pgbench -i's WAL ($seg) to be archived" "$log"
    sleep 0.05
  done
  lsn0=$(psql_t "select pg_current_wal_lsn()")
  as_pg timeout $((LIVE_DURATION + 120)) "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -T "$LIVE_DURATION" -c 2 -j 2 postgres \
    >"$WORK/logs/live-pgbench-$name.log" 2>&1 || die "live $name: pgbench failed or ran 120 s over its -T" "$WORK/logs/live-pgbench-$name.log"
  tps=$(awk '/^tps = / && /without initial connection time|excluding connections/ {print $3}' "$WORK/logs/live-pgbench-$name.log")
  t0=$(now)
  seg=$(psql_t "select pg_walfile_name(pg_switch_wal())")
  wait_sql "(select coalesce(last_archived_wal, '') from pg_stat_archiver) >= '$seg'" "$DRAIN_TIMEOUT" ||
    die "live $name: waited ${DRAIN_TIMEOUT} s for $seg to be archived; last_archived_wal is [$(psql_t "select last_archived_wal from pg_stat_archiver" 2>/dev/null || true)]" "$log"
  t1=$WAIT_T1
  local mb; mb=$(psql_t "select round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1e6)")
  as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
  rm -rf "$d"
  awk -v a="$t0" -v b="$t1" -v tps="${tps:-0}" -v mb="$mb" 'BEGIN {printf "%.3f %s %s\n", b - a, tps, mb}'
}
declare -A LIVE_R
if [ "$LIVE" = 1 ]; then
  echo "bench: live archiving under pgbench -T $LIVE_DURATION (scale $LIVE_SCALE)" >&2
  mkdir -p "$WORK/cp-live"; mkdir -p -m 700 "$WORK/wa-spool-live"; own_pg "$WORK/cp-live" "$WORK/wa-spool-live"
  pgbr_conf "$WORK/pgbr/live.conf" "$WORK/pg-live-pgbackrest" "$WORK/pgbr/repo-live" "$WORK/pgbr/spool-live"
  LIVE_R[wal-archive]=$(live wal-archive "$WA --url $URL push --cluster live$PUSH_OPTS$([ "$HAS_SPOOL" = 1 ] && echo " --spool-dir $WORK/wa-spool-live") %p")
  echo "bench: live wal-archive: lag s, TPS, WAL MB: ${LIVE_R[wal-archive]}" >&2
  LIVE_R[cp]=$(live cp "cp %p $WORK/cp-live/%f")
  echo "bench: live cp: ${LIVE_R[cp]}" >&2
  LIVE_R[pgbackrest]=$(live pgbackrest "$PGBACKREST --config=$WORK/pgbr/live.conf --stanza=bench archive-push %p" "$WORK/pgbr/live.conf")
  echo "bench: live pgbackrest: ${LIVE_R[pgbackrest]}" >&2
  LIVE_R[none]=$(live none "true")
  echo "bench: live true: ${LIVE_R[none]}" >&2
  rm -rf "$WORK/cp-live" "$WORK/wa-spool-live" "$WORK/pgbr/repo-live" "$WORK/pgbr/spool-live"
fi

# --- 4. per-call latency and the server's peak memory ------------------------------------------
LAT_REPORT=""
if [ "$EXTRAS" = 1 ]; then
  echo "bench: per-call latency of push and of a fetch miss" >&2
  ms_of() { # command...: runs it, prints its wall time in ms; returns its exit status
    local a b rc=0
    a=$(date +%s%N); "$@" >/dev/null 2>&1 || rc=$?; b=$(date +%s%N)
    awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f\n", (b - a) / 1e6}'
    return $rc
  }
  : > "$WORK/lat-push.txt"; : > "$WORK/lat-miss.txt"
  # One file per call: no look-ahead (it would send other .ready segments of the template).
  PLAIN=(); has "$PUSH_HELP" --look-ahead && PLAIN+=(--look-ahead 0)
  [ "$HAS_SPOOL" = 1 ] && PLAIN+=(--spool-dir "$WORK/lat-spool")
  MISS_OPTS=(); read -r -a MISS_OPTS <<<"$FETCH_OPTS"
  [ "$HAS_FETCH_SPOOL" = 1 ] && MISS_OPTS+=(--spool-dir "$WORK/lat-spool")
  for c in lat1 lat2; do
    while read -r s; do
      ms_of "$WA" --url "$URL" push --cluster "$c" "${PLAIN[@]}" "$T/pg_wal/$s" >> "$WORK/lat-push.txt" ||
        die "push of $s to cluster $c failed"
    done < <(grep -E '^[0-9A-F]{24}$' "$WORK/segments.txt")
  done
  MISS_DIR="$WORK/miss"; mkdir -p "$MISS_DIR"
  for i in $(seq 1 "$FETCH_MISSES"); do
    rc=0; ms_of "$WA" --url "$URL" fetch --cluster lat1 "${MISS_OPTS[@]}" --pgdata "$MISS_DIR" 000000010000FFFF000000FE "$MISS_DIR/x" >> "$WORK/lat-miss.txt" || rc=$?
    [ "$rc" = 1 ] || die "fetch of a missing segment exited $rc, not 1"
  done
  LAT_REPORT=$(printf '%-26s %6s %9s %9s %9s\n' call n "p50 ms" "p99 ms" "max ms"
    for f in push:lat-push "fetch miss:lat-miss"; do
      printf '%-26s %6s %9s %9s %9s\n' "${f%%:*}" "$(wc -l < "$WORK/${f#*:}.txt")" \
        "$(percentile 0.50 < "$WORK/${f#*:}.txt")" "$(percentile 0.99 < "$WORK/${f#*:}.txt")" \
        "$(percentile 1 < "$WORK/${f#*:}.txt")"
    done)

  echo "bench: server peak memory with 32 concurrent pushers" >&2
  stop_server; start_server
  HWM0=$(awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
  PUSHER_PIDS=""
  grep -E '^[0-9A-F]{24}$' "$WORK/segments.txt" | head -n 32 > "$WORK/segments32.txt"
  while read -r s; do
    "$WA" --url "$URL" push --cluster mem1 "${PLAIN[@]}" "$T/pg_wal/$s" >/dev/null 2>>"$WORK/logs/pushers.log" &
    PUSHER_PIDS+="$! "
  done < "$WORK/segments32.txt"
  NPUSH=$(wc -w <<<"$PUSHER_PIDS")
  deadline=$(( $(date +%s) + 300 )); FAILED=0
  for p in $PUSHER_PIDS; do
    while kill -0 "$p" 2>/dev/null; do
      [ "$(date +%s)" -lt "$deadline" ] || die "waited 300 s for $NPUSH concurrent pushes to finish (pid $p still running)" "$WORK/logs/pushers.log"
      sleep 0.05
    done
    wait "$p" || FAILED=$((FAILED + 1))
  done
  PUSHER_PIDS=""
  HWM1=$(awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
  MEM_REPORT="server VmHWM: $((HWM0 / 1024)) MiB after a restart, $((HWM1 / 1024)) MiB after $NPUSH concurrent pushes of distinct $((SEGSIZE >> 20)) MiB segments ($FAILED failed)"
fi

# --- report ---------------------------------------------------------------------------------
echo
echo "== template: $NSEG segments of $((SEGSIZE >> 20)) MiB ($((WALBYTES >> 20)) MiB of WAL), pgbench scale $SCALE + random bytes; rounds $ROUNDS; $(nproc) CPUs"
echo "   wal-archive: $PUSH_DESC; $FETCH_DESC"
[ "$PEERS" = 1 ] && echo "   pgBackRest $("$PGBACKREST" version | awk '{print $2}'): archive-async=y process-max=2 compress-type=zst"
[ "$S3" = 1 ] && echo "   wal-archive-s3: the same, the server storing in a SeaweedFS bucket on loopback"
DRAINERS="wal-archive"; [ "$S3" = 1 ] && DRAINERS+=" wal-archive-s3"; [ "$PEERS" = 1 ] && DRAINERS+=" cp true pgbackrest"
echo
echo "== archive drain (reload with archive_command set -> last_archived_wal = $LAST)"
CP=$([ "$PEERS" = 1 ] && med "${DRAIN[cp]}" || med "${DRAIN[wal-archive]}")
printf '%-14s %10s %12s %10s %14s\n' contender "median s" "segments/s" "MB/s" "$([ "$PEERS" = 1 ] && echo "vs cp (time)" || echo "vs local")"
for c in $DRAINERS; do
  awk -v c="$c" -v m="$(med "${DRAIN[$c]}")" -v n="$NSEG" -v b="$WALBYTES" -v cp="$CP" \
    'BEGIN {printf "%-14s %10.2f %12.1f %10.1f %13.2fx\n", c, m, n / m, b / m / 1e6, m / cp}'
done
if [ "$PEERS" = 1 ]; then
awk -v w="$(med "${DRAIN[wal-archive]}")" -v p="$(med "${DRAIN[pgbackrest]}")" \
  'BEGIN {s = p / w; printf "wal-archive speedup over pgBackRest async: %.2fx (target >= 1.50x: %s)\n", s, (s >= 1.5 ? "met" : "NOT met")}'
fi
if [ "$S3" = 1 ]; then
awk -v s="$(med "${DRAIN[wal-archive-s3]}")" -v l="$(med "${DRAIN[wal-archive]}")" \
  'BEGIN {r = s / l; printf "wal-archive drain, S3 storage vs local: %.2fx the time (target <= 1.30x: %s)\n", r, (r <= 1.3 ? "met" : "NOT met")}'
fi
for c in $DRAINERS; do printf '  %s [%s]' "$c" "${DRAIN[$c]% }"; done; echo "  (per-round s)"
cpu_line() { # file: "server CPU <median> s, machine <median>% busy"
  [ -f "$1" ] || { echo "n/a"; return; }
  echo "server CPU $(cut -d' ' -f1 "$1" | median) s, machine $(cut -d' ' -f2 "$1" | median)% busy"
}
for c in $DRAINERS; do [ "$c" = true ] || printf '  during the %s drain: %s\n' "$c" "$(cpu_line "$WORK/cpu-drain-$c.txt")"; done
WA_STORED=$(curl -fs "$URL/v1/clusters/bench1/wal" | python3 -c '
import json, sys
print(sum(f["stored_size"] for f in json.load(sys.stdin)["files"]))' 2>/dev/null || echo "")
[ "$PEERS" = 1 ] && printf 'stored (round 1): cp %s MiB, pgBackRest %s MiB, wal-archive %s MiB\n' \
  "$((STORED[cp] >> 20))" "$((STORED[pgbackrest] >> 20))" "$([ -n "$WA_STORED" ] && echo $((WA_STORED >> 20)) || echo '?')"

echo
echo "== standby catch-up (start -> pg_last_wal_replay_lsn() >= $END_LSN), restore_command only"
FL=$(med "${CATCH[floor]}")
printf '%-14s %10s %12s %10s %14s\n' contender "median s" "segments/s" "MB/s" "vs floor"
CATCHERS="wal-archive"
[ -n "$PROXY_URL" ] && CATCHERS+=" wal-archive-rtt"
[ "$S3" = 1 ] && CATCHERS+=" wal-archive-s3"
[ "$PEERS" = 1 ] && CATCHERS+=" cp pgbackrest"
CATCHERS+=" floor"
for c in $CATCHERS; do
  awk -v c="$([ "$c" = wal-archive-rtt ] && echo "wa +${RTT_MS}ms RTT" || echo "$c")" -v m="$(med "${CATCH[$c]}")" -v n="$NSEG" -v b="$WALBYTES" -v f="$FL" \
    'BEGIN {printf "%-14s %10.2f %12.1f %10.1f %13.2fx\n", c, m, n / m, b / m / 1e6, m / f}'
done
awk -v w="$(med "${CATCH[wal-archive]}")" -v f="$FL" \
  'BEGIN {s = w / f; printf "wal-archive catch-up vs floor: %.3fx (target <= 1.03x: %s)\n", s, (s <= 1.03 ? "met" : "NOT met")}'
if [ "$S3" = 1 ]; then
awk -v s="$(med "${CATCH[wal-archive-s3]}")" -v l="$(med "${CATCH[wal-archive]}")" \
  'BEGIN {r = s / l; printf "wal-archive catch-up, S3 storage vs local: %.2fx the time (target <= 1.30x: %s)\n", r, (r <= 1.3 ? "met" : "NOT met")}'
fi
if [ -n "$PROXY_URL" ]; then
  awk -v w="$(med "${CATCH[wal-archive-rtt]}")" -v f="$FL" -v r="$RTT_MS" \
    'BEGIN {printf "wal-archive catch-up with %s ms added RTT (user-space delay proxy; no netem here) vs floor: %.3fx\n", r, w / f}'
fi
for c in $CATCHERS; do printf '  %s [%s]' "$c" "${CATCH[$c]% }"; done; echo "  (per-round s)"
for c in $CATCHERS; do printf '  during the %s catch-up: %s\n' "$c" "$(cpu_line "$WORK/cpu-catchup-$c.txt")"; done
[ "$S3" = 1 ] && echo "  (the S3 contender's CPU is its server's and SeaweedFS's together)"

echo
if [ "$EXTRAS" = 1 ]; then
  echo "== per-call latency: push${PLAIN[*]:+ ${PLAIN[*]}} of a $((SEGSIZE >> 20)) MiB segment into a new cluster; fetch${MISS_OPTS[*]:+ ${MISS_OPTS[*]}} of a missing segment" | sed "s|$WORK/lat-spool|DIR|g"
  echo "$LAT_REPORT"
  echo "$MEM_REPORT"
else
  echo "== per-call latency and peak memory: skipped (EXTRAS=0)"
fi
echo
if [ "$LIVE" = 1 ]; then
  echo "== live: pgbench -T $LIVE_DURATION -c 2 -j 2 (scale $LIVE_SCALE) with archiving on; lag = pg_switch_wal() after it -> archived"
  printf '%-14s %10s %10s %12s\n' archiver "lag s" "TPS" "WAL MB"
  for c in wal-archive cp pgbackrest none; do
    read -r lag tps mb <<<"${LIVE_R[$c]}"
    printf '%-14s %10s %10.0f %12s\n' "$([ "$c" = none ] && echo "true (floor)" || echo "$c")" "$lag" "$tps" "$mb"
  done
else
  echo "== live archiving under load: skipped (LIVE=0)"
fi
echo "load average (1/5/15 min) at the start: $LOAD0; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
