#!/usr/bin/env python3
"""The public HTTP caching test suite (npm `http-cache-tests`, the suite behind cache-tests.fyi)
through one Casserole node on defaults, Varnish (default VCL), nginx (the harness's proxy_cache +
slice config) and Squid (reverse proxy), each in front of the suite's own server, in one run.

`python3 tests/bench/cache_tests.py [--only node] [--node-bin PATH] [--id PREFIX]`, or
`scripts/bench.sh cache-tests [...]` (builds the release node first). About 30 s per cache.

Installs the pinned suite into tests/bench/.npm/ (gitignored) and Squid with apt-get when missing.
The suite's server counts the requests that reach it; after each run this script asks it (directly,
not through the cache) which requests of each test it saw, so a failure is put down to its cause:
(a) upstream requests the test did not expect (one client request fetched twice, or a response
that should have been reused going upstream again), (b) a status other than the origin's, (c) the
rest, by the suite's own message. Tests the node fails on purpose are listed, with the reason, in
tests/bench/cache_tests_on_purpose.json.

Writes OUT/cache-tests.json (every cache's per-test results and the server's view of each test) and
OUT/cache-tests.md (scores, per-section table, the node's failures by cause, and what changed since
the previous results). A run of a subset (`--only`, `--id`) writes cache-tests-<targets>.json/.md
instead, so the full run's files stay the baseline it is compared with.

Everything binds 127.0.0.1; every process this script starts is stopped by it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

from procs import ROOT, Nginx, Proc, ensure_peers, free_port, http_get_text, log, port_open, wait_for
from report import machine_info

HCT_PACKAGE = "http-cache-tests"
HCT_VERSION = "0.4.5"  # pinned: test ids and counts change between releases
BENCH = os.path.dirname(os.path.abspath(__file__))
NPM_DIR = os.path.join(BENCH, ".npm")
HCT_DIR = os.path.join(NPM_DIR, "node_modules", HCT_PACKAGE)
ON_PURPOSE = os.path.join(BENCH, "cache_tests_on_purpose.json")
TARGETS = ["node", "varnish", "nginx", "squid"]  # the four scored caches, in table order
LABELS = {"node": "Casserole node", "varnish": "Varnish", "nginx": "nginx (slice)",
          "squid": "Squid", "origin": "no cache (origin)"}
RUN_TIMEOUT = 600  # one pass of the suite takes ~20-40 s; a cache that hangs a request stops it


# --------------------------------------------------------------------------------------------
# Installing the suite and Squid


def ensure_suite(allow_install: bool) -> None:
    pkg = os.path.join(HCT_DIR, "package.json")
    try:
        with open(pkg) as f:
            if json.load(f).get("version") == HCT_VERSION:
                return
    except (OSError, ValueError):
        pass
    if not allow_install:
        raise SystemExit(f"{HCT_PACKAGE}@{HCT_VERSION} is not in {NPM_DIR} (and --no-install)")
    if not shutil.which("npm") or not shutil.which("node"):
        raise SystemExit("node and npm are needed (Debian: apt-get install nodejs npm)")
    log(f"installing {HCT_PACKAGE}@{HCT_VERSION} into {os.path.relpath(NPM_DIR, ROOT)}")
    os.makedirs(NPM_DIR, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", NPM_DIR, "--no-audit", "--no-fund", "--no-save",
                    "--no-package-lock", "--loglevel=error", f"{HCT_PACKAGE}@{HCT_VERSION}"],
                   check=True, timeout=600, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# Processes: the suite's server and the caches in front of it


class SuiteServer:
    def __init__(self, tmp: str):
        self.port = free_port()
        env = dict(os.environ, npm_config_port=str(self.port), npm_config_protocol="http",
                   npm_config_pidfile=os.path.join(tmp, "cache-tests-server.pid"))
        preload = "file://" + os.path.join(BENCH, "cache_tests_loopback.mjs")
        self.proc = Proc("cache-tests-server", ["node", "--no-warnings", "--import", preload,
                                                "server/server.mjs"], tmp, cwd=HCT_DIR, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for("cache-tests server", lambda: port_open(self.port), 15, self.proc)

    def state(self, uuid: str) -> list:
        """The requests of one test that reached the server (asked directly, not via a cache)."""
        try:
            with urllib.request.urlopen(f"{self.url}/state/{uuid}", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError:
            return []  # 404: nothing of that test reached the server

    def stop(self):
        self.proc.stop()


class Node:
    """One node on defaults: only the upstream, loopback listeners and a temp data dir are set."""

    def __init__(self, binary: str, tmp: str, upstream: str, extra: list[str]):
        self.port, self.admin, self.peer = free_port(), free_port(), free_port()
        d = tempfile.mkdtemp(prefix="node-", dir=tmp)
        argv = [binary, "--upstream", upstream, f"--address=127.0.0.1:{self.port}",
                f"--admin-address=127.0.0.1:{self.admin}", f"--peer-address=127.0.0.1:{self.peer}",
                f"--disk-cache-dir={d}/data", *extra]
        self.proc = Proc("cache-tests-node", argv, tmp, cwd=d)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for("node", lambda: http_get_text(f"http://127.0.0.1:{self.admin}/readyz", 1)[0] == 200,
                 30, self.proc)

    def stop(self):
        self.proc.stop()


class VarnishDefault:
    """varnishd as bench.py starts it, but with the default VCL: only the backend is declared, so
    the builtin VCL decides what is cached (bench.py's VCL forces a 1 h TTL)."""

    def __init__(self, tmp: str, origin_port: int):
        d = tempfile.mkdtemp(prefix="varnish-", dir=tmp)
        os.chmod(d, 0o755)
        self.port = free_port()
        path = os.path.join(d, "default.vcl")
        with open(path, "w") as f:
            f.write(f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{origin_port}"; }}\n')
        os.chmod(path, 0o644)
        self.proc = Proc("cache-tests-varnish", [
            "varnishd", "-F", "-a", f"127.0.0.1:{self.port}", "-f", path, "-T", "127.0.0.1:0",
            "-s", "malloc,256m", "-n", os.path.join(d, "work")], tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for("varnish", lambda: port_open(self.port), 30, self.proc)

    def stop(self):
        self.proc.stop()


class Squid:
    """Debian's squid as a reverse proxy (accel) of the suite's server, its cache, logs and pid
    file in a temp dir; `squid -z` makes the cache_dir first."""

    def __init__(self, tmp: str, origin_port: int):
        d = tempfile.mkdtemp(prefix="squid-", dir=tmp)
        self.port = free_port()
        conf = f"""http_port 127.0.0.1:{self.port} accel defaultsite=127.0.0.1:{origin_port} no-vhost
cache_peer 127.0.0.1 parent {origin_port} 0 no-query originserver name=origin
cache_peer_access origin allow all
never_direct allow all
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
cache_mem 64 MB
cache_dir ufs {d}/cache 256 16 256
coredump_dir {d}
pid_filename {d}/squid.pid
access_log stdio:{d}/access.log
cache_log {d}/cache.log
cache_store_log none
netdb_filename none
icp_port 0
htcp_port 0
shutdown_lifetime 1 seconds
visible_hostname casserole-bench
"""
        path = os.path.join(d, "squid.conf")
        with open(path, "w") as f:
            f.write(conf)
        if os.geteuid() == 0:  # squid drops to its default user (Debian: proxy)
            subprocess.run(["chown", "-R", "proxy:proxy", d], check=False)
        z = subprocess.run(["squid", "-z", "-N", "-f", path], capture_output=True, text=True,
                           timeout=60)
        if z.returncode != 0:
            raise RuntimeError(f"squid -z failed: {z.stdout}{z.stderr}")
        self.proc = Proc("cache-tests-squid", ["squid", "-N", "-f", path], tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for("squid", lambda: port_open(self.port), 30, self.proc)

    def stop(self):
        self.proc.stop()


class Direct:
    def __init__(self, server: SuiteServer):
        self.url = server.url

    def stop(self):
        pass


# --------------------------------------------------------------------------------------------
# Running the suite and reading its results


def run_suite(base: str, prefixes: list[str]) -> dict:
    argv = ["node", "--no-warnings", os.path.join(BENCH, "cache_tests_run.mjs"), HCT_DIR, base,
            *prefixes]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=HCT_DIR)
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"suite runner exited {p.returncode}: {p.stderr[-800:]}")
    return json.loads(p.stdout)


RESULT_KINDS = ("pass", "fail", "optional_fail", "yes", "no", "setup_fail", "retry",
                "harness_fail", "dependency_fail", "untested")


def verdict(meta: dict, results: dict, tid: str, honor_deps: bool = True) -> str:
    """The suite's own classification (lib/display.mjs determineTestResult)."""
    r = results.get(tid)
    t = meta[tid]
    if r is None:
        return "untested"
    if honor_deps:
        for dep in t["depends_on"]:
            if dep in meta and verdict(meta, results, dep) not in ("pass", "yes"):
                return "dependency_fail"
    if isinstance(r, list) and r and r[0] == "Setup":
        return "retry" if len(r) > 1 and r[1] == "retry" else "setup_fail"
    kind = t["kind"]
    if kind == "required":
        return "pass" if r is True else "fail"
    if kind == "optimal":
        return "pass" if r is True else "optional_fail"
    return "yes" if r is True else "no"


STATUS_RE = re.compile(r"Response (\d+) status is (\d+), not (\d+)")


def origin_status(req: dict) -> int | None:
    if req.get("expected_type", "") and req["expected_type"].endswith("validated"):
        return None  # 304 or 999, decided by the request the server got
    return req.get("response_status") or 200


def cause(t: dict, r, state: list) -> tuple[str, str]:
    """(cause key, detail) of a test that did not pass."""
    msg = r[1] if isinstance(r, list) and len(r) > 1 else str(r)
    nums = Counter(s.get("request_num") for s in state)
    dups = sorted(n for n, c in nums.items() if c > 1 and n is not None)
    if dups or len(state) > len(t["requests"]):
        what = (f"client request {', '.join(map(str, dups))} reached the origin more than once"
                if dups else f"the origin saw {len(state)} requests for {len(t['requests'])} client requests")
        return "a1", f"{what}; suite: {msg}"
    if "does not come from cache" in msg:
        return "a2", msg
    m = STATUS_RE.search(msg)
    if m:
        n, got, want = map(int, m.groups())
        req = t["requests"][n - 1] if n - 1 < len(t["requests"]) else {}
        if origin_status(req) == want and not req.get("expected_status"):
            return "b", msg
    return "c", msg


CAUSES = {
    "a1": "(a) more upstream requests than expected: one client request cost more than one upstream request",
    "a2": "(a) more upstream requests than expected: a stored response the test expects reused went upstream",
    "b": "(b) the client got another status than the origin's",
    "c": "(c) other",
}

# (c) by what the suite's message says the cache did
OTHER = [
    ("retry", lambda msg, nums: msg == "retry" and None in nums,
     "the node's upstream request lacks the client's request headers (the suite's `Req-Num`): "
     "the suite reads two such requests as one retried"),
    ("reused", lambda msg, nums: "comes from cache" in msg,
     "a response reused (or stale served) where the test expects the origin asked"),
    ("not-conditional", lambda msg, nums: "should have been conditional" in msg,
     "revalidation without a validator: the upstream request carries no If-None-Match/If-Modified-Since"),
    ("no-304", lambda msg, nums: re.search(r"status is \d+, not 304", msg),
     "the client's conditional request not answered 304"),
    ("req-header", lambda msg, nums: re.match(r"Request \d+ header", msg),
     "a client request header not forwarded upstream"),
    ("resp-header", lambda msg, nums: re.search(r"Response \d+ (header|includes)", msg),
     "a response header missing, not stored, not updated, or not removed"),
    ("status", lambda msg, nums: "status is" in msg, "another status than the test expects"),
    ("body", lambda msg, nums: msg.startswith("Response body"), "another body"),
    ("other", lambda msg, nums: True, "anything else"),
]


def other_kind(row: dict) -> str:
    for key, match, _ in OTHER:
        if match(row["detail"], row["upstream_request_nums"]):
            return key
    return "other"


def analyse(name: str, run: dict, server: SuiteServer) -> dict:
    meta = {t["id"]: t for t in run["tests"]}
    results = run["results"]
    tests = {}
    for tid, t in meta.items():
        r = results.get(tid)
        state = server.state(run["uuids"][tid]) if tid in run["uuids"] else []
        row = {"result": r, "verdict": verdict(meta, results, tid),
               "upstream_requests": len(state), "client_requests": len(t["requests"]),
               "upstream_request_nums": [s.get("request_num") for s in state],
               "upstream_methods": [s.get("request_method") for s in state]}
        if r is not True:
            row["cause"], row["detail"] = cause(t, r, state)
        tests[tid] = row
    passed = sum(1 for row in tests.values() if row["result"] is True)
    counts = Counter(row["verdict"] for row in tests.values())
    return {"label": LABELS.get(name, name), "passed": passed, "total": len(tests),
            "verdicts": dict(counts), "tests": tests}


# --------------------------------------------------------------------------------------------
# Report


def load_on_purpose() -> dict[str, str]:
    try:
        with open(ON_PURPOSE) as f:
            return {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    except (OSError, ValueError):
        return {}


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def render(doc: dict, baseline: dict | None) -> str:
    caches = [c for c in TARGETS + ["origin"] if c in doc["caches"]]
    C = doc["caches"]
    meta = doc["tests"]
    out = [f"### HTTP caching test suite ({HCT_PACKAGE} {HCT_VERSION}, {doc['date']})", "",
           f"Each cache in front of the suite's own server, one after the other in one run; "
           f"score = tests passed / tests run (the suite's `true`, as cache-tests.fyi counts). "
           f"Node: `{rel(doc.get('node_bin') or '')}` built {doc.get('node_bin_mtime', '?')} "
           f"(work tree at {doc.get('commit', '?')}), on defaults"
           f"{' plus ' + ' '.join(doc['node_args']) if doc.get('node_args') else ''}. "
           f"Machine: {doc.get('machine', '')}.", ""]
    failed_runs = {c: v for c, v in doc.get("failed", {}).items()}
    out += ["| cache | score | required passed | optimal passed | check: yes | fail ⛔ | "
            "not optimal ⚠ | setup/retry | dependency ⚪ |", "|---|---|---|---|---|---|---|---|---|"]
    for c in caches:
        a = C[c]
        kinds = Counter()
        kinds_pass = Counter()
        for tid, row in a["tests"].items():
            kinds[meta[tid]["kind"]] += 1
            kinds_pass[meta[tid]["kind"]] += row["result"] is True
        v = a["verdicts"]
        out.append(f"| {a['label']} | **{a['passed']}/{a['total']}** | "
                   f"{kinds_pass['required']}/{kinds['required']} | "
                   f"{kinds_pass['optimal']}/{kinds['optimal']} | {kinds_pass['check']}/{kinds['check']} | "
                   f"{v.get('fail', 0)} | {v.get('optional_fail', 0)} | "
                   f"{v.get('setup_fail', 0) + v.get('retry', 0)} | {v.get('dependency_fail', 0)} |")
    for c, why in failed_runs.items():
        out.append(f"| {LABELS.get(c, c)} | n/a | {why[:120]} | | | | | | |")
    out.append("")

    # per suite section
    sections: dict[str, list[str]] = defaultdict(list)
    names = {}
    for tid, t in meta.items():
        sections[t["suite"]].append(tid)
        names[t["suite"]] = t["suite_name"]
    out += ["#### By section of the suite (passed/tests)", "",
            "| section | " + " | ".join(C[c]["label"] for c in caches) + " |",
            "|---|" + "---|" * len(caches)]
    for s, ids in sections.items():
        cells = []
        for c in caches:
            p = sum(1 for i in ids if C[c]["tests"].get(i, {}).get("result") is True)
            cells.append(f"{p}/{len(ids)}")
        out.append(f"| {names[s]} (`{s}`) | " + " | ".join(cells) + " |")
    out.append("")

    if "node" in C:
        out += render_node(doc, baseline)
    return "\n".join(out) + "\n"


def render_node(doc: dict, baseline: dict | None) -> list[str]:
    meta = doc["tests"]
    node = doc["caches"]["node"]["tests"]
    on_purpose = load_on_purpose()
    # peers: this run's, else the baseline's (a node-only run)
    peer_doc = doc if any(c in doc["caches"] for c in ("varnish", "nginx", "squid")) else (baseline or doc)
    others = [c for c in ("varnish", "nginx", "squid") if c in peer_doc.get("caches", {})]
    out = []
    # what changed since the baseline
    if baseline and "node" in baseline.get("caches", {}):
        old = baseline["caches"]["node"]["tests"]
        regressed = sorted(t for t in node if node[t]["result"] is not True
                           and (old.get(t) or {}).get("result") is True)
        fixed = sorted(t for t in node if node[t]["result"] is True
                       and t in old and old[t]["result"] is not True)
        out += [f"#### Node against the baseline ({baseline.get('date', '?')}, "
                f"{baseline['caches']['node']['passed']}/{baseline['caches']['node']['total']})", "",
                f"- now passing: {len(fixed)}" + (f" — {', '.join(fixed)}" if fixed else ""),
                f"- **regressed** (passed in the baseline, fail now): {len(regressed)}"
                + (f" — {', '.join(regressed)}" if regressed else ""), ""]
    fails = {t: row for t, row in node.items() if row["result"] is not True}
    purposely = {t: on_purpose[t] for t in fails if t in on_purpose}
    out += [f"#### The node's failures by cause ({len(fails)} tests not passed)", "",
            "Kinds: ⛔ required, ⚠ optimal, ● check (informational, still counted in the score). "
            "`peers` = which of Varnish/nginx/Squid pass it (V, N, S). `origin saw A for B (…)`: "
            "A requests reached the suite's server for B client requests, with the client's "
            "`Req-Num` on each (`-`: the node's own request, without the client's headers).", ""]
    by_cause: dict[str, list[str]] = defaultdict(list)
    for t, row in fails.items():
        if t not in purposely:
            by_cause[row["cause"]].append(t)
    out += ["| cause | tests | ⛔ | ⚠ | ● |", "|---|---|---|---|---|"]
    for k in CAUSES:
        ids = by_cause.get(k, [])
        kinds = Counter(meta[t]["kind"] for t in ids)
        out.append(f"| {CAUSES[k]} | {len(ids)} | {kinds['required']} | {kinds['optimal']} | "
                   f"{kinds['check']} |")
    out.append(f"| failed on purpose (tests/bench/cache_tests_on_purpose.json) | {len(purposely)} | | | |")
    out.append("")
    mark = {"required": "⛔", "optimal": "⚠", "check": "●"}
    for k in CAUSES:
        ids = by_cause.get(k, [])
        if not ids:
            continue
        out += [f"##### {CAUSES[k]}: {len(ids)}", ""]
        groups = [(None, ids)]
        if k == "c":
            sub: dict[str, list[str]] = defaultdict(list)
            for t in ids:
                sub[other_kind(node[t])].append(t)
            groups = [(f"{label} ({len(sub[key])})", sub[key]) for key, _, label in OTHER if sub.get(key)]
            out += ["| what the node did | tests |", "|---|---|"]
            out += [f"| {label.rsplit(' (', 1)[0]} | {len(tids)} |" for label, tids in groups]
            out.append("")
        for label, gids in groups:
            if label:
                out += [f"###### {label}", ""]
            by_suite: dict[str, list[str]] = defaultdict(list)
            for t in gids:
                by_suite[meta[t]["suite_name"]].append(t)
            for s, tids in by_suite.items():
                out.append(f"- **{s}** ({len(tids)})")
                for t in sorted(tids):
                    row = node[t]
                    peers = "".join(c[0].upper() for c in others if (
                        peer_doc["caches"][c]["tests"].get(t) or {}).get("result") is True) or "-"
                    seen = ",".join("-" if n is None else str(n) for n in row["upstream_request_nums"])
                    out.append(f"  - {mark[meta[t]['kind']]} `{t}` [peers {peers}; origin saw "
                               f"{row['upstream_requests']} for {row['client_requests']} ({seen or 'none'})]: "
                               f"{row['detail'][:220]}")
            out.append("")
    if purposely:
        out += ["##### Failed on purpose", ""]
        out += [f"- `{t}`: {why}" for t, why in sorted(purposely.items())]
        out.append("")
    stale = sorted(t for t in on_purpose if t in node and node[t]["result"] is True)
    if stale:
        out += ["Listed as failed on purpose but passing now (remove from the list): "
                + ", ".join(f"`{t}`" for t in stale), ""]
    return out


def update_doc(path: str, md: str) -> None:
    """Replaces the text between the cache-tests markers of `path` with the score tables."""
    begin, end = "<!-- cache-tests:latest -->", "<!-- /cache-tests:latest -->"
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        log(f"{path} has no {begin} ... {end} markers: not updated")
        return
    tables = md.split("\n#### The node's failures", 1)[0].split("\n#### Node against", 1)[0]
    title, _, body = tables.partition("\n")
    block = f"{begin}\n_{title.lstrip('# ').strip()}._\n{body.rstrip()}\n{end}"
    head, rest = text.split(begin, 1)
    with open(path, "w") as f:
        f.write(head + block + rest.split(end, 1)[1])
    log(f"updated the conformance table in {path}")


# --------------------------------------------------------------------------------------------


def write_json(doc: dict, f) -> None:
    """JSON with one test per line (the file is committed: small diffs, ~1/3 the indented size)."""
    def rows(d: dict, indent: str) -> str:
        return "{\n" + ",\n".join(f"{indent}{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
                                   for k, v in d.items()) + "}"

    parts = []
    for k, v in doc.items():
        if k == "tests":
            parts.append(f' "tests": {rows(v, "  ")}')
        elif k == "caches":
            cs = []
            for c, a in v.items():
                head = ", ".join(f"{json.dumps(x)}: {json.dumps(y)}" for x, y in a.items() if x != "tests")
                cs.append(f'  {json.dumps(c)}: {{{head}, "tests": {rows(a["tests"], "   ")}}}')
            parts.append(' "caches": {\n' + ",\n".join(cs) + "}")
        else:
            parts.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}")
    f.write("{\n" + ",\n".join(parts) + "\n}\n")


def find_node(explicit: str | None) -> str:
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise SystemExit(f"{explicit} is not an executable")
        return os.path.abspath(explicit)
    cands = [os.path.join(d, "casserole-node") for d in (
        os.path.join(os.environ["CARGO_TARGET_DIR"], "release") if os.environ.get("CARGO_TARGET_DIR") else "",
        os.path.join(ROOT, "target-bench", "release"), os.path.join(ROOT, "target", "release"),
        os.path.join(ROOT, "target", "debug")) if d]
    found = [c for c in cands if os.access(c, os.X_OK)]
    if not found:
        raise SystemExit("no casserole-node binary: `cargo build -p casserole-node --bins` "
                         "(or pass --node-bin)")
    return max(found, key=os.path.getmtime)  # the newest build, whichever profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=TARGETS + ["origin"],
                    help="run only these caches (repeatable); `origin` is the suite's server with "
                         "no cache, a reference (run by default)")
    ap.add_argument("--id", action="append", default=[], metavar="PREFIX",
                    help="run only the tests whose id (or section id) starts with PREFIX (repeatable)")
    ap.add_argument("--node-bin", help="the casserole-node to test (default: the newest of "
                                       "target-bench/release, target/release, target/debug)")
    ap.add_argument("--node-arg", action="append", default=[],
                    help="an extra argument for the node (repeatable; the scored run uses none)")
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--baseline", help="results JSON to compare the node with "
                                       "(default: OUT/cache-tests.json as it was before this run)")
    ap.add_argument("--no-install", action="store_true", help="never npm/apt-get install anything")
    ap.add_argument("--update-docs", metavar="FILE",
                    help="replace the table between <!-- cache-tests:latest --> markers in FILE "
                         "(docs/standards.md)")
    args = ap.parse_args()
    targets = args.only or TARGETS + ["origin"]
    subset = bool(args.only or args.id)

    ensure_suite(not args.no_install)
    have = ensure_peers(not args.no_install, {"nginx": "nginx", "varnishd": "varnish", "squid": "squid"})
    node_bin = find_node(args.node_bin) if "node" in targets else None
    tmp = tempfile.mkdtemp(prefix="casserole-cache-tests-")
    os.chmod(tmp, 0o755)  # varnish's child (vcache) and squid (proxy) reach their dirs

    def on_signal(signum, frame):
        log(f"signal {signum}: stopping everything")
        Proc.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    doc: dict = {"package": f"{HCT_PACKAGE}@{HCT_VERSION}", "caches": {}, "failed": {},
                 "node_bin": node_bin, "node_args": args.node_arg, "id_prefixes": args.id}
    if node_bin:
        st = os.stat(node_bin)
        doc["node_bin_mtime"] = datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")
        try:
            # -dirty: the binary may hold uncommitted changes of the work tree
            doc["commit"] = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                           capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    log(f"caches: {', '.join(targets)}; node {node_bin}; temp dir {tmp}")
    server = SuiteServer(tmp)
    try:
        for c in targets:
            exe = {"varnish": "varnishd", "nginx": "nginx", "squid": "squid"}.get(c)
            if exe and not have.get(exe):
                doc["failed"][c] = f"{exe} unavailable"
                continue
            srv = None
            t = time.monotonic()
            try:
                if c == "node":
                    # a copy: a cargo build finishing during the run must not change the binary
                    copy = os.path.join(tmp, "casserole-node")
                    shutil.copy2(node_bin, copy)
                    srv = Node(copy, tmp, server.url, args.node_arg)
                elif c == "varnish":
                    srv = VarnishDefault(tmp, server.port)
                elif c == "nginx":
                    srv = Nginx(tmp, "cache-tests-nginx", server.port)
                elif c == "squid":
                    srv = Squid(tmp, server.port)
                else:
                    srv = Direct(server)
                run = run_suite(srv.url, args.id)
                doc["tests"] = {t_["id"]: t_ for t_ in run["tests"]}
                a = analyse(c, run, server)
                doc["caches"][c] = a
                log(f"   {LABELS[c]:20s} {a['passed']}/{a['total']} in {time.monotonic() - t:.0f}s")
            except Exception as e:  # a broken cache must not hide the others' results
                log(f"   {c} failed: {e!r}")
                doc["failed"][c] = repr(e)[:500]
            finally:
                if srv:
                    srv.stop()
    finally:
        server.stop()
        Proc.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if "tests" not in doc:
        log("no cache was tested")
        return 1
    doc["machine"] = machine_info()
    doc["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc["elapsed_s"] = time.monotonic() - t0
    doc["scores"] = {c: {"passed": a["passed"], "total": a["total"]} for c, a in doc["caches"].items()}

    os.makedirs(args.out, exist_ok=True)
    stem = "cache-tests" + (("-" + "-".join(targets)) if subset else "")
    base_path = args.baseline or os.path.join(args.out, "cache-tests.json")
    baseline = None
    try:
        with open(base_path) as f:
            baseline = json.load(f)
    except (OSError, ValueError):
        pass
    md = render(doc, baseline)
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        write_json(doc, f)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(md)
    if args.update_docs and not subset:
        update_doc(args.update_docs, md)
    print("\n".join(md.split("\n#### By section")[0].splitlines()))
    log(f"wrote {args.out}/{stem}.md and {stem}.json in {doc['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
