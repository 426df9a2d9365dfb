#!/usr/bin/env bash
# Helm chart, Dockerfile and Prometheus integration: lint and render the chart with the real Helm
# engine (helm-python-sdk), validate every manifest (kubernetes-validate, the CRD schema), run
# checkov, and check the dashboard's queries against the metrics the binaries export.
# Uses the binaries scripts/test.sh built (override with CASSEROLE_NODE_BIN / CASSEROLE_OPERATOR_BIN).
set -euo pipefail
cd "$(dirname "$0")/../.."

export CASSEROLE_NODE_BIN="${CASSEROLE_NODE_BIN:-$PWD/target/debug/casserole-node}"
export CASSEROLE_OPERATOR_BIN="${CASSEROLE_OPERATOR_BIN:-$PWD/target/debug/casserole-operator}"
for bin in "$CASSEROLE_NODE_BIN" "$CASSEROLE_OPERATOR_BIN"; do
  if [ ! -x "$bin" ]; then
    echo "chart: $bin is missing (cargo build --workspace --bins)" >&2
    exit 1
  fi
done
if ! python3 -c "import helm_python, kubernetes_validate, jsonschema, yaml, pytest" 2>/dev/null \
   || ! command -v checkov >/dev/null; then
  echo "chart: Python tools missing: python3 -m pip install -r requirements-dev.txt" >&2
  exit 1
fi

# pytest exits 5 when it collected no test: that is a failure here too (set -e).
python3 -m pytest tests/chart -q -p no:cacheprovider -rfE
