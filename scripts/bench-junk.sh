#!/usr/bin/env bash
# Junk datagrams against a node serving viewers: the same viewers measured without and with
# 10,000 junk datagrams per second at the media port (STUN checks for ufrags no session has,
# and random bytes). In the baseline the same sender aims at a closed port instead. The node on one core; publisher, viewers and junk sender on the other.
# Bounded: two phases of PHASE_SECS (default 25 s).
#
#   [VIEWERS=500] [VERIFY=20] [RATE=10000] [PHASE_SECS=25] scripts/bench-junk.sh
#
# Prints a Markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${VIEWERS:-500}
VERIFY=${VERIFY:-20}
RATE=${RATE:-10000}
PHASE_SECS=${PHASE_SECS:-25}
IP=127.0.0.78
STREAM=junk
OUT=$(mktemp -d /tmp/cascade-junk.XXXXXX)
source scripts/bench-lib.sh
start_node_and_publisher

dropped() { curl -sf "$HTTP/metrics" | awk '/^cascade_udp_dropped_total\{reason="(no_session|unparseable)"\}/ {s += $2} END {print s + 0}'; }

echo "| junk datagrams/s | viewers joined | failed | server CPU % | latency p50 / p95 / p99 ms | frame loss % | freezes | junk dropped by the node |"
echo "|---:|---:|---:|---:|---|---:|---:|---:|"
for phase in 0 "$RATE"; do   # junk datagrams/s at the media port
    RUST_LOG=warn taskset -c 1 "$BIN/cascade-loadtest" webrtc --url "$HTTP/whep/junk" --local-ip "$IP" \
        --viewers "$VIEWERS" --ramp 100 --workers 1 --verify "$VERIFY" --duration "${PHASE_SECS}s" \
        --report "$OUT/report-$phase.json" >"$OUT/table-$phase.txt" 2>"$OUT/loadtest-$phase.log" &
    LT=$!
    sleep 7   # ramp (5 s) and a settling second
    d0=$(dropped)
    # Both phases run the junk sender on the load tester's core, so that the client side
    # costs the same: the baseline's junk goes to a port nobody listens on.
    target_port=8443
    [ "$phase" = 0 ] && target_port=9
    taskset -c 1 python3 scripts/junk-sender.py "$IP" "$target_port" "$RATE" $(( PHASE_SECS - 9 )) 2>>"$OUT/junk.log" &
    JUNK=$!
    s0=$(ticks "$NODE"); t0=$(date +%s.%N)
    sleep $(( PHASE_SECS - 10 ))
    s1=$(ticks "$NODE"); t1=$(date +%s.%N)
    wait "$LT" || true
    [ -n "${JUNK:-}" ] && { wait "$JUNK" || true; JUNK=; }
    d1=$(dropped)
    python3 - "$OUT/report-$phase.json" "$phase" "$s0" "$s1" "$t0" "$t1" "$HZ" "$d0" "$d1" <<'PY'
import json, sys
path, rate, s0, s1, t0, t1, hz, d0, d1 = sys.argv[1:]
r = json.load(open(path))
cpu = 100.0 * (int(s1) - int(s0)) / int(hz) / (float(t1) - float(t0))
lat = r["latency"]
f = lambda v: "-" if v is None else f"{v:.1f}"
print(f"| {rate} | {r['sessions_joined']} | {r['failed_sessions']} | {cpu:.0f} | "
      f"{f(lat['p50_ms'])} / {f(lat['p95_ms'])} / {f(lat['p99_ms'])} | {r['frame_loss_pct']:.2f} | {r['freezes']} | "
      f"{int(float(d1) - float(d0))} |")
PY
    sleep 3
done
cat "$OUT/junk.log" >&2 || true
echo "raw reports and logs: $OUT" >&2
