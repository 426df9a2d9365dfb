#!/usr/bin/env bash
# Runs one standalone Casserole node in front of UPSTREAM (default: an example mirror), with the
# embedded defaults, on 127.0.0.1:8080 (metrics on 127.0.0.1:9090). Extra arguments go to the node.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || bash scripts/setup.sh
upstream="${1:-https://deb.debian.org}"
shift || true
exec cargo run --release -p casserole-node -- \
  --upstream "$upstream" --address 127.0.0.1:8080 --admin-address 127.0.0.1:9090 "$@"
