#!/usr/bin/env bash
# Runs a single-node cluster with every role; open the printed URL to publish and watch.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh run
exec cargo run --release --locked -p cascade-node --bin cascade -- run "$@"
