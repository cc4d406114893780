#!/usr/bin/env bash
# Cascade and Janus side by side (issue 14, item 7): the same viewers (cascade-loadtest, one
# worker) against each server pinned to the same core, in one run of this script. Janus is
# Debian's `janus` (1.1.2) with its streaming plugin, fed the load tester's default clip
# (1280x720 30 fps H.264 and Opus) over RTP by FFmpeg; Cascade gets the same clip over WHIP
# from the load tester's publisher. Janus's whole configuration is written to $OUT/janus, so
# that anyone can rerun it.
#
# Both servers run in a network namespace this script makes (`cascade-bench`, a veth pair
# 10.77.0.1 <-> 10.77.0.2): Janus gathers no loopback candidates, and over the veth the
# viewers' receive work is steered (RPS) to the load tester's core instead of being charged
# to the server's, as it would be on loopback.
#
#   [STEP_SECS=20] [VERIFY=100] scripts/bench-janus.sh [viewer counts...]   (default: 250 500 750)
#
# Bounded: every step runs STEP_SECS. Needs root (the namespace; the first install of `janus`).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS=("$@")
[ ${#COUNTS[@]} -eq 0 ] && COUNTS=(250 500 750)
export STEP_SECS=${STEP_SECS:-20}
export VERIFY=${VERIFY:-100}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
IP=10.77.0.1          # the load tester's side
SERVER_IP=10.77.0.2   # inside the namespace
NS=cascade-bench
OUT=$(mktemp -d /tmp/cascade-janus.XXXXXX)
LIB=/usr/lib/x86_64-linux-gnu/janus

command -v janus >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends janus >&2
STREAM=bench
PUBLISHER_CPU=$CLIENT_CPU
NODE_NETNS=$NS
NODE_IP=$SERVER_IP
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
# The load tester's default clip, generated on its first use.
CLIP=${XDG_CACHE_HOME:-$HOME/.cache}/cascade-loadtest
if [ ! -f "$CLIP/default-720p30-1500k-gop2s.h264" ]; then
    timeout 120 "$BIN/cascade-loadtest" publish --url "http://127.0.0.1:9/whip/none" \
        --local-ip 127.0.0.1 --duration 1s >/dev/null 2>&1 || true
fi

cleanup() {
    kill "${JANUS:-}" "${VIDEO:-}" "${AUDIO:-}" "${NODE:-}" "${PUB:-}" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
make_netns "$NS" "$IP" "$SERVER_IP"
IN_NS=(ip netns exec "$NS")
# shellcheck source=scripts/bench-measure.sh
. scripts/bench-measure.sh

mkdir -p "$OUT/janus"
cat >"$OUT/janus/janus.jcfg" <<CFG
general: {
	configs_folder = "$OUT/janus"
	plugins_folder = "$LIB/plugins"
	transports_folder = "$LIB/transports"
	events_folder = "$LIB/events"
	loggers_folder = "$LIB/loggers"
	debug_level = 3
}
media: {
	rtp_port_range = "20000-40000"
}
nat: {
	nice_debug = false
	ice_enforce_list = "$NS-1"
}
plugins: {
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_videoroom.so,libjanus_voicemail.so"
}
transports: {
	disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}
events: {
	broadcast = false
}
CFG
cat >"$OUT/janus/janus.transport.http.jcfg" <<CFG
general: {
	base_path = "/janus"
	http = true
	port = 8088
	ip = "$SERVER_IP"
	https = false
}
admin: {
	admin_http = false
}
CFG
cat >"$OUT/janus/janus.plugin.streaming.jcfg" <<CFG
general: {
}
bench: {
	type = "rtp"
	id = 1
	description = "the load tester's default clip"
	media = (
		{
			type = "video"
			mid = "v"
			label = "video"
			port = 5104
			pt = 96
			codec = "h264"
			fmtp = "profile-level-id=42e01f;packetization-mode=1"
		},
		{
			type = "audio"
			mid = "a"
			label = "audio"
			port = 5102
			pt = 111
			codec = "opus"
		}
	)
}
CFG

"${IN_NS[@]}" taskset -c "$SERVER_CPU" janus -C "$OUT/janus/janus.jcfg" -F "$OUT/janus" >"$OUT/janus.log" 2>&1 &
JANUS=$!
for _ in $(seq 100); do curl -sf "http://$SERVER_IP:8088/janus/info" >/dev/null && break; sleep 0.2; done
# Raw H.264 cannot be looped (FFmpeg cannot seek it: the feed would stop after 10 s): the
# same bitstream in Matroska can.
ffmpeg -loglevel error -y -framerate 30 -f h264 -i "$CLIP/default-720p30-1500k-gop2s.h264" \
    -c copy "$OUT/clip.mkv"
taskset -c "$CLIENT_CPU" ffmpeg -loglevel error -re -stream_loop -1 -i "$OUT/clip.mkv" \
    -c copy -f rtp -payload_type 96 -pkt_size 1200 \
    "rtp://$SERVER_IP:5104" >"$OUT/ffmpeg-video.log" 2>&1 &
VIDEO=$!
taskset -c "$CLIENT_CPU" ffmpeg -loglevel error -re -stream_loop -1 -i "$CLIP/default-opus.ogg" \
    -c copy -f rtp -payload_type 111 "rtp://$SERVER_IP:5102" >"$OUT/ffmpeg-audio.log" 2>&1 &
AUDIO=$!
sleep 3
JANUS_PID=$(pgrep -f -n "janus -C $OUT/janus/janus.jcfg")
idle_rss=$(rss_kb "$JANUS_PID")

CASCADE_OUT=$OUT/cascade
mkdir -p "$CASCADE_OUT"
echo "### Janus $(dpkg-query -W -f '${Version}' janus 2>/dev/null || true), streaming plugin (core $SERVER_CPU)"
measure_header
for n in "${COUNTS[@]}"; do
    measure_step "$JANUS_PID" "$n" "$idle_rss" --url "http://$SERVER_IP:8088/janus" --local-ip "$IP" \
        --signalling janus --janus-mountpoint 1
done
kill "$JANUS" "$VIDEO" "$AUDIO" 2>/dev/null || true
wait "$JANUS" 2>/dev/null || true
JANUS=

OUT=$CASCADE_OUT
start_node_and_publisher
sleep 2
idle_rss=$(rss_kb "$NODE")
echo
echo "### Cascade $(git rev-parse --short HEAD), ${NODE_ARGS:-default flags} (core $SERVER_CPU)"
measure_header
for n in "${COUNTS[@]}"; do
    measure_step "$NODE" "$n" "$idle_rss" --url "$HTTP/whep/bench" --local-ip "$IP"
done
echo "Janus's configuration and every log: ${OUT%/cascade}" >&2
