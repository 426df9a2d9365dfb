"""Processes the benchmark starts and measures: origin, relay, Casserole, nginx, Varnish, etcd,
and the load generators (wrk, a byte-counting downloader)."""

from __future__ import annotations

import atexit
import hashlib
import http.client
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


Ki, Mi, Gi = 1024, 1024**2, 1024**3
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PEER_TOKEN = "bench-peer-token-0123456789abcdef"  # 32+ chars, loopback only


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


def ensure_peers(allow_install: bool, want: dict[str, str] | None = None) -> dict[str, bool]:
    """`want`: executable -> Debian package (default: the side-by-side benchmark's peers)."""
    want = want or {"nginx": "nginx", "varnishd": "varnish", "wrk": "wrk"}
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
    def __init__(self, bins: str, tmp: str, name: str, objects: list[str], extra=()):
        port = free_port()
        argv = [os.path.join(bins, "casserole-test-origin"), "--listen", f"127.0.0.1:{port}",
                "--exit-after", "900", *extra]
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
    def __init__(self, tmp, name, origin_port, location_extra: str = ""):
        """`location_extra`: directives added to the one location (e.g. `proxy_cache_use_stale`)."""
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
      {location_extra}
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
    # the default: every response cached for an hour (the origin's own lifetime is overridden);
    # the builtin VCL that runs after it still marks no-store/private answers hit-for-miss
    BACKEND_RESPONSE = "set beresp.do_stream = true;\n  set beresp.ttl = 1h;"

    def __init__(self, tmp, name, origin_port, storage_bytes, backend_response: str | None = None):
        """`backend_response`: the body of `vcl_backend_response` (default BACKEND_RESPONSE)."""
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
  {backend_response or self.BACKEND_RESPONSE}
}}
sub vcl_deliver {{
  if (obj.hits > 0) {{ set resp.http.X-Cache = "HIT"; }} else {{ set resp.http.X-Cache = "MISS"; }}
  if (obj.ttl < 0s) {{ set resp.http.X-Cache = resp.http.X-Cache + ", stale (grace)"; }}
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


def wrk(url: str, conns: int, seconds: int, size: int, cpus: str | None = None) -> dict:
    """`cpus`: run wrk on these CPUs only (`taskset -c`)."""
    threads = min(2, conns)
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--latency",
            "--timeout", "30s", url]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
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
