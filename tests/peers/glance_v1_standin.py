#!/usr/bin/env python3
"""A stand-in for Glance v1 image downloads (no Glance release that runs here still
serves v1). Serves the files of a directory as images: GET {prefix}/v1/images/<id> and the
Diablo form GET {prefix}/images/<id> answer 200 with the file, x-image-meta-checksum (MD5),
x-image-meta-size and ETag, as Glance v1 did. Faults for the tests, per image id suffix
or by options:
  --prefix P           serve under a path prefix (e.g. /image)
  --require-token T    401 unless X-Auth-Token: T
  --status N           answer every request with status N
  --wrong-checksum     declare a checksum that does not match
  --cut-at N           close the connection after N body bytes
  --stall-at N         send N body bytes, then stall (never close) for 60 s
  --drip               send the body 1 KiB every 0.2 s
Uploads (v1): HEAD {prefix}/v1/images/<id> says x-image-meta-status "queued" unless
<dir>/<id> exists ("active"); PUT reads a chunked body: complete (terminating chunk seen)
→ stored as <dir>/<id>, answered 200 with the v1 image JSON; the request headers go to
<dir>/<id>.put-headers.json; a body that breaks off before its terminating chunk →
<dir>/<id>.broken, nothing stored. Every GET and PUT of an image also leaves its request
line and headers, as they came, in <dir>/<id>.get-request.txt / <id>.put-request.txt.
Prints the port on stdout, logs requests (with headers) to stderr. Stops after 120 s idle.
"""
import json
import argparse, hashlib, http.server, os, socketserver, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--prefix", default="")
ap.add_argument("--require-token")
ap.add_argument("--status", type=int)
ap.add_argument("--wrong-checksum", action="store_true")
ap.add_argument("--cut-at", type=int)
ap.add_argument("--stall-at", type=int)
ap.add_argument("--drip", action="store_true")
args = ap.parse_args()
last = [time.time()]


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        sys.stderr.write("standin: " + (fmt % a) + "\n")

    def do_GET(self):
        last[0] = time.time()
        sys.stderr.write("standin: headers %r\n" % dict(self.headers))
        path = self.path
        if args.prefix:
            if not path.startswith(args.prefix + "/"):
                return self.fail(404)
            path = path[len(args.prefix):]
        for form in ("/v1/images/", "/images/"):
            if path.startswith(form):
                image_id = path[len(form):]
                break
        else:
            return self.fail(404)
        self.record("get", image_id)
        if args.require_token and self.headers.get("X-Auth-Token") != args.require_token:
            return self.fail(401)
        if args.status:
            return self.fail(args.status)
        f = os.path.join(args.dir, os.path.basename(image_id))
        if "/" in image_id or not os.path.isfile(f):
            return self.fail(404)
        data = open(f, "rb").read()
        md5 = hashlib.md5(data).hexdigest()
        if args.wrong_checksum:
            md5 = hashlib.md5(data + b"x").hexdigest()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-image-meta-checksum", md5)
        self.send_header("x-image-meta-size", str(len(data)))
        self.send_header("ETag", md5)
        self.end_headers()
        if args.cut_at is not None:
            self.wfile.write(data[: args.cut_at])
            self.wfile.flush()
            self.close_connection = True
            return
        if args.stall_at is not None:
            self.wfile.write(data[: args.stall_at])
            self.wfile.flush()
            time.sleep(60)
            return
        if args.drip:
            for i in range(0, len(data), 1024):
                self.wfile.write(data[i : i + 1024])
                self.wfile.flush()
                time.sleep(0.2)
            return
        self.wfile.write(data)

    def record(self, kind, image_id):
        # What the client sent, in its order and spelling (the seed-era tests read it).
        if not image_id or "/" in image_id or image_id.startswith("."):
            return
        text = self.requestline + "\n" + "".join(
            "%s: %s\n" % (k, v) for k, v in self.headers.items())
        open(os.path.join(args.dir, "%s.%s-request.txt" % (image_id, kind)), "w").write(text)

    def image_id(self):
        path = self.path
        if args.prefix:
            if not path.startswith(args.prefix + "/"):
                return None
            path = path[len(args.prefix):]
        for form in ("/v1/images/", "/images/"):
            if path.startswith(form):
                i = path[len(form):]
                return i if i and "/" not in i else None
        return None

    def do_HEAD(self):
        last[0] = time.time()
        image_id = self.image_id()
        if image_id is None:
            return self.fail(404)
        if args.status:
            return self.fail(args.status)
        exists = os.path.isfile(os.path.join(args.dir, image_id))
        self.send_response(200)
        self.send_header("x-image-meta-status", "active" if exists else "queued")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):
        last[0] = time.time()
        image_id = self.image_id()
        if image_id is None:
            return self.fail(404)
        if args.status:
            return self.fail(args.status)
        json.dump(dict(self.headers), open(os.path.join(args.dir, image_id + ".put-headers.json"), "w"))
        self.record("put", image_id)
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.fail(411)
        data, complete = bytearray(), False
        try:
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    complete = True
                    break
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    break
                data += chunk
                self.rfile.readline()
        except (ValueError, OSError):
            pass
        if not complete:
            open(os.path.join(args.dir, image_id + ".broken"), "wb").write(bytes(data))
            self.close_connection = True
            return
        open(os.path.join(args.dir, image_id), "wb").write(bytes(data))
        md5 = hashlib.md5(bytes(data)).hexdigest()
        body = json.dumps({"image": {"id": image_id, "status": "active", "checksum": md5, "size": len(data)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def fail(self, code):
        body = b'{"error": "%d"}' % code
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


srv = S(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)


def idle():
    while time.time() - last[0] < 120:
        time.sleep(1)
    os._exit(0)


threading.Thread(target=idle, daemon=True).start()
srv.serve_forever()
