#!/usr/bin/env python3
"""Where to cut an image stream: prints a JSON list of [label, offset] for a gzipped
tarball of VHDs, each offset a byte of the *compressed* file that lies inside the named
structure (the gzip header, a tar header, a VHD's footer copy, dynamic header, BAT, data,
footer, the tar end marker, the gzip trailer), found by inflating one byte at a time and
watching where each uncompressed offset comes out. Then evenly spaced offsets up to
--count in all."""
import argparse, json, zlib

ap = argparse.ArgumentParser()
ap.add_argument("tgz")
ap.add_argument("--count", type=int, default=24)
args = ap.parse_args()
z = open(args.tgz, "rb").read()

# produced[i]: uncompressed bytes out after feeding compressed bytes 0..i
d = zlib.decompressobj(31)
out = bytearray()
produced = []
for i in range(len(z)):
    out += d.decompress(z[i:i + 1])
    produced.append(len(out))


def at(u):
    """The compressed byte whose inflation produces uncompressed byte u."""
    for i, n in enumerate(produced):
        if n > u:
            return i
    return len(z) - 1


# Walk the tar headers of the uncompressed stream.
marks = [("gzip header", 2), ("gzip header", 5), ("gzip header", 9)]
pos = 0
while pos + 512 <= len(out):
    h = bytes(out[pos:pos + 512])
    if h == b"\0" * 512:
        marks.append(("tar end marker", at(pos + 100)))
        break
    name = h[:100].split(b"\0")[0].decode(errors="replace")
    size = int(h[124:136].split(b"\0")[0].strip() or b"0", 8)
    marks.append(("tar header of %s" % name, at(pos + 100)))
    data = pos + 512
    if size >= 2048:
        member = name.lstrip("./")
        marks.append(("%s footer copy" % member, at(data + 200)))
        marks.append(("%s dynamic header" % member, at(data + 512 + 300)))
        marks.append(("%s BAT" % member, at(data + 1536 + 8)))
        marks.append(("%s data" % member, at(data + size // 2)))
        marks.append(("%s footer" % member, at(data + size - 300)))
    pos = data + (size + 511) // 512 * 512
marks += [("gzip trailer (CRC)", len(z) - 6), ("gzip trailer (size)", len(z) - 2),
          ("last byte", len(z) - 1)]
seen, result = set(), []
for label, off in marks:
    if 0 < off < len(z) and off not in seen:
        seen.add(off)
        result.append([label, off])
k = 1
while len(result) < args.count and k < 64:
    off = len(z) * k // 17
    if 0 < off < len(z) and off not in seen:
        seen.add(off)
        result.append(["at %d/17 of the stream" % k, off])
    k += 1
print(json.dumps(sorted(result, key=lambda r: r[1])))
