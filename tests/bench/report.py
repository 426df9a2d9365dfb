"""Markdown tables, the PNG chart and the README block of a benchmark run."""

from __future__ import annotations

import os
import platform
import statistics


from latency import render as latency_render
from mixed import render as mixed_render
from upstreams import render as upstreams_render
from window import render as window_render
from procs import Ki, Mi, log

TARGETS = ["direct", "casserole", "nginx", "varnish"]
# scenario 1's objects: one well under a chunk, one chunk's half (#23 names 64 KiB and 1 MiB hits),
# and one of many chunks
HOT_OBJECTS = ["small", "medium", "large"]


# --------------------------------------------------------------------------------------------
# Report


def machine_info() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")


def human(n: int) -> str:
    return f"{n // Mi} MiB" if n >= Mi else f"{n // Ki} KiB"


def fmt(x, spec=".2f", none="n/a"):
    return none if x is None else format(x, spec)


def hot_target(obj: str, rows: dict, target) -> None:
    """#23's line: the node against the best peer (nginx or Varnish, whichever is faster) in each
    cell, as the median of the rounds' paired ratios: each round runs every target back to back,
    so a ratio taken within a round is not moved by the machine's speed drifting between rounds
    (the table above shows each target's own median). Each peer's ratios are shown beside it."""
    cas = rows.get("casserole")
    peers = {p: rows[p] for p in ("nginx", "varnish") if rows.get(p)}
    if not cas:
        return
    k = "gbps" if obj == "large" else "rps"  # see wrk(): bytes are exact for large
    name = f"hot hits {obj}: ≥ 1.0× the best peer ({'req/s' if k == 'rps' else 'GB/s'})"
    if not peers:
        target(name, "≥ 1.00", "n/a (no nginx or Varnish in this run)", False)
        return

    def paired(cell: int, against: list[list[dict]]) -> float:
        mine = cas[cell].get("samples") or [cas[cell]]
        theirs = [p[cell].get("samples") or [p[cell]] for p in against]
        ratios = []
        for i in range(min(len(mine), *(len(t) for t in theirs))):
            best = max(t[i][k] for t in theirs)
            ratios.append(mine[i][k] / best if best else 0)
        return statistics.median(ratios) if ratios else 0.0

    cells = range(len(cas))
    best = [paired(i, list(peers.values())) for i in cells]
    conns = "/".join(str(r["conns"]) for r in cas)
    each = "; ".join(f"vs {p} " + " / ".join(f"{paired(i, [rs]):.2f}" for i in cells)
                     for p, rs in peers.items())
    target(name, "≥ 1.00", " / ".join(f"{x:.2f}" for x in best) + f" (c={conns})", min(best) >= 1.0, each)


