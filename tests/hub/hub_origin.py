"""A Hugging Face Hub-shaped origin for tests/tests/clients_hub.rs: a hub API and its CDN on two
127.0.0.1 ports, serving one model repository made of the files under a directory.

Hub (--hub-port):
  GET /api/models/{repo}/revision/{rev}   JSON with `sha` and `siblings`
  GET /api/models/{repo}/tree/{rev}       JSON list of files and folders (`recursive` honoured)
  HEAD/GET /{repo}/resolve/{rev}/{file}   LFS files (larger than --lfs-threshold): 302 to the CDN
      (http://{--cdn-host}:{--cdn-port}/repos/aa/bb/{sha256}, stable: no signature) with
      X-Linked-Etag, X-Linked-Size, X-Repo-Commit, ETag; small files: 200 with X-Repo-Commit and
      ETag (their git blob id).
CDN (--cdn-port): GET/HEAD /repos/aa/bb/{sha256}: the bytes, with ETag, Content-Length,
  Accept-Ranges, single `Range`s and `If-None-Match` honoured.

With --sign-secret, every redirect names a new presigned CDN URL, S3-style: X-Amz-Date (now),
X-Amz-Expires (--sign-ttl), X-Amz-Credential (a fresh nonce) and X-Amz-Signature (HMAC-SHA256 of
the path and those three under the secret); the CDN answers 403 to a URL whose signature is
missing or wrong, or whose date plus expiry has passed.

Every request is appended to --log as one JSON line once answered: server, method, path, status,
range, user_agent, via, if_none_match and the body bytes written (what the test counts).
"""

import argparse
import calendar
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def load_repo(root, lfs_threshold):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            data = open(path, "rb").read()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            files[rel] = {
                "path": path,
                "size": len(data),
                "blob": blob,
                "sha256": hashlib.sha256(data).hexdigest(),
                "lfs": len(data) > lfs_threshold,
            }
    return files


