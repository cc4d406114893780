#!/usr/bin/env bash
# Starts a three-node Cascade cluster on loopback (127.0.0.11-13) from the configs in
# three-node/, waits until every node is ready and prints where to publish and watch.
# Ctrl-C stops all three. State lives in $CASCADE_CLUSTER_DATA (default
# ./cascade-cluster-data; delete it to start afresh). CASCADE_BIN picks the binary
# (default: a release build of this checkout).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
cascade="${CASCADE_BIN:-}"
if [[ -z "$cascade" ]]; then
  cargo build --release --locked -p cascade-node --bin cascade
  cascade="$PWD/target/release/cascade"
fi
state="${CASCADE_CLUSTER_DATA:-$PWD/cascade-cluster-data}"
mkdir -p "$state"
cd "$state"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for n in 1 2 3; do
  "$cascade" run --config "$here/three-node/node-$n.toml" &
  pids+=($!)
  # The first node must be up before the others join it.
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1$n:8080/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1$n:8080/readyz" >/dev/null || { echo "node $n did not become ready" >&2; exit 1; }
done
cat <<TEXT

Three-node Cascade cluster is up.
  page (publish and watch): http://127.0.0.11:8080/   http://127.0.0.12:8080/   http://127.0.0.13:8080/
  cluster:                  http://127.0.0.11:8080/api/v1/cluster
  nodes:                    $cascade node --api 127.0.0.11:8080 list
  metrics:                  http://127.0.0.11:8080/metrics
Publish to any node; a viewer asking any node is served by the least-loaded edge.
Ctrl-C stops the cluster.
TEXT
"$cascade" node --api 127.0.0.11:8080 list
wait