def render(results: dict) -> tuple[str, list[dict]]:
    S = results["scenarios"]
    out = [f"### Casserole benchmark ({results['mode']} mode, {results.get('date', '')})", "",
           f"Machine: {results.get('machine', '')}; run took {results.get('elapsed_s', 0):.0f} s.", ""]
    if results.get("load_1min"):
        ld = results["load_1min"]
        out[-1:-1] = [f"1-minute load average during the run (2 cores; the benchmark itself adds ~2): "
                      f"min {ld['min']:.1f}, mean {ld['mean']:.1f}, max {ld['max']:.1f}."]
    targets_rows: list[dict] = []

    def target(name, goal, value, met, note=""):
        targets_rows.append({"target": name, "goal": goal, "value": value, "met": met, "note": note})

    hot = S.get("hot", {})
    if any(obj in hot for obj in HOT_OBJECTS):
        rounds = next((r.get("rounds", 1) for t in hot.get("small", {}).values() for r in t), 1)
        pinned = f"; {hot['pinned']}" if hot.get("pinned") else ""
        out += [f"#### 1. Hot hits (wrk; median of {rounds} interleaved round(s) per cell{pinned})", "",
                "| object | target | conns | req/s | GB/s | p50 ms | p99 ms | errors |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for obj in HOT_OBJECTS:
            for tgt in TARGETS:
                for r in hot.get(obj, {}).get(tgt, []):
                    out.append(f"| {obj} | {tgt} | {r['conns']} | {r['rps']:.0f} | {r['gbps']:.2f}"
                               f" | {fmt(r['p50_ms'], '.3g')} | {fmt(r['p99_ms'], '.3g')} | {r['errors']} |")
        out.append("")
        for obj in HOT_OBJECTS:
            hot_target(obj, hot.get(obj, {}), target)
        if hot.get("failed"):
            out += [f"Failed: {hot['failed']}", ""]

    for key, title in (("cold_throttled", "2. Cold miss, origin throttled per connection"),
                       ("cold_unthrottled", "3. Cold miss, unthrottled origin")):
        s = S.get(key, {})
        if "direct" not in s:
            if s:
                out += [f"#### {title}: {s}", ""]
            continue
        thr = f", {s['throttle'] / 1e6:.0f} MB/s per connection" if s.get("throttle") else ""
        out += [f"#### {title} ({s['size'] // Mi} MiB{thr})", "",
                "| target | TTFB ms | total s | MB/s | vs direct (time) | target CPU s |",
                "|---|---:|---:|---:|---:|---:|"]
        d = s["direct"]
        for tgt in TARGETS:
            r = s.get(tgt)
            if not r:
                continue
            out.append(f"| {tgt} | {r['ttfb_ms']:.1f} | {r['total_s']:.2f} | "
                       f"{s['size'] / r['total_s'] / 1e6:.0f} | {r['total_s'] / d['total_s']:.2f}× | "
                       f"{r.get('cpu_s', 0):.2f} |")
        out.append("")
        if s.get("failed"):
            out += [f"Failed: {s['failed']}", ""]
        cas = s.get("casserole")
        if cas:
            peers = ", ".join(f"{p} {s[p]['total_s'] / cas['total_s']:.2f}× slower"
                              for p in ("nginx", "varnish") if p in s)
            if key == "cold_throttled":
                speed = d["total_s"] / cas["total_s"]
                target("cold throttled miss: ≥ 3× faster than direct", "≥ 3.00×", f"{speed:.2f}×",
                       speed >= 3.0, peers)
                extra = cas["ttfb_ms"] - d["ttfb_ms"]
                target("TTFB ≤ origin + 10 ms", "≤ +10 ms",
                       f"{cas['ttfb_ms']:.1f} ms vs {d['ttfb_ms']:.1f} ms (+{extra:.1f})", extra <= 10.0,
                       ", ".join(f"{p} {s[p]['ttfb_ms']:.1f} ms" for p in ("nginx", "varnish") if p in s))
            else:
                ratio = cas["total_s"] / d["total_s"]
                target("cold unthrottled: ≤ 1.1× direct", "≤ 1.10×", f"{ratio:.2f}×", ratio <= 1.1,
                       ", ".join(f"{p} {s[p]['total_s'] / d['total_s']:.2f}×" for p in ("nginx", "varnish") if p in s))

    a = S.get("amplification", {})
    if any(t in a for t in ("casserole", "nginx", "varnish")):
        out += [f"#### 4. Upstream amplification ({a['clients']} clients over 3 nodes, "
                f"{a['size'] // Mi} MiB cold object)", "",
                "| target | origin body bytes | amplification | responses | wall s |",
                "|---|---:|---:|---:|---:|"]
        for tgt in ("casserole", "nginx", "varnish"):
            r = a.get(tgt)
            if r:
                label = {"casserole": "casserole (3-node cluster, etcd)",
                         "nginx": "nginx (3 independent)", "varnish": "varnish (3 independent)"}[tgt]
                out.append(f"| {label} | {r['origin_bytes']} | {r['amplification']:.2f} | "
                           f"{r['origin_responses']} | {r['wall_s']:.1f} |")
        out.append("")
        if a.get("failed"):
            out += [f"Failed: {a['failed']}", ""]
        if "casserole" in a:
            amp = a["casserole"]["amplification"]
            target("amplification exactly 1.00", "1.00", f"{amp:.2f}", f"{amp:.2f}" == "1.00",
                   ", ".join(f"{p} {a[p]['amplification']:.2f}" for p in ("nginx", "varnish") if p in a))
    elif a:
        out += [f"#### 4. Upstream amplification: {a}", ""]

    m = S.get("memory", {})
    if "peak_rss_bytes" in m:
        out += [f"#### 5. Memory ({m['clients']} concurrent downloads of {m['objects']} × "
                f"{m['object_size'] // Mi} MiB objects, memory tier {m['tier_bytes'] // Mi} MiB)", "",
                "| peak RSS (VmHWM) | memory tier peak (metric) | idle RSS | limit (tier + 64 MiB) | complete | wall s |",
                "|---:|---:|---:|---:|---:|---:|",
                f"| {m['peak_rss_bytes'] / Mi:.0f} MiB | {m.get('tier_peak_bytes', 0) / Mi:.0f} MiB | "
                f"{m['idle_rss_bytes'] / Mi:.0f} MiB | "
                f"{m['limit_bytes'] / Mi:.0f} MiB | {m['complete']}/{m['clients']} | {m['wall_s']:.1f} |", ""]
        target("RSS ≤ memory tier + 64 MiB", f"≤ {m['limit_bytes'] / Mi:.0f} MiB",
               f"{m['peak_rss_bytes'] / Mi:.0f} MiB", m["peak_rss_bytes"] <= m["limit_bytes"])
    elif m:
        out += [f"#### 5. Memory: {m}", ""]

    dk = S.get("disk", {})
    if "casserole" in dk or "nginx" in dk:
        out += [f"#### 6. Disk tier: hot hits from disk ({dk['size'] // Mi} MiB object, small memory tier)", "",
                "| target | conns | req/s | GB/s | p50 ms | p99 ms | served from disk |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for tgt in ("casserole", "nginx"):
            r = dk.get(tgt)
            if r:
                share = f"{r['disk_share'] * 100:.0f}%" if "disk_share" in r else "(proxy_cache files)"
                out.append(f"| {tgt} | {r['conns']} | {r['rps']:.1f} | {r['gbps']:.2f} | "
                           f"{fmt(r['p50_ms'], '.3g')} | {fmt(r['p99_ms'], '.3g')} | {share} |")
        out.append("")
        if dk.get("failed"):
            out += [f"Failed: {dk['failed']}", ""]
    elif dk:
        out += [f"#### 6. Disk tier: {dk}", ""]

    out += latency_render(S.get("latency", {}), target)
    out += upstreams_render(S.get("upstreams", {}), target)
    out += mixed_render(S.get("mixed", {}), target)
    out += window_render(S.get("window", {}), target)

    out += ["#### Targets", "", "| target | goal | measured | met | peers |", "|---|---|---|---|---|"]
    for t in targets_rows:
        out.append(f"| {t['target']} | {t['goal']} | {t['value']} | {'yes' if t['met'] else '**no**'} | {t['note']} |")
    out.append("")
    return "\n".join(out), targets_rows


def chart(results: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no PNG (pip install matplotlib)")
        return False
    S = results["scenarios"]
    fig, axes = plt.subplots(2, 5, figsize=(25, 9))
    colors = {"direct": "#888888", "casserole": "#d2691e", "nginx": "#2e8b57", "varnish": "#4169e1"}

    def bars(ax, title, ylabel, data: dict[str, float], names=None, palette=None):
        names = names or [t for t in TARGETS if t in data]
        names = [n for n in names if n in data]
        ax.bar(names, [data[n] for n in names],
               color=[(palette or colors).get(n, "#999999") for n in names])
        for i, n in enumerate(names):
            ax.text(i, data[n], f"{data[n]:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)

    hot = S.get("hot", {})
    for j, obj in enumerate(HOT_OBJECTS):
        unit = "GB/s" if obj == "large" else "req/s"
        ax = axes[0][j]
        rows = hot.get(obj, {})
        tg = [t for t in TARGETS if t in rows]
        if tg:
            conns = [r["conns"] for r in rows[tg[0]]]
            w = 0.8 / len(tg)
            for k, t in enumerate(tg):
                vals = [r["rps"] if unit == "req/s" else r["gbps"] for r in rows[t]]
                ax.bar([i + k * w for i in range(len(vals))], vals, w, label=t, color=colors[t])
            ax.set_xticks([i + 0.4 - w / 2 for i in range(len(conns))], [f"c={c}" for c in conns])
            ax.legend(fontsize=8)
        ax.set_title(f"1. hot hits, {obj} object ({(S.get('hot_sizes') or {}).get(obj, '')})",
                     fontsize=10)
        ax.set_ylabel(unit)

    def cold_data(key, field):
        s = S.get(key, {})
        return {t: s[t][field] for t in TARGETS if isinstance(s.get(t), dict) and field in s[t]}

    bars(axes[0][3], "2. cold miss, throttled origin: total s (lower is better)", "seconds",
         cold_data("cold_throttled", "total_s"))
    bars(axes[0][4], "2. cold miss, throttled origin: time to first byte", "ms",
         cold_data("cold_throttled", "ttfb_ms"))
    bars(axes[1][0], "3. cold miss, unthrottled origin: total s (lower is better)", "seconds",
         cold_data("cold_unthrottled", "total_s"))
    a = S.get("amplification", {})
    bars(axes[1][1], "4. upstream amplification (origin bytes / object)", "×",
         {t: a[t]["amplification"] for t in TARGETS if isinstance(a.get(t), dict)})
    m = S.get("memory", {})
    if "peak_rss_bytes" in m:
        mem = {"peak RSS": m["peak_rss_bytes"] / Mi, "memory tier": m.get("tier_peak_bytes", 0) / Mi,
               "limit": m["limit_bytes"] / Mi}
        bars(axes[1][2], f"5. casserole memory, {m['clients']} downloads", "MiB", mem,
             names=list(mem), palette={"peak RSS": colors["casserole"], "memory tier": "#e9a66b",
                                       "limit": "#bbbbbb"})
    else:
        axes[1][2].set_title("5. memory: not run", fontsize=10)
    dk = S.get("disk", {})
    bars(axes[1][3], "6. hot hits from the disk tier", "GB/s",
         {t: dk[t]["gbps"] for t in TARGETS if isinstance(dk.get(t), dict)})
    axes[1][4].axis("off")
    fig.suptitle(f"Casserole vs nginx vs Varnish ({results['mode']}, {results.get('date', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


BEGIN, END = "<!-- bench:latest -->", "<!-- /bench:latest -->"


def update_readme(path: str, md: str, png: str | None) -> None:
    """Replaces the text between the bench:latest markers of `path` with this run's tables."""
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        log(f"{path} has no {BEGIN} ... {END} markers: not updated")
        return
    title, _, body = md.partition("\n")
    pic = (f"\n\n![benchmark chart]({os.path.relpath(png, os.path.dirname(os.path.abspath(path)))})"
           if png else "")
    block = f"{BEGIN}\n_{title.lstrip('# ').strip()}._\n{body.rstrip()}{pic}\n{END}"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(head + block + tail)
    log(f"updated the latest table in {path}")
