#!/usr/bin/env bash
# Issue 14's before/after in one run: the same node build and the same load tester, first
# with every viewer packet through str0m (`--webrtc-fast-path false`, the path before the
# fast path), then on the fast path. Each is a capacity curve (`bench-capacity.sh`: the node
# pinned to one core, the load tester and the publisher to the other).
#
#   [STEP_SECS=20] [VERIFY=100] scripts/bench-fast-path.sh "<counts before>" "<counts after>"
#
# Bounded: every step runs STEP_SECS.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:-"250 500 750"}
AFTER=${2:-"250 500 750 1000 1500 2000"}
export STEP_SECS=${STEP_SECS:-20}
export VERIFY=${VERIFY:-100}
echo "### str0m's path (--webrtc-fast-path false)"
# shellcheck disable=SC2086
NODE_ARGS="--webrtc-fast-path false" scripts/bench-capacity.sh $BEFORE
echo
echo "### The fast path (default)"
# shellcheck disable=SC2086
scripts/bench-capacity.sh $AFTER
