"""What `casserole-operator render` prints for the examples, checked as manifests: DaemonSet
mode is node-local with no PodDisruptionBudget, cache pods have startup/preStop/termination
timing that fits the node's shutdown grace, and managed etcd pods carry resources, spread and
scheduling."""

from conftest import ROOT, find, one, operator_render


def render_example(name):
    return operator_render((ROOT / "examples" / name).read_text())


def container(workload, name=None):
    containers = workload["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def flag(c, name):
    return next(a.split("=", 1)[1] for a in c["args"] if a.startswith(f"--{name}="))


def seconds(duration):
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def test_daemonset_service_is_node_local_and_no_pdb_blocks_drains():
    docs = render_example("daemonset-node-local.yaml")
    one(docs, "DaemonSet", "artifacts")
    svc = one(docs, "Service", "artifacts")
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert not find(docs, "PodDisruptionBudget"), "a DaemonSet's PDB would refuse every eviction"


def test_statefulset_keeps_its_pdb_and_cluster_wide_service():
    docs = render_example("basic.yaml")
    pdb = one(docs, "PodDisruptionBudget", "downloads")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "internalTrafficPolicy" not in one(docs, "Service", "downloads")["spec"]


def test_cache_pods_probes_and_termination_timing():
    for example, kind in [("basic.yaml", "StatefulSet"), ("daemonset-node-local.yaml", "DaemonSet")]:
        workload = next(d for d in render_example(example) if d["kind"] == kind and
                        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "cache")
        c = container(workload)
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == "/healthz"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
        pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = seconds(flag(c, "shutdown-grace"))
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + grace


def test_full_example_scheduling_fields_reach_cache_and_etcd_pods():
    docs = render_example("full.yaml")
    cache = one(docs, "StatefulSet", "mirror")["spec"]["template"]["spec"]
    assert cache["imagePullSecrets"] == [{"name": "regcred"}]
    assert cache["priorityClassName"] == "cache-critical"
    assert cache["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    etcd = one(docs, "StatefulSet", "mirror-etcd")["spec"]["template"]["spec"]
    assert etcd["containers"][0]["resources"]["requests"]["cpu"] == "200m"
    assert etcd["nodeSelector"] == {"node-role.example.com/infra": "true"}
    assert etcd["tolerations"][0]["key"] == "infra"
    assert etcd["imagePullSecrets"] == [{"name": "regcred"}]


def test_etcd_defaults_have_resources_and_prefer_distinct_nodes():
    etcd = one(render_example("basic.yaml"), "StatefulSet", "downloads-etcd")
    spec = etcd["spec"]["template"]["spec"]
    resources = container(etcd)["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = etcd["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
