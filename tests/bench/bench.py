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
import atexit
import datetime
import hashlib
import http.client
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
Ki, Mi, Gi = 1024, 1024**2, 1024**3
TARGETS = ["direct", "casserole", "nginx", "varnish"]
PEER_TOKEN = "bench-peer-token-0123456789abcdef"  # 32+ chars, loopback only

# --------------------------------------------------------------------------------------------
# Sizes per mode. Full mode fits in < 10 minutes on 2 cores; smoke mode in seconds.

FULL = dict(
    deadline=570,
    small=64 * Ki,
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


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A child in its own process group; stop() terminates that group (and only it)."""

    running: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], logdir: str, stdout_pipe: bool = False, **kw):
        self.name = name
        self.logpath = os.path.join(logdir, f"{name}.log")
        self.logf = open(self.logpath, "wb")
        self.p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if stdout_pipe else self.logf,
            stderr=self.logf,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
        Proc.running.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 20) -> str:
        try:
            with open(self.logpath, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self in Proc.running:
            Proc.running.remove(self)
        if self.p.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # the leader is gone; its group may still hold children (nginx workers, varnish child)
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.logf.close()

    @classmethod
    def stop_all(cls) -> None:
        for p in list(cls.running):
            p.stop(grace=2.0)


atexit.register(Proc.stop_all)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, proc: Proc | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: process exited\n{proc.tail()}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {timeout}s" + (f"\n{proc.tail()}" if proc else ""))


def http_get_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def metric(admin_url: str, name: str, labels: str | None = None) -> float:
    """Sum of the samples of one metric (optionally those whose label set contains `labels`)."""
    _, text = http_get_text(admin_url + "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name and (labels is None or labels in (m.group(2) or "")):
            total += float(m.group(3))
    return total


def group_cpu(pgid: int) -> float:
    """user+system CPU seconds of every live process in a process group (ours: one per target)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] is pgrp (field 5 of stat)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------------------
# Binaries and peers


def find_binaries(smoke: bool, bin_dir: str | None) -> str:
    cands = []
    if bin_dir:
        cands.append(bin_dir)
    release = [os.path.join(os.environ.get("CARGO_TARGET_DIR", ""), "release")] if os.environ.get(
        "CARGO_TARGET_DIR"
    ) else []
    release += [os.path.join(ROOT, "target-bench", "release"), os.path.join(ROOT, "target", "release")]
    debug = [os.path.join(ROOT, "target", "debug")]
    cands += (debug + release) if smoke else release
    for d in cands:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("casserole-node", "casserole-test-origin")):
            return d
    hint = "cargo build --workspace --bins" if smoke else (
        "CARGO_TARGET_DIR=target-bench cargo build --release -p casserole-node -p casserole-tests --bins"
    )
    raise SystemExit(f"casserole-node / casserole-test-origin not found in {cands}: run `{hint}`")


def ensure_peers(allow_install: bool) -> dict[str, bool]:
    want = {"nginx": "nginx", "varnishd": "varnish", "wrk": "wrk"}
    missing = [pkg for exe, pkg in want.items() if not shutil.which(exe)]
    if missing and allow_install and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)} (apt-get; services are not started)")
        policy = "/usr/sbin/policy-rc.d"
        made_policy = not os.path.exists(policy)
        try:
            if made_policy:
                with open(policy, "w") as f:
                    f.write("#!/bin/sh\nexit 101\n")
                os.chmod(policy, 0o755)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, timeout=600,
                           stdout=subprocess.DEVNULL)
        except (subprocess.SubprocessError, OSError) as e:
            log(f"apt-get failed: {e}")
        finally:
            if made_policy and os.path.exists(policy):
                os.remove(policy)
    have = {exe: bool(shutil.which(exe)) for exe in want}
    for exe, ok in have.items():
        if not ok:
            log(f"{exe} unavailable: its rows are marked n/a")
    return have


