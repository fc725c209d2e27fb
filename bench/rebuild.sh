#!/usr/bin/env bash
# The catalog rebuilt from storage alone, on local storage and on an S3-compatible bucket, for an
# archive of WAL_FILES WAL files and BACKUPS base backups:
#
#   bash bench/rebuild.sh        # WAL_FILES=100000 BACKUPS=50 by default
#
# A PostgreSQL 15 cluster (1 MiB segments) archives into a server on local storage, which takes
# BACKUPS real backups of it (pgbench between them). The archive is then filled up to WAL_FILES
# WAL objects with links to one real stored segment under new names (a rebuild reads each
# object's trailer, never its content, so the cost per object is the same). The server stops;
# its catalog is deleted and it starts again (the rebuild from local storage), timed until it
# answers /healthz. The same storage tree is copied into a SeaweedFS bucket on loopback
# (`weed filer.copy`, not timed) and a new server with an empty data directory starts on it
# (the rebuild from the bucket), timed the same way. Both must then list BACKUPS backups and
# every WAL file. Prints both times, their ratio, and objects per second.
set -euo pipefail
cd "$(dirname "$0")/.."

WAL_FILES=${WAL_FILES:-100000}
BACKUPS=${BACKUPS:-50}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-55452}
LOCAL_PORT=${LOCAL_PORT:-18521}
S3_PORT=${S3_PORT:-18522}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
own_pg() { if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$@"; fi; }
now() { date +%s.%N; }

echo "bench: building release binaries" >&2
cargo build --release --bins --quiet

WORK=$(mktemp -d /tmp/wal-archive-rebuild.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
WEED_PID=""
cleanup() {
  [ -f "$WORK/pg/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$WEED_PID" ] && { kill -9 "$WEED_PID" 2>/dev/null; wait "$WEED_PID" 2>/dev/null; } || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() {
  echo "bench: $1" >&2
  local f; for f in "${@:2}"; do [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}

mkdir -p "$WORK/bin" "$WORK/sock" "$WORK/logs" "$WORK/pg"
cp target/release/wal-archive target/release/wal-archive-server "$WORK/bin/"
chmod 755 "$WORK/bin"/*
own_pg "$WORK/sock" "$WORK/logs" "$WORK/pg"
CLI="$WORK/bin/wal-archive"

# start_server NAME DATA_DIR LISTEN_PORT CONFIG [ENV...]: starts it in the background, sets
# SERVER_PID; `wait_healthy URL` waits until it answers and prints the seconds it took.
start_server() {
  local name=$1 data=$2 port=$3 config=$4; shift 4
  env "$@" "$WORK/bin/wal-archive-server" --config "$config" --data-dir "$data" \
    --listen "127.0.0.1:$port" >>"$WORK/logs/$name.log" 2>&1 &
  SERVER_PID=$!
}
wait_healthy() { # url log: prints seconds since T0
  local deadline=$(( $(date +%s) + 1800 ))
  until curl -fs "$1/healthz" >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start" "$2"
    [ "$(date +%s)" -lt "$deadline" ] || die "the server did not answer /healthz in 1800 s" "$2"
    sleep 0.05
  done
  awk -v a="$T0" -v b="$(now)" 'BEGIN {printf "%.1f\n", b - a}'
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  local deadline=$(( $(date +%s) + 60 ))
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { kill -9 "$SERVER_PID" 2>/dev/null || true; break; }
    sleep 0.05
  done
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
# counts URL: "backups wal_files" as the server lists them
counts() {
  local b w
  b=$("$CLI" --url "$1" --json list --cluster main | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
  w=$(curl -fs "$1/v1/clusters/main/wal" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["files"]))')
  echo "$b $w"
}

# --- a real archive with BACKUPS backups ----------------------------------------------------
LOCAL_URL="http://127.0.0.1:$LOCAL_PORT"
as_pg "$PGBIN/initdb" -D "$WORK/pg" -A trust -N --wal-segsize=1 >/dev/null
cat >> "$WORK/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
archive_mode = on
archive_command = '$CLI --url $LOCAL_URL push --cluster main %p'
wal_level = replica
max_wal_senders = 4
CONF
cat > "$WORK/local.toml" <<CONF
[clusters.main]
conninfo = "host=$WORK/sock port=$PORT user=postgres dbname=postgres"
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -w -l "$WORK/logs/pg.log" start >/dev/null
T0=$(now); start_server local "$WORK/local" "$LOCAL_PORT" "$WORK/local.toml"
wait_healthy "$LOCAL_URL" "$WORK/logs/local.log" >/dev/null
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -i -s 2 -q postgres >/dev/null 2>&1
echo "bench: taking $BACKUPS backups" >&2
for i in $(seq 1 "$BACKUPS"); do
  as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -t 100 -c 1 postgres >/dev/null 2>&1
  "$CLI" --url "$LOCAL_URL" backup --cluster main --wait >/dev/null 2>>"$WORK/logs/backups.log" ||
    die "backup $i failed" "$WORK/logs/backups.log" "$WORK/logs/local.log"
  [ $((i % 10)) = 0 ] && echo "bench: $i backups" >&2
done
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null
stop_server

# --- up to WAL_FILES WAL objects ----------------------------------------------------------------
echo "bench: filling the archive up to $WAL_FILES WAL files" >&2
python3 - "$WORK/local/storage" "$WAL_FILES" <<'PY'
import errno, os, shutil, sys
root, want = sys.argv[1], int(sys.argv[2])
wal = os.path.join(root, "wal", "main")
have = [os.path.join(d, f) for d, _, fs in os.walk(wal) for f in fs if len(f) == 28 and f.endswith(".zst")]
source = sorted(have)[-1]
per_log = (1 << 32) // (1 << 20)  # 1 MiB segments
segno = 0x100000  # far beyond the real segments
for _ in range(max(0, want - len(have))):
    name = "%08X%08X%08X" % (1, segno // per_log, segno % per_log)
    d = os.path.join(wal, name[:16])
    os.makedirs(d, exist_ok=True)
    target = os.path.join(d, name + ".zst")
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno != errno.EMLINK:  # a file system's link limit (65,000 on ext4): a new source
            raise
        shutil.copyfile(source, target)
        source = target
    segno += 1
PY
NOBJ=$(find "$WORK/local/storage/wal" -type f | wc -l)

# --- rebuild from local storage ------------------------------------------------------------
rm -f "$WORK/local/catalog.sqlite3" "$WORK/local/catalog.sqlite3-wal" "$WORK/local/catalog.sqlite3-shm"
echo "bench: rebuilding the catalog from local storage ($NOBJ WAL objects)" >&2
T0=$(now); start_server local "$WORK/local" "$LOCAL_PORT" "$WORK/local.toml"
LOCAL_S=$(wait_healthy "$LOCAL_URL" "$WORK/logs/local.log")
read -r LOCAL_B LOCAL_W <<<"$(counts "$LOCAL_URL")"
stop_server

# --- the same archive in a bucket, rebuilt by a new server ------------------------------------
. bench/lib/seaweed.sh
start_weed "$WORK/weed" "$WORK/logs/weed.log" || die "SeaweedFS did not start" "$WORK/logs/weed.log"
echo "bench: copying the storage into a SeaweedFS bucket (weed filer.copy)" >&2
# The bucket prefix is the directory's name; the local server is done with its storage.
mv "$WORK/local/storage" "$WORK/rebuild"
"$WEED" filer.copy -c 16 "$WORK/rebuild" "http://127.0.0.1:$WEED_FILER_PORT/buckets/bench/" \
  >"$WORK/logs/filer-copy.log" 2>&1 || die "weed filer.copy failed" "$WORK/logs/filer-copy.log"
cat > "$WORK/s3.toml" <<CONF
[storage]
kind = "s3"
bucket = "bench"
endpoint = "http://127.0.0.1:$WEED_S3_PORT"
region = "us-east-1"
prefix = "rebuild"
CONF
echo "bench: rebuilding the catalog from the bucket" >&2
S3_URL="http://127.0.0.1:$S3_PORT"
T0=$(now); start_server s3 "$WORK/s3" "$S3_PORT" "$WORK/s3.toml" \
  AWS_ACCESS_KEY_ID="$WEED_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$WEED_SECRET_KEY"
S3_S=$(wait_healthy "$S3_URL" "$WORK/logs/s3.log")
read -r S3_B S3_W <<<"$(counts "$S3_URL")"
stop_server

echo
echo "== catalog rebuilt from storage alone: $NOBJ WAL objects, $BACKUPS backups; $(nproc) CPUs"
printf '%-10s %12s %14s %10s %12s\n' storage "start-up s" "WAL objects/s" backups "WAL listed"
awk -v s="$LOCAL_S" -v n="$NOBJ" -v b="$LOCAL_B" -v w="$LOCAL_W" 'BEGIN {printf "%-10s %12.1f %14.0f %10s %12s\n", "local", s, n / s, b, w}'
awk -v s="$S3_S" -v n="$NOBJ" -v b="$S3_B" -v w="$S3_W" 'BEGIN {printf "%-10s %12.1f %14.0f %10s %12s\n", "S3", s, n / s, b, w}'
awk -v s="$S3_S" -v l="$LOCAL_S" 'BEGIN {printf "S3 / local: %.2fx\n", s / l}'
grep -h "catalog rebuilt from storage" "$WORK/logs/local.log" "$WORK/logs/s3.log" | sed 's/^/  /' || true
[ "$LOCAL_B" = "$BACKUPS" ] && [ "$S3_B" = "$BACKUPS" ] || die "a rebuilt catalog lists $LOCAL_B / $S3_B backups, not $BACKUPS"
[ "$LOCAL_W" = "$S3_W" ] || die "the rebuilt catalogs list $LOCAL_W and $S3_W WAL files"
