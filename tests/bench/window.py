"""Scenario 10: the adaptive fetch window against every fixed window, on three origins.

* **throttled**: 50 MB/s per connection, no total cap (more fetches, more bytes);
* **capped**: 50 MB/s per connection and 200 MB/s for all connections together
  (`casserole-test-origin --total-throttle`: the connections take turns, frame by frame), an
  origin whose capacity does not grow past four connections;
* **distant**: every answer waits 50 ms (`--latency`), no throttle.

Each origin gets fresh nodes: the adaptive window and `--readahead` 2, 4, 8 and 16; every
repetition asks each target for an object of its own (cold), targets interleaved, so a load
change on the shared machine hits every target alike. The direct downloads are one connection
(the harness's client) and `aria2c -x16` (16 connections, where installed). The figures that
count are ratios within the run: adaptive against the best fixed window, and against direct.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time

from procs import Mi, Casserole, Origin, download, log

FIXED = [2, 4, 8, 16]
TARGETS = ["direct", "aria2c-x16", "adaptive"] + [f"readahead-{n}" for n in FIXED]
PER_CONNECTION = 50_000_000
TOTAL_CAP = 200_000_000
LATENCY_MS = 50

FULL = dict(reps=2, sizes={"throttled": 512 * Mi, "capped": 512 * Mi, "distant": 128 * Mi})
QUICK = dict(reps=1, sizes={"throttled": 256 * Mi, "capped": 256 * Mi, "distant": 128 * Mi})
SMOKE = dict(reps=1, sizes={"throttled": 8 * Mi, "capped": 8 * Mi, "distant": 4 * Mi})


def matrix(bench) -> dict:
    if bench.args.smoke:
        return SMOKE
    return QUICK if bench.args.quick else FULL


def origin_args(kind: str, smoke: bool) -> list[str]:
    scale = 1 / 8 if smoke else 1
    if kind == "throttled":
        return ["--throttle", str(int(PER_CONNECTION * scale))]
    if kind == "capped":
        return ["--throttle", str(int(PER_CONNECTION * scale)),
                "--total-throttle", str(int(TOTAL_CAP * scale))]
    return ["--latency", f"{LATENCY_MS}ms"]


def aria2c(url: str, size: int, timeout: float) -> dict:
    """One `aria2c -x16` download into a scratch directory: total time and bytes."""
    out = tempfile.mkdtemp(prefix="aria2c-")
    argv = ["aria2c", "-x16", "-s16", "-k1M", "--file-allocation=none", "--allow-overwrite=true",
            "-q", "-d", out, "-o", "obj", url]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout)
        total = time.perf_counter() - t0
        path = os.path.join(out, "obj")
        got = os.path.getsize(path) if os.path.exists(path) else 0
        status = 200 if p.returncode == 0 and got == size else 0
        return {"status": status, "bytes": got, "total": total, "ttfb": None}
    except subprocess.TimeoutExpired:
        return {"status": 0, "bytes": 0, "total": timeout, "ttfb": None, "error": "timeout"}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def one_origin(bench, kind: str, size: int, reps: int) -> dict:
    targets = ["direct"] + (["aria2c-x16"] if shutil.which("aria2c") else []) + TARGETS[2:]
    objs = [f"/{kind}-{t}-{rep}.bin={size},seed={90 + rep},max-age=3600"
            for t in targets for rep in range(reps)]
    origin = Origin(bench.bins, bench.tmp, f"origin-window-{kind}", objs,
                    extra=origin_args(kind, bench.args.smoke))
    res: dict = {"size": size, "runs": {}, "origin_args": " ".join(origin_args(kind, bench.args.smoke))}
    nodes = {}
    try:
        for t in targets[targets.index("adaptive"):]:
            extra = [] if t == "adaptive" else [f"--readahead={t.rsplit('-', 1)[1]}"]
            nodes[t] = Casserole(bench.bins, bench.tmp, f"casserole-{kind}-{t}", origin.url,
                                 bench.cfg["node_memory"], extra=extra)
        for rep in range(reps):
            for t in targets:
                if t == "direct" and rep > 0 and kind != "distant":
                    continue  # one connection at its throttle: the same every time, and long
                path = f"/{kind}-{t}-{rep}.bin"
                if t == "aria2c-x16":
                    d = aria2c(origin.url.rstrip("/") + path, size, 300)
                else:
                    base = nodes[t].url if t in nodes else origin.url.rstrip("/")
                    d = download(base + path, timeout=300)
                if d["status"] != 200 or d["bytes"] != size:
                    log(f"   {kind} {t}: bad answer {d}")
                    res.setdefault("failed", {})[t] = str(d)[:300]
                    continue
                res["runs"].setdefault(t, []).append({"total_s": d["total"],
                                                      "ttfb_ms": (d["ttfb"] or 0) * 1e3})
                log(f"   {kind:9s} [{rep + 1}] {t:12s} total {d['total']:6.2f} s "
                    f"({size / d['total'] / 1e6:7.1f} MB/s)")
    finally:
        for n in nodes.values():
            n.stop()
        origin.stop()
    res["median_s"] = {t: statistics.median(r["total_s"] for r in rs) for t, rs in res["runs"].items()}
    res["ttfb_ms"] = {t: statistics.median(r["ttfb_ms"] for r in rs) for t, rs in res["runs"].items()}
    return res


def run(bench) -> dict:
    m = matrix(bench)
    res: dict = {"reps": m["reps"], "origins": {}}
    for kind, size in m["sizes"].items():
        t0 = time.monotonic()
        try:
            res["origins"][kind] = one_origin(bench, kind, size, m["reps"])
        except Exception as e:  # one broken origin must not hide the others
            log(f"   {kind} failed: {e!r}")
            res["origins"][kind] = {"error": repr(e)[:500]}
        log(f"   {kind} took {time.monotonic() - t0:.1f}s")
    return res


def best_fixed(med: dict) -> tuple[str, float] | None:
    fixed = [(t, med[t]) for t in med if t.startswith("readahead-")]
    return min(fixed, key=lambda x: x[1]) if fixed else None


def render(s: dict, target) -> list[str]:
    """Markdown for the scenario; `target(name, goal, value, met, note)` records goals."""
    if "origins" not in s:
        return [f"#### 10. Fetch window against fixed windows: {s}", ""] if s else []
    out = ["#### 10. Fetch window against fixed windows (cold objects; median of "
           f"{s['reps']} interleaved run(s), direct single connection once)", "",
           "| origin | object | target | total s | MB/s | vs adaptive (time) |",
           "|---|---:|---|---:|---:|---:|"]
    for kind, o in s["origins"].items():
        title = f"{kind} (`{o.get('origin_args', '')}`)"
        med = o.get("median_s")
        if not med:
            out.append(f"| {kind} | — | error: {o.get('error', o.get('failed'))} | | | |")
            continue
        ad = med.get("adaptive")
        for t in TARGETS:
            if t in med:
                vs = f"{med[t] / ad:.2f}×" if ad else "n/a"
                out.append(f"| {title} | {o['size'] // Mi} MiB | {t} | {med[t]:.2f} | "
                           f"{o['size'] / med[t] / 1e6:.0f} | {vs} |")
    out.append("")
    for kind, o in s["origins"].items():
        med = o.get("median_s") or {}
        ad, best, d = med.get("adaptive"), best_fixed(med), med.get("direct")
        if ad and best:
            ratio = ad / best[1]
            target(f"{kind} origin: adaptive within 10 % of the best fixed window", "≤ 1.10×",
                   f"{ratio:.2f}× (best: {best[0]}, {best[1]:.2f} s)", ratio <= 1.10)
        if kind == "capped" and ad and d:
            speed = d / ad
            aria = med.get("aria2c-x16")
            target("capped origin: adaptive ≥ 3× faster than one direct connection", "≥ 3.00×",
                   f"{speed:.2f}×", speed >= 3.0,
                   f"aria2c -x16 {aria / ad:.2f}× the adaptive time" if aria else "")
        if kind == "distant" and ad and d:
            ratio = ad / d
            target(f"distant origin {o['size'] // Mi} MiB: ≤ 2.0× direct (goal 1.2×)", "≤ 2.00×",
                   f"{ratio:.2f}×", ratio <= 2.0)
            ttfb = o["ttfb_ms"]
            extra = ttfb["adaptive"] - ttfb["direct"]
            target("distant origin: TTFB ≤ direct + 10 ms", "≤ +10 ms",
                   f"{ttfb['adaptive']:.1f} ms vs {ttfb['direct']:.1f} ms (+{extra:.1f})", extra <= 10.0)
    return out
