#!/usr/bin/env bash
# Scaling of the viewers' engine from one shard to two, on a machine whose two cores are all
# it has: the node with one shard pinned to core 0, then with two shards pinned to cores 0
# and 1. The load tester needs a core of its own to keep its viewers alive, so it joins its
# viewers normally (the handshakes, the first seconds of media), and is then frozen with
# SIGSTOP while the node's CPU is measured: for those seconds both cores are the node's, and
# the node keeps sending every viewer its media (a frozen viewer's datagrams are dropped by
# its full socket buffer, the same for every configuration). The viewers still connected at
# the end of the window are counted from the node's own metric. Quality under load is what
# bench-capacity.sh measures; this measures how the node's work spreads over cores.
#
#   [MEASURE_SECS=10] [PER_SHARD="300 500"] [PERF=1] scripts/bench-shards.sh
#
# PERF=1 records a profile of the node over each window (perf.data in the step's directory).
#
# For each count N in PER_SHARD: one shard with N viewers, then two shards with 2N. Prints a
# Markdown table for docs/benchmarks.md: CPU per viewer and viewers per core, and the scaling
# (two shards' viewers per core, times two cores, over one shard's). Needs taskset (and perf
# for PERF=1). Bounded: each step runs a ramp, 3 s, MEASURE_SECS, then stops its viewers.
set -euo pipefail
cd "$(dirname "$0")/.."

MEASURE_SECS=${MEASURE_SECS:-10}
read -r -a PER_SHARD <<<"${PER_SHARD:-300 500}"
IP=127.0.0.78
STREAM=bench
VERIFY=${VERIFY:-100}
RUN=$(mktemp -d /tmp/cascade-shards.XXXXXX)
BASE_NODE_ARGS=${NODE_ARGS:-}

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

# node_viewers: the viewers the node counts as connected, over every stream.
node_viewers() {
    curl -sf "$HTTP/metrics" | awk '/^cascade_viewers\{/ {n += $2} END {print n + 0}'
}

# one_step SHARDS CORES N: prints one row; one shard's viewers per core are kept in
# $RUN/per-core for the two-shard row's scaling.
one_step() {
    local shards=$1 cores=$2 n=$3
    SERVER_CPU=$cores PUBLISHER_CPU=1 NODE_ARGS="$BASE_NODE_ARGS --webrtc-threads $shards"
    # Each step's node, publisher and load tester write to a directory of their own.
    local OUT="$RUN/$shards-$n"
    mkdir -p "$OUT"
    start_node_and_publisher
    local ramp=$(( n / 10 > 50 ? n / 10 : 50 ))
    local settle=$(( (n + ramp - 1) / ramp + 3 ))
    RUST_LOG=warn taskset -c 1 "$BIN/cascade-loadtest" webrtc --url "$HTTP/whep/$STREAM" \
        --local-ip "$IP" --viewers "$n" --ramp "$ramp" --workers 1 --verify "$VERIFY" \
        --duration "$(( settle + MEASURE_SECS + 10 ))s" --report "$OUT/report.json" \
        >"$OUT/table.txt" 2>"$OUT/loadtest.log" &
    local lt=$!
    sleep "$settle"
    local before
    before=$(node_viewers)
    kill -STOP "$lt"
    sleep 1
    local s0 k0 t0 s1 k1 t1 after
    s0=$(ticks "$NODE"); k0=$(kernel_ticks "$NODE"); t0=$(date +%s.%N)
    if [ "${PERF:-0}" = 1 ]; then
        perf record -q -F 499 -g -p "$NODE" -o "$OUT/perf.data" -- sleep "$MEASURE_SECS" 2>/dev/null
    else
        sleep "$MEASURE_SECS"
    fi
    s1=$(ticks "$NODE"); k1=$(kernel_ticks "$NODE"); t1=$(date +%s.%N)
    after=$(node_viewers)
    kill -CONT "$lt"
    wait "$lt" || true
    kill "$PUB" "$NODE" 2>/dev/null || true
    wait "$PUB" "$NODE" 2>/dev/null || true
    python3 - "$shards" "$cores" "$n" "$before" "$after" "$s0" "$s1" "$k0" "$k1" "$t0" "$t1" "$HZ" "$RUN/per-core" <<'PY'
import sys
shards, cores, n, before, after, s0, s1, k0, k1, t0, t1, hz, kept = sys.argv[1:]
share = lambda a, b: 100.0 * (int(b) - int(a)) / int(hz) / (float(t1) - float(t0))
cpu, kernel = share(s0, s1), share(k0, k1)
viewers = int(after)
per_viewer = cpu / max(1, viewers)
per_core = 100 / per_viewer
scaling = ""
if shards == "1":
    open(kept, "w").write(str(per_core))
else:
    scaling = f"{int(shards) * per_core / float(open(kept).read()):.2f}x"
print(f"| {shards} | {cores} | {n} | {before} | {viewers} | {cpu:.0f} | {kernel:.0f} | {per_viewer:.3f} | {per_core:.0f} | {scaling} |")
PY
    sleep 2
}

echo "| shards | cores | viewers asked | connected before the window | connected after it | node CPU % (of one core) | of which kernel % | % of a core per viewer | viewers per core | scaling |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in "${PER_SHARD[@]}"; do
    one_step 1 0 "$n"
    one_step 2 0,1 $(( 2 * n ))
done
echo "raw reports and logs: $RUN" >&2
