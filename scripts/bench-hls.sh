#!/usr/bin/env bash
# LL-HLS figures for docs/benchmarks.md, on two nodes of one cluster: a packager (the origin,
# with a synthetic WHIP publisher stamping capture-time markers, pinned to core 0) and an
# edge (`--roles edge`, pinned to core 1) that fetches from it over QUIC and caches.
#
#  1. PLAYERS LL-HLS players (`cascade-loadtest hls`, core 0) at the edge for SECS:
#     glass-to-glass at the live edge (capture marker to part arrival), part end to arrival,
#     stalls, requests; the edge's player requests per upstream fetch; the packager's time
#     from a part's last frame to its listing (`cascade_hls_part_listing_delay_seconds`).
#  2. `wrk` (core 0) asking the edge for one cached part, then one cached blocking-playlist
#     answer, for SECS each: requests per second, and per core of the edge's CPU time.
#
#   [SECS=20] [PLAYERS=200] scripts/bench-hls.sh
#
# Bounded: every run stops by itself; everything is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-20}
PLAYERS=${PLAYERS:-200}
IP=127.0.0.81
EDGE_IP=127.0.0.82
OUT=$(mktemp -d /tmp/cascade-bench-hls.XXXXXX)
STREAM=bench
if ! command -v wrk >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
NODE_ARGS="--ladder none --token bench-hls"
PUBLISHER_CPU=0
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
cleanup() { kill "${PUB:-}" "${NODE:-}" "${EDGE:-}" 2>/dev/null || true; }
EDGE_HTTP="http://$EDGE_IP:8080"

start_node_and_publisher
RUST_LOG=warn taskset -c 1 "$BIN/cascade" run --http-addr "$EDGE_IP:8080" --webrtc-addr "$EDGE_IP:8443" \
    --quic-addr "$EDGE_IP:4433" --data-dir "$OUT/edge" --join "$IP:8080" --token bench-hls \
    --roles edge 2>"$OUT/edge.log" &
EDGE=$!
for _ in $(seq 100); do curl -sf "$EDGE_HTTP/hls/$STREAM/index.m3u8" >/dev/null && break; sleep 0.3; done
sleep 3

metric() { # url name: the sum of every series of a counter
    curl -sf "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { print s + 0 }'
}
fetches0=$(metric "$EDGE_HTTP" cascade_hls_edge_upstream_fetches_total)
answered0=$(metric "$EDGE_HTTP" cascade_hls_edge_requests_total)
taskset -c 0 "$BIN/cascade-loadtest" hls --url "$EDGE_HTTP/hls/$STREAM/index.m3u8" \
    --players "$PLAYERS" --ramp 100 --duration "${SECS}s" --report "$OUT/hls.json" >"$OUT/hls.txt" 2>"$OUT/hls.log" || true
fetches=$(( $(metric "$EDGE_HTTP" cascade_hls_edge_upstream_fetches_total) - fetches0 ))
answered=$(( $(metric "$EDGE_HTTP" cascade_hls_edge_requests_total) - answered0 ))
listing=$(curl -sf "$HTTP/metrics" | awk '/^cascade_hls_part_listing_delay_seconds\{quantile="0.5"\}/ { p50 = $NF * 1000 }
    /^cascade_hls_part_listing_delay_seconds\{quantile="0.99"\}/ { p99 = $NF * 1000 }
    END { printf "%.1f / %.1f", p50, p99 }')
python3 - "$OUT/hls.json" "$PLAYERS" "$SECS" "$answered" "$fetches" "$listing" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); players, secs, answered, fetches, listing = sys.argv[2:7]
g, p = r["latency"], r["hls"]["part_latency"]
print(f"| {players} LL-HLS players at the edge, {secs} s | joined {r['sessions_joined']}/{players}, stalls {r['freezes']}, parts {r['frames_received']}/{r['frames_expected']} |")
print(f"| glass to player at the live edge (capture marker to part arrival), p50 / p95 / p99 ms | {g['p50_ms']} / {g['p95_ms']} / {g['p99_ms']} |")
print(f"| part end (program date time) to arrival, p50 / p95 / p99 ms | {p['p50_ms']} / {p['p95_ms']} / {p['p99_ms']} |")
print(f"| packager: a part's last frame to its listing, p50 / p99 ms | {listing} |")
print(f"| player requests the edge answered / fetches it sent upstream | {answered} / {fetches} ({int(answered)/max(1,int(fetches)):.0f} to 1) |")
PY

# 2. One cached object, asked as fast as wrk can from core 0: a part (bytes dominate) and a
#    blocking playlist answer for a part already out (small: the per-request cost).
playlist=$(curl -sf "$EDGE_HTTP/hls/$STREAM/source/index.m3u8")
part=$(echo "$playlist" | grep -o 'part[0-9]*\.[0-9]*\.m4s' | tail -1)
msn=${part#part}; index=${msn#*.}; index=${index%.m4s}; msn=${msn%%.*}
for what in "part|/hls/$STREAM/source/$part" "playlist|/hls/$STREAM/source/index.m3u8?_HLS_msn=$msn&_HLS_part=$index"; do
    name=${what%%|*}; path=${what#*|}
    size=$(curl -sf "$EDGE_HTTP$path" | wc -c)
    before=$(ticks "$EDGE")
    taskset -c 0 wrk -t 1 -c 64 -d "${SECS}s" "$EDGE_HTTP$path" >"$OUT/wrk-$name.txt"
    after=$(ticks "$EDGE")
    rps=$(awk '/^Requests\/sec/ { print $2 }' "$OUT/wrk-$name.txt")
    awk -v n="$name" -v r="$rps" -v a="$after" -v b="$before" -v hz="$HZ" -v s="$SECS" -v z="$size" 'BEGIN {
        c = (a - b) / hz / s
        printf "| one cached %s (%d bytes), wrk 64 connections on the other core: requests/s; edge CPU (cores); requests/s per edge core | %.0f; %.2f; %.0f |\n", n, z, r, c, r / c }'
done
echo "raw output: $OUT" >&2
