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

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

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

echo "| viewers | joined | failed | server CPU % | load tester CPU % | latency p50 / p95 / p99 ms | join p50 / p95 ms | frame loss % | freezes | server RSS per viewer KB |"
echo "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
for n in "${COUNTS[@]}"; do
    ramp=$(( n / 5 > 50 ? n / 5 : 50 ))
    RUST_LOG=warn taskset -c "$CLIENT_CPU" "$BIN/cascade-loadtest" webrtc --url "$HTTP/whep/bench" \
        --local-ip "$IP" --viewers "$n" --ramp "$ramp" --workers 1 --verify "$VERIFY" --duration "${STEP_SECS}s" \
        --report "$OUT/report-$n.json" >"$OUT/table-$n.txt" 2>"$OUT/loadtest-$n.log" &
    LT=$!
    # Measure the steady part: after the ramp (5 s) plus a settling second, for half the step.
    sleep 7
    s0=$(ticks "$NODE"); c0=$(ticks "$LT"); t0=$(date +%s.%N)
    sleep $(( STEP_SECS / 2 ))
    s1=$(ticks "$NODE"); c1=$(ticks "$LT"); t1=$(date +%s.%N)
    rss=$(rss_kb "$NODE")
    wait "$LT" || true
    python3 - "$OUT/report-$n.json" "$n" "$s0" "$s1" "$c0" "$c1" "$t0" "$t1" "$HZ" "$rss" "$idle_rss" <<'PY'
import json, sys
path, n, s0, s1, c0, c1, t0, t1, hz, rss, idle = sys.argv[1:]
r = json.load(open(path))
wall = float(t1) - float(t0)
cpu = lambda a, b: 100.0 * (int(b) - int(a)) / int(hz) / wall
lat, join = r["latency"], r["join_time"]
f = lambda v: "-" if v is None else f"{v:.1f}"
per_viewer = (int(rss) - int(idle)) / max(1, r["sessions_joined"])
print(f"| {n} | {r['sessions_joined']} | {r['failed_sessions']} | {cpu(s0, s1):.0f} | {cpu(c0, c1):.0f} | "
      f"{f(lat['p50_ms'])} / {f(lat['p95_ms'])} / {f(lat['p99_ms'])} | {f(join['p50_ms'])} / {f(join['p95_ms'])} | "
      f"{r['frame_loss_pct']:.2f} | {r['freezes']} | {per_viewer:.0f} |")
PY
    sleep 3
done
echo "raw reports and logs: $OUT" >&2
