#!/usr/bin/env bash
# What RTMP and SRT ingest cost, on one node pinned to core 0 (the senders on core 1):
#
#  1. Latency added by the ingest path: the load tester publishes its capture-time-stamped
#     clip over WHIP, then over RTMP, and WHEP viewers measure glass-to-glass each time, in
#     the same run (the difference is what RTMP adds; the clip is video-only over RTMP).
#  2. CPU per ingested stream at 6 Mbit/s: STREAMS FFmpeg senders (`-c copy` of a 1080p30
#     6 Mbit/s H.264 + AAC file, looped) over RTMP, then over SRT; node CPU over SECS, minus
#     the idle node's.
#
#   [STREAMS=4] [SECS=20] [VIEWERS=5] scripts/bench-ingest.sh
#
# Bounded: every sender and viewer stops by itself; everything is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-4}
SECS=${SECS:-20}
VIEWERS=${VIEWERS:-5}
IP=127.0.0.78
HTTP="http://$IP:8080"
OUT=$(mktemp -d /tmp/cascade-bench-ingest.XXXXXX)
cargo build --release --locked -p cascade-node -p cascade-loadtest >&2
BIN=target/release
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cleanup() { pkill -P $$ 2>/dev/null || true; kill "${NODE:-}" 2>/dev/null || true; }
trap cleanup EXIT

RUST_LOG=warn taskset -c 0 "$BIN/cascade" run --http-addr "$IP:8080" --webrtc-addr "$IP:8443" \
    --quic-addr "$IP:4433" --data-dir "$OUT/data" 2>"$OUT/node.log" &
NODE=$!
for _ in $(seq 50); do curl -sf "$HTTP/readyz" >/dev/null && break; sleep 0.2; done

wait_live() { for _ in $(seq 150); do curl -sf "$HTTP/api/v1/streams/$1" | grep -q '"live"' && return 0; sleep 0.2; done; echo "stream $1 never went live" >&2; return 1; }

# 1. Latency: WHIP, then RTMP, the same clip and viewers.
latency() { # name url stream
    taskset -c 1 "$BIN/cascade-loadtest" publish --url "$2" --local-ip "$IP" --duration "$((SECS + 15))s" \
        2>"$OUT/publish-$1.log" &
    local publisher=$!
    wait_live "$3"
    sleep 2
    taskset -c 1 "$BIN/cascade-loadtest" webrtc --url "$HTTP/whep/$3" --local-ip "$IP" --viewers "$VIEWERS" \
        --duration "${SECS}s" --report "$OUT/latency-$1.json" >/dev/null 2>"$OUT/viewers-$1.log"
    python3 - "$OUT/latency-$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency"]
print(f"| {sys.argv[2]} | {r['sessions_joined']} | {l['p50_ms']} | {l['p95_ms']} | {l['p99_ms']} | {r['frames_received']}/{r['frames_expected']} |")
PY
    kill "$publisher" 2>/dev/null || true
    wait "$publisher" 2>/dev/null || true
}
echo "| publisher | viewers | glass-to-glass p50 ms | p95 ms | p99 ms | frames received/expected |"
echo "|---|---:|---:|---:|---:|---|"
latency whip "$HTTP/whip/lat-whip" lat-whip
latency rtmp "rtmp://$IP:1935/live/lat-rtmp" lat-rtmp

# 2. CPU per stream at 6 Mbit/s.
FILE="$OUT/6mbit.ts"
ffmpeg -hide_banner -loglevel error -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=20" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=20" -c:v libx264 -preset veryfast \
    -b:v 6M -maxrate 6M -bufsize 6M -bf 0 -g 60 -c:a aac -b:a 128k -f mpegts "$FILE"
cpu_of() { # protocol url-prefix format
    local senders=()
    for i in $(seq "$STREAMS"); do
        taskset -c 1 ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$FILE" -c copy \
            -t "$((SECS + 10))" -f "$3" "$2$i" 2>>"$OUT/senders-$1.log" &
        senders+=($!)
    done
    sleep 5
    local n0 t0 n1 t1
    n0=$(ticks "$NODE"); t0=$(date +%s.%N)
    sleep "$SECS"
    n1=$(ticks "$NODE"); t1=$(date +%s.%N)
    live=$(curl -sf "$HTTP/api/v1/streams" | grep -o "\"state\":\"live\"" | wc -l || true)
    bps=$(curl -sf "$HTTP/api/v1/streams" | python3 -c "import json,sys; print(sum(s['bitrate_bps'] for s in json.load(sys.stdin)['streams']))")
    kill "${senders[@]}" 2>/dev/null || true
    wait "${senders[@]}" 2>/dev/null || true
    python3 -c "
cpu = ($n1 - $n0) / $HZ / ($t1 - $t0) * 100
idle = $IDLE
print(f'| $1 | $STREAMS | $live | {$bps/1e6:.1f} | {cpu:.1f} | {(cpu - idle) / $STREAMS:.2f} |')"
    sleep 12 # let the streams end (reconnect grace) before the next protocol
}
sleep 12
n0=$(ticks "$NODE"); t0=$(date +%s.%N); sleep 5; n1=$(ticks "$NODE"); t1=$(date +%s.%N)
IDLE=$(python3 -c "print(($n1 - $n0) / $HZ / ($t1 - $t0) * 100)")
echo
echo "| ingest | streams sent | streams live | ingest Mbit/s (node's figure) | node CPU % | CPU % per stream (minus idle $(printf %.1f "$IDLE") %) |"
echo "|---|---:|---:|---:|---:|---:|"
cpu_of rtmp "rtmp://$IP:1935/live/cpu-rtmp-" flv
cpu_of srt "srt://$IP:9710?streamid=publish:cpu-srt-" mpegts
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); logs in $OUT"
