#!/usr/bin/env bash
# Validates the operator's CRD, install manifests, examples and everything it renders against
# the Kubernetes schemas (kubernetes-validate) and the CRD's own schema. See
# scripts/validate-manifests.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! python3 -c "import kubernetes_validate, jsonschema, yaml" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate jsonschema pyyaml
fi
python3 scripts/validate-manifests.py