class State:
    def __init__(self, args):
        self.args = args
        self.files = load_repo(args.root, args.lfs_threshold)
        self.by_sha = {f["sha256"]: f for f in self.files.values() if f["lfs"]}
        self.lock = threading.Lock()
        self.log = open(args.log, "a", encoding="utf-8")

    def record(self, entry):
        with self.lock:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    def cdn_url(self, f):
        sha = f["sha256"]
        path = f"/repos/{sha[:2]}/{sha[2:4]}/{sha}"
        url = f"http://{self.args.cdn_host}:{self.args.cdn_port}{path}"
        if self.args.sign_secret is None:
            return url
        params = {
            "X-Amz-Credential": uuid.uuid4().hex,
            "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            "X-Amz-Expires": str(self.args.sign_ttl),
        }
        params["X-Amz-Signature"] = self.signature(path, params)
        return url + "?" + urllib.parse.urlencode(params)

    def signature(self, path, params):
        text = "\n".join([path] + [params.get(k, "") for k in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires")])
        return hmac.new(self.args.sign_secret.encode(), text.encode(), hashlib.sha256).hexdigest()

    def refuses(self, path, query):
        """Why a CDN request is refused when URLs are signed, or None."""
        if self.args.sign_secret is None:
            return None
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        if not hmac.compare_digest(params.get("X-Amz-Signature", ""), self.signature(path, params)):
            return "SignatureDoesNotMatch"
        try:
            signed = calendar.timegm(time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
            expires = signed + int(params["X-Amz-Expires"])
        except (KeyError, ValueError):
            return "AuthorizationQueryParametersError"
        if time.time() > expires:
            return "AccessDenied: Request has expired"
        return None

    def tree(self):
        entries, folders = [], set()
        for rel, f in sorted(self.files.items()):
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
            entry = {"type": "file", "path": rel, "size": f["size"], "oid": f["blob"]}
            if f["lfs"]:
                entry["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": d, "size": 0, "oid": "0" * 40} for d in sorted(folders)]
        return entries


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hub-origin"
    state = None
    role = None

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.role} {self.address_string()} {fmt % args}\n")

    def do_HEAD(self):
        self.handle_any(head=True)

    def do_GET(self):
        self.handle_any(head=False)

    def handle_any(self, head):
        self.sent, self.status = 0, 0
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        try:
            if self.role == "cdn":
                why = self.state.refuses(path, url.query)
                if why is not None:
                    return self.answer(403, [("Content-Type", "text/plain")], why.encode() + b"\n", head)
                self.cdn(path, head)
            else:
                self.hub(urllib.parse.unquote(path), head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.state.record(
                {
                    "server": self.role,
                    "method": self.command,
                    "path": self.path,
                    "status": self.status,
                    "range": self.headers.get("Range"),
                    "user_agent": self.headers.get("User-Agent"),
                    "via": self.headers.get("Via"),
                    "if_none_match": self.headers.get("If-None-Match"),
                    "bytes": self.sent,
                }
            )

    def answer(self, status, headers, body=b"", head=False):
        self.status = status
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
            self.sent += len(body)

    def json(self, value, head):
        body = json.dumps(value).encode()
        self.answer(200, [("Content-Type", "application/json")], body, head)

    def hub(self, path, head):
        repo = self.state.args.repo
        api = f"/api/models/{repo}/"
        if path.startswith(api + "revision/"):
            siblings = [{"rfilename": rel} for rel in sorted(self.state.files)]
            return self.json({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}, head)
        if path.startswith(api + "tree/"):
            return self.json(self.state.tree(), head)
        prefix = f"/{repo}/resolve/"
        if path.startswith(prefix):
            rel = path[len(prefix):].split("/", 1)[-1]
            f = self.state.files.get(rel)
            if f is None:
                return self.answer(404, [("X-Error-Code", "EntryNotFound")], head=head)
            common = [("X-Repo-Commit", COMMIT), ("ETag", f'"{f["blob"]}"')]
            if f["lfs"]:
                return self.answer(
                    302,
                    common
                    + [
                        ("Location", self.state.cdn_url(f)),
                        ("X-Linked-Etag", f'"{f["sha256"]}"'),
                        ("X-Linked-Size", str(f["size"])),
                    ],
                    head=head,
                )
            return self.send_file(f, common, head)
        self.answer(404, [], head=head)

    def cdn(self, path, head):
        f = self.state.by_sha.get(path.rsplit("/", 1)[-1])
        if f is None or not path.startswith("/repos/"):
            return self.answer(404, [], head=head)
        self.send_file(f, [("ETag", f'"{f["sha256"]}"'), ("Content-Type", "application/octet-stream")], head)

    def send_file(self, f, headers, head):
        size = f["size"]
        etag = dict(headers).get("ETag")
        if etag is not None and etag in self.headers.get("If-None-Match", ""):
            return self.answer(304, headers, head=True)
        start, end, status = 0, size, 200
        headers = headers + [("Accept-Ranges", "bytes")]
        spec = self.headers.get("Range", "")
        if spec.startswith("bytes=") and "," not in spec:
            first, _, last = spec[6:].strip().partition("-")
            if first:
                start, end = int(first), min(int(last) + 1, size) if last else size
            elif last:
                start = max(size - int(last), 0)
            if start >= size or start >= end:
                return self.answer(416, [("Content-Range", f"bytes */{size}")], head=head)
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        self.status = status
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if head:
            return
        with open(f["path"], "rb") as src:
            src.seek(start)
            while start < end:
                data = src.read(min(CHUNK, end - start))
                self.wfile.write(data)
                self.sent += len(data)
                start += len(data)


def serve(state, role, port):
    handler = type(f"{role}Handler", (Handler,), {"state": state, "role": role})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--hub-port", type=int, required=True)
    parser.add_argument("--cdn-port", type=int, required=True)
    parser.add_argument("--cdn-host", default="localhost")
    parser.add_argument("--lfs-threshold", type=int, default=64 * 1024)
    parser.add_argument("--log", required=True)
    parser.add_argument("--sign-secret", default=None)
    parser.add_argument("--sign-ttl", type=int, default=300)
    args = parser.parse_args()
    state = State(args)
    cdn = serve(state, "cdn", args.cdn_port)
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    serve(state, "hub", args.hub_port).serve_forever()


if __name__ == "__main__":
    main()
