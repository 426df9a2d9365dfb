#!/usr/bin/env bash
# Builds the release binaries into ./target-bench and runs the side-by-side benchmark
# (tests/bench/bench.py; Casserole vs nginx vs Varnish vs the origin alone). Extra arguments go to
# the harness, e.g. `scripts/bench.sh --out /tmp/bench` or `scripts/bench.sh --only cold_throttled`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-bench}"
cargo build --release -p casserole-node -p casserole-tests --bins
exec python3 tests/bench/bench.py --bin-dir "$CARGO_TARGET_DIR/release" "$@"
