#!/usr/bin/env bash
# The test command of README.md: everything CI checks, in the order a failure is cheapest to see.
# Prerequisites (Rust, protoc, etcd, Python packages) are installed by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# Disk is what ran out when CI last failed: say how much there was.
df -h . | tail -1

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build (the integration tests start the real binaries)"
cargo build --workspace --bins

echo "== Rust tests"
# Integration tests move hundreds of MiB over loopback; two at a time suits a 2-core machine.
cargo test --workspace -- --test-threads="${CASSEROLE_TEST_THREADS:-2}"

df -h . | tail -1
for check in scripts/checks/*.sh; do
  [ -e "$check" ] || continue
  echo "== $(basename "$check")"
  bash "$check"
done
