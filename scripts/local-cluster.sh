#!/usr/bin/env bash
# A local three-node Casserole cluster: etcd, a test origin and three nodes, all on 127.0.0.1.
# Ctrl-C (or SIGTERM) stops everything. Usage: scripts/local-cluster.sh [--release]
#
#   node 1: http://127.0.0.1:8081   metrics http://127.0.0.1:9091/metrics
#   node 2: http://127.0.0.1:8082   metrics http://127.0.0.1:9092/metrics
#   node 3: http://127.0.0.1:8083   metrics http://127.0.0.1:9093/metrics
#   origin: http://127.0.0.1:8070   objects /small.bin (64 MiB), /big.bin (1 GiB), throttled to 50 MB/s a connection
#
# Try: curl -s http://127.0.0.1:8081/big.bin | sha256sum; curl -s http://127.0.0.1:8082/big.bin | sha256sum
# then compare casserole_upstream_bytes_total across the nodes' metrics. Purge (token printed at start):
#   curl -s -H "Authorization: Bearer $ADMIN_TOKEN" -d '{"path": "/big.bin"}' http://127.0.0.1:9091/purge
# Nodes run with the defaults a user would use: no --node-id (each one's id is its peering URL).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null && command -v protoc >/dev/null || bash scripts/setup.sh
profile=debug
if [ "${1:-}" = "--release" ]; then profile=release; fi
cargo build $([ $profile = release ] && echo --release) -p casserole-node -p casserole-tests --bins
bin="target/$profile"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

etcd --name local --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster local=http://127.0.0.1:2380 >"$work/etcd.log" 2>&1 &
pids+=($!)

"$bin/casserole-test-origin" --listen 127.0.0.1:8070 --throttle 50M \
  --object /small.bin=64Mi,seed=1 --object /big.bin=1Gi,seed=2 >"$work/origin.log" 2>&1 &
pids+=($!)

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
admin_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
for i in 1 2 3; do
  mkdir -p "$work/node$i"
  "$bin/casserole-node" --upstream http://127.0.0.1:8070 \
    --address 127.0.0.1:808$i --admin-address 127.0.0.1:909$i \
    --peer-address 127.0.0.1:800$i --peering-address http://127.0.0.1:800$i --admin-token "$admin_token" \
    --etcd http://127.0.0.1:2379 --cluster-name local --peer-token "$token" \
    --disk-cache-dir "$work/node$i" --max-memory-usage 512Mi >"$work/node$i.log" 2>&1 &
  pids+=($!)
done

for i in 1 2 3; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:909$i/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
echo "cluster up: nodes on 127.0.0.1:8081-8083, origin on 127.0.0.1:8070; logs in $work"
echo "admin token (POST /purge): ADMIN_TOKEN=$admin_token"
echo "members: $(curl -s http://127.0.0.1:9091/metrics | grep '^casserole_cluster_members')"
wait -n "${pids[@]}"
