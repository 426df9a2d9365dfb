"""Scenario 8: real upstreams (issue 10) — an origin that ignores `Range`, an uncacheable object,
and a stale object while the origin is stopped.

Each part runs direct, Casserole, nginx and Varnish on one Python origin (pyorigin.py: the Rust
test origin cannot ignore `Range` or send `no-store` from its command line); every target asks for
a path of its own, so the origin counts each target's upstream requests and body bytes apart while
the targets run interleaved. nginx and Varnish get the configuration that gives the same behaviour
where one exists (stale serving: `proxy_cache_use_stale`, `beresp.grace` with the origin's TTL).
"""

from __future__ import annotations

import statistics
import time

from procs import Mi, Casserole, Nginx, Varnish, download, log, parallel_downloads
from pyorigin import PyOrigin

FULL = dict(norange_size=128 * Mi, norange_clients=8, pass_size=8 * Mi, pass_requests=20,
            stale_size=8 * Mi)
QUICK = dict(norange_size=32 * Mi, norange_clients=8, pass_size=8 * Mi, pass_requests=10,
             stale_size=8 * Mi)
SMOKE = dict(norange_size=4 * Mi, norange_clients=3, pass_size=4 * Mi, pass_requests=4,
             stale_size=4 * Mi)
TARGETS = ["direct", "casserole", "nginx", "varnish"]
STALE_MAX_AGE = 2  # seconds; the node gets --min-ttl=1s so that it stores such an object at all
STALE_CC = f"public, max-age={STALE_MAX_AGE}, stale-if-error=600"
NGINX_STALE = "proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504;"
VARNISH_STALE = "set beresp.do_stream = true;\n  set beresp.grace = 10m;"  # TTL: the origin's


def sizes(bench) -> dict:
    if bench.args.smoke:
        return SMOKE
    return QUICK if bench.args.quick else FULL


def start(bench, origin: PyOrigin, part: str, storage: int, stale: bool = False) -> tuple[dict, dict]:
    """Fresh targets for one part; returns (servers by target, failures)."""
    servers, failed = {}, {}
    for target in bench.peers():
        name = f"{target}-{part}"
        try:
            if target == "casserole":
                extra = ["--min-ttl=1s"] if stale else []
                servers[target] = Casserole(bench.bins, bench.tmp, name, origin.url,
                                            bench.cfg["node_memory"], extra=extra)
            elif target == "nginx":
                servers[target] = Nginx(bench.tmp, name, origin.port,
                                        location_extra=NGINX_STALE if stale else "")
            else:
                servers[target] = Varnish(bench.tmp, name, origin.port, storage,
                                          backend_response=VARNISH_STALE if stale else None)
        except Exception as e:
            log(f"   {target} failed to start: {e!r}")
            failed[target] = repr(e)[:300]
    return servers, failed


def base(origin: PyOrigin, servers: dict, target: str) -> str:
    srv = servers.get(target)
    return srv.url if srv else origin.url


