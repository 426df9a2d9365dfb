#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, run and test Casserole. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)   # etcd-client's build needs protoc
# ... and protobuf's own .proto files (descriptor.proto), which Debian ships apart from protoc,
# as a recommendation that --no-install-recommends below does not install
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v etcd >/dev/null || missing+=(etcd-server)            # cluster tests start a real etcd 3.4
command -v nginx >/dev/null || missing+=(nginx)                 # benchmark peers (smoke mode runs in CI)
command -v varnishd >/dev/null || missing+=(varnish)
command -v wrk >/dev/null || missing+=(wrk)
# Real clients and servers of the ecosystem tests (tests/tests/clients_*.rs, docs/clients.md).
command -v dpkg-scanpackages >/dev/null || missing+=(dpkg-dev)     # flat and mirror apt repos
command -v apt-ftparchive >/dev/null || missing+=(apt-utils)       # the mirror's Release file
command -v docker-registry >/dev/null || missing+=(docker-registry)  # the registry origin
command -v skopeo >/dev/null || missing+=(skopeo)
command -v aria2c >/dev/null || missing+=(aria2)
command -v wget >/dev/null || missing+=(wget)
command -v npm >/dev/null || missing+=(npm)
# apt-get install of "$@", without letting packages start their services (nginx would bind
# 0.0.0.0:80): tests and benchmarks start their own instances on 127.0.0.1.
apt_install() {
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  local made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
}
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "Rust (cargo) is required: see https://rustup.rs" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# Optional, for benchmarks only (`scripts/setup.sh --bench`): Squid and the public HTTP caching
# test suite that tests/bench/cache_tests.py runs (it installs both itself when they are missing).
if [ "${1:-}" = "--bench" ]; then
  command -v squid >/dev/null || apt_install squid
  python3 -c 'import sys; sys.path.insert(0, "tests/bench"); import cache_tests; cache_tests.ensure_suite(True)'
fi

if [ -f requirements-dev.txt ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
fi

# verdaccio, the npm registry the npm client tests publish to, in a project-local, gitignored
# .tools/ (6.8: later releases want Node 22). tests/src/ecosystem finds it there.
verdaccio_version=6.8.0
if [ "$(cat .tools/node_modules/verdaccio/package.json 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null)" \
   != "$verdaccio_version" ]; then
  mkdir -p .tools
  npm install --prefix .tools --no-save --no-audit --no-fund --loglevel=error \
    "verdaccio@$verdaccio_version"
fi
