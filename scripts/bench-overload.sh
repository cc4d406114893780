#!/usr/bin/env bash
# Overload: the node pinned to one core, the publisher and the load tester on the other.
# First VERIFY viewers (default 20, fully verified, their own load-tester process) join; 3 s
# later a crowd of VIEWERS more (default 1000, about three times what one core of this kind of
# machine serves) is asked for at RAMP per second. The admission guard must refuse the excess
# (503) while the publisher stays connected and the first viewers keep their latency and see
# no freezes; then a fresh run at normal load (RECOVERY_VIEWERS, default 100) must be healthy.
# Bounded: two phases.
#
#   [VIEWERS=1000] [VERIFY=20] [SECS=40] [RECOVERY_VIEWERS=100] [RAMP=100 per second]
#   [FIRST_CPU=1: the core of the first viewers' load tester] scripts/bench-overload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${VIEWERS:-1000}
VERIFY=${VERIFY:-20}
SECS=${SECS:-40}
RECOVERY_VIEWERS=${RECOVERY_VIEWERS:-100}
IP=127.0.0.79
STREAM=overload
OUT=$(mktemp -d /tmp/cascade-overload.XXXXXX)
source scripts/bench-lib.sh
start_node_and_publisher info

# Once a second: the stream's state, its viewers and the engine's lag, to show the curve.
( while true; do
    state=$(curl -sf "$HTTP/api/v1/streams/overload" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], d["viewers"])' 2>/dev/null || echo "gone 0")
    figures=$(curl -sf "$HTTP/metrics" | awk '/^cascade_webrtc_engine_lag_seconds\{engine="viewers"/ {lag = $2 * 1000} /^cascade_webrtc_engine_busy_ratio\{engine="viewers"/ {busy = $2 * 100} END {print lag + 0, busy + 0}')
    echo "$(date +%s) $state ${figures:-0 0}"
    sleep 1
  done ) >"$OUT/samples.txt" &
SAMPLER=$!

run() {  # name viewers seconds [verify]
    RUST_LOG=warn taskset -c 1 "$BIN/cascade-loadtest" webrtc --url "$HTTP/whep/overload" \
        --local-ip "$IP" --viewers "$2" --ramp "${RAMP:-100}" --workers 1 --verify "${4:-$VERIFY}" --duration "$3s" \
        --report "$OUT/report-$1.json" >"$OUT/table-$1.txt" 2>"$OUT/loadtest-$1.log" &
    local lt=$!
    # CPU of the node and of the load tester over the second half of the run.
    sleep $(( $3 / 2 ))
    local s0 c0 t0 s1 c1 t1
    s0=$(ticks "$NODE"); c0=$(ticks "$lt"); t0=$(date +%s.%N)
    sleep $(( $3 / 2 - 3 ))
    s1=$(ticks "$NODE"); c1=$(ticks "$lt"); t1=$(date +%s.%N)
    wait "$lt" || true
    python3 -c "import sys; s0,s1,c0,c1,t0,t1,hz=map(float,sys.argv[1:]); w=t1-t0; print(f'{100*(s1-s0)/hz/w:.0f} {100*(c1-c0)/hz/w:.0f}')" \
        "$s0" "$s1" "$c0" "$c1" "$t0" "$t1" "$HZ" >"$OUT/cpu-$1.txt"
}
RUST_LOG=warn taskset -c "${FIRST_CPU:-1}" "$BIN/cascade-loadtest" webrtc --url "$HTTP/whep/overload" \
    --local-ip "$IP" --viewers "$VERIFY" --ramp 20 --workers 1 --verify all --duration "$(( SECS + 4 ))s" \
    --report "$OUT/report-first.json" >"$OUT/table-first.txt" 2>"$OUT/loadtest-first.log" &
FIRST=$!
sleep 3
run overload "$VIEWERS" "$SECS" 0
wait "$FIRST" || true
sleep 5
run recovery "$RECOVERY_VIEWERS" 20
kill "$SAMPLER" 2>/dev/null || true

publisher_failures=$(grep -c "session failed" "$OUT/publish.log" || true)
state=$(curl -sf "$HTTP/api/v1/streams/overload" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' || echo gone)
echo "| run | viewers asked | admitted | refused (503) | other failures | node CPU % | load tester CPU % | verified latency p50 / p95 / p99 ms | frame loss % | freezes (verified / all) |"
echo "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
echo "-" > "$OUT/cpu-first.txt"; echo "(above)" >> "$OUT/cpu-first.txt"
for name in first overload recovery; do
    python3 - "$OUT/report-$name.json" "$name" $(cat "$OUT/cpu-$name.txt") <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
node_cpu, lt_cpu = sys.argv[3], sys.argv[4]
refused = r["failures"].get("http_503", 0)
other = r["failed_sessions"] - refused
lat = r["latency"]
f = lambda v: "-" if v is None else f"{v:.1f}"
print(f"| {sys.argv[2]} | {r['target_viewers']} | {r['sessions_joined']} | {refused} | {other} | {node_cpu} | {lt_cpu} | "
      f"{f(lat['p50_ms'])} / {f(lat['p95_ms'])} / {f(lat['p99_ms'])} | {r['frame_loss_pct']:.2f} | {r['verified_freezes']} / {r['freezes']} |")
PY
done
echo
echo "publisher: $publisher_failures session failure(s) during the runs; stream state afterwards: $state"
echo "viewers and the viewers' engine per second (unix time, state, viewers, lag ms, busy %): $OUT/samples.txt"
python3 - "$OUT/samples.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 5]
if rows:
    peak_v = max(int(r[2]) for r in rows)
    peak_lag = max(float(r[3]) for r in rows)
    not_live = sum(1 for r in rows if r[1] != "live")
    peak_busy = max(float(r[4]) for r in rows)
    print(f"peak viewers admitted: {peak_v}; worst engine lag window: {peak_lag:.0f} ms; busiest window: {peak_busy:.0f} %; seconds the stream was not live: {not_live}")
PY
echo "raw reports and logs: $OUT" >&2
