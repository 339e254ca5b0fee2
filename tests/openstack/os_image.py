#!/usr/bin/env python3
"""The tests' own view of the Keystone-protected test Glance (tests/openstack/openstack.sh):
signs in as the demo user with a real token and creates or reads image records. Standard
library only; trusts exactly $OS_TEST_CACERT (empty: plain HTTP), whatever else is set.

    os_image.py create NAME        a queued vhd/ovf image; prints its id
    os_image.py show ID            the image record (JSON)
    os_image.py token              a new token's expires_at (proof that sign-in works)

Environment: OS_TEST_AUTH_URL (…/v3), OS_TEST_GLANCE_URL, OS_TEST_USERNAME,
OS_TEST_PASSWORD, OS_TEST_PROJECT_NAME, OS_TEST_CACERT.
"""
import json
import os
import ssl
import sys
import urllib.error
import urllib.request

env = os.environ
ca = env.get("OS_TEST_CACERT", "")
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({}),
    urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca) if ca else None),
)


def request(method, url, token=None, body=None, ctype="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data)
    if data is not None:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with opener.open(req, timeout=60) as r:
            return r.headers, r.read()
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url}: HTTP {e.code}: {e.read()[:300]!r}")


def token():
    """A project-scoped token of the demo user (a fresh one: tests use short-lived tokens)."""
    h, b = request("POST", env["OS_TEST_AUTH_URL"] + "/auth/tokens", body={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": env["OS_TEST_USERNAME"], "domain": {"id": "default"},
            "password": env["OS_TEST_PASSWORD"]}}},
        "scope": {"project": {"name": env["OS_TEST_PROJECT_NAME"], "domain": {"id": "default"}}}}})
    return h["X-Subject-Token"], json.loads(b)["token"]["expires_at"]


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    images = env["OS_TEST_GLANCE_URL"].rstrip("/") + "/v2/images"
    tok, expires = token()
    if cmd == "create":
        _, b = request("POST", images, tok, {"name": args[0], "disk_format": "vhd",
                                             "container_format": "ovf"})
        print(json.loads(b)["id"])
    elif cmd == "show":
        _, b = request("GET", f"{images}/{args[0]}", tok)
        print(b.decode())
    elif cmd == "token":
        print(expires)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