def no_range(bench, m: dict) -> dict:
    """A cold then a warm GET of an object whose origin answers every range request with 200; then
    concurrent cold GETs of another such object (does the cache fetch it once?)."""
    size = m["norange_size"]
    origin = PyOrigin(seed=81)
    servers, failed = start(bench, origin, "norange", size + 64 * Mi)
    targets = ["direct"] + list(servers)
    objs = {t: origin.put(f"/norange-{t}.bin", size, "public, max-age=3600", ignore_range=True)
            for t in targets}
    for t in targets:
        origin.put(f"/norange-par-{t}.bin", size, "public, max-age=3600", ignore_range=True)
    res: dict = {"size": size, "failed": failed}
    # one small request through each target first, so that no measured request pays for a process
    # that has never answered (lazy set-up, the first upstream connection)
    origin.put("/warm-up.bin", 64 * 1024, "public, max-age=3600", ignore_range=True)
    try:
        for t in targets:
            download(f"{base(origin, servers, t)}/warm-up.bin", timeout=30)
        for phase in ("cold", "warm"):
            for t in targets:
                d = download(f"{base(origin, servers, t)}/norange-{t}.bin", want_sha=True, timeout=120)
                want = "miss" if phase == "cold" else "hit"
                cs = d.get("cache_status", "")
                err = None
                if d["status"] != 200 or d["bytes"] != size or d.get("sha256") != objs[t].sha256:
                    err = f"{phase}: status {d['status']}, {d['bytes']} bytes, {d.get('error', '')}"
                elif t != "direct" and want not in cs.lower():
                    err = f"{phase}: cache header {cs!r}, expected {want}"
                if err:
                    log(f"   {t} no-range {err}")
                    failed[t] = err[:300]
                r = res.setdefault(t, {})
                r[phase] = {"ttfb_ms": (d["ttfb"] or 0) * 1e3, "total_s": d["total"],
                            "status": d["status"], "cache_status": cs, "ok": err is None}
                log(f"   no-range {phase} {t:9s} ttfb {(d['ttfb'] or 0) * 1e3:7.1f} ms total "
                    f"{d['total']:6.2f} s status {d['status']} {cs}")
            time.sleep(0.5)  # a cache may still be writing what it streamed
        n = m["norange_clients"]
        for t in targets:
            rs = parallel_downloads([f"{base(origin, servers, t)}/norange-par-{t}.bin"] * n, timeout=120)
            good = sum(1 for r in rs if r["status"] == 200 and r["bytes"] == size)
            res[t]["origin"] = origin.count(f"/norange-{t}.bin")
            res[t]["concurrent"] = {"clients": n, "complete": good,
                                    "wall_s": max(r.get("total") or 0 for r in rs),
                                    "origin": origin.count(f"/norange-par-{t}.bin")}
            log(f"   no-range {n} concurrent cold {t:9s} {good}/{n} complete, origin "
                f"{res[t]['concurrent']['origin']['body_bytes'] / size:.2f}× object")
    finally:
        for srv in servers.values():
            srv.stop()
        origin.stop()
    return res


def pass_through(bench, m: dict) -> dict:
    """n GETs one after the other of a `no-store` object: upstream requests per client request."""
    size, n = m["pass_size"], m["pass_requests"]
    origin = PyOrigin(seed=82)
    servers, failed = start(bench, origin, "pass", 256 * Mi)
    targets = ["direct"] + list(servers)
    for t in targets:
        origin.put(f"/pass-{t}.bin", size, "no-store")
    res: dict = {"size": size, "requests": n, "failed": failed}
    times: dict[str, list] = {t: [] for t in targets}
    first: dict[str, dict] = {}
    bad: dict[str, int] = {t: 0 for t in targets}
    try:
        for i in range(n):
            for t in targets:
                d = download(f"{base(origin, servers, t)}/pass-{t}.bin", timeout=60)
                if d["status"] != 200 or d["bytes"] != size:
                    bad[t] += 1
                    failed[t] = f"request {i}: status {d['status']}, {d['bytes']} bytes"[:300]
                times[t].append(d["total"])
                if i == 0:
                    first[t] = origin.count(f"/pass-{t}.bin")
        for t in targets:
            c = origin.count(f"/pass-{t}.bin")
            later = c["requests"] - first[t]["requests"]
            res[t] = {"first_requests": first[t]["requests"],
                      "later_per_request": later / (n - 1) if n > 1 else None,
                      "byte_ratio": c["body_bytes"] / (n * size), "bad": bad[t],
                      "median_ms": statistics.median(times[t][1:] or times[t]) * 1e3, "origin": c}
            log(f"   pass-through {t:9s} first {first[t]['requests']} upstream request(s), then "
                f"{res[t]['later_per_request']:.2f} per request; origin bytes "
                f"{res[t]['byte_ratio']:.2f}× served; median {res[t]['median_ms']:.1f} ms")
    finally:
        for srv in servers.values():
            srv.stop()
        origin.stop()
    return res


