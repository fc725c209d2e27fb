#!/usr/bin/env bash
# Base backup and restore throughput: `wal-archive backup` against `pg_basebackup -Ft` of the
# same database in the same run, `wal-archive restore` against extracting that tar, and the
# stored size against the database size.
#
#   bash bench/backup.sh            # SCALE=40 ROUNDS=3 by default
#
# One PostgreSQL 15 primary (pgbench data plus a poorly compressible table) archives its WAL to
# wal-archive-server, which takes the backups itself over the replication protocol. Each round:
# pg_basebackup -Ft -X none (plain tar, no compression: the floor of reading the database), then
# wal-archive backup --wait twice: a first backup (the round's previous backups were deleted,
# and with them every stored file: it stores everything), then a repeat of the unchanged
# database (it only re-reads, hashes and references: deduplication), then restore of the newest backup
# against `tar -xf` of pg_basebackup's base.tar (with and without a final sync: restore fsyncs),
# and `restore --delta` after about 5% of the database changed against a full restore of the
# same backup. Medians over the rounds and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-40}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-55434}
SRV_PORT=${SRV_PORT:-18497}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "bench: building release binaries" >&2
cargo build --release --bins --quiet

WORK=$(mktemp -d /tmp/wal-archive-bench.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -f "$WORK/pg/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/bin" "$WORK/sock" "$WORK/logs" "$WORK/pg" "$WORK/out"
cp target/release/wal-archive target/release/wal-archive-server "$WORK/bin/"
chmod 755 "$WORK/bin"/*
if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/sock" "$WORK/logs" "$WORK/pg" "$WORK/out"; fi
W="$WORK/bin/wal-archive --url http://127.0.0.1:$SRV_PORT"

as_pg "$PGBIN/initdb" -D "$WORK/pg" -A trust -N >/dev/null
cat >> "$WORK/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
archive_mode = on
archive_command = '$WORK/bin/wal-archive --url http://127.0.0.1:$SRV_PORT push --cluster bench %p'
max_wal_size = 4GB
CONF
psql_t() { as_pg psql -X -qAt -h "$WORK/sock" -p "$PORT" -d postgres -c "$1"; }
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -w -l "$WORK/logs/pg.log" start >/dev/null

cat > "$WORK/server.toml" <<CONF
[clusters.bench]
conninfo = "host=$WORK/sock port=$PORT user=postgres"
# Each round deletes its backups, so that its first backup stores everything again.
minimum_redundancy = 0
CONF
"$WORK/bin/wal-archive-server" --config "$WORK/server.toml" --data-dir "$WORK/server" \
  --listen "127.0.0.1:$SRV_PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$SRV_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

echo "bench: generating the database (pgbench scale $SCALE and random bytes)" >&2
as_pg "$PGBIN/pgbench" -h "$WORK/sock" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
psql_t "create table noise as select decode(md5(random()::text) || md5(random()::text), 'hex') as b from generate_series(1, 2000000)" >/dev/null
# Settled before the rounds: autovacuum would otherwise set hint bits and freeze rows of the
# new tables between rounds, and the "unchanged" database would not be.
psql_t "vacuum (freeze, analyze)" >/dev/null
psql_t "checkpoint" >/dev/null
DB_BYTES=$(psql_t "select sum(pg_database_size(oid)) from pg_database")
echo "bench: databases hold $((DB_BYTES >> 20)) MiB" >&2

PGB=(); BK1=(); BK=(); RS=(); TX=(); TXS=(); STORED_FIRST=""; TAR_BYTES=0
stored() { $W show --cluster bench latest --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"])'; }
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/out/pgb"
  t=$(now)
  as_pg "$PGBIN/pg_basebackup" -h "$WORK/sock" -p "$PORT" -D "$WORK/out/pgb" -Ft -X none -c fast
  PGB+=("$(since "$t")")
  TAR_BYTES=$(du -sb "$WORK/out/pgb" | cut -f1)

  # The previous round's backups go, and with them every file they stored.
  for id in $($W list --cluster bench --json | python3 -c 'import json,sys; print(" ".join(b["id"] for b in json.load(sys.stdin)))'); do
    $W delete --cluster bench "$id" >/dev/null
  done
  t=$(now)
  $W backup --cluster bench --wait >/dev/null
  BK1+=("$(since "$t")")
  STORED_FIRST=$(stored)
  t=$(now)
  $W backup --cluster bench --wait >/dev/null
  BK+=("$(since "$t")")
  STORED_LAST=$(stored)
  SIZE=$($W show --cluster bench latest --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["size_bytes"])')

  rm -rf "$WORK/out/restore" "$WORK/out/untar"
  t=$(now)
  as_pg $W restore --cluster bench latest --target-dir "$WORK/out/restore" --jobs 4 >/dev/null
  RS+=("$(since "$t")")
  as_pg mkdir -p "$WORK/out/untar"
  t=$(now)
  as_pg tar -xf "$WORK/out/pgb/base.tar" -C "$WORK/out/untar"
  TX+=("$(since "$t")")
  # restore fsyncs what it writes; tar does not: the same work, measured apart.
  sync
  rm -rf "$WORK/out/untar"; as_pg mkdir -p "$WORK/out/untar"
  t=$(now)
  as_pg tar -xf "$WORK/out/pgb/base.tar" -C "$WORK/out/untar" && sync
  TXS+=("$(since "$t")")
  echo "bench: round $r: pg_basebackup ${PGB[-1]} s, first backup ${BK1[-1]} s, repeat backup ${BK[-1]} s, restore ${RS[-1]} s, tar -x ${TX[-1]} s, tar -x + sync ${TXS[-1]} s" >&2
done

# Delta restore: about 5% of the database's bytes new or rewritten (a new table, updates of
# small tables), a new backup, then `restore --delta` of it into the directory the last round
# restored (stopped, same cluster) against a full restore of it into a new directory. Delta
# works per file, as pgBackRest's does: a changed file is rewritten whole.
echo "bench: changing about 5% of the database for the delta restore" >&2
ROWS5=$(awk -v b="$DB_BYTES" 'BEGIN {printf "%d", b * 0.05 / 150}')
psql_t "create table delta5 as select g as id, md5(g::text) || md5((g + 1)::text) as t from generate_series(1, $ROWS5) g" >/dev/null
psql_t "update pgbench_branches set bbalance = bbalance + 1" >/dev/null
psql_t "update pgbench_tellers set tbalance = tbalance + 1" >/dev/null
psql_t "checkpoint" >/dev/null
$W backup --cluster bench --wait >/dev/null
DS=(); FS=()
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/out/full"
  sync
  t=$(now)
  as_pg $W restore --cluster bench latest --target-dir "$WORK/out/full" --jobs 4 >/dev/null
  FS+=("$(since "$t")")
  # The directory of the previous backup again, each round: the same 5% to rewrite.
  rm -rf "$WORK/out/delta"
  as_pg cp -a "$WORK/out/restore" "$WORK/out/delta"
  sync
  t=$(now)
  as_pg $W --json restore --cluster bench latest --target-dir "$WORK/out/delta" --delta --jobs 4 >"$WORK/delta.json"
  DS+=("$(since "$t")")
  DELTA_WRITTEN=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["delta"]; print(d["written_bytes"], d["kept_bytes"])' "$WORK/delta.json")
  echo "bench: delta round $r: full restore ${FS[-1]} s, restore --delta ${DS[-1]} s (written, kept bytes: $DELTA_WRITTEN)" >&2
done

mb() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.1f", b / 1e6 / s}'; }
m_pgb=$(printf '%s\n' "${PGB[@]}" | median)
m_bk1=$(printf '%s\n' "${BK1[@]}" | median)
m_bkn=$(printf '%s\n' "${BK[@]}" | median)
m_rs=$(printf '%s\n' "${RS[@]}" | median)
m_tx=$(printf '%s\n' "${TX[@]}" | median)
printf '\n%-34s %9s %9s %9s\n' "" "seconds" "MB/s" "vs base"
printf '%-34s %9.2f %9s %9s\n' "pg_basebackup -Ft -X none" "$m_pgb" "$(mb "$SIZE" "$m_pgb")" "1.00x"
printf '%-34s %9.2f %9s %8.2fx\n' "wal-archive backup (first)" "$m_bk1" "$(mb "$SIZE" "$m_bk1")" "$(awk -v a="$m_bk1" -v b="$m_pgb" 'BEGIN{print a/b}')"
printf '%-34s %9.2f %9s %8.2fx\n' "wal-archive backup (unchanged db)" "$m_bkn" "$(mb "$SIZE" "$m_bkn")" "$(awk -v a="$m_bkn" -v b="$m_pgb" 'BEGIN{print a/b}')"
printf '%-34s %9.2f %9s %9s\n' "tar -xf base.tar" "$m_tx" "$(mb "$SIZE" "$m_tx")" "1.00x"
printf '%-34s %9.2f %9s %8.2fx\n' "wal-archive restore --jobs 4" "$m_rs" "$(mb "$SIZE" "$m_rs")" "$(awk -v a="$m_rs" -v b="$m_tx" 'BEGIN{print a/b}')"
m_txs=$(printf '%s\n' "${TXS[@]}" | median)
printf '%-34s %9.2f %9s %9s\n' "tar -xf base.tar + sync" "$m_txs" "$(mb "$SIZE" "$m_txs")" "1.00x"
printf '%-34s %9.2f %9s %8.2fx\n' "wal-archive restore (fsynced)" "$m_rs" "$(mb "$SIZE" "$m_rs")" "$(awk -v a="$m_rs" -v b="$m_txs" 'BEGIN{print a/b}')"
m_fs=$(printf '%s\n' "${FS[@]}" | median)
m_ds=$(printf '%s\n' "${DS[@]}" | median)
printf '%-34s %9.2f %9s %9s\n' "full restore (5% changed)" "$m_fs" "" "1.00x"
printf '%-34s %9.2f %9s %8.2fx\n' "restore --delta (5% changed)" "$m_ds" "" "$(awk -v a="$m_ds" -v b="$m_fs" 'BEGIN{print a/b}')"
echo "delta restore is $(awk -v a="$m_fs" -v b="$m_ds" 'BEGIN{printf "%.1f", a/b}')x faster than a full restore (target >= 5x); written, kept bytes of the last round: $DELTA_WRITTEN"
echo
echo "database files in the backup: $((SIZE >> 20)) MiB; pg_basebackup tar: $((TAR_BYTES >> 20)) MiB"
echo "first backup stored $((STORED_FIRST >> 20)) MiB ($(awk -v a="$STORED_FIRST" -v b="$SIZE" 'BEGIN{printf "%.1f", 100*a/b}')% of the database); a repeat backup of the unchanged database stored $((STORED_LAST >> 10)) KiB"
echo "per-round seconds: pg_basebackup [${PGB[*]}] first backup [${BK1[*]}] repeat backup [${BK[*]}] restore [${RS[*]}] tar -x [${TX[*]}] tar -x + sync [${TXS[*]}] full [${FS[*]}] delta [${DS[*]}]"
