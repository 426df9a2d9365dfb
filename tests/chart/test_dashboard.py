"""The Grafana dashboard (as the chart ships it in its ConfigMap) parses, covers what the issue
asks for, and queries only metrics that the node or the operator really export."""

from __future__ import annotations

import json
import re

import pytest

from conftest import VALUE_SETS, one, render

PROMQL_WORDS = {
    # aggregations, functions and keywords that can stand where a metric name could
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "inf", "nan", "label_values", "query_result",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana label_values() query) reads."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    s = re.sub(r"\{[^}]*\}", "", s)                          # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)                         # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)                       # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    # label_values(metric, label): the second argument is a label
    for m in re.finditer(r"label_values\(\s*([a-zA-Z_:][\w:]*)?[^,)]*,\s*(\w+)\s*\)", expr):
        names.discard(m.group(2))
    return names


def base_name(name: str, exported: set[str]) -> str:
    if name in exported:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in exported:
            return name[: -len(suffix)]
    return name


@pytest.fixture(scope="module")
def dashboard():
    cm = one(render(VALUE_SETS["dashboard"]), "ConfigMap", "casserole-dashboard")
    return json.loads(cm["data"]["casserole.json"])


def all_panels(dashboard):
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def queries(dashboard):
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"]["query"]


def test_extractor():
    assert metric_names('sum by (tier) (rate(a_total{x="b", y=~"$v"}[5m])) / ignoring(tier) group_left() sum(b_total)') == {"a_total", "b_total"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[$__rate_interval])))") == {"h_bucket"}
    assert metric_names('label_values(m{namespace=~"$namespace"}, cache)') == {"m"}
    assert metric_names("1 - x / y") == {"x", "y"}


def test_dashboard_shape(dashboard):
    assert dashboard["uid"] == "casserole-overview" and dashboard["title"] == "Casserole"
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in all_panels(dashboard):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "cache"}


def test_dashboard_covers_the_issue(dashboard):
    by_title = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in all_panels(dashboard)}
    def uses(title, *metrics):
        exprs = " ".join(by_title[title])
        for m in metrics:
            assert m in exprs, (title, m)
    uses("Hit ratio by tier", "casserole_requests_total", 'result="hit"', "by (tier)")
    uses("Bytes served vs fetched upstream", "casserole_bytes_served_total", "casserole_upstream_bytes_total")
    uses("Upstream savings", "casserole_bytes_served_total", "casserole_upstream_bytes_total")
    uses("Time to first byte", "casserole_response_first_byte_seconds_bucket")
    uses("Chunk fetch time (p95) by source", "casserole_chunk_fetch_seconds_bucket")
    uses("Members", "casserole_cluster_members")
    uses("Memory tier use", "casserole_memory_bytes")
    uses("Disk tier use", "casserole_disk_bytes")
    uses("Peer traffic", "casserole_peer_bytes_total")
    uses("Leader", "casserole_operator_leader")


def test_every_query_reads_exported_metrics(dashboard, node_metric_names, operator_metric_names):
    exported = node_metric_names | operator_metric_names
    n = 0
    for where, expr in queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown = {m for m in names if base_name(m, exported) not in exported}
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by casserole-node or the operator"
        for m in names:
            if m.endswith(HISTOGRAM_SUFFIXES) and m not in exported:
                assert base_name(m, exported) in exported
        n += 1
    assert n >= 20


def test_a_wrong_metric_name_is_caught(node_metric_names, operator_metric_names):
    exported = node_metric_names | operator_metric_names
    names = metric_names("sum(rate(casserole_request_total[5m]))")
    assert {m for m in names if base_name(m, exported) not in exported} == {"casserole_request_total"}
