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
cargo test --workspace --locked -- --test-threads=1