def stale(bench, m: dict) -> dict:
    """Warm a short-lived object, let it go stale, stop the origin, ask again (twice)."""
    size = m["stale_size"]
    origin = PyOrigin(seed=83)
    servers, failed = start(bench, origin, "stale", 256 * Mi, stale=True)
    targets = ["direct"] + list(servers)
    objs = {t: origin.put(f"/stale-{t}.bin", size, STALE_CC) for t in targets}
    res: dict = {"size": size, "cache_control": STALE_CC, "failed": failed}
    try:
        for t in targets:
            d = download(f"{base(origin, servers, t)}/stale-{t}.bin", timeout=60)
            res[t] = {"warm_status": d["status"], "warm_cache": d.get("cache_status", "")}
        warmed = time.monotonic()
        time.sleep(max(0.0, warmed + STALE_MAX_AGE + 1.5 - time.monotonic()))
        for t in targets:
            res[t]["origin_before_stop"] = origin.count(f"/stale-{t}.bin")
        origin.stop()
        for rnd in range(2):
            for t in targets:
                d = download(f"{base(origin, servers, t)}/stale-{t}.bin", want_sha=True, timeout=30)
                ok = d["status"] == 200 and d["bytes"] == size and d.get("sha256") == objs[t].sha256
                res[t].setdefault("stopped", []).append(
                    {"status": d["status"], "ok": ok, "cache_status": d.get("cache_status", ""),
                     "total_ms": d["total"] * 1e3, "error": d.get("error", "")[:120]})
                log(f"   stale, origin stopped [{rnd + 1}] {t:9s} status {d['status']} "
                    f"{'body ok' if ok else 'no body'} {d['total'] * 1e3:7.1f} ms "
                    f"{d.get('cache_status', '')} {d.get('error', '')[:80]}")
    finally:
        for srv in servers.values():
            srv.stop()
        origin.stop()
    return res


def run(bench) -> dict:
    m = sizes(bench)
    res: dict = {}
    for key, fn in (("no_range", no_range), ("pass_through", pass_through), ("stale", stale)):
        t0 = time.monotonic()
        try:
            res[key] = fn(bench, m)
        except Exception as e:  # one broken part must not hide the others
            log(f"   {key} failed: {e!r}")
            res[key] = {"error": repr(e)[:500]}
        log(f"   {key} took {time.monotonic() - t0:.1f}s")
    return res