# --------------------------------------------------------------------------------------------
# The origin, and a byte-counting relay in front of it (for amplification)


class Origin:
    def __init__(self, bins: str, tmp: str, name: str, objects: list[str]):
        port = free_port()
        argv = [os.path.join(bins, "casserole-test-origin"), "--listen", f"127.0.0.1:{port}",
                "--exit-after", "900"]
        for o in objects:
            argv += ["--object", o]
        self.proc = Proc(name, argv, tmp, stdout_pipe=True)
        line = self.proc.p.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"origin did not print its URL: {line!r}\n{self.proc.tail()}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1].strip("/"))
        threading.Thread(target=self._drain, daemon=True).start()
        # one throw-away request, so the first measured one does not pay for a cold origin
        first = objects[0].split("=", 1)[0]
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            c.request("HEAD", first)
            c.getresponse().read()
            c.close()
        except (OSError, http.client.HTTPException):
            pass

    def _drain(self):
        for _ in self.proc.p.stdout:
            pass

    def stop(self):
        self.proc.stop()


class Relay:
    """TCP relay 127.0.0.1:port -> origin that counts HTTP response *body* bytes (HEAD-aware)."""

    def __init__(self, origin_port: int):
        self.origin_port = origin_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.body_bytes = 0
        self.responses = 0
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.body_bytes = 0
            self.responses = 0

    def close(self):
        self.closed = True
        self.sock.close()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                o = socket.create_connection(("127.0.0.1", self.origin_port), timeout=60)
            except OSError:
                c.close()
                continue
            c.settimeout(120)
            methods: queue.Queue = queue.Queue()
            threading.Thread(target=self._up, args=(c, o, methods), daemon=True).start()
            threading.Thread(target=self._down, args=(o, c, methods), daemon=True).start()

    @staticmethod
    def _up(c, o, methods):
        buf = b""
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                o.sendall(d)
                buf += d
                while b"\r\n\r\n" in buf:  # requests carry no body (GET/HEAD)
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    methods.put(head.split(b" ", 1)[0].upper())
        except OSError:
            pass
        finally:
            try:
                o.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _down(self, o, c, methods):
        buf = bytearray()
        body_left = 0
        until_close = False
        try:
            while True:
                d = o.recv(1 << 20)
                if not d:
                    break
                c.sendall(d)
                if until_close:
                    with self.lock:
                        self.body_bytes += len(d)
                    continue
                buf += d
                while buf:
                    if body_left:
                        n = min(body_left, len(buf))
                        body_left -= n
                        del buf[:n]
                        with self.lock:
                            self.body_bytes += n
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = bytes(buf[:end]).decode("latin-1")
                    del buf[: end + 4]
                    lines = head.split("\r\n")
                    status = int(lines[0].split()[1])
                    hdrs = {k.strip().lower(): v.strip() for k, _, v in
                            (line.partition(":") for line in lines[1:])}
                    method = methods.get(timeout=60) if status >= 200 else b"GET"
                    with self.lock:
                        self.responses += status >= 200
                    if method == b"HEAD" or status in (204, 304) or status < 200:
                        continue
                    if "content-length" in hdrs:
                        body_left = int(hdrs["content-length"])
                    else:  # chunked or until close: count everything that follows
                        until_close = True
                        with self.lock:
                            self.body_bytes += len(buf)
                        buf.clear()
        except (OSError, queue.Empty, ValueError, IndexError):
            pass
        finally:
            for s in (c, o):
                try:
                    s.close()
                except OSError:
                    pass


# --------------------------------------------------------------------------------------------
# Targets


