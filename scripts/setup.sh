#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, run and test Casserole. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)   # etcd-client's build needs protoc
command -v etcd >/dev/null || missing+=(etcd-server)            # cluster tests start a real etcd 3.4
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "Rust (cargo) is required: see https://rustup.rs" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

if [ -f requirements-dev.txt ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
fi
