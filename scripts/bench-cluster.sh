#!/usr/bin/env bash
# Cluster benchmarks on loopback with real processes, all in one run:
#  1. one relay hop's added latency: viewers on the origin and viewers on an edge watch the
#     same stream at the same time; the difference of their glass-to-glass figures is the hop;
#  2. the same viewers served by one node, then spread over three edges fed by one origin:
#     CPU of every node, loss, freezes and latency.
# Bounded: each step runs STEP_SECS (default 20 s).
#
#   [STEP_SECS=20] [VIEWERS=600] [VERIFY=30] scripts/bench-cluster.sh
#
# Prints Markdown tables for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP_SECS=${STEP_SECS:-20}
VIEWERS=${VIEWERS:-600}
VERIFY=${VERIFY:-30}
OUT=$(mktemp -d /tmp/cascade-bench-cluster.XXXXXX)
cargo build --release --locked -p cascade-node -p cascade-loadtest >&2
BIN=target/release
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

declare -A NODE_PID
start_node() { # n [extra args...]
    local n=$1; shift
    local ip="127.0.0.$((80 + n))"
    RUST_LOG=warn "$BIN/cascade" run --http-addr "$ip:8080" --webrtc-addr "$ip:8443" \
        --quic-addr "$ip:4433" --data-dir "$OUT/node-$n" --token bench "$@" \
        >"$OUT/node-$n.out" 2>"$OUT/node-$n.log" &
    NODE_PID[$n]=$!
    PIDS+=($!)
    for _ in $(seq 100); do curl -sf "http://$ip:8080/readyz" >/dev/null && return; sleep 0.2; done
    echo "node $n did not become ready" >&2; exit 1
}
start_node 1
for n in 2 3 4; do start_node "$n" --join 127.0.0.81:8080; done

RUST_LOG=warn "$BIN/cascade-loadtest" publish --url http://127.0.0.81:8080/whip/bench \
    --local-ip 127.0.0.90 --source synthetic --duration 1h 2>"$OUT/publish.log" &
PIDS+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.81:8080/api/v1/streams/bench >/dev/null && break; sleep 0.2; done
sleep 2

viewers() { # node viewers verify report
    local ip="127.0.0.$((80 + $1))"
    # ?routed=1: serve on this node, do not redirect (we choose where viewers go here).
    RUST_LOG=warn "$BIN/cascade-loadtest" webrtc --url "http://$ip:8080/whep/bench?routed=1" \
        --local-ip "127.0.0.$((90 + $1))" --viewers "$2" --ramp 100 --workers 1 --verify "$3" \
        --duration "${STEP_SECS}s" --report "$4" >"$4.txt" 2>"$4.log"
}
figure() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

echo "## Relay hop latency ($STEP_SECS s, 20 verified viewers on each node at once)"
echo
viewers 1 20 all "$OUT/hop-origin.json" &
a=$!
viewers 2 20 all "$OUT/hop-edge.json" &
b=$!
wait $a $b
echo "| viewers on | glass-to-glass p50 ms | p99 ms | samples | frame loss % |"
echo "|---|---:|---:|---:|---:|"
for side in origin edge; do
    f="$OUT/hop-$side.json"
    echo "| $side | $(figure "$f" "d['latency']['p50_ms']") | $(figure "$f" "d['latency']['p99_ms']") | $(figure "$f" "d['latency']['samples']") | $(figure "$f" "round(100*(1-d['frames_received']/max(1,d['frames_expected'])),2)") |"
done
p50=$(python3 -c "import json; o=json.load(open('$OUT/hop-origin.json'))['latency']; e=json.load(open('$OUT/hop-edge.json'))['latency']; print(round(e['p50_ms']-o['p50_ms'],2), round(e['p99_ms']-o['p99_ms'],2))")
echo
echo "Added by one relay hop (edge minus origin): p50 / p99 = ${p50/ / \/ } ms"
echo

step() { # label, then node:viewers pairs
    local label=$1; shift
    declare -A before
    for n in 1 2 3 4; do before[$n]=$(ticks "${NODE_PID[$n]}"); done
    local t0; t0=$(date +%s.%N)
    local jobs=()
    for pair in "$@"; do
        local n=${pair%%:*} count=${pair##*:}
        local verify=$(( VERIFY * count / VIEWERS )); [ "$verify" -lt 1 ] && verify=1
        viewers "$n" "$count" "$verify" "$OUT/$label-$n.json" &
        jobs+=($!)
    done
    wait "${jobs[@]}"
    local t1; t1=$(date +%s.%N)
    local cpu=""
    for n in 1 2 3 4; do
        cpu+="$(python3 -c "print(round(100*($(ticks "${NODE_PID[$n]}")-${before[$n]})/$HZ/($t1-$t0)))") | "
    done
    local joined=0 failed=0 loss="" p95=""
    for pair in "$@"; do
        local n=${pair%%:*} f="$OUT/$label-${pair%%:*}.json"
        joined=$((joined + $(figure "$f" "d['sessions_joined']")))
        failed=$((failed + $(figure "$f" "d['failed_sessions']")))
        loss+="$(figure "$f" "d.get('counted_packet_loss_pct') or 0")/"
        p95+="$(figure "$f" "d['latency']['p95_ms']")/"
    done
    echo "| $label | $joined | $failed | $cpu ${loss%/} | ${p95%/} |"
}
echo "## $VIEWERS viewers: one node, then three edges fed by one origin ($STEP_SECS s each)"
echo
echo "| layout | joined | failed | CPU % origin | edge 1 | edge 2 | edge 3 | packet loss % per serving node | latency p95 ms per serving node |"
echo "|---|---:|---:|---:|---:|---:|---:|---|---|"
step "one-node" "1:$VIEWERS"
third=$(( VIEWERS / 3 ))
step "three-edges" "2:$third" "3:$third" "4:$third"
echo
echo "(raw reports in $OUT)"
