#!/usr/bin/env python3
"""Casserole side by side with nginx (proxy_cache + slice) and Varnish, on one origin.

One command: `python3 tests/bench/bench.py [--smoke] [--out tests/bench/results]`.
Prints a markdown table (also written to OUT/results.md, raw numbers to OUT/results.json) and
draws OUT/bench.png when matplotlib is importable.

Everything binds 127.0.0.1, every loop is bounded in count and time, every process this script
starts is stopped by it (also on Ctrl-C and when the global deadline fires).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time


from procs import (  # noqa: E402
    Ki,
    Mi,
    ROOT,
    Casserole,
    Etcd,
    Nginx,
    Origin,
    Proc,
    Relay,
    Varnish,
    download,
    ensure_peers,
    find_binaries,
    group_cpu,
    log,
    metric,
    parallel_downloads,
    rss_kib,
    wait_for,
    wrk,
)
from report import HOT_OBJECTS, TARGETS, chart, fmt, human, machine_info, render, update_readme  # noqa: E402
import latency  # noqa: E402
import mixed  # noqa: E402
import upstreams  # noqa: E402
import window  # noqa: E402


# --------------------------------------------------------------------------------------------
# Sizes per mode. Full mode fits in < 16 minutes on 2 cores (the window scenario last); smoke mode
# in seconds; --quick runs only the latency scenario's subset (with --only upstreams: scenario 8's
# quick sizes; with --only mixed: scenario 9 for 15 s).

FULL = dict(
    deadline=930,
    small=64 * Ki,
    medium=1 * Mi,
    large=64 * Mi,
    conns=[1, 16, 64],
    wrk_seconds=3,
    hot_rounds=3,
    cold=512 * Mi,
    throttle=50_000_000,
    cold_fast_reps=3,
    amp_size=128 * Mi,
    amp_clients=30,
    rss_clients=200,
    rss_objects=16,
    rss_size=64 * Mi,
    rss_tier="256Mi",
    rss_tier_bytes=256 * Mi,
    disk_size=256 * Mi,
    disk_tier="16Mi",
    node_memory="1Gi",
)
SMOKE = dict(
    deadline=150,
    small=64 * Ki,
    medium=1 * Mi,
    large=4 * Mi,
    conns=[1, 4],
    wrk_seconds=1,
    hot_rounds=1,
    cold=8 * Mi,
    throttle=8_000_000,
    cold_fast_reps=1,
    amp_size=8 * Mi,
    amp_clients=6,
    rss_clients=12,
    rss_objects=3,
    rss_size=4 * Mi,
    rss_tier="256Mi",
    rss_tier_bytes=256 * Mi,
    disk_size=8 * Mi,
    disk_tier="4Mi",
    node_memory="256Mi",
)


class Bench:
    def __init__(self, args):
        self.args = args
        self.cfg = SMOKE if args.smoke else FULL
        self.bins = find_binaries(args.smoke, args.bin_dir)
        self.tmp = tempfile.mkdtemp(prefix="casserole-bench-")
        os.chmod(self.tmp, 0o755)  # varnish's child runs as vcache and must reach its workdir
        self.have = ensure_peers(not args.no_install)
        mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
        self.results: dict = {"mode": mode, "scenarios": {}}
        self.t_start = time.monotonic()

    def peers(self) -> list[str]:
        out = ["casserole"]
        if self.have["nginx"]:
            out.append("nginx")
        if self.have["varnishd"]:
            out.append("varnish")
        return out

    def hot_pinning(self) -> tuple[set[int], set[int]] | None:
        """`--pin-hot`: the servers on the first CPU this process may use, `wrk` on the others,
        so the client does not compete with the server it measures (as one on another machine
        would not); None without the flag, or with one CPU or no `taskset`."""
        if not self.args.pin_hot:
            return None
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or not shutil.which("taskset"):
            log("   --pin-hot: needs two CPUs and taskset; running unpinned")
            return None
        return {cpus[0]}, set(cpus[1:])

    def start_target(self, target, origin: Origin, name: str, memory=None, storage=0):
        if target == "casserole":
            return Casserole(self.bins, self.tmp, name, origin.url, memory or self.cfg["node_memory"])
        if target == "nginx":
            return Nginx(self.tmp, name, origin.port)
        if target == "varnish":
            return Varnish(self.tmp, name, origin.port, storage)
        raise ValueError(target)

    def section(self, key, fn):
        left = self.cfg["deadline"] - (time.monotonic() - self.t_start)
        if left < 20:
            log(f"skipping {key}: global deadline near")
            self.results["scenarios"][key] = {"skipped": "deadline"}
            return
        if self.args.only and key not in self.args.only:
            return
        log(f"== {key}")
        t = time.monotonic()
        try:
            self.results["scenarios"][key] = fn()
        except Exception as e:  # a broken peer must not hide the others' numbers
            log(f"{key} failed: {e!r}")
            self.results["scenarios"][key] = {"failed": repr(e)[:500]}
        finally:
            Proc.stop_all()
        log(f"   {key} took {time.monotonic() - t:.1f}s")

    # 1. hot hits -------------------------------------------------------------------------------
    def hot(self):
        """All targets run at once (idle but one); runs are interleaved target by target, so a
        load change on the shared machine hits every target alike."""
        c = self.cfg
        if not self.have["wrk"]:
            return {"failed": "wrk unavailable"}
        pin = self.hot_pinning()
        everywhere = os.sched_getaffinity(0)
        if pin:
            os.sched_setaffinity(0, pin[0])  # the servers (and their threads) inherit it
        try:
            objects = [(obj, c[obj]) for obj in HOT_OBJECTS]
            origin = Origin(self.bins, self.tmp, "origin-hot",
                            [f"/{obj}.bin={size},seed={seed},max-age=3600"
                             for (obj, size), seed in zip(objects, (1, 7, 2))])
            res: dict = {}
            if pin:
                res["pinned"] = f"servers on CPU {min(pin[0])}, wrk on CPU {min(pin[1])}"
            bases = {"direct": origin.url.rstrip("/")}
            servers = []
            for target in self.peers():
                try:
                    srv = self.start_target(target, origin, f"{target}-hot", storage=2 * c["large"])
                    servers.append(srv)
                    for obj, size in objects:
                        for _ in range(2):  # warm: the second GET must be a hit everywhere
                            d = download(f"{srv.url}/{obj}.bin")
                            if d["status"] != 200 or d["bytes"] != size:
                                raise RuntimeError(f"{target} warm-up of {obj}: {d}")
                        if "hit" not in d.get("cache_status", "").lower():
                            raise RuntimeError(f"{target}: second GET of {obj} not a hit: {d}")
                    bases[target] = srv.url
                except Exception as e:
                    log(f"   {target} hot failed: {e!r}")
                    res.setdefault("failed", {})[target] = repr(e)[:300]
        finally:
            os.sched_setaffinity(0, everywhere)
        wrk_cpus = ",".join(str(cpu) for cpu in sorted(pin[1])) if pin else None
        samples: dict = {}
        for rnd in range(c["hot_rounds"]):
            for obj, size in objects:
                for conns in c["conns"]:
                    for target in TARGETS:
                        if target not in bases:
                            continue
                        r = wrk(f"{bases[target]}/{obj}.bin", conns, c["wrk_seconds"], size,
                                cpus=wrk_cpus)
                        samples.setdefault((obj, target, conns), []).append(r)
                        log(f"   [{rnd + 1}] {target:9s} {obj:5s} c={conns:<3d} {r['rps']:9.1f} req/s "
                            f"{r['gbps']:6.2f} GB/s p50 {fmt(r['p50_ms'], '.3g')} ms "
                            f"p99 {fmt(r['p99_ms'], '.3g')} ms errors {r['errors']}")
        # the median of the rounds, field by field (each round is one run of every target)
        for (obj, target, conns), rs in samples.items():
            med = {"conns": conns, "rounds": len(rs), "errors": sum(r["errors"] for r in rs),
                   "requests": sum(r["requests"] for r in rs)}
            for k in ("rps", "gbps", "p50_ms", "p99_ms"):
                vals = [r[k] for r in rs if r[k] is not None]
                med[k] = statistics.median(vals) if vals else None
            med["samples"] = [{k: r[k] for k in ("rps", "gbps", "p50_ms", "p99_ms")} for r in rs]
            res.setdefault(obj, {}).setdefault(target, []).append(med)
        for srv in servers:
            srv.stop()
        origin.stop()
        return res

    # 2 + 3. cold misses ------------------------------------------------------------------------
    def cold(self, throttled: bool):
        """Each target is a fresh cache, so the same path is cold for each; repetitions use other
        paths and are interleaved across targets. CPU seconds of each target's processes are
        recorded (the node, nginx master+workers, varnish manager+child; the origin apart)."""
        c = self.cfg
        reps = 1 if throttled else c["cold_fast_reps"]
        extra = f",throttle={c['throttle']}" if throttled else ""
        objs = [f"/cold{i}.bin={c['cold']},seed=3{extra},max-age=3600" for i in range(reps)]
        origin = Origin(self.bins, self.tmp, f"origin-cold{'-t' if throttled else ''}", objs)
        res: dict = {"size": c["cold"], "throttle": c["throttle"] if throttled else None}
        servers = {}
        for target in self.peers():
            try:
                servers[target] = self.start_target(target, origin, f"{target}-cold",
                                                    storage=reps * c["cold"] + 64 * Mi)
            except Exception as e:
                log(f"   {target} cold failed to start: {e!r}")
                res.setdefault("failed", {})[target] = repr(e)[:300]
        runs: dict[str, list] = {}
        ref_sha = None
        for i in range(reps):
            for target in ["direct"] + list(servers):
                if target in res.get("failed", {}):
                    continue
                srv = servers.get(target)
                base = srv.url if srv else origin.url.rstrip("/")
                cpu0 = group_cpu(srv.proc.pid) if srv else 0.0
                ocpu0 = group_cpu(origin.proc.pid)
                d = download(f"{base}/cold{i}.bin", want_sha=throttled, timeout=300)
                d["cpu_s"] = group_cpu(srv.proc.pid) - cpu0 if srv else 0.0
                d["origin_cpu_s"] = group_cpu(origin.proc.pid) - ocpu0
                err = None
                if d["status"] != 200 or d["bytes"] != c["cold"]:
                    err = f"{target}: {d}"
                elif srv and "miss" not in d.get("cache_status", "").lower():
                    err = f"{target}: cold request was not a miss ({d.get('cache_status')!r})"
                elif throttled:
                    ref_sha = ref_sha or d["sha256"]
                    if d["sha256"] != ref_sha:
                        err = f"{target}: sha256 differs from direct"
                if err:
                    log(f"   {err}")
                    res.setdefault("failed", {})[target] = err[:300]
                    continue
                runs.setdefault(target, []).append(d)
                log(f"   {target:9s} cold{i} ttfb {d['ttfb'] * 1e3:7.1f} ms total "
                    f"{d['total']:6.2f} s ({c['cold'] / d['total'] / 1e6:7.1f} MB/s) "
                    f"cpu {d['cpu_s']:.2f}s origin cpu {d['origin_cpu_s']:.2f}s "
                    f"{d.get('cache_status', '')}")
        for target, rs in runs.items():
            if target in res.get("failed", {}):
                continue
            res[target] = {
                "ttfb_ms": statistics.median(r["ttfb"] for r in rs) * 1e3,
                "total_s": statistics.median(r["total"] for r in rs),
                "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                "runs": [{"ttfb_ms": r["ttfb"] * 1e3, "total_s": r["total"], "cpu_s": r["cpu_s"],
                          "origin_cpu_s": r["origin_cpu_s"]} for r in rs],
            }
            if throttled:
                res[target]["sha256_ok"] = True
        for srv in servers.values():
            srv.stop()
        origin.stop()
        return res

    # 4. amplification ----------------------------------------------------------------------------
    def amplification(self):
        c = self.cfg
        size = c["amp_size"]
        origin = Origin(self.bins, self.tmp, "origin-amp", [f"/amp.bin={size},seed=4,max-age=3600"])
        relay = Relay(origin.port)
        relay_url = f"http://127.0.0.1:{relay.port}"
        res: dict = {"size": size, "clients": c["amp_clients"]}
        for target in self.peers():
            nodes = []
            etcd = None
            relay.reset()
            try:
                if target == "casserole":
                    etcd = Etcd(self.tmp)
                    for i in range(3):
                        nodes.append(Casserole(self.bins, self.tmp, f"casserole-c{i}", relay_url,
                                               self.cfg["node_memory"], cluster=etcd.url))
                    for n in nodes:
                        wait_for("cluster of 3", lambda n=n: metric(
                            n.admin_url, "casserole_cluster_members") == 3, 30, n.proc)
                elif target == "nginx":
                    nodes = [Nginx(self.tmp, f"nginx-a{i}", relay.port) for i in range(3)]
                else:
                    nodes = [Varnish(self.tmp, f"varnish-a{i}", relay.port, size + 64 * Mi)
                             for i in range(3)]
                relay.reset()  # readiness probes are not part of the measurement
                urls = [f"{nodes[i % 3].url}/amp.bin" for i in range(c["amp_clients"])]
                t0 = time.perf_counter()
                rs = parallel_downloads(urls, timeout=240)
                wall = time.perf_counter() - t0
                bad = [r for r in rs if r["status"] != 200 or r["bytes"] != size]
                if bad:
                    raise RuntimeError(f"{len(bad)} bad downloads, e.g. {bad[0]}")
                time.sleep(0.5)  # let fetches the caches started for themselves finish
                with relay.lock:
                    fetched = relay.body_bytes
                    responses = relay.responses
                r = {"origin_bytes": fetched, "origin_responses": responses,
                     "amplification": fetched / size, "wall_s": wall}
                if target == "casserole":
                    r["node_upstream_bytes"] = sum(
                        metric(n.admin_url, "casserole_upstream_bytes_total") for n in nodes)
                res[target] = r
                log(f"   {target:9s} origin bytes {fetched} = {fetched / size:.2f}x object, "
                    f"{responses} responses, {wall:.1f}s")
            except Exception as e:
                log(f"   {target} amplification failed: {e!r}")
                res.setdefault("failed", {})[target] = repr(e)[:300]
            finally:
                for n in nodes:
                    n.stop()
                if etcd:
                    etcd.stop()
        relay.close()
        origin.stop()
        return res

    # 5. memory -------------------------------------------------------------------------------
    def memory(self):
        c = self.cfg
        k, size = c["rss_objects"], c["rss_size"]
        origin = Origin(self.bins, self.tmp, "origin-rss",
                        [f"/r{i}.bin={size},seed={10 + i},max-age=3600" for i in range(k)])
        node = Casserole(self.bins, self.tmp, "casserole-rss", origin.url, c["rss_tier"])
        base_kib = rss_kib(node.proc.pid, "VmRSS")
        samples = []
        tier_peak = [0.0]
        stop = threading.Event()

        def sample():
            # Reading casserole_memory_bytes makes the node run moka's pending maintenance
            # (evictions), which itself lowers the peak: read it only every 2 s, like a scraper.
            n = 0
            while not stop.is_set():
                try:
                    samples.append(rss_kib(node.proc.pid, "VmRSS"))
                    if n % 20 == 0:
                        tier_peak[0] = max(tier_peak[0],
                                           metric(node.admin_url, "casserole_memory_bytes"))
                except OSError:
                    break
                n += 1
                stop.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        urls = [f"{node.url}/r{i % k}.bin" for i in range(c["rss_clients"])]
        t0 = time.perf_counter()
        rs = parallel_downloads(urls, timeout=300)
        wall = time.perf_counter() - t0
        stop.set()
        th.join(2)
        hwm = rss_kib(node.proc.pid, "VmHWM")
        ok = sum(1 for r in rs if r["status"] == 200 and r["bytes"] == size)
        node.stop()
        origin.stop()
        res = {"clients": c["rss_clients"], "objects": k, "object_size": size,
               "tier_bytes": c["rss_tier_bytes"], "peak_rss_bytes": hwm * Ki,
               "idle_rss_bytes": base_kib * Ki, "complete": ok, "wall_s": wall,
               "limit_bytes": c["rss_tier_bytes"] + 64 * Mi, "tier_peak_bytes": tier_peak[0]}
        log(f"   peak RSS {hwm / 1024:.0f} MiB (idle {base_kib / 1024:.0f} MiB, memory tier peak "
            f"{tier_peak[0] / Mi:.0f} MiB), "
            f"{ok}/{len(rs)} complete in {wall:.1f}s")
        return res

    # 6. disk tier ----------------------------------------------------------------------------
    def disk(self):
        c = self.cfg
        size = c["disk_size"]
        origin = Origin(self.bins, self.tmp, "origin-disk", [f"/disk.bin={size},seed=5,max-age=3600"])
        res: dict = {"size": size}
        targets = ["casserole"] + (["nginx"] if self.have["nginx"] else [])
        for target in targets:
            srv = None
            try:
                if target == "casserole":
                    dd = tempfile.mkdtemp(prefix="disk-tier-", dir=self.tmp)
                    srv = Casserole(self.bins, self.tmp, "casserole-disk", origin.url,
                                    c["disk_tier"], disk_dir=dd)
                else:
                    srv = Nginx(self.tmp, "nginx-disk", origin.port)
                d = download(f"{srv.url}/disk.bin", timeout=120)
                if d["status"] != 200 or d["bytes"] != size:
                    raise RuntimeError(f"warm-up: {d}")
                if target == "casserole":
                    wait_for("disk tier filled", lambda: metric(
                        srv.admin_url, "casserole_disk_bytes") >= size, 60, srv.proc)
                    before = {s: metric(srv.admin_url, "casserole_bytes_served_total",
                                        f'source="{s}"') for s in ("memory", "disk")}
                r = wrk(f"{srv.url}/disk.bin", 16 if not self.args.smoke else 4,
                        c["wrk_seconds"] * 2, size)
                if target == "casserole":
                    after = {s: metric(srv.admin_url, "casserole_bytes_served_total",
                                       f'source="{s}"') for s in ("memory", "disk")}
                    served = {s: after[s] - before[s] for s in after}
                    tot = sum(served.values()) or 1
                    r["disk_share"] = served["disk"] / tot
                res[target] = r
                log(f"   {target:9s} {r['gbps']:.2f} GB/s p50 {r['p50_ms']} ms "
                    f"{'disk share %.2f' % r['disk_share'] if 'disk_share' in r else ''}")
            except Exception as e:
                log(f"   {target} disk failed: {e!r}")
                res.setdefault("failed", {})[target] = repr(e)[:300]
            finally:
                if srv:
                    srv.stop()
        origin.stop()
        return res

    def run(self):
        self.section("hot", self.hot)
        self.section("cold_throttled", lambda: self.cold(True))
        self.section("cold_unthrottled", lambda: self.cold(False))
        self.section("amplification", self.amplification)
        self.section("memory", self.memory)
        self.section("disk", self.disk)
        self.section("upstreams", lambda: upstreams.run(self))
        self.section("latency", lambda: latency.run(self))
        self.section("mixed", lambda: mixed.run(self))
        self.section("window", lambda: window.run(self))
        self.results["elapsed_s"] = time.monotonic() - self.t_start
        self.results["machine"] = machine_info()
        self.results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.results["binaries"] = self.bins
        self.results["scenarios"]["hot_sizes"] = {obj: human(self.cfg[obj]) for obj in HOT_OBJECTS}
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (part of the test suite)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "bench", "results"),
                    help="directory for results.md, results.json, bench.png")
    ap.add_argument("--bin-dir", help="directory holding casserole-node and casserole-test-origin")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install missing peers")
    ap.add_argument("--update-readme", metavar="FILE",
                    help="replace the tables between <!-- bench:latest --> markers in FILE "
                         "(e.g. README.md)")
    ap.add_argument("--only", action="append",
                    choices=["hot", "cold_throttled", "cold_unthrottled", "amplification", "memory", "disk",
                             "upstreams", "latency", "mixed", "window"],
                    help="run only these scenarios (repeatable)")
    ap.add_argument("--pin-hot", action="store_true",
                    help="scenario 1 with the servers on one CPU and wrk on the others "
                         "(taskset), so the client does not share the servers' core")
    ap.add_argument("--quick", action="store_true",
                    help="the latency scenario only, on a subset (0 and 50 ms; 32 and 128 MiB; "
                         "well under a minute), unless --only says otherwise; with --only upstreams, "
                         "scenario 8 on its quick sizes (~30 s); with --only mixed, "
                         "scenario 9 for 15 s instead of 60 s; with --only window, scenario 10 "
                         "on 256 MiB objects, once each (~1 min)")
    args = ap.parse_args()
    if args.quick and not args.only:
        args.only = ["latency"]

    cfg = SMOKE if args.smoke else FULL

    tmp_dirs: list[str] = []

    def abort(code: int):
        Proc.stop_all()
        for d in tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        os._exit(code)

    def on_deadline(signum, frame):
        log("global deadline reached: stopping everything")
        abort(3)

    def on_signal(signum, frame):
        log(f"signal {signum}: stopping everything")
        abort(130)

    signal.signal(signal.SIGALRM, on_deadline)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    b = Bench(args)  # installs missing peers first (not counted in the deadline)
    tmp_dirs.append(b.tmp)
    signal.alarm(cfg["deadline"] + 60)
    loads: list[float] = []
    done = threading.Event()

    def watch_load():  # how busy the shared machine was (our own load included)
        while not done.is_set():
            loads.append(os.getloadavg()[0])
            done.wait(5)

    threading.Thread(target=watch_load, daemon=True).start()
    log(f"binaries from {b.bins}; temp dir {b.tmp}; load average {os.getloadavg()[0]:.2f}")
    b.results["load_start"] = os.getloadavg()
    b.run()
    signal.alarm(0)
    done.set()
    b.results["load_1min"] = {"min": min(loads), "mean": statistics.mean(loads), "max": max(loads)}
    b.results["load_end"] = os.getloadavg()
    md, targets = render(b.results)
    b.results["targets"] = targets
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(b.results, f, indent=1, default=str)
    png = chart(b.results, os.path.join(args.out, "bench.png"))
    if args.update_readme:
        update_readme(args.update_readme, md, os.path.join(args.out, "bench.png") if png else None)
    print(md)
    log(f"wrote {args.out}/results.md, results.json{', bench.png' if png else ''} "
        f"in {b.results['elapsed_s']:.0f}s")


if __name__ == "__main__":
    main()
