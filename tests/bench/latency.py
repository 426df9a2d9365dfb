"""Scenario 7: cold misses from a distant origin (the test origin waits before every answer).

Each latency gets its own origin and fresh caches; every object is fetched once per target
(direct, Casserole with its adaptive window, Casserole with the old fixed `--readahead 4`, a
3-node Casserole cluster asked through one node so that most chunks come from their owners,
nginx, Varnish), interleaved, so a load change on the shared machine hits every target alike.
"""

from __future__ import annotations

import statistics

from procs import Mi, Casserole, Etcd, Origin, download, log, metric, wait_for

FULL = dict(latencies_ms=[0, 20, 50, 150], sizes=[32 * Mi, 512 * Mi], reps=1)
QUICK = dict(latencies_ms=[0, 50], sizes=[32 * Mi, 128 * Mi], reps=2)
SMOKE = dict(latencies_ms=[0, 20], sizes=[4 * Mi], reps=1)
TARGETS = ["direct", "casserole", "casserole-fixed4", "casserole-cluster3", "nginx", "varnish"]


def cluster(bench, origin, lat: int):
    """Three nodes on one etcd; returns (etcd, nodes). Requests go to the first node."""
    etcd = Etcd(bench.tmp)
    nodes = [Casserole(bench.bins, bench.tmp, f"casserole-c{i}-lat{lat}", origin.url,
                       bench.cfg["node_memory"], cluster=etcd.url) for i in range(3)]
    for n in nodes:
        wait_for("cluster of 3", lambda n=n: metric(n.admin_url, "casserole_cluster_members") == 3,
                 30, n.proc)
    return etcd, nodes


def matrix(bench) -> dict:
    if bench.args.smoke:
        return SMOKE
    return QUICK if bench.args.quick else FULL


def run(bench) -> dict:
    m = matrix(bench)
    res: dict = {"latencies_ms": m["latencies_ms"], "sizes": m["sizes"], "cells": {}}
    for lat in m["latencies_ms"]:
        objs = [f"/lat{i}-{rep}.bin={size},seed={60 + i},max-age=3600"
                for i, size in enumerate(m["sizes"]) for rep in range(m["reps"])]
        origin = Origin(bench.bins, bench.tmp, f"origin-lat{lat}", objs, extra=["--latency", f"{lat}ms"])
        storage = m["reps"] * sum(m["sizes"]) + 64 * Mi
        servers = {}
        for target in bench.peers() + ["casserole-fixed4"]:
            try:
                if target == "casserole-fixed4":
                    servers[target] = Casserole(bench.bins, bench.tmp, f"casserole-fixed-lat{lat}",
                                                origin.url, bench.cfg["node_memory"],
                                                extra=["--readahead=4"])
                else:
                    servers[target] = bench.start_target(target, origin, f"{target}-lat{lat}",
                                                         storage=storage)
            except Exception as e:
                log(f"   {target} failed to start: {e!r}")
                res.setdefault("failed", {})[f"{target}@{lat}ms"] = repr(e)[:300]
        extra_procs = []
        try:
            etcd, nodes = cluster(bench, origin, lat)
            servers["casserole-cluster3"] = nodes[0]
            extra_procs = [etcd] + nodes[1:]
        except Exception as e:
            log(f"   cluster failed to start: {e!r}")
            res.setdefault("failed", {})[f"casserole-cluster3@{lat}ms"] = repr(e)[:300]
        for i, size in enumerate(m["sizes"]):
            for rep in range(m["reps"]):
                for target in ["direct"] + list(servers):
                    srv = servers.get(target)
                    base = srv.url if srv else origin.url.rstrip("/")
                    d = download(f"{base}/lat{i}-{rep}.bin", timeout=300)
                    cs = d.get("cache_status", "").lower()
                    # through the cluster the first chunk may come from its owner peer, which
                    # fetched it from the origin just now (every path here is cold everywhere)
                    cold = "miss" in cs or (target == "casserole-cluster3" and "detail=peer" in cs)
                    ok = d["status"] == 200 and d["bytes"] == size and (not srv or cold)
                    if not ok:
                        log(f"   {target} lat {lat} ms {size // Mi} MiB: bad answer {d}")
                        res.setdefault("failed", {})[f"{target}@{lat}ms/{size // Mi}MiB"] = str(d)[:300]
                        continue
                    cell = res["cells"].setdefault(f"{lat}/{size}", {}).setdefault(target, [])
                    cell.append({"ttfb_ms": d["ttfb"] * 1e3, "total_s": d["total"]})
                    log(f"   {lat:4d} ms {size // Mi:4d} MiB {target:17s} ttfb {d['ttfb'] * 1e3:7.1f} ms "
                        f"total {d['total']:6.2f} s ({size / d['total'] / 1e6:7.1f} MB/s)")
        for srv in list(servers.values()) + extra_procs:
            srv.stop()
        origin.stop()
    for cell in res["cells"].values():
        for target, runs in cell.items():
            cell[target] = {"ttfb_ms": statistics.median(r["ttfb_ms"] for r in runs),
                            "total_s": statistics.median(r["total_s"] for r in runs), "runs": runs}
    return res


