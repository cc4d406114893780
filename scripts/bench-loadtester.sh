#!/usr/bin/env bash
# How much of one core the load tester needs per simulated viewer. The node and the publisher
# run pinned to core 0, the load tester (one worker) to core 1; its CPU is measured over 10 s
# of steady state. Bounded: the run lasts STEP_SECS (default 25 s).
#
#   [VERIFY=all|N] [STEP_SECS=25] [LOADTEST_BIN=path] scripts/bench-loadtester.sh [viewers]
#                                                                        (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-500}
STEP_SECS=${STEP_SECS:-25}
VERIFY=${VERIFY:-all}
IP=127.0.0.77
HTTP="http://$IP:8080"
OUT=$(mktemp -d /tmp/cascade-bench-lt.XXXXXX)

cargo build --release --locked -p cascade-node -p cascade-loadtest >&2
BIN=target/release
# Another build of the load tester to compare against, driving the same node.
LOADTEST_BIN=${LOADTEST_BIN:-$BIN/cascade-loadtest}

cleanup() { kill "${PUB:-}" "${NODE:-}" 2>/dev/null || true; }
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

RUST_LOG=warn taskset -c 0 "$BIN/cascade" run --http-addr "$IP:8080" --webrtc-addr "$IP:8443" --quic-addr "$IP:4433" \
    --data-dir "$OUT/data" >"$OUT/node.out" 2>"$OUT/node.log" &
NODE=$!
for _ in $(seq 50); do curl -sf "$HTTP/readyz" >/dev/null && break; sleep 0.2; done
RUST_LOG=warn taskset -c 0 "$BIN/cascade-loadtest" publish --url "$HTTP/whip/bench" \
    --local-ip "$IP" --duration 1h 2>"$OUT/publish.log" &
PUB=$!
for _ in $(seq 300); do curl -sf "$HTTP/api/v1/streams/bench" >/dev/null && break; sleep 0.2; done
sleep 2
RUST_LOG=warn taskset -c 1 "$LOADTEST_BIN" webrtc --url "$HTTP/whep/bench" --local-ip "$IP" \
    --viewers "$N" --ramp 100 --workers 1 --verify "$VERIFY" --duration "${STEP_SECS}s" \
    --report "$OUT/report.json" >"$OUT/table.txt" 2>"$OUT/loadtest.log" &
LT=$!
sleep 10
c0=$(ticks "$LT"); s0=$(ticks "$NODE"); t0=$(date +%s.%N)
sleep 10
c1=$(ticks "$LT"); s1=$(ticks "$NODE"); t1=$(date +%s.%N)
wait "$LT" || true
python3 - "$OUT/report.json" "$N" "$VERIFY" "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" "$HZ" <<'PY'
import json, sys
path, n, verify, c0, c1, s0, s1, t0, t1, hz = sys.argv[1:]
r = json.load(open(path))
wall = float(t1) - float(t0)
cpu = lambda a, b: 100.0 * (int(b) - int(a)) / int(hz) / wall
lt = cpu(c0, c1)
print(f"| {verify} | {n} | {r['sessions_joined']} | {r['failed_sessions']} | {lt:.0f} | {cpu(s0, s1):.0f} | "
      f"{int(n) * 100 / max(lt, 1):.0f} | {r['frame_loss_pct']:.2f} |")
PY
echo "raw report and logs: $OUT" >&2
