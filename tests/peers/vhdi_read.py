#!/usr/bin/env python3
"""Read a VHD chain with libvhdi (pyvhdi), an implementation independent of ours.

Usage: vhdi_read.py [--no-read] LEAF [PARENT [GRANDPARENT ...]]   (leaf first)

Opens every file with pyvhdi.file(), links each one to the next with set_parent
(libvhdi refuses a parent whose identifier differs from the child's parent
identifier), reads the whole media through the leaf in chunks and prints one JSON
object: {"sha256", "media_size", "layers": [{"path", "identifier",
"parent_identifier", "parent_filename", "disk_type", "media_size"}, ...]}.
With --no-read only the identifiers are printed (no set_parent, no read), for a
differencing file whose parent is absent. Exits non-zero with the libvhdi error on
stderr when anything fails.
"""
import hashlib
import json
import sys

import pyvhdi

CHUNK = 1 << 20


def layer(path, f):
    return {
        "path": path,
        "identifier": f.identifier,
        "parent_identifier": f.parent_identifier,
        "parent_filename": f.parent_filename,
        "disk_type": f.disk_type,
        "media_size": f.media_size,
    }


def main(paths, read=True):
    files = []
    for p in paths:
        f = pyvhdi.file()
        f.open(p)
        files.append(f)
    if not read:
        print(json.dumps({"layers": [layer(p, f) for p, f in zip(paths, files)]}))
        return
    # Link from the base upwards: a parent must be complete before its child uses it.
    for child, parent in reversed(list(zip(files, files[1:]))):
        child.set_parent(parent)
    leaf = files[0]
    size = leaf.media_size
    h = hashlib.sha256()
    off = 0
    while off < size:
        n = min(CHUNK, size - off)
        buf = leaf.read_buffer_at_offset(n, off)
        if len(buf) != n:
            raise SystemExit(f"short read at {off}: {len(buf)} of {n} bytes")
        h.update(buf)
        off += n
    layers = [layer(p, f) for p, f in zip(paths, files)]
    print(json.dumps({"sha256": h.hexdigest(), "media_size": size, "layers": layers}))
    for f in files:
        f.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    no_read = bool(args) and args[0] == "--no-read"
    if no_read:
        args = args[1:]
    if not args:
        raise SystemExit(__doc__)
    main(args, read=not no_read)
