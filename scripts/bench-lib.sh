# Shared by the bench scripts (sourced, not run): a release build, a node and a publisher
# each pinned to a core, both stopped when the script exits.
#   IP, OUT and STREAM must be set by the caller. Optional:
#     NODE_ARGS       more node flags;
#     SERVER_BIN      another build of the node, measured the same way (default: this one);
#     SERVER_CPU      the node's core (default 0); PUBLISHER_CPU the publisher's (default 1);
#     NODE_NETNS      a network namespace to run the node in; NODE_IP is then its address
#                     there and IP the publisher's, outside (default: the node on IP).
# After start_node_and_publisher, NODE is the node's PID (measured by bench-measure.sh) and
# HTTP its base URL. make_netns NAME makes the namespace NODE_NETNS names (see below).
HTTP="http://${NODE_IP:-$IP}:8080"
cargo build --release --locked -p cascade-node -p cascade-loadtest >&2
BIN=target/release
SERVER_BIN=${SERVER_BIN:-$BIN/cascade}
HZ=$(getconf CLK_TCK)
# A process's CPU time in clock ticks: all of it, and the kernel's part (system time).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
kernel_ticks() { awk '{print $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
trap cleanup EXIT

# make_netns NAME CLIENT_IP SERVER_IP: a network namespace NAME joined to this one by a veth
# pair (CLIENT_IP here, SERVER_IP inside, /24), with each side's receive work steered (RPS)
# to the core of the side that receives: CLIENT_CPU (default 1) here, SERVER_CPU (default 0)
# inside. On loopback the receivers' softirq runs on the sender's core and is charged to it.
# Deleted when the script exits (the caller's cleanup must run `ip netns del NAME` if it
# replaces this one's). Needs root.
make_netns() {
    local ns=$1 client_ip=$2 server_ip=$3
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$ns-0" 2>/dev/null || true
    ip netns add "$ns"
    ip link add "$ns-0" type veth peer name "$ns-1"
    ip link set "$ns-1" netns "$ns"
    ip addr add "$client_ip/24" dev "$ns-0"
    ip link set "$ns-0" up
    ip netns exec "$ns" ip addr add "$server_ip/24" dev "$ns-1"
    ip netns exec "$ns" ip link set "$ns-1" up
    ip netns exec "$ns" ip link set lo up
    printf '%x' $((1 << ${CLIENT_CPU:-1})) >"/sys/class/net/$ns-0/queues/rx-0/rps_cpus"
    ip netns exec "$ns" sh -c "printf '%x' $((1 << ${SERVER_CPU:-0})) >/sys/class/net/$ns-1/queues/rx-0/rps_cpus"
    NETNS_MADE=$ns
}
cleanup() {
    kill "${PUB:-}" "${NODE:-}" "${JUNK:-}" "${SAMPLER:-}" 2>/dev/null || true
    [ -n "${NETNS_MADE:-}" ] && ip netns del "$NETNS_MADE" 2>/dev/null
    true
}

# start_node_and_publisher [node log level]: returns once the stream is live.
start_node_and_publisher() {
    local node_ip=${NODE_IP:-$IP} in_netns=()
    [ -n "${NODE_NETNS:-}" ] && in_netns=(ip netns exec "$NODE_NETNS")
    HTTP="http://$node_ip:8080"
    "${in_netns[@]}" env RUST_LOG="${1:-warn}" taskset -c "${SERVER_CPU:-0}" "$SERVER_BIN" run \
        --http-addr "$node_ip:8080" --webrtc-addr "$node_ip:8443" --quic-addr "$node_ip:4433" \
        --data-dir "$OUT/data" ${NODE_ARGS:-} 2>"$OUT/node.log" &
    NODE=$!
    for _ in $(seq 50); do curl -sf "$HTTP/readyz" >/dev/null && break; sleep 0.2; done
    # Measure the node itself, whatever started it (`ip netns exec` may run it as a child).
    NODE=$(pgrep -f -n -- "run --http-addr $node_ip:8080" || echo "$NODE")
    RUST_LOG=info taskset -c "${PUBLISHER_CPU:-1}" "$BIN/cascade-loadtest" publish --url "$HTTP/whip/$STREAM" \
        --local-ip "$IP" --duration 1h 2>"$OUT/publish.log" &
    PUB=$!
    for _ in $(seq 300); do curl -sf "$HTTP/api/v1/streams/$STREAM" | grep -q '"live"' && break; sleep 0.2; done
}
