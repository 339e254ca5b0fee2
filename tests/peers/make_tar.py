#!/usr/bin/env python3
"""Build a (possibly hostile) gzipped tarball with Python's tarfile, for the download
tests. Usage: make_tar.py OUT SPEC_JSON, where SPEC is a list of members:
  {"name": "0.vhd", "file": "/path"}            regular file from disk
  {"name": "x", "data_hex": "00ff"}             regular file with these bytes
  {"name": "l", "symlink": "/etc/passwd"}       symlink
  {"name": "h", "hardlink": "0.vhd"}            hard link
  {"name": "d", "dir": true}                    directory
  {"name": "c", "chardev": true}                character device
  {"name": "f", "fifo": true}                   fifo
Options in the spec's wrapper: {"members": [...], "gzip": true|false, "trailing_hex": "...",
  "truncate_tar_at": N (cut the tar stream, then gzip it: a member longer than the stream),
  "truncate_gz_at": N (cut the gzip stream)}
"""
import io, json, sys, tarfile, gzip

out, spec = sys.argv[1], json.loads(sys.argv[2])
members = spec["members"]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
    for m in members:
        ti = tarfile.TarInfo(m["name"])
        ti.mtime = 1700000000
        ti.mode = 0o644
        data = None
        if "file" in m:
            data = open(m["file"], "rb").read()
        elif "data_hex" in m:
            data = bytes.fromhex(m["data_hex"])
        if "symlink" in m:
            ti.type, ti.linkname = tarfile.SYMTYPE, m["symlink"]
        elif "hardlink" in m:
            ti.type, ti.linkname = tarfile.LNKTYPE, m["hardlink"]
        elif m.get("dir"):
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        elif m.get("chardev"):
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
        elif m.get("fifo"):
            ti.type = tarfile.FIFOTYPE
        if data is not None:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        else:
            tf.addfile(ti)
raw = buf.getvalue()
if "truncate_tar_at" in spec:
    raw = raw[: spec["truncate_tar_at"]]
if spec.get("gzip", True):
    raw = gzip.compress(raw)
if "truncate_gz_at" in spec:
    raw = raw[: spec["truncate_gz_at"]]
raw += bytes.fromhex(spec.get("trailing_hex", ""))
open(out, "wb").write(raw)
