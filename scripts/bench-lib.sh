# Shared by the bench scripts (sourced, not run): a release build, a node pinned to core 0 and
# a publisher pinned to core 1, both stopped when the script exits.
#   IP, OUT and STREAM must be set by the caller; NODE_ARGS (optional) adds node flags,
#   PUBLISHER_CPU (default 1) moves the publisher to another core.
HTTP="http://$IP:8080"
cargo build --release --locked -p cascade-node -p cascade-loadtest >&2
BIN=target/release
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
cleanup() { kill "${PUB:-}" "${NODE:-}" "${JUNK:-}" "${SAMPLER:-}" 2>/dev/null || true; }
trap cleanup EXIT

# start_node_and_publisher [node log level]: returns once the stream is live.
start_node_and_publisher() {
    RUST_LOG=${1:-warn} taskset -c 0 "$BIN/cascade" run --http-addr "$IP:8080" --webrtc-addr "$IP:8443" \
        --quic-addr "$IP:4433" --data-dir "$OUT/data" ${NODE_ARGS:-} 2>"$OUT/node.log" &
    NODE=$!
    for _ in $(seq 50); do curl -sf "$HTTP/readyz" >/dev/null && break; sleep 0.2; done
    RUST_LOG=info taskset -c "${PUBLISHER_CPU:-1}" "$BIN/cascade-loadtest" publish --url "$HTTP/whip/$STREAM" \
        --local-ip "$IP" --duration 1h 2>"$OUT/publish.log" &
    PUB=$!
    for _ in $(seq 300); do curl -sf "$HTTP/api/v1/streams/$STREAM" | grep -q '"live"' && break; sleep 0.2; done
}
