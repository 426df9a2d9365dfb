"""The chart through the real Helm engine: lint, and the objects that matter per value set."""

from __future__ import annotations

import re

import pytest
import yaml

import helm_python as helm

from conftest import (
    CHART, DOWNLOADS, EXTERNAL_ETCD, MODELS, NAMESPACE, OPERATOR_BIN, RELEASE, ROOT, VALUE_SETS,
    chart, clean, find, one, render, render_raw, run_binary,
)

OPERATOR = "casserole-operator"
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def operator_container(docs):
    deployment = one(docs, "Deployment", OPERATOR)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- lint -------------------------------------------------------------------------------

@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_lint_strict_passes(set_name):
    report = helm.lint(CHART, VALUE_SETS[set_name], strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def test_lint_reports_a_broken_template(tmp_path):
    # The lint is able to fail: a copy of the chart with a template error is reported.
    broken = tmp_path / "casserole"
    import shutil
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nope.missing }}\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"], report


# --- defaults ---------------------------------------------------------------------------

def test_default_objects():
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted([
        ("ServiceAccount", OPERATOR),
        ("ClusterRole", OPERATOR),
        ("ClusterRoleBinding", OPERATOR),
        ("ClusterRole", f"{OPERATOR}-secrets"),
        ("RoleBinding", f"{OPERATOR}-secrets"),  # the release namespace only
        ("ClusterRole", f"{OPERATOR}-cluster"),
        ("ClusterRoleBinding", f"{OPERATOR}-cluster"),
        ("Role", f"{OPERATOR}-leader-election"),
        ("RoleBinding", f"{OPERATOR}-leader-election"),
        ("ClusterRole", "casserole-edit"),
        ("ClusterRole", "casserole-view"),
        ("Deployment", OPERATOR),
        ("Service", f"{OPERATOR}-metrics"),
        ("PodDisruptionBudget", OPERATOR),
        ("NetworkPolicy", OPERATOR),
    ])
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]


