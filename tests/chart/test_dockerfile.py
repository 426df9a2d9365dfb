"""The Dockerfile, checked by reading it (no Docker engine here): one target per binary,
release builds, a distroless non-root runtime without a shell, the ports each binary serves,
and image names matching the chart's defaults."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, chart

BUILDER = "rust:1-bookworm"
RUNTIME = "gcr.io/distroless/cc-debian12:nonroot"


def stages():
    """[(name, base, [(instruction, args)])] of the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            result.append((m.group(2), m.group(1), []))
        else:
            assert result, f"{instr} before FROM"
            result[-1][2].append((instr, args.strip()))
    return result


def stage(name):
    for s in stages():
        if s[0] == name:
            return s
    pytest.fail(f"no stage {name}")


def instructions(name, instr):
    return [a for i, a in stage(name)[2] if i == instr]


def test_builder_has_protoc():
    name, base, _ = stages()[0]
    assert (name, base) == ("builder", BUILDER)
    runs = " ".join(instructions("builder", "RUN"))
    assert "protobuf-compiler" in runs and "rm -rf /var/lib/apt/lists" in runs


@pytest.mark.parametrize("package,stage_name", [("casserole-node", "build-node"), ("casserole-operator", "build-operator")])
def test_release_builds(package, stage_name):
    assert stage(stage_name)[1] == "builder"
    runs = " ".join(instructions(stage_name, "RUN"))
    assert f"cargo build --release --locked -p {package}" in runs
    assert f"target/release/{package}" in runs


@pytest.mark.parametrize("target,binary,ports", [
    ("node", "casserole-node", ["8080", "9090", "8000"]),
    ("operator", "casserole-operator", ["8080"]),
])
def test_runtime_targets(target, binary, ports):
    name, base, body = stage(target)
    assert base == RUNTIME
    used = {i for i, _ in body}
    # Nothing in the runtime stage needs a shell: no RUN, no SHELL, exec-form entrypoint.
    assert not used & {"RUN", "SHELL"}, used
    assert instructions(target, "USER") == ["65532:65532"]
    assert instructions(target, "EXPOSE") == [" ".join(ports)]
    assert instructions(target, "ENTRYPOINT") == [f'["/usr/local/bin/{binary}"]']
    copies = instructions(target, "COPY")
    assert any(c.startswith(f"--from=build-{target} /out/{binary} /usr/local/bin/{binary}") for c in copies)


def test_operator_image_runs_the_controller_by_default():
    assert instructions("operator", "CMD") == ['["run"]']


def test_node_image_listens_on_all_interfaces():
    env = " ".join(instructions("node", "ENV"))
    assert "CASSEROLE_ADDRESS=0.0.0.0:8080" in env
    assert "CASSEROLE_DISK_CACHE_DIR=/var/cache/casserole" in env


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    assert {"target", "target-*", ".git"} <= set(ignored)
    # Every workspace member must be in the build context, or `cargo build --locked` fails.
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", (ROOT / "Cargo.toml").read_text()).group(1)
    crates = re.findall(r'"([^"]+)"', members)
    assert {"node", "operator", "limits"} <= set(crates)
    needed = ("Cargo.toml", "Cargo.lock", *crates)
    for path in needed:
        assert path not in ignored
    copies = instructions("builder", "COPY")
    for path in needed:
        assert any(path in c.split()[:-1] for c in copies), f"the builder does not COPY {path}"


def test_documented_image_names_match_the_chart():
    header = (ROOT / "Dockerfile").read_text()
    version = chart().metadata["appVersion"]
    values = chart().values
    for target, image in (("node", values["node"]["image"]["repository"]),
                          ("operator", values["operator"]["image"]["repository"])):
        assert f"--target {target}" in header and f"{image}:{version}" in header
