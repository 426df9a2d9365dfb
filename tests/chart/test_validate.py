"""Every rendered manifest validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors); CasseroleCaches validate against the CRD's own schema."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT, VALUE_SETS, clean, operator_render, render

# A recent release and the newest one the installed kubernetes-validate knows.
K8S_VERSIONS = sorted({"1.33.0", kubernetes_validate.latest_version()})
THIRD_PARTY = {"monitoring.coreos.com/v1"}  # prometheus-operator kinds: no bundled schema


def crd_validator(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def check(doc, version, crd):
    if doc["kind"] == "CasseroleCache":
        errors = sorted(crd_validator(crd).iter_errors(doc), key=str)
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
        return "crd"
    if doc["apiVersion"] in THIRD_PARTY:
        print(f"note: {doc['kind']} {doc['metadata']['name']} ({doc['apiVersion']}) skipped: "
              "no schema for third-party kinds; its fields are asserted in test_chart.py")
        return "skipped"
    kubernetes_validate.validate(doc, version, strict=True)
    return "k8s"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_rendered_chart_validates(set_name, version, crd):
    docs = render(VALUE_SETS[set_name])
    assert docs
    seen = {check(clean(d), version, crd) for d in docs}
    assert "k8s" in seen


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_operator_objects_validate(version, crd):
    docs = operator_render((ROOT / "examples" / "basic.yaml").read_text(), namespace="cdn")
    chart_caches = [clean(d) for d in render(VALUE_SETS["caches"]) if d["kind"] == "CasseroleCache"]
    docs += operator_render(yaml.safe_dump_all(chart_caches))
    assert {d["kind"] for d in docs} >= {"StatefulSet", "DaemonSet", "Service", "PodDisruptionBudget", "NetworkPolicy", "Secret"}
    for doc in docs:
        check(doc, version, crd)


def test_examples_validate_against_the_crd(crd):
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(example.read_text()):
            if doc:
                assert check(doc, K8S_VERSIONS[-1], crd) == "crd"


def test_validation_is_able_to_fail(crd):
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    unknown_field = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown_field, K8S_VERSIONS[-1], strict=True)
    cache = {"apiVersion": "casserole.io/v1alpha1", "kind": "CasseroleCache", "metadata": {"name": "x"},
             "spec": {"upstream": "ftp://nope", "replicas": "three"}}
    assert len(list(crd_validator(crd).iter_errors(cache))) == 2
