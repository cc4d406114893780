#!/usr/bin/env bash
# Issue 14's before/after in one run: the same node build and the same load tester, with the
# node pinned to one core (`bench-capacity.sh`: the load tester and the publisher on the
# other) and one engine shard, in three configurations:
#   1. every viewer packet through str0m, one system call per GSO run: the path before issue 14
#      (`--webrtc-fast-path false --webrtc-send-batch 1`);
#   2. the fast path, one system call per run (`--webrtc-send-batch 1`);
#   3. the fast path with up to 64 runs per `sendmmsg` (the defaults).
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
echo "### 1. str0m's path, a system call per run (--webrtc-fast-path false --webrtc-send-batch 1)"
# shellcheck disable=SC2086
NODE_ARGS="--webrtc-threads 1 --webrtc-fast-path false --webrtc-send-batch 1" scripts/bench-capacity.sh $BEFORE
echo
echo "### 2. The fast path, a system call per run (--webrtc-send-batch 1)"
# shellcheck disable=SC2086
NODE_ARGS="--webrtc-threads 1 --webrtc-send-batch 1" scripts/bench-capacity.sh $AFTER
echo
echo "### 3. The fast path, runs to many viewers per sendmmsg (default)"
# shellcheck disable=SC2086
NODE_ARGS="--webrtc-threads 1" scripts/bench-capacity.sh $AFTER