def test_operator_deployment_defaults():
    docs = render()
    deployment = one(docs, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "casserole-operator",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "operator",
    }
    pod = deployment["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    assert pod["spec"]["securityContext"] == POD_SECURITY
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/casserole-cache/casserole-operator:0.1.0"
    assert container["securityContext"] == CONTAINER_SECURITY
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["args"][0] == "run"
    assert "--metrics-address=0.0.0.0:8080" in container["args"]
    assert "--lease-name=casserole-operator" in container["args"]
    assert not any(a.startswith("--watch-namespace") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_image_tags_follow_app_version_and_workspace_version():
    meta = chart().metadata
    assert meta["appVersion"] == meta["version"] == "0.1.0"
    cargo = (ROOT / "Cargo.toml").read_text()
    workspace_version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
    # The operator's built-in default node image is tagged with its crate version.
    assert meta["appVersion"] == workspace_version
    values = chart().values
    assert values["operator"]["image"]["repository"] == "ghcr.io/casserole-cache/casserole-operator"
    assert values["node"]["image"]["repository"] == "ghcr.io/casserole-cache/casserole-node"
    src = "".join(p.read_text() for p in (ROOT / "operator" / "src" / "resources").glob("*.rs"))
    assert '"ghcr.io/casserole-cache/casserole-node:{}"' in src


def test_operator_flags_exist_in_the_real_binary():
    """Every flag and env var the chart gives `casserole-operator run` is one it declares."""
    help_text = run_binary(OPERATOR_BIN, "run", "--help")
    for values in (VALUE_SETS["defaults"], VALUE_SETS["everything"], {"rbac": {"secretWatch": False}}):
        container = operator_container(render(values))
        assert container["args"][0] == "run"
        for arg in container["args"][1:]:
            flag = arg.split("=", 1)[0]
            assert re.search(rf"^\s*{re.escape(flag)}\b", help_text, re.M), f"{flag} not in `run --help`"
        for env in container["env"]:
            if env["name"] == "RUST_LOG":  # tracing's EnvFilter, not a clap flag
                continue
            assert f"[env: {env['name']}=" in help_text, f"env {env['name']} not read by `run`"
    # Identity and Lease namespace come from the downward API.
    assert "[env: POD_NAME=" in help_text and "[env: POD_NAMESPACE=" in help_text


def test_metrics_service_selects_the_operator():
    docs = render()
    svc = one(docs, "Service", f"{OPERATOR}-metrics")
    pod_labels = one(docs, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_pdb_and_networkpolicy():
    docs = render()
    selector = one(docs, "Deployment", OPERATOR)["spec"]["selector"]
    assert one(docs, "PodDisruptionBudget")["spec"] == {"maxUnavailable": 1, "selector": selector}
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == selector
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    docs = render({"operator": {"replicas": 1}, "networkPolicy": {"enabled": False}})
    assert not find(docs, "PodDisruptionBudget") and not find(docs, "NetworkPolicy")


# --- RBAC -------------------------------------------------------------------------------

def rules_of(role):
    return sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in role["rules"]
    )


EXPECTED_OPERATOR_RULES = sorted([
    (("casserole.io",), ("casserolecaches",), ("list", "watch")),
    (("casserole.io",), ("casserolecaches/status",), ("patch",)),
    (("casserole.io",), ("casserolecaches/finalizers",), ("update",)),
    (("apps",), ("statefulsets", "daemonsets"), ("create", "delete", "get", "list", "patch", "watch")),
    (("",), ("services",), ("create", "delete", "get", "list", "patch", "watch")),
    (("policy",), ("poddisruptionbudgets",), ("create", "delete", "get", "list", "patch", "watch")),
    (("networking.k8s.io",), ("networkpolicies",), ("create", "delete", "get", "list", "patch", "watch")),
    (("",), ("pods",), ("delete", "list")),
    (("",), ("persistentvolumeclaims",), ("list", "patch")),
    (("events.k8s.io",), ("events",), ("create", "patch")),
])
EXPECTED_SECRET_RULES = [(("",), ("secrets",), ("create", "get", "list", "watch"))]
EXPECTED_CLUSTER_RULES = sorted([
    (("apiextensions.k8s.io",), ("customresourcedefinitions",), ("get", "patch")),
    (("storage.k8s.io",), ("storageclasses",), ("get", "list")),
])


# Pods: an etcd member whose data is gone is restarted once re-added (operator/src/etcd_members.rs).
PRUNED = {"statefulsets", "daemonsets", "services", "poddisruptionbudgets", "networkpolicies", "pods"}


def test_operator_cluster_role_is_exactly_least_privilege():
    docs = render()
    role = one(docs, "ClusterRole", OPERATOR)
    assert rules_of(role) == EXPECTED_OPERATOR_RULES
    assert rules_of(one(docs, "ClusterRole", f"{OPERATOR}-secrets")) == EXPECTED_SECRET_RULES
    cluster = one(docs, "ClusterRole", f"{OPERATOR}-cluster")
    assert rules_of(cluster) == EXPECTED_CLUSTER_RULES
    (crd_rule,) = [r for r in cluster["rules"] if r["apiGroups"] == ["apiextensions.k8s.io"]]
    assert crd_rule["resourceNames"] == ["casserolecaches.casserole.io"], "its own CRD only"
    for r in (role, cluster, one(docs, "ClusterRole", f"{OPERATOR}-secrets")):
        for rule in r["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert "deletecollection" not in rule["verbs"]
            if "delete" in rule["verbs"]:
                # Only pruning of the operator's own workload objects deletes anything.
                assert set(rule["resources"]) <= PRUNED, rule
    for kind, name in (("ClusterRoleBinding", OPERATOR), ("RoleBinding", f"{OPERATOR}-secrets"),
                       ("ClusterRoleBinding", f"{OPERATOR}-cluster")):
        binding = one(docs, kind, name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]


def test_crd_self_upgrade_can_be_turned_off():
    docs = render({"crds": {"applyOnStart": False}})
    assert not [r for r in one(docs, "ClusterRole", OPERATOR)["rules"] if "customresourcedefinitions" in r["resources"]]
    # Still read (an outdated CRD is reported as the CRDCurrent condition), never patched.
    (crd_rule,) = [r for r in one(docs, "ClusterRole", f"{OPERATOR}-cluster")["rules"]
                   if "customresourcedefinitions" in r["resources"]]
    assert crd_rule["verbs"] == ["get"]
    args = one(docs, "Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--apply-crd" not in args
    args = one(render(), "Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--apply-crd" in args


def test_chart_app_version_and_crd_version_agree():
    """The CRD in crds/ is the one the chart's operator release generates and applies."""
    chart_yaml = yaml.safe_load((ROOT / "charts" / "casserole" / "Chart.yaml").read_text())
    crd = yaml.safe_load((ROOT / "charts" / "casserole" / "crds" / "casserolecaches.casserole.io.yaml").read_text())
    cargo = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert crd["metadata"]["annotations"]["casserole.io/operator-version"] == chart_yaml["appVersion"] == cargo
    assert run_binary(OPERATOR_BIN, "--version").split()[-1] == chart_yaml["appVersion"]


def test_leader_election_role_is_namespaced_to_leases():
    docs = render()
    role = one(docs, "Role", f"{OPERATOR}-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_of(role) == [(("coordination.k8s.io",), ("leases",), ("create", "get", "update"))]
    binding = one(docs, "RoleBinding", f"{OPERATOR}-leader-election")
    assert binding["roleRef"]["name"] == f"{OPERATOR}-leader-election"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]


# Kubernetes kinds the operator's code touches → the ClusterRole resource that must cover them.
KIND_RESOURCE = {
    "CasseroleCache": ("casserole.io", "casserolecaches"),
    "StatefulSet": ("apps", "statefulsets"),
    "DaemonSet": ("apps", "daemonsets"),
    "Service": ("", "services"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "Secret": ("", "secrets"),
}


def allowed(role, group, resource):
    verbs = set()
    for r in role["rules"]:
        if group in r["apiGroups"] and resource in r["resources"]:
            verbs |= set(r["verbs"])
    return verbs


def test_rbac_covers_what_the_operator_code_does():
    """Cross-check with operator/src: every watched kind can be listed and watched, every
    rendered (server-side applied) kind can be created and patched."""
    docs = render()
    role = one(docs, "ClusterRole", OPERATOR)
    secrets = one(docs, "ClusterRole", f"{OPERATOR}-secrets")
    merged = {"rules": role["rules"] + secrets["rules"]}
    run_rs = (ROOT / "operator" / "src" / "run.rs").read_text()
    watched = set(re.findall(r"owned::<(?:PartialObjectMeta<)?(\w+)>", run_rs))
    # The operator's own Secrets are watched (metadata only) where its Secrets role is bound.
    secret_scope_rs = (ROOT / "operator" / "src" / "secret_scope.rs").read_text()
    if "secret_scope::triggers" in run_rs:
        watched |= set(re.findall(r"Api<PartialObjectMeta<(\w+)>>", secret_scope_rs))
    assert "CasseroleCache" in watched and "Secret" in watched, "run.rs no longer builds the controller as expected"
    for kind in watched:
        assert {"list", "watch"} <= allowed(merged, *KIND_RESOURCE[kind]), kind
    applied = {d["kind"] for d in __import__("conftest").operator_render(
        (ROOT / "examples" / "basic.yaml").read_text(), namespace="cdn")}
    applied |= {"DaemonSet"}  # workload: DaemonSet renders one instead of the StatefulSet
    for kind in applied - {"Secret"}:
        assert {"create", "patch"} <= allowed(role, *KIND_RESOURCE[kind]), kind
    # Secrets: created once and watched, never patched (the token is never rewritten), and only
    # through their own role.
    assert allowed(secrets, *KIND_RESOURCE["Secret"]) == {"get", "list", "watch", "create"}
    assert not allowed(role, *KIND_RESOURCE["Secret"])


def test_watch_namespace_binds_only_that_namespace():
    docs = render(VALUE_SETS["everything"])
    for name in (OPERATOR, f"{OPERATOR}-secrets"):
        binding = one(docs, "RoleBinding", name)
        assert binding["metadata"]["namespace"] == "cdn"
        assert binding["roleRef"]["kind"] == "ClusterRole"
    assert "--watch-namespace=cdn" in operator_container(docs)["args"]
    # Secrets only in the watched namespace.
    assert [b["metadata"]["name"] for b in find(docs, "ClusterRoleBinding")] == [f"{OPERATOR}-cluster"]


def secret_bindings(docs):
    """Namespaces of the Secrets role's RoleBindings, and whether it is bound cluster-wide."""
    namespaces = sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")
                        if b["metadata"]["name"] == f"{OPERATOR}-secrets")
    return namespaces, bool(find(docs, "ClusterRoleBinding", f"{OPERATOR}-secrets"))


def test_default_install_reads_no_secret_outside_its_own_namespace():
    """Issue 22 M8: a cluster-wide install must not be able to read every Secret."""
    docs = render()
    assert secret_bindings(docs) == ([NAMESPACE], False)
    args = operator_container(docs)["args"]
    assert f"--secret-namespace={NAMESPACE}" in args
    # What a cache elsewhere is told to bind: this role, for this ServiceAccount.
    assert f"--secrets-cluster-role={OPERATOR}-secrets" in args
    assert f"--service-account={OPERATOR}" in args
    # No other role reaches Secrets, and caches are still watched in every namespace.
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        if role["metadata"]["name"] != f"{OPERATOR}-secrets":
            assert not allowed(role, "", "secrets"), role["metadata"]["name"]
    assert one(docs, "ClusterRoleBinding", OPERATOR)


def test_secret_namespaces_and_cache_namespaces_bind_secrets_per_namespace_only():
    docs = render({"rbac": {"secretNamespaces": ["cdn", "ml"]}})
    assert secret_bindings(docs) == (sorted([NAMESPACE, "cdn", "ml"]), False)
    assert f"--secret-namespace={NAMESPACE},cdn,ml" in operator_container(docs)["args"]
    # The namespaces of the chart's own caches are granted without being listed.
    docs = render(dict(VALUE_SETS["caches"], rbac={"secretNamespaces": ["ml", "cdn"]}))
    assert secret_bindings(docs) == (sorted([NAMESPACE, "cdn", "ml"]), False)
    assert f"--secret-namespace={NAMESPACE},ml,cdn" in operator_container(docs)["args"]
    for binding in find(docs, "RoleBinding"):
        if binding["metadata"]["name"] == f"{OPERATOR}-secrets":
            assert "CKV2_K8S_5" in binding["metadata"]["annotations"]["checkov.io/skip1"]


def test_secrets_read_by_name_only_without_the_secret_watch():
    docs = render({"rbac": {"secretWatch": False}})
    assert rules_of(one(docs, "ClusterRole", f"{OPERATOR}-secrets")) == [(("",), ("secrets",), ("create", "get"))]
    args = operator_container(docs)["args"]
    assert "--no-secret-watch" in args
    assert not any(a.startswith("--secret-namespace") for a in args)
    assert secret_bindings(docs) == ([NAMESPACE], False)


def test_cluster_wide_secrets_only_when_asked_and_never_with_watch_namespace():
    docs = render({"rbac": {"clusterWideSecrets": True}})
    assert secret_bindings(docs) == ([], True)
    assert "--secret-namespace=*" in operator_container(docs)["args"]
    binding = one(docs, "ClusterRoleBinding", f"{OPERATOR}-secrets")
    assert "clusterWideSecrets" in binding["metadata"]["annotations"]["checkov.io/skip1"]
    # A namespaced install stays namespaced.
    docs = render({"operator": {"watchNamespace": "cdn"},
                   "rbac": {"clusterWideSecrets": True, "secretNamespaces": ["ml"]}})
    assert secret_bindings(docs) == (["cdn"], False)
    assert not any(a.startswith("--secret-namespace") for a in operator_container(docs)["args"])


@pytest.mark.parametrize("values", [
    {"operator": {"watchNamespace": "cdn"}},
    {"crds": {"applyOnStart": False}},
    {"operator": {"watchNamespace": "cdn"}, "crds": {"applyOnStart": False}},
])
def test_crd_permission_is_cluster_wide_in_every_mode(values):
    """A RoleBinding cannot grant a cluster-scoped resource: the CRD (and StorageClass) rules
    are bound by a ClusterRoleBinding whatever the install mode."""
    docs = render(values)
    binding = one(docs, "ClusterRoleBinding", f"{OPERATOR}-cluster")
    assert binding["roleRef"]["name"] == f"{OPERATOR}-cluster"
    cluster = one(docs, "ClusterRole", f"{OPERATOR}-cluster")
    assert "get" in allowed(cluster, "apiextensions.k8s.io", "customresourcedefinitions")
    assert {"get", "list"} <= allowed(cluster, "storage.k8s.io", "storageclasses")
    apply = values.get("crds", {}).get("applyOnStart", True)
    assert ("patch" in allowed(cluster, "apiextensions.k8s.io", "customresourcedefinitions")) == apply


def test_aggregated_user_roles_allow_kubectl_scale():
    docs = render()
    edit = one(docs, "ClusterRole", "casserole-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert {"get", "patch", "update"} <= allowed(edit, "casserole.io", "casserolecaches/scale")
    view = one(docs, "ClusterRole", "casserole-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for rule in view["rules"]:
        assert set(rule["verbs"]) == {"get", "list", "watch"}
    docs = render({"rbac": {"aggregateToDefaultRoles": False}})
    assert sorted(d["metadata"]["name"] for d in find(docs, "ClusterRole")) == [
        OPERATOR, f"{OPERATOR}-cluster", f"{OPERATOR}-secrets"]


# --- Prometheus ---------------------------------------------------------------------------

def test_no_monitoring_objects_by_default():
    docs = render()
    assert not find(docs, "ServiceMonitor") and not find(docs, "PodMonitor") and not find(docs, "ConfigMap")


def test_service_monitor_and_pod_monitor():
    docs = render(VALUE_SETS["service-monitor"])
    sm = one(docs, "ServiceMonitor", OPERATOR)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    svc = one(docs, "Service", f"{OPERATOR}-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]

    pm = one(docs, "PodMonitor", "casserole-caches")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # The selector and port match what the operator really puts on the cache pods.
    objects = __import__("conftest").operator_render((ROOT / "examples" / "basic.yaml").read_text(), "cdn")
    sts = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "downloads"][0]
    template = sts["spec"]["template"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    etcd = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] != "downloads"][0]
    assert not pm["spec"]["selector"]["matchLabels"].items() <= etcd["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 9090
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9090"

    # The managed etcd members are scraped too, on their own metrics port.
    pm = one(docs, "PodMonitor", "casserole-etcd")
    assert pm["spec"]["selector"]["matchLabels"].items() <= etcd["spec"]["template"]["metadata"]["labels"].items()
    assert not pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    etcd_ports = {p["name"]: p["containerPort"] for p in etcd["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] == "metrics" and etcd_ports["metrics"] == 2381


def test_pod_monitor_namespace_selector_is_configurable():
    for name in ("casserole-caches", "casserole-etcd"):
        pm = one(render(VALUE_SETS["everything"]), "PodMonitor", name)
        assert pm["spec"]["namespaceSelector"] == {"matchNames": ["cdn"]}


def test_dashboard_configmap():
    docs = render(VALUE_SETS["dashboard"])
    cm = one(docs, "ConfigMap", "casserole-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert list(cm["data"]) == ["casserole.json"]
    cm = one(render(VALUE_SETS["everything"]), "ConfigMap", "casserole-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"


# --- caches ---------------------------------------------------------------------------------

def test_caches_list_creates_casserole_caches():
    docs = render(VALUE_SETS["caches"])
    caches = {d["metadata"]["name"]: d for d in find(docs, "CasseroleCache")}
    assert sorted(caches) == ["downloads", "models"]
    downloads, models = caches["downloads"], caches["models"]
    assert downloads["apiVersion"] == "casserole.io/v1alpha1"
    assert downloads["metadata"]["namespace"] == NAMESPACE
    assert models["metadata"]["namespace"] == "ml"
    assert downloads["metadata"]["labels"]["team"] == "platform"
    assert downloads["spec"] == dict(DOWNLOADS["spec"], image="ghcr.io/casserole-cache/casserole-node:0.1.0")
    assert models["spec"] == dict(MODELS["spec"], image="ghcr.io/casserole-cache/casserole-node:0.1.0")


def test_cache_image_overrides():
    docs = render(VALUE_SETS["everything"])
    for cache in find(docs, "CasseroleCache"):
        assert cache["spec"]["image"] == "registry.internal/casserole-node:0.1.0-patched"
        assert cache["metadata"]["namespace"] == "cdn"
    own = dict(DOWNLOADS, spec=dict(DOWNLOADS["spec"], image="mine/node:1"))
    assert one(render({"caches": [own]}), "CasseroleCache")["spec"]["image"] == "mine/node:1"


def test_external_etcd_cache():
    cache = one(render(VALUE_SETS["external-etcd"]), "CasseroleCache", "mirror")
    assert cache["spec"]["etcd"] == {"external": {"endpoints": EXTERNAL_ETCD["spec"]["etcd"]["external"]["endpoints"]}}
    # The operator accepts it: no etcd StatefulSet, the nodes point at the external endpoints.
    objects = __import__("conftest").operator_render(yaml.safe_dump(clean(cache)))
    statefulsets = [o for o in objects if o["kind"] == "StatefulSet"]
    assert [s["metadata"]["name"] for s in statefulsets] == ["mirror"]
    args = statefulsets[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--etcd=http://etcd-0.infra.svc:2379,http://etcd-1.infra.svc:2379" in args


def test_operator_accepts_every_chart_cache():
    objects = __import__("conftest").operator_render(
        yaml.safe_dump_all([clean(d) for d in find(render(VALUE_SETS["caches"]), "CasseroleCache")]))
    kinds = {(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects}
    assert ("StatefulSet", "downloads", NAMESPACE) in kinds
    assert ("DaemonSet", "models", "ml") in kinds
    sts = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "downloads"][0]
    assert sts["spec"]["replicas"] == 3
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == DOWNLOADS["spec"]["resources"]


def test_operator_resources_and_scheduling_values():
    docs = render(VALUE_SETS["everything"])
    deployment = one(docs, "Deployment", OPERATOR)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["priorityClassName"] == "system-cluster-critical"
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/casserole-cache/casserole-operator@sha256:" + "ab" * 32
    assert "--lease-name=cdn-operator" in container["args"]
    assert "--lease-duration-seconds=30" in container["args"]
    assert "--log-format=text" in container["args"]
    custom = {"operator": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["infra"]}]}]}}}}}
    pod = one(render(custom), "Deployment")["spec"]["template"]["spec"]
    assert list(pod["affinity"]) == ["nodeAffinity"]


def test_notes_tell_what_to_apply_next():
    notes = render_raw()["casserole/templates/NOTES.txt"]
    assert "kind: CasseroleCache" in notes and "kubectl apply -f" in notes
    assert "kubectl scale casserole/downloads --replicas=5" in notes
    notes = render_raw(VALUE_SETS["caches"])["casserole/templates/NOTES.txt"]
    assert "kubectl -n ml get casserole models" in notes


def test_notes_tell_how_to_grant_secrets_in_another_namespace():
    notes = render_raw()["casserole/templates/NOTES.txt"]
    assert f"Secrets (each cache's peer token) only in: {NAMESPACE}." in notes
    grant = (f"kubectl -n NS create rolebinding {OPERATOR}-secrets \\\n"
             f"    --clusterrole={OPERATOR}-secrets --serviceaccount={NAMESPACE}:{OPERATOR}")
    assert grant in notes, notes
    for values in ({"rbac": {"clusterWideSecrets": True}}, {"operator": {"watchNamespace": "cdn"}}):
        assert "create rolebinding" not in render_raw(values)["casserole/templates/NOTES.txt"]


# --- CRD --------------------------------------------------------------------------------------

def test_chart_crd_is_the_top_level_crd():
    top = (ROOT / "crds" / "casserolecaches.casserole.io.yaml").read_bytes()
    assert (CHART / "crds" / "casserolecaches.casserole.io.yaml").read_bytes() == top, (
        "charts/casserole/crds/ differs from crds/: cp crds/casserolecaches.casserole.io.yaml charts/casserole/crds/")
    assert [c["filename"] for c in chart().crds] == ["casserole/crds/casserolecaches.casserole.io.yaml"]
    assert run_binary(OPERATOR_BIN, "crd") == top.decode(), "crds/ is not what `casserole-operator crd` prints"


# --- values.schema.json -------------------------------------------------------------------------

BAD_VALUES = [
    ({"operator": {"replicas": 0}}, "/operator/replicas"),
    ({"operator": {"replicas": "two"}}, "/operator/replicas"),
    ({"operatr": {"replicas": 2}}, "additional properties 'operatr'"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    ({"operator": {"image": {"digest": "latest"}}}, "/operator/image/digest"),
    ({"operator": {"resources": {"limits": None}}}, "missing property 'limits'"),
    ({"operator": {"resources": {"requests": {"memory": None}}}}, "missing property 'memory'"),
    ({"operator": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}}, "/operator/resources/requests/cpu"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "/metrics/serviceMonitor/enabled"),
    ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "/metrics/serviceMonitor/interval"),
    ({"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": 1}}}, "/grafanaDashboard/labels/grafana_dashboard"),
    ({"caches": [{"name": "Downloads", "spec": {"upstream": "https://x.example.com"}}]}, "/caches/0/name"),
    ({"caches": [{"name": "dl", "spec": {"replicas": 3}}]}, "missing property 'upstream'"),
    ({"caches": [{"name": "dl", "spec": {"upstream": "ftp://x.example.com"}}]}, "/caches/0/spec/upstream"),
    ({"caches": [{"name": "dl", "spec": {"upstream": "https://x", "replicas": -1}}]}, "/caches/0/spec/replicas"),
    ({"caches": [{"name": "dl", "spec": {"upstream": "https://x", "workload": "Deployment"}}]}, "/caches/0/spec/workload"),
    ({"caches": [{"name": "dl", "spec": {"upstream": "https://x", "etcd": {"external": {"endpoints": []}}}}]}, "/caches/0/spec/etcd/external/endpoints"),
    ({"caches": [{"spec": {"upstream": "https://x"}}]}, "missing property 'name'"),
]


@pytest.mark.parametrize("values,where", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_bad_values_with_a_clear_message(values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        render_raw(values)
    message = str(err.value)
    assert where in message, message
    assert "schema" in message


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_schema_accepts_the_value_sets(set_name):
    chart().validate_schema(chart().merge_values(VALUE_SETS[set_name]))


def test_schema_cache_fields_exist_in_the_crd(crd):
    """The schema checks a subset of the CRD's spec: every field it names must be a CRD field."""
    import json
    schema = json.loads((CHART / "values.schema.json").read_text())
    ours = schema["properties"]["caches"]["items"]["properties"]["spec"]["properties"]
    theirs = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"] == ["upstream"]
