#!/usr/bin/env python3
"""Loopback stand-in for a Glance image store, for the download benchmark.

    serve.py IMAGE.tgz [--image-id ID] [--idle SECONDS] [--port N]

Binds 127.0.0.1 (a free port unless --port), prints "PORT <n>" on stdout, then serves:
  GET/HEAD /v1/images/<id>       -> 200, body = the tarball, Content-Length,
                                    x-image-meta-checksum (MD5, computed once at start),
                                    x-image-meta-size, x-image-meta-status: active
  GET      /v2/images/<id>       -> JSON record (checksum, os_hash_algo=sha512, os_hash_value, size)
  GET      /v2/images/<id>/file  -> 200, body = the tarball
Bodies go out with socket.sendfile (zero copy), one thread per connection, so the server
is not the bottleneck. Stops by itself after --idle seconds without a request in flight,
or on SIGTERM/SIGINT.
"""
import argparse
import hashlib
import http.server
import json
import os
import signal
import sys
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--image-id", default="bench")
    ap.add_argument("--idle", type=float, default=600.0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()

    path = os.path.abspath(args.image)
    size = os.path.getsize(path)
    md5, sha512 = hashlib.md5(), hashlib.sha512()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            md5.update(b)
            sha512.update(b)
    md5, sha512 = md5.hexdigest(), sha512.hexdigest()

    state = {"last": time.monotonic(), "busy": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "glance-bench"

        def log_message(self, fmt, *a):  # quiet
            pass

        def _enter(self):
            with lock:
                state["busy"] += 1

        def _leave(self):
            with lock:
                state["busy"] -= 1
                state["last"] = time.monotonic()

        def _route(self):
            p = self.path.split("?", 1)[0].rstrip("/")
            iid = args.image_id
            if p in (f"/v1/images/{iid}", f"/images/{iid}"):
                return "v1"
            if p == f"/v2/images/{iid}":
                return "v2rec"
            if p == f"/v2/images/{iid}/file":
                return "v2file"
            return None

        def _send_body_headers(self, extra):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()

        def _v1_headers(self):
            return [("x-image-meta-checksum", md5), ("x-image-meta-size", str(size)),
                    ("x-image-meta-status", "active"), ("x-image-meta-id", args.image_id),
                    ("x-image-meta-disk-format", "vhd"), ("x-image-meta-container-format", "ovf"),
                    ("ETag", md5)]

        def _sendfile(self):
            self.wfile.flush()
            with open(path, "rb") as f:
                self.connection.sendfile(f)

        def _handle(self, head):
            self._enter()
            try:
                r = self._route()
                if r == "v1":
                    self._send_body_headers(self._v1_headers())
                    if not head:
                        self._sendfile()
                elif r == "v2file" and not head:
                    self._send_body_headers([("Content-MD5", md5)])
                    self._sendfile()
                elif r == "v2rec":
                    rec = json.dumps({"id": args.image_id, "status": "active", "checksum": md5,
                                      "os_hash_algo": "sha512", "os_hash_value": sha512,
                                      "size": size, "disk_format": "vhd",
                                      "container_format": "ovf"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(rec)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(rec)
                else:
                    self.send_error(404)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                self._leave()

        def do_GET(self):
            self._handle(False)

        def do_HEAD(self):
            self._handle(True)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    print(f"PORT {srv.server_address[1]}", flush=True)
    print(f"# {path}: {size} bytes, md5 {md5}", file=sys.stderr, flush=True)

    def stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def idle_watch():
        while True:
            time.sleep(1)
            with lock:
                idle = state["busy"] == 0 and time.monotonic() - state["last"] > args.idle
            if idle:
                stop()
                return

    threading.Thread(target=idle_watch, daemon=True).start()
    srv.serve_forever()
    srv.server_close()


if __name__ == "__main__":
    main()
