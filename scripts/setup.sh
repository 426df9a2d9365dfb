#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, run and test Casserole. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)   # etcd-client's build needs protoc
command -v etcd >/dev/null || missing+=(etcd-server)            # cluster tests start a real etcd 3.4
command -v nginx >/dev/null || missing+=(nginx)                 # benchmark peers (smoke mode runs in CI)
command -v varnishd >/dev/null || missing+=(varnish)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Packages must not start their services (nginx would bind 0.0.0.0:80): tests and benchmarks
  # start their own instances on 127.0.0.1.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
  if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi

if ! command -v cargo >/dev/null; then
  echo "Rust (cargo) is required: see https://rustup.rs" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

if [ -f requirements-dev.txt ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
fi
