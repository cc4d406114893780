# Shared by the capacity benchmarks (sourced, not run): one step of a capacity curve.
#   measure_step SERVER_PID N IDLE_RSS_KB [cascade-loadtest webrtc arguments...]
# runs N viewers (one worker on CLIENT_CPU) ramped at RAMP a second (default: N/5, at least
# 50: about 5 s), measures the server's and the load tester's CPU for STEP_SECS/2 once the
# ramp is over (and 2 s more) and the server's RSS; the step lasts at least STEP_SECS;
# and prints one Markdown row: viewers | joined | failed | server CPU % | of which kernel % |
# load tester CPU % | latency p50/p95/p99 | join p50/p95 | frame loss % | freezes | server RSS
# per viewer KB. The kernel's part is the server's system time (/proc/PID/stat's stime): its
# system calls, and on loopback the receivers' softirq that runs on the sending core.
# Needs BIN, OUT, STEP_SECS, VERIFY and CLIENT_CPU; LOADTEST_BIN runs another build of the
# load tester.
# (After bench-lib.sh, whose HZ, ticks and kernel_ticks it uses.)
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

measure_header() {
    echo "| viewers | joined | failed | server CPU % | of which kernel % | load tester CPU % | latency p50 / p95 / p99 ms | join p50 / p95 ms | frame loss % | freezes | server RSS per viewer KB |"
    echo "|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
}

measure_step() {
    local server=$1 n=$2 idle_rss=$3
    shift 3
    local ramp=${RAMP:-$(( n / 5 > 50 ? n / 5 : 50 ))}
    local settle=$(( (n + ramp - 1) / ramp + 2 ))
    local measure=$(( STEP_SECS / 2 ))
    local duration=$(( settle + measure + 3 > STEP_SECS ? settle + measure + 3 : STEP_SECS ))
    RUST_LOG=warn taskset -c "$CLIENT_CPU" "${LOADTEST_BIN:-$BIN/cascade-loadtest}" webrtc "$@" \
        --viewers "$n" --ramp "$ramp" --workers 1 --verify "$VERIFY" --duration "${duration}s" \
        --report "$OUT/report-$n.json" >"$OUT/table-$n.txt" 2>"$OUT/loadtest-$n.log" &
    local lt=$!
    # Measure the steady part: after the ramp and two settling seconds.
    sleep "$settle"
    local s0 k0 c0 t0 s1 k1 c1 t1 rss
    s0=$(ticks "$server"); k0=$(kernel_ticks "$server"); c0=$(ticks "$lt"); t0=$(date +%s.%N)
    sleep "$measure"
    s1=$(ticks "$server"); k1=$(kernel_ticks "$server"); c1=$(ticks "$lt"); t1=$(date +%s.%N)
    rss=$(rss_kb "$server")
    wait "$lt" || true
    python3 - "$OUT/report-$n.json" "$n" "$s0" "$s1" "$k0" "$k1" "$c0" "$c1" "$t0" "$t1" "$HZ" "$rss" "$idle_rss" <<'PY'
import json, sys
path, n, s0, s1, k0, k1, c0, c1, t0, t1, hz, rss, idle = sys.argv[1:]
r = json.load(open(path))
wall = float(t1) - float(t0)
cpu = lambda a, b: 100.0 * (int(b) - int(a)) / int(hz) / wall
lat, join = r["latency"], r["join_time"]
f = lambda v: "-" if v is None else f"{v:.1f}"
per_viewer = (int(rss) - int(idle)) / max(1, r["sessions_joined"])
print(f"| {n} | {r['sessions_joined']} | {r['failed_sessions']} | {cpu(s0, s1):.0f} | {cpu(k0, k1):.0f} | {cpu(c0, c1):.0f} | "
      f"{f(lat['p50_ms'])} / {f(lat['p95_ms'])} / {f(lat['p99_ms'])} | {f(join['p50_ms'])} / {f(join['p95_ms'])} | "
      f"{r['frame_loss_pct']:.2f} | {r['freezes']} | {per_viewer:.0f} |")
PY
    sleep 3
}
