"""Scenario 9: mixed load on one node (issue 11) — hot hits, cold misses, ranges, pass-through,
stalled readers and aborting clients all at once, while the origin fails some of the time.

One Casserole node (`--max-memory-usage 100M`, `--client-idle-timeout 5s`, no disk tier) in front
of a Python origin (pyorigin.py, extended here with faults the Rust test origin cannot produce:
a path that answers 503 some of the time and a path that resets the connection mid-body some of
the time). Every body a client receives is compared byte for byte with the object's content (the
slice a range asked for; a truncated body must still be a correct prefix): a wrong byte is a
"wrong body", which must never happen. Bounded: the clients stop at the scenario's duration.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import struct
import threading
import time

from procs import Ki, Mi, Casserole, log, rss_kib
from pyorigin import PyOrigin

FULL = dict(seconds=60, hot=4, cold=2, ranges=2, passes=1, stalls=2, aborts=1, faults=2)
QUICK = dict(seconds=15, hot=4, cold=2, ranges=2, passes=1, stalls=2, aborts=1, faults=2)
SMOKE = dict(seconds=5, hot=1, cold=1, ranges=1, passes=1, stalls=1, aborts=1, faults=1)
MEMORY = "100M"
MEMORY_BYTES = 100 * 1000 * 1000
ALLOWANCE = 64 * Mi  # the memory scenario's allowance over the tier (runtime, buffers, metadata)
IDLE = 5  # --client-idle-timeout, seconds
STALL_HOLD = IDLE + 4  # a stalled client reads nothing for this long, then tries to read the rest
FAULT_RATE = 0.3
KINDS = ["hot", "cold", "range", "pass", "stall", "abort", "origin_503", "origin_reset"]

HOT_SIZE, COLD_SIZE, RANGE_SIZE, PASS_SIZE = 1 * Mi, 4 * Mi, 64 * Mi, 2 * Mi
BIG_SIZE, FAULT_SIZE = 32 * Mi, 8 * Mi


class FaultyOrigin(PyOrigin):
    """PyOrigin with per-path faults: `503` (answers 503, no body) or `reset` (sends the headers and
    half the body, then closes with SO_LINGER 0: a TCP reset mid-body), each with a probability."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self.faults: dict[str, tuple[str, float]] = {}
        self.injected = {"503": 0, "reset": 0}
        self.rng = random.Random(seed)

    def serve(self, h, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        fault = self.faults.get(path)
        with self.lock:
            hit = fault is not None and not head and self.rng.random() < fault[1]
            if hit:
                self.injected[fault[0]] += 1
        if not hit:
            return super().serve(h, head)
        if fault[0] == "503":
            h.send_response(503)
            h.send_header("Content-Length", "0")
            h.send_header("Cache-Control", "no-store")
            h.end_headers()
            return
        obj = self.objects[path]
        h.send_response(200)
        self._validators(h, obj)
        h.send_header("Content-Length", str(obj.size))
        h.end_headers()
        try:
            h.wfile.write(obj.body[: obj.size // 2])
        except OSError:
            pass
        h.close_connection = True
        # the socket's fd closes only when its makefile() reader is closed too; linger 0 makes
        # that close a reset instead of a FIN
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.rfile.close()
        h.connection.close()


def sizes(bench) -> dict:
    if bench.args.smoke:
        return SMOKE
    return QUICK if bench.args.quick else FULL


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_kind: dict[str, dict[str, int]] = {k: {} for k in KINDS}
        self.wrong: list[str] = []
        self.bytes = 0

    def add(self, kind: str, outcome: str, n: int = 0) -> None:
        with self.lock:
            d = self.by_kind[kind]
            d[outcome] = d.get(outcome, 0) + 1
            self.bytes += n


def get(port: int, path: str, want: memoryview, rng: tuple[int, int] | None = None,
        stop_after: int | None = None, stall: float = 0.0) -> tuple[str, int, bool]:
    """One GET on a fresh connection. Returns (outcome, body bytes read, body wrong). `want` is
    the whole object; with `rng` the slice asked for. `stop_after`: close after that many body
    bytes (an aborting client). `stall`: after the first 64 KiB, read nothing for that long."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Accept-Encoding": "identity"}
    if rng:
        headers["Range"] = f"bytes={rng[0]}-{rng[1]}"
    n, wrong = 0, False
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        if r.status not in (200, 206):
            r.read()
            return f"status {r.status}", 0, False
        start = 0
        if r.status == 206:
            cr = r.getheader("Content-Range", "")
            start = int(cr.split()[1].split("-")[0])
        elif rng:
            return "200 to a range", 0, False
        length = int(r.getheader("Content-Length", "-1"))
        buf = bytearray(256 * Ki)
        mv = memoryview(buf)
        stalled = False
        while True:
            if stall and not stalled and n >= 64 * Ki:
                stalled = True
                time.sleep(stall)
            if stop_after is not None and n >= stop_after:
                return "aborted by client", n, wrong
            try:
                k = r.readinto(mv[: 64 * Ki if stall and not stalled else len(buf)])
            except (OSError, http.client.HTTPException):
                k = 0
            if not k:
                break
            if mv[:k] != want[start + n:start + n + k]:
                wrong = True
            n += k
        if n == length:
            return "complete", n, wrong
        return "closed mid-body", n, wrong
    except (OSError, http.client.HTTPException) as e:
        return f"error {type(e).__name__}", n, wrong
    finally:
        conn.close()


def hot_cache_status(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("HEAD", path)
        r = conn.getresponse()
        r.read()
        return r.getheader("Cache-Status", "")
    finally:
        conn.close()


def fds(pid: int, port: int, origin_port: int) -> tuple[int, int, int]:
    """(open fds, connections from clients to `port`, connections to the origin): a socket's
    inode is matched to its ports in /proc/net/tcp*."""
    inodes = set()
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        total += 1
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    clients = upstream = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            col = row.split()
            # local address:port, remote, state (0A = listening), ..., inode in column 9
            if col[9] not in inodes or col[3] == "0A":
                continue
            clients += int(col[1].split(":")[1], 16) == port
            upstream += int(col[2].split(":")[1], 16) == origin_port
    return total, clients, upstream


def run(bench) -> dict:
    m = sizes(bench)
    origin = FaultyOrigin(seed=91)
    objs = {
        "hot": [origin.put(f"/hot{i}.bin", HOT_SIZE, "public, max-age=3600") for i in range(4)],
        "cold": origin.put("/cold.bin", COLD_SIZE, "public, max-age=3600"),
        "range": origin.put("/range.bin", RANGE_SIZE, "public, max-age=3600"),
        "pass": origin.put("/pass.bin", PASS_SIZE, "no-store"),
        "big": origin.put("/big.bin", BIG_SIZE, "public, max-age=3600"),
        "503": origin.put("/flaky503.bin", FAULT_SIZE, "public, max-age=3600"),
        "reset": origin.put("/reset.bin", FAULT_SIZE, "public, max-age=3600"),
    }
    origin.faults = {"/flaky503.bin": ("503", FAULT_RATE), "/reset.bin": ("reset", FAULT_RATE)}
    node = Casserole(bench.bins, bench.tmp, "casserole-mixed", origin.url, MEMORY,
                     extra=[f"--client-idle-timeout={IDLE}s"])
    pid, port = node.proc.pid, node.port
    try:
        for o in objs["hot"]:  # warm: the hot clients measure hits
            get(port, f"/hot{objs['hot'].index(o)}.bin", o.body)
        fds_before = fds(pid, port, origin.port)
        rss_before = rss_kib(pid, "VmRSS")
        tally = Tally()
        stop = threading.Event()
        peak = [rss_before]
        seq = [0]
        seq_lock = threading.Lock()

        def unique() -> int:  # a query string no client asked for before: a cold miss
            with seq_lock:
                seq[0] += 1
                return seq[0]

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], rss_kib(pid, "VmRSS"))
                except OSError:
                    return
                stop.wait(0.1)

        def one(kind: str, rnd: random.Random) -> None:
            if kind == "hot":
                i = rnd.randrange(4)
                out = get(port, f"/hot{i}.bin", objs["hot"][i].body)
            elif kind == "cold":
                out = get(port, f"/cold.bin?c={unique()}", objs["cold"].body)
            elif kind == "range":
                a = rnd.randrange(RANGE_SIZE - 1)
                b = min(RANGE_SIZE - 1, a + rnd.randrange(1, 4 * Mi))
                out = get(port, "/range.bin", objs["range"].body, rng=(a, b))
            elif kind == "pass":
                out = get(port, "/pass.bin", objs["pass"].body)
            elif kind == "stall":
                out = get(port, f"/big.bin?s={unique()}", objs["big"].body, stall=STALL_HOLD)
            elif kind == "abort":
                out = get(port, f"/big.bin?a={unique()}", objs["big"].body,
                          stop_after=rnd.randrange(BIG_SIZE // 2))
            elif kind == "origin_503":
                out = get(port, f"/flaky503.bin?f={unique()}", objs["503"].body)
            else:
                out = get(port, f"/reset.bin?r={unique()}", objs["reset"].body)
            outcome, n, wrong = out
            if wrong:
                with tally.lock:
                    tally.wrong.append(f"{kind}: {outcome}, {n} bytes")
                outcome = "WRONG BODY"
            tally.add(kind, outcome, n)

        def worker(kind: str, k: int, deadline: float) -> None:
            rnd = random.Random(hash((kind, k)))
            while time.monotonic() < deadline:
                one(kind, rnd)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        counts = {"hot": m["hot"], "cold": m["cold"], "range": m["ranges"], "pass": m["passes"],
                  "stall": m["stalls"], "abort": m["aborts"], "origin_503": m["faults"] // 2 or 1,
                  "origin_reset": m["faults"] - m["faults"] // 2 or 1}
        t0 = time.monotonic()
        deadline = t0 + m["seconds"]
        threads = [threading.Thread(target=worker, args=(kind, k, deadline), daemon=True)
                   for kind, c in counts.items() for k in range(c)]
        for t in threads:
            t.start()
        for t in threads:  # a stalled client may still hold STALL_HOLD + its read timeout
            t.join(max(0.1, deadline + STALL_HOLD + 40 - time.monotonic()))
        wall = time.monotonic() - t0
        fds_end = fds(pid, port, origin.port)
        time.sleep(IDLE + 1)  # whatever the node still holds for a client is released by now
        fds_after = fds(pid, port, origin.port)
        stop.set()
        sampler.join(2)
        hwm = rss_kib(pid, "VmHWM")
        hot_status = hot_cache_status(port, "/hot0.bin")
        res = {"seconds": m["seconds"], "wall_s": wall, "clients": counts,
               "memory": MEMORY, "limit_bytes": MEMORY_BYTES + ALLOWANCE,
               "peak_rss_bytes": peak[0] * Ki, "hwm_bytes": hwm * Ki, "rss_before_bytes": rss_before * Ki,
               "fds_before": fds_before, "fds_end": fds_end, "fds_after": fds_after,
               "by_kind": tally.by_kind, "wrong": len(tally.wrong), "wrong_examples": tally.wrong[:5],
               "bytes": tally.bytes, "injected": dict(origin.injected), "hot_cache_status": hot_status,
               "alive": node.proc.alive()}
        log(f"   mixed: {sum(sum(d.values()) for d in tally.by_kind.values())} requests in {wall:.1f}s, "
            f"wrong bodies {len(tally.wrong)}, peak RSS {peak[0] / 1024:.0f} MiB (VmHWM {hwm / 1024:.0f}), "
            f"fds (all, clients) {fds_before} -> {fds_end} -> {fds_after}, faults injected {origin.injected}")
        for kind in KINDS:
            log(f"   {kind:13s} {tally.by_kind[kind]}")
        return res
    finally:
        node.stop()
        origin.stop()


def render(s: dict, target) -> list[str]:
    """Markdown for the scenario; `target(name, goal, value, met, note)` records goals."""
    if not s:
        return []
    if "by_kind" not in s:
        return [f"#### 9. Mixed load: {s}", ""]
    c = s["clients"]
    fd3 = (s["fds_before"], s["fds_end"], s["fds_after"])
    out = [f"#### 9. Mixed load on one node ({s['seconds']} s; `--max-memory-usage {s['memory']}`, "
           f"`--client-idle-timeout {IDLE}s`; origin faults: {FAULT_RATE:.0%} of upstream GETs of one "
           f"path answer 503, of another reset mid-body)", "",
           "| kind | clients | requests | outcomes | wrong bodies |",
           "|---|---:|---:|---|---:|"]
    for kind in KINDS:
        d = s["by_kind"].get(kind, {})
        outs = ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
        out.append(f"| {kind} | {c.get(kind, 0)} | {sum(d.values())} | {outs or '—'} | "
                   f"{d.get('WRONG BODY', 0)} |")
    out += ["", "| wrong bodies | peak RSS (VmRSS, sampled 10/s) | VmHWM | bound (100M + 64 MiB) "
                "| node's open fds before / at end / 6 s later | faults injected (503 / reset) |",
            "|---:|---:|---:|---:|---|---|",
            f"| {s['wrong']} | {s['peak_rss_bytes'] / Mi:.0f} MiB | {s['hwm_bytes'] / Mi:.0f} MiB | "
            f"{s['limit_bytes'] / Mi:.0f} MiB | {' / '.join(str(f[0]) for f in fd3)} "
            f"(client connections {' / '.join(str(f[1]) for f in fd3)}; "
            f"to the origin {' / '.join(str(f[2]) for f in fd3)}) | "
            f"{s['injected']['503']} / {s['injected']['reset']} |", ""]
    if s.get("wrong_examples"):
        out += [f"Wrong bodies, e.g.: {s['wrong_examples']}", ""]
    target("mixed load: wrong bodies", "0", str(s["wrong"]), s["wrong"] == 0)
    peak = max(s["peak_rss_bytes"], s["hwm_bytes"])  # VmHWM: the kernel's own peak, between samples too
    target("mixed load: peak RSS ≤ 100M + 64 MiB", f"≤ {s['limit_bytes'] / Mi:.0f} MiB",
           f"{peak / Mi:.0f} MiB (VmHWM)", peak <= s["limit_bytes"])
    target("mixed load: no client connection left open 6 s after the load", "0",
           str(s["fds_after"][1]), s["fds_after"][1] == 0,
           f"all fds {s['fds_before'][0]} → {s['fds_after'][0]} ({s['fds_after'][2]} of them to the origin)")
    return out
