#!/usr/bin/env python3
"""The PEER of the download benchmark: the old XenServer glance plugin's data path.

    old_plugin_download.py URL SR_DIR [--uuid U] [--no-md5]

As the old plugin did (_download_tarball_and_verify + utils.extract_tarball):
  * one HTTP GET with http.client; the body is read in 8 KiB chunks (CHUNK_SIZE = 8192);
  * each chunk updates an MD5 (the old plugin's checksum callback) and is written into the
    stdin of a `tar -zx --directory=STAGING` subprocess; then tar is waited for;
  * the MD5 is compared with x-image-meta-checksum;
  * 0.vhd is renamed to <uuid>.vhd in the SR directory (one file: no relink needed).
Staging is a directory inside the SR (same filesystem). No fsync: the old plugin did none
(--fsync adds one before the rename, to compare durable imports).
Prints the VDI uuid.
"""
import argparse
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import uuid as uuidlib

CHUNK_SIZE = 8192


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("sr_path")
    ap.add_argument("--uuid", default=None)
    ap.add_argument("--no-md5", action="store_true")
    ap.add_argument("--fsync", action="store_true",
                    help="fsync the VHD before the rename (the old plugin did not; for comparison)")
    args = ap.parse_args()

    u = urllib.parse.urlsplit(args.url)
    staging = tempfile.mkdtemp(dir=args.sr_path, prefix=".old-plugin-staging-")
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
        conn.request("GET", u.path + ("?" + u.query if u.query else ""))
        resp = conn.getresponse()
        if resp.status != 200:
            sys.exit(f"HTTP {resp.status} {resp.reason}")
        expected = resp.getheader("x-image-meta-checksum")

        md5 = None if args.no_md5 else hashlib.md5()
        tar_cmd = ["tar", "-zx", "--directory=%s" % staging]
        tar = subprocess.Popen(tar_cmd, stdin=subprocess.PIPE, close_fds=True)
        nbytes = 0
        data = resp.read(CHUNK_SIZE)
        while data:
            nbytes += len(data)
            if md5 is not None:
                md5.update(data)
            tar.stdin.write(data)
            data = resp.read(CHUNK_SIZE)
        tar.stdin.close()
        rc = tar.wait()
        conn.close()
        if rc != 0:
            sys.exit(f"{' '.join(tar_cmd)} exited {rc}")
        if md5 is not None and expected and md5.hexdigest() != expected:
            sys.exit(f"checksum mismatch: got {md5.hexdigest()}, expected {expected}")

        vdi = args.uuid or str(uuidlib.uuid4())
        dest = os.path.join(args.sr_path, vdi + ".vhd")
        if os.path.exists(dest):
            sys.exit(f"{dest} exists")
        src = os.path.join(staging, "0.vhd")
        if args.fsync:
            fd = os.open(src, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        os.rename(src, dest)
        print(vdi)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
