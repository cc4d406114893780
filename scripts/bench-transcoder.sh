#!/usr/bin/env bash
# What the transcoder costs, on one node pinned to core 0 (its transcoder child inherits the
# pin; FFmpeg sends `-c copy` from core 1, which costs next to nothing):
#
#  - CPU of the transcoder process per configuration, over SECS after a warm-up: AAC to Opus
#    alone, then each video rung on top of it (the difference is the rung's cost). Rungs are
#    encoded just in time, so each watched rung has one WHEP viewer (the load tester, pinned
#    with ?rendition=, on core 1); one row has the ladder and no viewer: what just in time
#    saves;
#  - latency the transcoder adds per video rung (source frame handed to the child → its
#    rendition frame back), p50 and p99 from `cascade_transcoder_latency_seconds`.
#
# Sources: 1280x720 30 fps x264 (`veryfast`, 2.5 Mbit/s, keyframe every 2 s) with AAC
# 44.1 kHz, made once with FFmpeg: one without B-frames, one with two (OBS's default).
#
#   [SECS=20] scripts/bench-transcoder.sh
#
# Bounded: every run stops by itself; everything is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-20}
IP=127.0.0.79
OUT=$(mktemp -d /tmp/cascade-bench-transcoder.XXXXXX)
STREAM=bench
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
# Senders and viewers are this script's children.
cleanup() { pkill -P $$ 2>/dev/null || true; kill "${NODE:-}" 2>/dev/null || true; }

source_file() { # name bframes
    ffmpeg -v error -y -f lavfi -i "testsrc2=size=1280x720:rate=30" \
        -f lavfi -i "sine=frequency=440:sample_rate=44100" -t 20 \
        -c:v libx264 -preset veryfast -b:v 2500k -g 60 -bf "$2" -pix_fmt yuv420p \
        -c:a aac -b:a 128k -f flv "$OUT/$1.flv"
}
source_file plain 0
source_file bframes 2

echo "| configuration | encoded | transcoder CPU (% of one core) | added latency p50 / p99 (ms) |"
echo "|---|---|---:|---|"
run() { # label source ladder [rendition ...] (each watched by one viewer)
    rm -rf "$OUT/data"
    RUST_LOG=warn taskset -c 0 "$BIN/cascade" run --http-addr "$IP:8080" --webrtc-addr "$IP:8443" \
        --quic-addr "$IP:4433" --data-dir "$OUT/data" --ladder "$3" >/dev/null 2>"$OUT/node-$1.log" &
    NODE=$!
    for _ in $(seq 50); do curl -sf "$HTTP/readyz" >/dev/null && break; sleep 0.2; done
    taskset -c 1 ffmpeg -v error -re -stream_loop -1 -i "$OUT/$2.flv" -c copy \
        -t "$((SECS + 30))" -f flv "rtmp://$IP:1935/live/bench" &
    local sender=$!
    local pid=""
    for _ in $(seq 100); do
        pid=$(curl -sf "$HTTP/api/v1/streams/bench" | python3 -c \
            'import json,sys; t=json.load(sys.stdin).get("transcoder") or {}; print(t.get("pid","") if t.get("state")=="running" else "")' \
            2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.2
    done
    [ -n "$pid" ] || { echo "no transcoder for $1" >&2; exit 1; }
    local viewers=()
    for rendition in "${@:4}"; do
        taskset -c 1 "$BIN/cascade-loadtest" webrtc --url "$HTTP/whep/bench?rendition=$rendition" \
            --local-ip "$IP" --viewers 1 --duration "$((SECS + 15))s" >/dev/null 2>&1 &
        viewers+=($!)
    done
    sleep 5 # warm-up: the first group, the encoders' look-ahead
    local outputs
    outputs=$(curl -sf "$HTTP/api/v1/streams/bench" | python3 -c \
        'import json,sys; t=json.load(sys.stdin)["transcoder"]; print(", ".join(t["encoding"] + [o for o in t["outputs"] if o.startswith("audio/")]) or "(none)")')
    local before after
    before=$(ticks "$pid")
    sleep "$SECS"
    after=$(ticks "$pid")
    local cpu
    cpu=$(awk -v d=$((after - before)) -v hz="$HZ" -v s="$SECS" 'BEGIN { printf "%.1f", 100 * d / hz / s }')
    local latency
    latency=$(curl -sf "$HTTP/metrics" | awk '
        /^cascade_transcoder_latency_seconds\{/ {
            match($0, /track="[^"]*"/); track = substr($0, RSTART + 7, RLENGTH - 8)
            if ($0 ~ /quantile="0.5"/) p50[track] = $NF * 1000
            if ($0 ~ /quantile="0.99"/) p99[track] = $NF * 1000
        }
        END { sep = ""; for (t in p50) { printf "%s%s %.0f / %.0f", sep, t, p50[t], p99[t]; sep = "; " } }')
    echo "| $1 | $outputs | $cpu | ${latency:-n/a} |"
    kill "$sender" "$NODE" "${viewers[@]}" 2>/dev/null || true
    wait "$sender" "$NODE" "${viewers[@]}" 2>/dev/null || true
}
run "720p without B-frames, no ladder" plain none
run "720p without B-frames, ladder 360p+180p, nobody watching" plain 360p:800,180p:250
run "720p without B-frames, ladder 360p, watched" plain 360p:800 video/360p
run "720p without B-frames, ladder 180p, watched" plain 180p:250 video/180p
run "720p without B-frames, ladder 360p+180p, both watched" plain 360p:800,180p:250 video/360p video/180p
run "720p with B-frames, no ladder, watched" bframes none video/720p
run "720p with B-frames, ladder 360p+180p, all watched" bframes 360p:800,180p:250 video/720p video/360p video/180p
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
