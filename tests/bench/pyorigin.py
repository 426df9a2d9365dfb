"""A small origin in Python for the upstream-behaviour scenario: per-path Cache-Control, an origin
that ignores `Range` (as Python's own `http.server` does), per-path request counts, and a stop that
refuses every later connection (the listening socket and every open keep-alive connection close).

The Rust test origin (`casserole-test-origin`) cannot ignore `Range` or send `no-store` from the
command line, and the benchmark may not change it, so this one stands in for it here. It serves
from one pre-generated buffer, a `sendall` per response: ~1-2 GB/s on loopback, well above what the
scenario's objects need.
"""

from __future__ import annotations

import email.utils
import hashlib
import random
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PathStats:
    def __init__(self):
        self.gets = 0
        self.heads = 0
        self.range_gets = 0
        self.conditional = 0
        self.not_modified = 0
        self.body_bytes = 0

    @property
    def requests(self) -> int:
        return self.gets + self.heads

    def as_dict(self) -> dict:
        return {"requests": self.requests, "gets": self.gets, "heads": self.heads,
                "range_gets": self.range_gets, "conditional": self.conditional,
                "not_modified": self.not_modified, "body_bytes": self.body_bytes}


class PyObject:
    def __init__(self, size: int, cache_control: str, ignore_range: bool, body: bytes):
        self.size = size
        self.cache_control = cache_control
        self.ignore_range = ignore_range
        self.body = memoryview(body)[:size]
        self.etag = '"' + hashlib.sha256(bytes(self.body[:4096]) + str(size).encode()).hexdigest()[:32] + '"'
        self.last_modified = email.utils.formatdate(time.time() - 86400, usegmt=True)
        self.sha256 = hashlib.sha256(self.body).hexdigest()


SEND_PIECE = 1 << 20
RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b` / `a-` / `-n` range, clipped to the object; None when unsatisfiable or
    not a single byte range (then the whole object is served, as RFC 9110 allows)."""
    m = RANGE.match(value or "")
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        n = int(m.group(2))
        start, end = max(0, size - n), size - 1
    return (start, end) if start <= end < size else None


class PyOrigin:
    def __init__(self, seed: int = 1):
        self.objects: dict[str, PyObject] = {}
        self.stats: dict[str, PathStats] = {}
        self.lock = threading.Lock()
        self.seed = seed
        self._buf = b""
        self.conns: set[socket.socket] = set()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with origin.lock:
                    origin.conns.add(self.connection)

            def finish(self):
                try:
                    super().finish()
                finally:
                    with origin.lock:
                        origin.conns.discard(self.connection)

            def log_message(self, *args):  # quiet: the scenario prints its own summary
                pass

            def do_HEAD(self):
                origin.serve(self, head=True)

            def do_GET(self):
                origin.serve(self, head=False)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request, client_address):  # client went away: not news
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def put(self, path: str, size: int, cache_control: str, ignore_range: bool = False) -> PyObject:
        if len(self._buf) < size:  # every object is a prefix of one seeded buffer
            self._buf = random.Random(self.seed).randbytes(size)
        obj = PyObject(size, cache_control, ignore_range, self._buf)
        with self.lock:
            self.objects[path] = obj
            self.stats[path] = PathStats()
        return obj

    def count(self, path: str) -> dict:
        with self.lock:
            return self.stats[path].as_dict()

    def serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        obj = self.objects.get(path)
        if obj is None:
            h.send_error(404)
            return
        rng = h.headers.get("Range")
        inm = h.headers.get("If-None-Match")
        ims = h.headers.get("If-Modified-Since")
        with self.lock:
            st = self.stats[path]
            if head:
                st.heads += 1
            else:
                st.gets += 1
                st.range_gets += rng is not None
            st.conditional += bool(inm or ims)
        not_modified = (inm is not None and obj.etag in [t.strip() for t in inm.split(",")]) or (
            inm is None and ims is not None and ims == obj.last_modified)
        if not_modified:
            with self.lock:
                st.not_modified += 1
            h.send_response(304)
            self._validators(h, obj)
            h.end_headers()
            return
        span = None if obj.ignore_range or rng is None else parse_range(rng, obj.size)
        start, end = span if span else (0, obj.size - 1)
        h.send_response(206 if span else 200)
        self._validators(h, obj)
        h.send_header("Content-Type", "application/octet-stream")
        if not obj.ignore_range:
            h.send_header("Accept-Ranges", "bytes")
        if span:
            h.send_header("Content-Range", f"bytes {start}-{end}/{obj.size}")
        h.send_header("Content-Length", str(end - start + 1))
        h.end_headers()
        if head:
            return
        # in 1 MiB pieces, each counted once written, so that a response the cache abandons
        # counts (to the MiB) what it cost the origin
        pos = start
        try:
            while pos <= end:
                n = min(SEND_PIECE, end + 1 - pos)
                h.wfile.write(obj.body[pos:pos + n])
                pos += n
                with self.lock:
                    st.body_bytes += n
        except OSError:
            h.close_connection = True

    @staticmethod
    def _validators(h, obj: PyObject) -> None:
        h.send_header("ETag", obj.etag)
        h.send_header("Last-Modified", obj.last_modified)
        h.send_header("Cache-Control", obj.cache_control)

    def stop(self) -> None:
        """Stops accepting and closes every open connection: later requests are refused."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
