#!/usr/bin/env bash
# Runs every fuzz target (protocol/fuzz) for a bounded time each and prints one line per
# target: inputs tried, coverage, and whether it crashed. Installs cargo-fuzz if missing.
# Uses a nightly toolchain when one is installed, else stable with RUSTC_BOOTSTRAP=1 (what
# cargo-fuzz's -Z flags need). Exit status 1 if any target crashed; the crashing input is in
# protocol/fuzz/artifacts/<target>/.
#
#   [FUZZ_SECS=60] scripts/fuzz.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")/../protocol"
FUZZ_SECS=${FUZZ_SECS:-60}
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(relay_wire stun_username ice_tcp_frames h264_access_unit stream_id_and_query sdp_offer rtmp_connection flv_tags mpegts_demux)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi
failed=0
echo "| target | seconds | inputs tried | coverage (edges) | result |"
echo "|---|---:|---:|---:|---|"
for target in "${TARGETS[@]}"; do
    log=$(mktemp /tmp/cascade-fuzz-$target.XXXXXX)
    if "${FUZZ[@]}" run "$target" -- -max_total_time="$FUZZ_SECS" -rss_limit_mb=4096 >"$log" 2>&1; then
        result="no crash"
    else
        result="CRASH (see $log)"
        failed=1
    fi
    runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    echo "| $target | $FUZZ_SECS | ${runs:-?} | ${cov:-?} | $result |"
done
exit $failed
