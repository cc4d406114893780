#!/usr/bin/env bash
# The whole test suite, exactly what CI runs: installs what is missing, then fmt, clippy, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
