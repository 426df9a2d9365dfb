# Stand-in for casserole-node in the harness's own tests: parses the flags the harness passes,
# serves /readyz and /metrics on --admin-address, logs, and exits 0 on SIGTERM.
import http.server, signal, sys, threading

args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
host, port = args["--admin-address"].rsplit(":", 1)
print("fake node starting with", " ".join(sys.argv[1:]), flush=True)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/readyz": b"ok\n",
                "/metrics": b'# TYPE casserole_up gauge\ncasserole_up 1\nhits_total{tier="memory"} 4\n'}.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"")
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer((host, int(port)), H)
def term(*_):
    print("fake node got SIGTERM", flush=True)
    threading.Thread(target=srv.shutdown).start()
signal.signal(signal.SIGTERM, term)
# Bounded even if nobody stops it.
timer = threading.Timer(120, term)
timer.daemon = True
timer.start()
srv.serve_forever()
print("fake node exiting", flush=True)
sys.exit(0)
