"""Shared fixtures of the chart tests: the chart rendered by the real Helm engine (through
helm-python-sdk) with several value sets, the binaries, and one checkov run over everything."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

import helm_python as helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "casserole"
RELEASE = "casserole"
NAMESPACE = "casserole-system"
NODE_BIN = Path(os.environ.get("CASSEROLE_NODE_BIN", ROOT / "target" / "debug" / "casserole-node"))
OPERATOR_BIN = Path(
    os.environ.get("CASSEROLE_OPERATOR_BIN", ROOT / "target" / "debug" / "casserole-operator")
)

# A complete cache, as a platform team would declare it.
DOWNLOADS = {
    "name": "downloads",
    "labels": {"team": "platform"},
    "spec": {
        "upstream": "https://downloads.example.com",
        "replicas": 3,
        "passThrough": ["^/private/"],
        "memory": {"maxUsage": "1Gi"},
        "disk": {"size": "100Gi", "storageClassName": "fast-ssd"},
        "resources": {
            "requests": {"cpu": "500m", "memory": "1536Mi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        },
        "service": {"type": "ClusterIP", "port": 80},
    },
}
# Node-local, memory-only, in another namespace.
MODELS = {
    "name": "models",
    "namespace": "ml",
    "spec": {
        "upstream": "http://model-hub.ml.svc:8080",
        "workload": "DaemonSet",
        "disk": {"enabled": False},
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
    },
}
EXTERNAL_ETCD = {
    "name": "mirror",
    "spec": {
        "upstream": "https://deb.debian.org",
        "replicas": 2,
        "etcd": {"external": {"endpoints": ["http://etcd-0.infra.svc:2379", "http://etcd-1.infra.svc:2379"]}},
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
    },
}

VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "service-monitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}
    },
    "dashboard": {"grafanaDashboard": {"enabled": True}},
    "alerts": {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}},
    "caches": {"caches": [DOWNLOADS, MODELS]},
    "external-etcd": {"caches": [EXTERNAL_ETCD]},
    "everything": {
        "operator": {
            "replicas": 3,
            "watchNamespace": "cdn",
            "image": {"digest": "sha256:" + "ab" * 32},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "leaderElection": {"leaseName": "cdn-operator", "leaseDurationSeconds": 30},
            "logFormat": "text",
        },
        "node": {"image": {"repository": "registry.internal/casserole-node", "tag": "0.1.0-patched"}},
        "metrics": {"serviceMonitor": {"enabled": True, "cacheNamespaces": ["cdn"]}},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
        "caches": [dict(DOWNLOADS, namespace="cdn"), dict(EXTERNAL_ETCD, namespace="cdn")],
    },
}


@lru_cache(maxsize=1)
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render_raw(values: dict | None = None) -> dict[str, str]:
    return chart().render(copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True)


@lru_cache(maxsize=None)
def _render_json(values_json: str) -> str:
    files = render_raw(json.loads(values_json))
    docs = []
    for path, text in sorted(files.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__file__", path)
                docs.append(doc)
    return json.dumps(docs)


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders with `values` (each tagged with its template as __file__)."""
    return json.loads(_render_json(json.dumps(values or {}, sort_keys=True)))


def clean(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__file__"}


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def run_binary(binary: Path, *args: str, stdin: str | None = None) -> str:
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build it first (cargo build --workspace --bins)")
    proc = subprocess.run([str(binary), *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{binary.name} {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def operator_render(caches_yaml: str, namespace: str | None = None) -> list[dict]:
    """`casserole-operator render`: the objects the operator would apply for these caches."""
    args = ["render", "-f", "-", "--peer-token", "chart-test-token-0123"]
    if namespace:
        args += ["-n", namespace]
    out = run_binary(OPERATOR_BIN, *args, stdin=caches_yaml)
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def crd() -> dict:
    return yaml.safe_load((ROOT / "crds" / "casserolecaches.casserole.io.yaml").read_text())


@pytest.fixture(scope="session")
def node_metric_names() -> set[str]:
    names = set(run_binary(NODE_BIN, "--print-metric-names").split())
    assert "casserole_requests_total" in names, names
    return names


@pytest.fixture(scope="session")
def operator_metric_names() -> set[str]:
    src = (ROOT / "operator" / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'"(casserole_operator_[a-z0-9_]+)"', src))
    assert "casserole_operator_reconciles_total" in names, names
    return names


def chart_cache_objects(set_name: str) -> list[dict]:
    return [clean(d) for d in render(VALUE_SETS[set_name]) if d["kind"] == "CasseroleCache"]




@pytest.fixture(scope="session")
def checkov_report(tmp_path_factory) -> dict:
    """One checkov run (it is slow to start) over every rendered value set, the operator's
    objects for the examples and for the chart's caches, and the Dockerfile.
    Returns {"failed": [...], "skipped": [...], "passed": int, "dirs": [...]}, each result
    tagged with the directory (= rendered set) it came from."""
    if shutil.which("checkov") is None:
        pytest.fail("checkov is not installed (pip install -r requirements-dev.txt)")
    base = tmp_path_factory.mktemp("checkov")
    dirs = []
    for name, values in VALUE_SETS.items():
        d = base / f"chart-{name}"
        d.mkdir()
        for path, text in render_raw(values).items():
            if path.endswith(".yaml") and text.strip():
                (d / Path(path).name).write_text(text)
        dirs.append(d.name)
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        d = base / f"operator-example-{example.stem}"
        d.mkdir()
        docs = operator_render(example.read_text(), namespace="cdn")
        (d / "objects.yaml").write_text(yaml.safe_dump_all(docs))
        dirs.append(d.name)
    for set_name in ("caches", "external-etcd"):
        d = base / f"operator-chart-{set_name}"
        d.mkdir()
        docs = operator_render(yaml.safe_dump_all(chart_cache_objects(set_name)))
        (d / "objects.yaml").write_text(yaml.safe_dump_all(docs))
        dirs.append(d.name)
    (base / "docker").mkdir()
    shutil.copy(ROOT / "Dockerfile", base / "docker" / "Dockerfile")
    dirs.append("docker")
    env = dict(os.environ, LOG_LEVEL="ERROR", BC_SKIP_MAPPING="TRUE", CHECKOV_NO_OUTPUT_DEPRECATION="true")
    proc = subprocess.run(
        ["checkov", "-d", str(base), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--output", "json", "--compact"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode in (0, 1), f"checkov did not run:\n{proc.stderr[-3000:]}"
    reports = json.loads(proc.stdout)
    if isinstance(reports, dict):
        reports = [reports]
    result = {"failed": [], "skipped": [], "passed": 0, "dirs": dirs, "check_types": set()}
    for report in reports:
        result["check_types"].add(report.get("check_type"))
        res = report.get("results", {})
        result["passed"] += len(res.get("passed_checks", []))
        for kind in ("failed", "skipped"):
            for r in res.get(f"{kind}_checks", []):
                r["dir"] = r["file_path"].strip("/").split("/")[0]
                result[kind].append(r)
    print(f"\ncheckov: {result['passed']} passed, {len(result['failed'])} failed, "
          f"{len(result['skipped'])} skipped over {len(dirs)} rendered sets", file=sys.stderr)
    return result
