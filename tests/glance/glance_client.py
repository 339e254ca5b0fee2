#!/usr/bin/env python3
"""Plain HTTP client for the test Glance (Image API v2), stdlib only.

Base URL from $GLANCE_URL (e.g. the output of `tests/glance/glance.sh start`).

    glance_client.py create NAME [--disk-format vhd] [--container-format ovf] [--prop K=V ...]
                                    prints the new image id
    glance_client.py upload ID FILE PUT /v2/images/ID/file (application/octet-stream)
    glance_client.py show ID        prints the image record (JSON)
    glance_client.py download ID OUT
                                    GET /v2/images/ID/file into OUT; prints the response
                                    status and headers as JSON on stderr
    glance_client.py delete ID

Exit status 1 on an HTTP error (status and body on stderr). Also importable:
`from glance_client import Glance`.
"""

import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.request

# Sent on every request, as Nova's plugin does; the noauth Glance ignores them.
EXTRA_HEADERS = {
    "X-Auth-Token": "test-token",
    "X-Roles": "admin",
    "X-Tenant-Id": "test-project",
    "X-User-Id": "test-user",
    "X-Identity-Status": "Confirmed",
}

# No proxy for the loopback Glance, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HttpError(Exception):
    def __init__(self, method, url, status, body):
        super().__init__(f"{method} {url}: HTTP {status}: {body[:500]!r}")
        self.status = status
        self.body = body


class Glance:
    def __init__(self, url=None, timeout=60):
        url = url or os.environ.get("GLANCE_URL")
        if not url:
            raise SystemExit("GLANCE_URL is not set (run: tests/glance/glance.sh start)")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, method, path, body=None, headers=None):
        """Returns the open response; the caller reads and closes it."""
        url = self.url + path
        req = urllib.request.Request(url, data=body, method=method)
        for k, v in {**EXTRA_HEADERS, **(headers or {})}.items():
            req.add_header(k, v)
        try:
            return _OPENER.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise HttpError(method, url, e.code, e.read()) from None

    def _json(self, method, path, doc, content_type):
        body = None if doc is None else json.dumps(doc).encode()
        hdrs = {"Content-Type": content_type} if body is not None else {}
        with self.request(method, path, body, hdrs) as r:
            data = r.read()
        return json.loads(data) if data else None

    def create(self, name, disk_format=None, container_format=None, **props):
        doc = {"name": name, **props}
        if disk_format:
            doc["disk_format"] = disk_format
        if container_format:
            doc["container_format"] = container_format
        return self._json("POST", "/v2/images", doc, "application/json")["id"]

    def patch(self, image_id, ops):
        """ops: JSON-patch list, e.g. [{"op": "replace", "path": "/disk_format", "value": "vhd"}]"""
        return self._json("PATCH", f"/v2/images/{image_id}", ops,
                          "application/openstack-images-v2.1-json-patch")

    def upload(self, image_id, path):
        """PUT the file with a Content-Length (not chunked); returns the HTTP status."""
        size = os.path.getsize(path)
        with open(path, "rb") as f, self.request(
                "PUT", f"/v2/images/{image_id}/file", f,
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)}) as r:
            r.read()
            return r.status

    def show(self, image_id):
        return self._json("GET", f"/v2/images/{image_id}", None, None)

    def download(self, image_id, out):
        """Writes the image data to out; returns (status, headers dict)."""
        with self.request("GET", f"/v2/images/{image_id}/file") as r, open(out, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
            return r.status, dict(r.headers.items())

    def delete(self, image_id):
        with self.request("DELETE", f"/v2/images/{image_id}") as r:
            r.read()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("name")
    c.add_argument("--disk-format")
    c.add_argument("--container-format")
    c.add_argument("--prop", action="append", default=[], metavar="KEY=VALUE")
    u = sub.add_parser("upload")
    u.add_argument("id")
    u.add_argument("file")
    s = sub.add_parser("show")
    s.add_argument("id")
    d = sub.add_parser("download")
    d.add_argument("id")
    d.add_argument("out")
    x = sub.add_parser("delete")
    x.add_argument("id")
    a = p.parse_args(argv)

    g = Glance()
    try:
        if a.cmd == "create":
            props = dict(kv.split("=", 1) for kv in a.prop)
            print(g.create(a.name, a.disk_format, a.container_format, **props))
        elif a.cmd == "upload":
            g.upload(a.id, a.file)
        elif a.cmd == "show":
            print(json.dumps(g.show(a.id), indent=2, sort_keys=True))
        elif a.cmd == "download":
            status, headers = g.download(a.id, a.out)
            print(json.dumps({"status": status, "headers": headers}), file=sys.stderr)
        elif a.cmd == "delete":
            g.delete(a.id)
    except HttpError as e:
        print(f"glance_client: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
