#!/usr/bin/env bash
# The whole test suite, exactly what CI runs: installs what is missing, then fmt, clippy, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# One test at a time: the end-to-end tests start several nodes, browsers and load testers
# each, and some assert timing (no freeze when the Raft leader dies); on a two-core machine two
# of them at once starve each other into false failures.
# A failing test's own message is the last thing it prints: CI keeps the end of the output, and
# a backtrace there pushed the message out (CASCADE_TEST_BACKTRACE=1 brings it back).
if [ "${CASCADE_TEST_BACKTRACE:-0}" = 1 ]; then export RUST_BACKTRACE=1; else export RUST_BACKTRACE=0; fi
cargo test --workspace --locked -- --test-threads=1
