#!/usr/bin/env bash
# S3-compatible storage against local storage, in the same run: the archive drain and the
# standby catch-up of bench/compare.sh with one server storing on local disk and another in a
# SeaweedFS bucket on loopback; prints each median and the ratio S3 / local (target <= 1.3x).
#
#   bash bench/s3.sh        # ROUNDS=3 TARGET_SEGMENTS=100 by default
set -euo pipefail
cd "$(dirname "$0")/.."
S3=1 PEERS=0 LIVE=0 EXTRAS=0 RTT_MS=0 exec bash bench/compare.sh "$@"