class Casserole:
    def __init__(self, bins, tmp, name, upstream, memory, disk_dir=None, cluster=None, extra=()):
        self.port, self.admin, self.peer = free_port(), free_port(), free_port()
        argv = [
            os.path.join(bins, "casserole-node"), "--upstream", upstream,
            f"--address=127.0.0.1:{self.port}", f"--admin-address=127.0.0.1:{self.admin}",
            f"--peer-address=127.0.0.1:{self.peer}",
            f"--peering-address=http://127.0.0.1:{self.peer}", f"--node-id={name}",
            f"--max-memory-usage={memory}", "--log-format=text", "--shutdown-grace=2s",
        ]
        if disk_dir:
            argv += ["--disk-cache-enabled=true", f"--disk-cache-dir={disk_dir}",
                     "--max-disk-usage=8Gi", "--cleaned-disk-usage=6Gi"]
        else:
            argv += ["--disk-cache-enabled=false"]
        if cluster:
            argv += [f"--etcd={cluster}", f"--peer-token={PEER_TOKEN}", "--cluster-name=bench"]
        argv += list(extra) + os.environ.get("BENCH_NODE_ARGS", "").split()
        self.proc = Proc(name, argv, tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin}"
        wait_for(name, lambda: http_get_text(self.admin_url + "/readyz", 1)[0] == 200, 30, self.proc)

    def stop(self):
        self.proc.stop()


class Nginx:
    def __init__(self, tmp, name, origin_port):
        # a fresh directory every time: nginx reloads a cache directory it finds at startup, so
        # reusing one would turn the next scenario's cold miss into a hit
        d = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp)
        os.makedirs(os.path.join(d, "cache"))
        self.port = free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = f"""{user}worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  # tcp_nopush (TCP_CORK) made every keep-alive hit of a sliced object wait ~40 ms for the
  # delayed ACK here (26 req/s instead of ~10k), so it is off: the fastest nginx we found.
  sendfile on; keepalive_requests 100000;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:64m max_size=16g inactive=1h use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      slice 2m;
      proxy_cache bench;
      proxy_cache_key $uri$is_args$args$slice_range;
      proxy_set_header Range $slice_range;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache_valid 200 206 1h;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status always;
      proxy_pass http://origin;
    }}
  }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = Proc(name, ["nginx", "-p", d, "-e", f"{d}/error.log", "-c", path, "-g",
                                "daemon off;"], tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(name, lambda: port_open(self.port), 15, self.proc)

    def stop(self):
        self.proc.stop()


class Varnish:
    def __init__(self, tmp, name, origin_port, storage_bytes):
        d = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp)
        os.chmod(d, 0o755)
        self.port = free_port()
        vcl = f"""vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{origin_port}"; .between_bytes_timeout = 60s; }}
