#!/usr/bin/env bash
# Builds the release binaries into ./target-bench and runs the side-by-side benchmark
# (tests/bench/bench.py; Casserole vs nginx vs Varnish vs the origin alone). Extra arguments go to
# the harness, e.g. `scripts/bench.sh --out /tmp/bench` or `scripts/bench.sh --only cold_throttled`.
#
# `scripts/bench.sh cache-tests [...]` instead runs the public HTTP caching test suite
# (tests/bench/cache_tests.py) through a release node, Varnish, nginx and Squid, e.g.
# `scripts/bench.sh cache-tests --only node` or `scripts/bench.sh cache-tests --update-docs docs/standards.md`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-bench}"
if [ "${1:-}" = "cache-tests" ]; then
  shift
  cargo build --release -p casserole-node --bins
  exec python3 tests/bench/cache_tests.py --node-bin "$CARGO_TARGET_DIR/release/casserole-node" "$@"
fi
cargo build --release -p casserole-node -p casserole-tests --bins
exec python3 tests/bench/bench.py --bin-dir "$CARGO_TARGET_DIR/release" "$@"
