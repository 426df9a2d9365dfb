"""The opt-in PrometheusRule: off by default, one alert per condition the issue names, each
reading only metrics that are really exported (by the node, the operator or etcd) and each with
a runbook line in the README's Troubleshooting section."""

import re

from conftest import ROOT, VALUE_SETS, find, one, render
from test_dashboard import base_name, metric_names

ALERTS = {
    "CasseroleUpstreamErrors", "CasseroleHitRatioDrop", "CasseroleMembersBelowReplicas",
    "CasseroleDiskWriteErrors", "CasseroleEtcdUnavailable", "CasseroleOperatorReconcileErrors",
}
# Read from the managed etcd's own /metrics (scraped by the etcd PodMonitor).
ETCD_METRICS = {"etcd_server_has_leader"}


def rules():
    rule = one(render(VALUE_SETS["alerts"]), "PrometheusRule", "casserole")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_off_by_default():
    assert not find(render(), "PrometheusRule")


def test_every_alert_the_issue_names_is_there():
    assert {r["alert"] for r in rules()} == ALERTS


def test_alerts_read_exported_metrics(node_metric_names, operator_metric_names):
    exported = node_metric_names | operator_metric_names | ETCD_METRICS
    for r in rules():
        names = metric_names(r["expr"])
        assert names, r["alert"]
        unknown = {m for m in names if base_name(m, exported) not in exported}
        assert not unknown, f"{r['alert']}: {sorted(unknown)} are not exported"


def test_each_alert_has_a_runbook_line_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    for r in rules():
        assert r["annotations"]["runbook_url"].endswith("README.md#troubleshooting"), r["alert"]
        assert re.search(rf"`{r['alert']}`", section), f"no runbook line for {r['alert']}"
