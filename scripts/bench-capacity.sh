#!/usr/bin/env bash
# Capacity curve of one Cascade node: the server pinned to one core, the load tester (and the
# publisher) to the other. For each viewer count: server CPU, load-tester CPU, latency, loss,
# join time, server memory per viewer. Bounded: each step runs STEP_SECS (default 30 s).
#
#   [STEP_SECS=30] [VERIFY=all|N] [NODE_ARGS="..."] [SERVER_BIN=...] [NETNS=1]
#       scripts/bench-capacity.sh [viewer counts...]   (default counts: 100 250 500 1000 1500 2000)
#
# NETNS=1 puts the node in a network namespace of its own, over a veth pair whose receive work
# is steered to the receiving side's core (bench-lib.sh's make_netns; needs root): the viewers'
# kernel work is then charged to the load tester's core, not the server's as on loopback.
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
PUBLISHER_CPU=$CLIENT_CPU
IP=127.0.0.77
if [ "${NETNS:-0}" = 1 ]; then
    IP=10.78.0.1 NODE_IP=10.78.0.2 NODE_NETNS=cascade-cap
fi
STREAM=bench
OUT=$(mktemp -d /tmp/cascade-bench.XXXXXX)

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
[ -n "${NODE_NETNS:-}" ] && make_netns "$NODE_NETNS" "$IP" "$NODE_IP"
# shellcheck source=scripts/bench-measure.sh
. scripts/bench-measure.sh

start_node_and_publisher
sleep 2
idle_rss=$(rss_kb "$NODE")

measure_header
for n in "${COUNTS[@]}"; do
    measure_step "$NODE" "$n" "$idle_rss" --url "$HTTP/whep/bench" --local-ip "$IP"
done
echo "raw reports and logs: $OUT" >&2
