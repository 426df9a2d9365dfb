#!/usr/bin/env python3
"""Validates what casserole-operator produces, without a cluster.

1. `casserole-operator crd` is a valid CustomResourceDefinition, and the operator's own
   install manifests (operator/deploy/) are valid (kubernetes-validate).
2. Every example under examples/ is accepted by the CRD's own openAPIV3Schema (defaults
   applied first, unknown fields rejected as kubectl's strict field validation does, and the
   CRD's CEL rules evaluated), and every object `casserole-operator render -f` prints for it
   is valid against the Kubernetes schemas (kubernetes-validate, strict).
3. Every example under examples/invalid/ is rejected where its header says:
   `# rejected-by: schema` (the CRD schema or its CEL rules) or
   `# rejected-by: operator FIELD` (the schema accepts it, `render` refuses, naming FIELD).

Needs: pip install kubernetes-validate jsonschema pyyaml
Usage: scripts/validate-manifests.py [--operator PATH] [--kubernetes-version X.Y.Z ...]
Without --operator, builds the binary with cargo (honouring CARGO_TARGET_DIR).
"""

import argparse
import copy
import json
import re
import subprocess
from fractions import Fraction
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEFAULT_VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]


# --- Kubernetes quantities and the CEL rules of the CRD --------------------------------------

SUFFIXES = {
    "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "E": 10**18,
}


def quantity(q):
    """A Kubernetes quantity, exactly (as a Fraction)."""
    m = re.fullmatch(r"([+-]?[0-9.]+)([eE][-+]?[0-9]+|[A-Za-z]*)", str(q))
    if not m:
        raise ValueError(f"not a quantity: {q!r}")
    number, suffix = m.groups()
    if suffix[:1] in ("e", "E"):
        return Fraction(number) * Fraction(10) ** int(suffix[1:])
    if suffix not in SUFFIXES:
        raise ValueError(f"not a quantity: {q!r}")
    return Fraction(number) * SUFFIXES[suffix]


def is_integer(q):
    """CEL's quantity().isInteger(): a whole number that fits in int64."""
    v = quantity(q)
    return v.denominator == 1 and -2**63 <= v < 2**63


# The CEL rules the CRD declares, as Python. A rule missing here fails the run, so the two
# cannot drift apart silently.
CEL_RULES = {
    "has(self.managed) != has(self.external)":
        lambda s: ("managed" in s) != ("external" in s),
    "!has(self.maxUsage) || quantity(self.maxUsage).isLessThan(quantity(self.size))":
        lambda s: "maxUsage" not in s or quantity(s["maxUsage"]) < quantity(s["size"]),
    "!has(self.cleanedUsage) || !has(self.maxUsage) || "
    "quantity(self.cleanedUsage).isLessThan(quantity(self.maxUsage))":
        lambda s: "cleanedUsage" not in s or "maxUsage" not in s
        or quantity(s["cleanedUsage"]) < quantity(s["maxUsage"]),
    "quantity(self).isInteger() && quantity(self).isGreaterThan(quantity('0'))":
        lambda s: is_integer(s) and quantity(s) > 0,
    "!quantity(self).isLessThan(quantity('64Ki')) && !quantity(self).isGreaterThan(quantity('64Mi'))":
        lambda s: quantity("64Ki") <= quantity(s) <= quantity("64Mi"),
    "size(self.metadata.name) <= 42 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && "
    "!self.metadata.name.endsWith('-etcd') && !self.metadata.name.endsWith('-peer')":
        lambda doc: len(doc["metadata"]["name"]) <= 42
        and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]) is not None
        and not doc["metadata"]["name"].endswith(("-etcd", "-peer")),
}


def transition_rule(rule):
    """Rules on `oldSelf` judge updates only; a new object is not checked against them."""
    return "oldSelf" in rule


