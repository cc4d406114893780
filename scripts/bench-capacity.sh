#!/usr/bin/env bash
# Capacity curve of one Cascade node: the server pinned to one core, the load tester (and the
# publisher) to the other. For each viewer count: server CPU, load-tester CPU, latency, loss,
# join time, server memory per viewer. Bounded: each step runs STEP_SECS (default 30 s).
#
#   [STEP_SECS=30] [VERIFY=all|N] [NODE_ARGS="..."] scripts/bench-capacity.sh [viewer counts...]
#                                        (default counts: 100 250 500 1000 1500 2000)
#
# Prints a Markdown table for docs/benchmarks.md. Needs taskset (util-linux) and FFmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS=("$@")
[ ${#COUNTS[@]} -eq 0 ] && COUNTS=(100 250 500 1000 1500 2000)
STEP_SECS=${STEP_SECS:-30}
# `all` (every viewer decrypts and reassembles every frame) or a number of verified viewers
# (sampling mode: the rest count RTP headers).
VERIFY=${VERIFY:-all}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
IP=127.0.0.77
HTTP="http://$IP:8080"
OUT=$(mktemp -d /tmp/cascade-bench.XXXXXX)

cargo build --release --locked -p cascade-node -p cascade-loadtest >&2
BIN=target/release
# Another build of the node to compare against, measured by the same load tester.
SERVER_BIN=${SERVER_BIN:-$BIN/cascade}

cleanup() { kill "${PUB:-}" "${NODE:-}" 2>/dev/null || true; }
trap cleanup EXIT
# shellcheck source=scripts/bench-measure.sh
. scripts/bench-measure.sh

RUST_LOG=warn taskset -c "$SERVER_CPU" "$SERVER_BIN" run --http-addr "$IP:8080" \
    --webrtc-addr "$IP:8443" --quic-addr "$IP:4433" --data-dir "$OUT/data" ${NODE_ARGS:-} 2>"$OUT/node.log" &
NODE=$!
for _ in $(seq 50); do curl -sf "$HTTP/readyz" >/dev/null && break; sleep 0.2; done
RUST_LOG=warn taskset -c "$CLIENT_CPU" "$BIN/cascade-loadtest" publish --url "$HTTP/whip/bench" \
    --local-ip "$IP" --duration 1h 2>"$OUT/publish.log" &
PUB=$!
for _ in $(seq 300); do curl -sf "$HTTP/api/v1/streams/bench" >/dev/null && break; sleep 0.2; done
sleep 2
idle_rss=$(rss_kb "$NODE")

measure_header
for n in "${COUNTS[@]}"; do
    measure_step "$NODE" "$n" "$idle_rss" --url "$HTTP/whep/bench" --local-ip "$IP"
done
echo "raw reports and logs: $OUT" >&2
