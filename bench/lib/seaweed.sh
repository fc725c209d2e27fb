# SeaweedFS for the benchmarks, sourced: `start_weed DIR LOG` starts an all-in-one `weed server`
# on loopback with its data in DIR and its output in LOG, waits for its S3 gateway, and sets
# WEED_PID, WEED_S3_PORT and WEED_FILER_PORT. Credentials: WEED_ACCESS_KEY / WEED_SECRET_KEY.
# The caller stops it: `kill -9 "$WEED_PID"` (it takes over 10 s to stop on SIGTERM, and its
# data is thrown away anyway). WEED overrides the binary (default: where .ci/run installs it).

WEED=${WEED:-/opt/seaweedfs/bin/weed}
WEED_ACCESS_KEY=bench
WEED_SECRET_KEY=benchsecret

# A free port p below 55535 with p + 10000 free too (SeaweedFS's gRPC ports).
weed_free_pair() {
  python3 -c '
import socket
for _ in range(200):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    ok = False
    if 1024 <= p < 55535:
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", p + 10000)); ok = True
        except OSError:
            pass
        b.close()
    a.close()
    if ok:
        print(p); break'
}

start_weed() { # dir log
  [ -x "$WEED" ] || { echo "bench: SeaweedFS is needed at $WEED (bash .ci/run installs it)" >&2; return 1; }
  local dir=$1 log=$2 m v f s deadline
  m=$(weed_free_pair); v=$(weed_free_pair); f=$(weed_free_pair); s=$(weed_free_pair)
  mkdir -p "$dir"
  (cd "$dir" && exec env -i PATH=/usr/bin:/bin AWS_ACCESS_KEY_ID="$WEED_ACCESS_KEY" \
    AWS_SECRET_ACCESS_KEY="$WEED_SECRET_KEY" WEED_MASTER_VOLUME_GROWTH_COPY_1=1 \
    "$WEED" -logtostderr server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir" \
    -master.port="$m" -master.port.grpc=$((m + 10000)) -master.telemetry=false \
    -master.volumeSizeLimitMB=1000 -volume.port="$v" -volume.port.grpc=$((v + 10000)) \
    -volume.max=0 -volume.preStopSeconds=0 -filer -filer.port="$f" -filer.port.grpc=$((f + 10000)) \
    -s3 -s3.port="$s" -s3.port.grpc=$((s + 10000)) -s3.port.iceberg=0 -s3.port.lance=0) \
    >"$log" 2>&1 &
  WEED_PID=$!
  WEED_S3_PORT=$s
  WEED_FILER_PORT=$f
  deadline=$(( $(date +%s) + 60 ))
  until curl -s -o /dev/null "http://127.0.0.1:$s/"; do
    kill -0 "$WEED_PID" 2>/dev/null || { echo "bench: SeaweedFS exited at start" >&2; return 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "bench: SeaweedFS's S3 gateway not answering after 60 s" >&2; return 1; }
    sleep 0.2
  done
}