def cel_rules(schema):
    """Every CEL rule anywhere in the schema."""
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            yield rule["rule"]
        for v in schema.values():
            yield from cel_rules(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from cel_rules(v)


# --- Structural schema helpers -----------------------------------------------------------------

def apply_defaults(schema, value):
    """Applies `default`s the way the apiserver does before validating."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(schema["items"], item)
    return value


def to_json_schema(schema):
    """OpenAPI v3 (structural) to JSON Schema: `nullable` becomes a null type, and objects
    with declared properties reject unknown fields (kubectl's strict field validation)."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_json_schema(v) for k, v in schema.items()
           if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def cel_errors(schema, value, path="spec"):
    """Evaluates the CEL rules against a defaulted value; returns error messages."""
    errors = []
    if value is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        if transition_rule(rule["rule"]):
            continue
        try:
            ok = CEL_RULES[rule["rule"]](value)
        except ValueError as e:
            ok, rule = False, {"message": str(e)}
        if not ok:
            errors.append(f"{path}: {rule.get('message', rule.get('rule'))}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += cel_errors(sub, value[name], f"{path}.{name}")
    return errors


class CrdValidator:
    def __init__(self, crd):
        version = crd["spec"]["versions"][0]
        # Every served version (they share one schema: the conversion is the identity).
        self.api_versions = {f"{crd['spec']['group']}/{v['name']}"
                             for v in crd["spec"]["versions"] if v["served"]}
        assert all(v["schema"] == version["schema"] for v in crd["spec"]["versions"])
        self.api_version = f"{crd['spec']['group']}/{version['name']}"
        self.kind = crd["spec"]["names"]["kind"]
        self.schema = version["schema"]["openAPIV3Schema"]
        spec_schema = self.schema["properties"]["spec"]
        self.spec_schema = spec_schema
        self.json_schema = jsonschema.Draft7Validator(to_json_schema(spec_schema))
        unknown = {r for r in cel_rules(self.schema) if not transition_rule(r)} - set(CEL_RULES)
        if unknown:
            raise SystemExit(f"CEL rules without a Python twin in {__file__}: {unknown}")

    def errors(self, doc):
        if doc.get("apiVersion") not in self.api_versions or doc.get("kind") != self.kind:
            return [f"not a {self.api_version} {self.kind}"]
        spec = apply_defaults(self.spec_schema, copy.deepcopy(doc.get("spec", {})))
        errors = [f"spec{''.join(f'.{p}' for p in e.absolute_path)}: {e.message}"
                  for e in self.json_schema.iter_errors(spec)]
        if errors:
            return errors
        root = {"x-kubernetes-validations": self.schema.get("x-kubernetes-validations", [])}
        return cel_errors(self.spec_schema, spec) + cel_errors(root, doc, "")


# --- The run -------------------------------------------------------------------------------------

def build_operator():
    out = subprocess.run(
        ["cargo", "build", "-q", "-p", "casserole-operator", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "casserole-operator":
            return msg["executable"]
    raise SystemExit("cargo built no casserole-operator binary")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--operator", help="path of the casserole-operator binary")
    ap.add_argument("--kubernetes-version", action="append", dest="versions",
                    help=f"Kubernetes version(s) to validate against (default: {DEFAULT_VERSIONS})")
    args = ap.parse_args()
    operator = args.operator or build_operator()
    versions = args.versions or DEFAULT_VERSIONS
    passed, failed = 0, 0

    def check(name, errors):
        nonlocal passed, failed
        if errors:
            failed += 1
            print(f"FAIL {name}")
            for e in errors:
                print(f"     {e}")
        else:
            passed += 1
            print(f"ok   {name}")

    crd = yaml.safe_load(subprocess.run([operator, "crd"], check=True, capture_output=True,
                                        text=True).stdout)
    for v in versions:
        check(f"crd is a valid CustomResourceDefinition for Kubernetes {v}",
              validate_k8s(crd, v))
    crd_check = CrdValidator(crd)

    for path in sorted((ROOT / "operator" / "deploy").glob("*.yaml")):
        rel = path.relative_to(ROOT)
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for v in versions:
            errors = []
            for d in docs:
                errors += [f"{d['kind']}/{d['metadata']['name']}: {e}" for e in validate_k8s(d, v)]
            check(f"{rel}: {len(docs)} objects valid for Kubernetes {v}", errors)

    examples = sorted(EXAMPLES.glob("*.yaml"))
    if not examples:
        raise SystemExit("no examples found")
    for path in examples:
        rel = path.relative_to(ROOT)
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        check(f"{rel}: accepted by the CRD schema",
              [e for d in docs for e in crd_check.errors(d)])
        render = subprocess.run([operator, "render", "-f", str(path), "--peer-token", "manifest-test-token-0123"],
                                capture_output=True, text=True)
        if render.returncode != 0:
            check(f"{rel}: renders", [render.stderr.strip()])
            continue
        objects = [o for o in yaml.safe_load_all(render.stdout) if o]
        keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
        dupes = {k for k in keys if keys.count(k) > 1}
        check(f"{rel}: renders {len(objects)} distinct objects",
              [f"duplicate {k}" for k in dupes] or ([] if objects else ["nothing rendered"]))
        for v in versions:
            errors = []
            for o in objects:
                errors += [f"{o['kind']}/{o['metadata']['name']}: {e}" for e in validate_k8s(o, v)]
            check(f"{rel}: rendered objects valid for Kubernetes {v}", errors)

    invalid = sorted((EXAMPLES / "invalid").glob("*.yaml"))
    if not invalid:
        raise SystemExit("no invalid examples found")
    for path in invalid:
        rel = path.relative_to(ROOT)
        header = re.search(r"^# rejected-by: (schema|operator)(?: (\S+))?", path.read_text(), re.M)
        if not header:
            check(f"{rel}: has a '# rejected-by:' header", ["missing header"])
            continue
        by, field = header.groups()
        doc = yaml.safe_load(path.read_text())
        schema_errors = crd_check.errors(doc)
        if by == "schema":
            check(f"{rel}: rejected by the CRD schema ({'; '.join(schema_errors)[:100]})",
                  [] if schema_errors else ["accepted"])
            continue
        render = subprocess.run([operator, "render", "-f", str(path)],
                                capture_output=True, text=True)
        errors = [f"schema rejected it (expected only the operator to): {e}" for e in schema_errors]
        if render.returncode == 0:
            errors.append("render accepted it")
        elif field and field not in render.stderr:
            errors.append(f"render's error does not name {field}: {render.stderr.strip()}")
        check(f"{rel}: rejected by the operator at {field}", errors)

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def validate_k8s(obj, version):
    try:
        kubernetes_validate.validate(obj, version, strict=True)
        return []
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
        return [f"no schema: {e}"]


if __name__ == "__main__":
    sys.exit(main())
