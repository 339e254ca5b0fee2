#!/usr/bin/env python3
"""Loopback upload sink for the upload benchmark: accepts Glance-v2-style
`PUT /v2/images/<id>/file` (and v1 `PUT /v1/images/<id>`) with a chunked body, discards
the data while counting and MD5-hashing it (MD5 only, like a Glance v1: the sink shares
the 2 cores with the tools, so it does as little as lets glance-vhd verify the upload), answers 204 (v2) / 200 (v1 JSON), and
answers `GET /v2/images/<id>` with a record whose checksum/os_hash_value/size are those
of the last completed upload to that id (so glance-vhd's verification runs as against
Glance). Each completed upload is appended to STATS as JSON. Prints `PORT n`."""
import hashlib, http.server, json, socketserver, sys, threading, time

stats_path = sys.argv[1]
done = {}
last = [time.time()]


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body=b"", ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def image_id(self):
        p = self.path.split("/")
        return p[3] if len(p) > 3 else ""

    def do_GET(self):
        last[0] = time.time()
        rec = done.get(self.image_id(), {"status": "queued", "checksum": None, "size": None,
                                         "os_hash_algo": "sha512", "os_hash_value": None})
        self.reply(200, json.dumps({"id": self.image_id(), **rec}).encode())

    def do_PATCH(self):
        last[0] = time.time()
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self.reply(200, b"{}")

    def do_PUT(self):
        last[0] = time.time()
        t0 = time.time()
        md5, total, complete = hashlib.md5(), 0, False
        r = self.rfile
        while True:
            line = r.readline()
            if not line:
                break
            size = int(line.split(b";")[0], 16)
            if size == 0:
                r.readline()
                complete = True
                break
            data = r.read(size)
            md5.update(data)
            total += len(data)
            r.readline()
        if not complete:
            self.close_connection = True
            return
        rec = {"status": "active", "checksum": md5.hexdigest(), "size": total,
               "os_hash_algo": None, "os_hash_value": None}
        done[self.image_id()] = rec
        with open(stats_path, "a") as f:
            f.write(json.dumps({"id": self.image_id(), "bytes": total, "seconds": time.time() - t0}) + "\n")
        if "/v1/" in self.path:
            self.reply(200, json.dumps({"image": {"id": self.image_id(), **rec}}).encode())
        else:
            self.reply(204)


class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


srv = S(("127.0.0.1", 0), H)
print("PORT", srv.server_address[1], flush=True)


def idle():
    while time.time() - last[0] < 600:
        time.sleep(1)
    srv.shutdown()


threading.Thread(target=idle, daemon=True).start()
srv.serve_forever()