def render(s: dict, target) -> list[str]:
    """Markdown for the scenario; `target(name, goal, value, met, note)` records goals."""
    if not s:
        return []
    if "no_range" not in s:
        return [f"#### 8. Real upstreams: {s}", ""]
    out: list[str] = []
    a = s["no_range"]
    if "size" in a:
        out += [f"#### 8a. Origin that ignores `Range` ({a['size'] // Mi} MiB, 200 to every range "
                "request; one cold then one warm GET; then concurrent cold GETs of another such object)", "",
                "| target | cold TTFB ms | cold total s | warm TTFB ms | warm total s | warm cache header "
                "| origin requests | origin bytes / object "
                "| concurrent cold: complete, origin bytes / object |",
                "|---|---:|---:|---:|---:|---|---:|---:|---|"]
        for t in TARGETS:
            r = a.get(t)
            if not r or "cold" not in r or "warm" not in r:
                continue
            o = r.get("origin", {})
            c = r.get("concurrent")
            par = (f"{c['complete']}/{c['clients']}, {c['origin']['body_bytes'] / a['size']:.2f}"
                   if c else "n/a")
            out.append(f"| {t} | {r['cold']['ttfb_ms']:.1f} | {r['cold']['total_s']:.2f} | "
                       f"{r['warm']['ttfb_ms']:.1f} | {r['warm']['total_s']:.2f} | "
                       f"{r['warm']['cache_status'] or '—'} | {o.get('requests', 'n/a')} | "
                       f"{o.get('body_bytes', 0) / a['size']:.2f} | {par} |")
        out.append("")
        if a.get("failed"):
            out += [f"Failed: {a['failed']}", ""]
        cas = a.get("casserole")
        if cas and "origin" in cas:
            ok = cas["cold"]["ok"] and cas["warm"]["ok"]
            ratio = cas["origin"]["body_bytes"] / a["size"]
            target("no-Range origin: cold 200 streamed, warm a hit, object fetched once", "1.00× object",
                   f"{ratio:.2f}× ({cas['origin']['requests']} request(s)), warm "
                   f"{cas['warm']['cache_status'] or 'no header'}", ok and f"{ratio:.2f}" == "1.00")
            c = cas.get("concurrent")
            if c:
                par = c["origin"]["body_bytes"] / a["size"]
                target(f"no-Range origin: {c['clients']} concurrent cold GETs fetch it once", "1.00× object",
                       f"{par:.2f}× ({c['complete']}/{c['clients']} complete)",
                       f"{par:.2f}" == "1.00" and c["complete"] == c["clients"],
                       ", ".join(f"{p} {a[p]['concurrent']['origin']['body_bytes'] / a['size']:.2f}×"
                                 for p in ("nginx", "varnish") if a.get(p, {}).get("concurrent")))
    elif a:
        out += [f"#### 8a. Origin that ignores `Range`: {a}", ""]
    b = s.get("pass_through", {})
    if "size" in b:
        out += [f"#### 8b. Pass-through: a `no-store` object ({b['size'] // Mi} MiB), "
                f"{b['requests']} GETs one after the other", "",
                "| target | upstream requests for the first GET | upstream requests per GET after it "
                "| origin body bytes / bytes served | median time per GET ms | failed GETs |",
                "|---|---:|---:|---:|---:|---:|"]
        for t in TARGETS:
            r = b.get(t)
            if not r or "first_requests" not in r:
                continue
            later = "n/a" if r["later_per_request"] is None else f"{r['later_per_request']:.2f}"
            out.append(f"| {t} | {r['first_requests']} | {later} | {r['byte_ratio']:.2f} | "
                       f"{r['median_ms']:.1f} | {r['bad']} |")
        out.append("")
        if b.get("failed"):
            out += [f"Failed: {b['failed']}", ""]
        cas = b.get("casserole")
        if cas and cas.get("later_per_request") is not None:
            v = cas["later_per_request"]
            target("pass-through: upstream requests per client request (after the first)", "1.00",
                   f"{v:.2f} (first: {cas['first_requests']})", f"{v:.2f}" == "1.00" and not cas["bad"],
                   ", ".join(f"{p} {b[p]['later_per_request']:.2f}" for p in ("nginx", "varnish")
                             if b.get(p, {}).get("later_per_request") is not None))
    elif b:
        out += [f"#### 8b. Pass-through: {b}", ""]
    c = s.get("stale", {})
    if "size" in c:
        out += [f"#### 8c. Stale while the origin is stopped ({c['size'] // Mi} MiB, "
                f"`Cache-Control: {c['cache_control']}`; warmed, stale after {STALE_MAX_AGE} s, "
                "then the origin stops and refuses connections; two GETs)", "",
                "| target | warm GET | origin stopped: status | body (SHA-256) | cache header | time ms |",
                "|---|---|---|---|---|---:|"]
        for t in TARGETS:
            r = c.get(t)
            if not r or "stopped" not in r:
                continue
            st = r["stopped"]
            statuses = " / ".join(str(x["status"] or "refused") for x in st)
            body = " / ".join("ok" if x["ok"] else "—" for x in st)
            hdr = " / ".join(x["cache_status"] or "—" for x in st)
            ms = " / ".join(f"{x['total_ms']:.1f}" for x in st)
            out.append(f"| {t} | {r['warm_status']} {r['warm_cache']} | {statuses} | {body} | {hdr} | {ms} |")
        out.append("")
        if c.get("failed"):
            out += [f"Failed: {c['failed']}", ""]
        cas = c.get("casserole")
        if cas and "stopped" in cas:
            ok = all(x["ok"] for x in cas["stopped"])
            target("stale object served (200) while the origin is stopped", "200, same body",
                   " / ".join(str(x["status"]) for x in cas["stopped"]), ok,
                   ", ".join(f"{p} " + "/".join(str(x["status"]) for x in c[p]["stopped"])
                             for p in ("nginx", "varnish") if "stopped" in c.get(p, {})))
    elif c:
        out += [f"#### 8c. Stale while the origin is stopped: {c}", ""]
    return out