def render(s: dict, target) -> list[str]:
    """Markdown for the scenario; `target(name, goal, value, met, note)` records goals."""
    if "cells" not in s:
        return [f"#### 7. Cold miss from a distant origin: {s}", ""] if s else []
    out = ["#### 7. Cold miss from a distant origin (origin waits before every answer)", "",
           "| origin latency | object | target | TTFB ms | total s | vs direct (time) |",
           "|---:|---:|---|---:|---:|---:|"]
    for lat in s["latencies_ms"]:
        for size in s["sizes"]:
            cell = s["cells"].get(f"{lat}/{size}", {})
            d = cell.get("direct")
            for tgt in TARGETS:
                r = cell.get(tgt)
                if not r:
                    continue
                ratio = f"{r['total_s'] / d['total_s']:.2f}×" if d else "n/a"
                out.append(f"| {lat} ms | {size // Mi} MiB | {tgt} | {r['ttfb_ms']:.1f} | "
                           f"{r['total_s']:.2f} | {ratio} |")
    out.append("")
    if s.get("failed"):
        out += [f"Failed: {s['failed']}", ""]
    # The goal cell: the largest object at 50 ms (or the highest latency run).
    lat = 50 if 50 in s["latencies_ms"] else max(s["latencies_ms"])
    size = max(s["sizes"])
    cell = s["cells"].get(f"{lat}/{size}", {})
    cas, d, var = cell.get("casserole"), cell.get("direct"), cell.get("varnish")
    if cas and d:
        ratio = cas["total_s"] / d["total_s"]
        note = f"varnish {var['total_s'] / d['total_s']:.2f}×" if var else ""
        target(f"{size // Mi} MiB, origin +{lat} ms: total ≤ 1.2× direct", "≤ 1.20×", f"{ratio:.2f}×",
               ratio <= 1.2, note)
        if var:
            target(f"{size // Mi} MiB, origin +{lat} ms: total ≤ Varnish", "≤ 1.00×",
                   f"{cas['total_s'] / var['total_s']:.2f}×", cas["total_s"] <= var["total_s"])
        extra = cas["ttfb_ms"] - d["ttfb_ms"]
        target(f"{size // Mi} MiB, origin +{lat} ms: TTFB ≤ origin + 10 ms", "≤ +10 ms",
               f"{cas['ttfb_ms']:.1f} ms vs {d['ttfb_ms']:.1f} ms (+{extra:.1f})", extra <= 10.0)
        c3 = cell.get("casserole-cluster3")
        if c3:
            ratio = c3["total_s"] / cas["total_s"]
            target(f"{size // Mi} MiB, origin +{lat} ms: 3-node cluster ≤ 1.3× one node", "≤ 1.30×",
                   f"{ratio:.2f}×", ratio <= 1.3)
    return out