sub vcl_recv {{
  if (req.method != "GET" && req.method != "HEAD") {{ return (pass); }}
  return (hash);
}}
sub vcl_backend_response {{
  set beresp.do_stream = true;
  set beresp.ttl = 1h;
}}
sub vcl_deliver {{
  if (obj.hits > 0) {{ set resp.http.X-Cache = "HIT"; }} else {{ set resp.http.X-Cache = "MISS"; }}
}}
"""
        path = os.path.join(d, "bench.vcl")
        with open(path, "w") as f:
            f.write(vcl)
        os.chmod(path, 0o644)
        storage = max(256 * Mi, storage_bytes) // Mi
        self.proc = Proc(name, ["varnishd", "-F", "-a", f"127.0.0.1:{self.port}", "-f", path,
                                "-T", "127.0.0.1:0", "-s", f"malloc,{storage}m",
                                "-n", os.path.join(d, "work"), "-p", "http_resp_size=64k"], tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(name, lambda: port_open(self.port), 30, self.proc)

    def stop(self):
        self.proc.stop()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Etcd:
    def __init__(self, tmp):
        c, p = free_port(), free_port()
        self.url = f"http://127.0.0.1:{c}"
        peer = f"http://127.0.0.1:{p}"
        exe = os.environ.get("ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"
        self.proc = Proc("etcd", [exe, "--name=bench", f"--data-dir={tempfile.mkdtemp(prefix='etcd-', dir=tmp)}/data",
                                  f"--listen-client-urls={self.url}",
                                  f"--advertise-client-urls={self.url}",
                                  f"--listen-peer-urls={peer}",
                                  f"--initial-advertise-peer-urls={peer}",
                                  f"--initial-cluster=bench={peer}",
                                  "--initial-cluster-state=new", "--snapshot-count=1000",
                                  "--quota-backend-bytes=134217728"], tmp)
        wait_for("etcd", lambda: http_get_text(self.url + "/health", 1)[0] == 200, 30, self.proc)

    def stop(self):
        self.proc.stop()


# --------------------------------------------------------------------------------------------
# Clients


def download(url: str, want_sha: bool = False, timeout: float = 120.0) -> dict:
    """One GET; TTFB = first body byte. Returns status, ttfb, total, bytes (and sha256)."""
    m = re.match(r"http://([^/:]+):(\d+)(/.*)", url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    h = hashlib.sha256() if want_sha else None
    t0 = time.perf_counter()
    ttfb = None
    n = 0
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "identity"})
        r = conn.getresponse()
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        while True:
            k = r.readinto(buf)
            if not k:
                break
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            n += k
            if h:
                h.update(mv[:k])
        status = r.status
        cache = (r.getheader("Cache-Status") or r.getheader("X-Cache")
                 or r.getheader("X-Cache-Status") or "")
    except (OSError, http.client.HTTPException) as e:
        return {"status": 0, "error": str(e), "ttfb": ttfb, "total": time.perf_counter() - t0,
                "bytes": n}
    finally:
        conn.close()
    out = {"status": status, "ttfb": ttfb, "total": time.perf_counter() - t0, "bytes": n,
           "cache_status": cache}
    if h:
        out["sha256"] = h.hexdigest()
    return out


def parallel_downloads(urls: list[str], timeout: float) -> list[dict]:
    results: list[dict | None] = [None] * len(urls)
    start = threading.Barrier(len(urls), timeout=30)

    def run(i):
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass
        results[i] = download(urls[i], timeout=timeout)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(urls))]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout + 30
    for t in threads:
        t.join(max(0.1, end - time.monotonic()))
    return [r or {"status": 0, "error": "timeout", "bytes": 0} for r in results]


UNITS_T = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(url: str, conns: int, seconds: int, size: int) -> dict:
    threads = min(2, conns)
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--latency",
            "--timeout", "30s", url]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = p.stdout
    res = {"conns": conns}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    # wrk counts every byte read, partial responses included (Transfer/sec, binary units): with
    # 64 MiB bodies a 5 s run completes only a few responses per connection, so this is the
    # unbiased throughput; req/s x size undercounts whatever was in flight at the end.
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out)
    scale = {"B": 1, "KB": Ki, "MB": Mi, "GB": Gi, "TB": 1024 * Gi}
    res["gbps"] = float(m.group(1)) * scale[m.group(2)] / 1e9 if m else res["rps"] * size / 1e9
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{q}_ms"] = float(m.group(1)) * UNITS_T[m.group(2)] * 1e3 if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    res["errors"] = errs
    if p.returncode != 0 or not m and res["rps"] == 0:
        res["raw"] = (out + p.stderr)[-400:]
    return res


# --------------------------------------------------------------------------------------------
# Scenarios


class Bench:
    def __init__(self, args):
        self.args = args
        self.cfg = SMOKE if args.smoke else FULL
        self.bins = find_binaries(args.smoke, args.bin_dir)
        self.tmp = tempfile.mkdtemp(prefix="casserole-bench-")
        os.chmod(self.tmp, 0o755)  # varnish's child runs as vcache and must reach its workdir
        self.have = ensure_peers(not args.no_install)
        self.results: dict = {"mode": "smoke" if args.smoke else "full", "scenarios": {}}
        self.t_start = time.monotonic()

    def peers(self) -> list[str]:
        out = ["casserole"]
        if self.have["nginx"]:
            out.append("nginx")
        if self.have["varnishd"]:
            out.append("varnish")
        return out

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
        origin = Origin(self.bins, self.tmp, "origin-hot",
                        [f"/small.bin={c['small']},seed=1,max-age=3600",
                         f"/large.bin={c['large']},seed=2,max-age=3600"])
        res: dict = {}
        bases = {"direct": origin.url.rstrip("/")}
        servers = []
        for target in self.peers():
            try:
                srv = self.start_target(target, origin, f"{target}-hot", storage=2 * c["large"])
                servers.append(srv)
                for obj, size in (("small", c["small"]), ("large", c["large"])):
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
        samples: dict = {}
        for rnd in range(c["hot_rounds"]):
            for obj, size in (("small", c["small"]), ("large", c["large"])):
                for conns in c["conns"]:
                    for target in TARGETS:
                        if target not in bases:
                            continue
                        r = wrk(f"{bases[target]}/{obj}.bin", conns, c["wrk_seconds"], size)
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
        self.results["elapsed_s"] = time.monotonic() - self.t_start
        self.results["machine"] = machine_info()
        self.results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.results["binaries"] = self.bins
        self.results["scenarios"]["hot_sizes"] = {"small": human(self.cfg["small"]),
                                                  "large": human(self.cfg["large"])}
        shutil.rmtree(self.tmp, ignore_errors=True)


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
    if "small" in hot or "large" in hot:
        rounds = next((r.get("rounds", 1) for t in hot.get("small", {}).values() for r in t), 1)
        out += [f"#### 1. Hot hits (wrk; median of {rounds} interleaved round(s) per cell)", "",
                "| object | target | conns | req/s | GB/s | p50 ms | p99 ms | errors |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for obj in ("small", "large"):
            for tgt in TARGETS:
                for r in hot.get(obj, {}).get(tgt, []):
                    out.append(f"| {obj} | {tgt} | {r['conns']} | {r['rps']:.0f} | {r['gbps']:.2f}"
                               f" | {fmt(r['p50_ms'], '.3g')} | {fmt(r['p99_ms'], '.3g')} | {r['errors']} |")
        out.append("")
        for obj in ("small", "large"):
            cas, ngx = hot.get(obj, {}).get("casserole"), hot.get(obj, {}).get("nginx")
            var = hot.get(obj, {}).get("varnish")
            if cas and not ngx:
                target(f"hot hits {obj}: ≥ 1.0× nginx", "≥ 1.00", "n/a (no nginx in this run)", False)
            if cas and ngx:
                k = "rps" if obj == "small" else "gbps"  # see wrk(): bytes are exact for large
                ratios = [a[k] / b[k] if b[k] else 0 for a, b in zip(cas, ngx)]
                vr = ([a[k] / b[k] if b[k] else 0 for a, b in zip(cas, var)] if var else [])
                worst = min(ratios)
                target(f"hot hits {obj}: ≥ 1.0× nginx ({'req/s' if k == 'rps' else 'GB/s'})", "≥ 1.00",
                       " / ".join(f"{x:.2f}" for x in ratios) + f" (c={'/'.join(str(r['conns']) for r in cas)})",
                       worst >= 1.0,
                       ("vs varnish " + " / ".join(f"{x:.2f}" for x in vr)) if vr else "")
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
    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
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
    for j, (obj, unit) in enumerate((("small", "req/s"), ("large", "GB/s"))):
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

    bars(axes[0][2], "2. cold miss, throttled origin: total s (lower is better)", "seconds",
         cold_data("cold_throttled", "total_s"))
    bars(axes[0][3], "2. cold miss, throttled origin: time to first byte", "ms",
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
                    choices=["hot", "cold_throttled", "cold_unthrottled", "amplification", "memory", "disk"],
                    help="run only these scenarios (repeatable)")
    args = ap.parse_args()

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
