#!/usr/bin/env python3
"""Fill an empty differencing VHD (CHILD, just made by `glance-vhd vhd snapshot` on
BASE) with rewrites of every EVERY-th allocated block of BASE, the way tapdisk lays a
written block out (bitmap then 2 MiB of data on a 4 KiB boundary, BAT entry, batmap
bit for a full block, footer moved to the new end): a two-VHD chain whose leaf
overwrites parent blocks, for the chain-vs-flattened upload benchmark.

The new data of block b is BASE's data of the next allocated block (real file-system
bytes, as compressible as the rest), so the chain's content differs from BASE's.

Usage: make_chain.py BASE CHILD [EVERY]   (EVERY: default 4)
"""
import struct
import sys

BLOCK = 2 << 20
SECTOR = 512


def be32(b, at):
    return struct.unpack_from(">I", b, at)[0]


def be64(b, at):
    return struct.unpack_from(">Q", b, at)[0]


def layout(f):
    f.seek(-512, 2)
    footer = f.read(512)
    assert footer[:8] == b"conectix", "not a VHD"
    size = f.tell()
    header_at = be64(footer, 16)
    f.seek(header_at)
    header = f.read(1024)
    assert header[:8] == b"cxsparse", "not a dynamic VHD"
    table = be64(header, 16)
    max_bat = be32(header, 28)
    assert be32(header, 32) == BLOCK, "2 MiB blocks only"
    f.seek(table)
    bat = list(struct.unpack(f">{max_bat}I", f.read(4 * max_bat)))
    return footer, size, table, max_bat, bat, be64(footer, 48)


def main(base_path, child_path, every=4):
    with open(base_path, "rb") as base, open(child_path, "r+b") as child:
        _, _, _, _, base_bat, _ = layout(base)
        footer, size, table, max_bat, bat, curr_size = layout(child)
        assert all(e == 0xFFFFFFFF for e in bat), "the child must be empty"
        allocated = [b for b, e in enumerate(base_bat) if e != 0xFFFFFFFF]
        bat_bytes = (max_bat * 4 + 511) // 512 * 512
        bm_at = table + bat_bytes
        child.seek(bm_at)
        bm_header = bytearray(child.read(512))
        assert bm_header[:8] == b"tdbatmap", "no batmap (not made by vhd snapshot?)"
        map_at, map_secs = be64(bm_header, 8), be32(bm_header, 16)
        child.seek(map_at)
        batmap = bytearray(child.read(map_secs * SECTOR))
        end = size - 512
        rewritten = 0
        for i in range(0, len(allocated), every):
            b = allocated[i]
            src = allocated[(i + 1) % len(allocated)]
            base.seek(base_bat[src] * SECTOR + SECTOR)
            data = base.read(BLOCK)
            sec = end // SECTOR
            sec += (-(sec + 1)) % 8  # data (after the 1-sector bitmap) on 4 KiB
            child.seek(sec * SECTOR)
            child.write(b"\xff" * SECTOR + data)
            bat[b] = sec
            batmap[b // 8] |= 0x80 >> (b % 8)
            end = (sec + 1) * SECTOR + BLOCK
            rewritten += 1
        child.seek(table)
        child.write(struct.pack(f">{max_bat}I", *bat))
        n = SECTOR * max(1, -(-(curr_size >> 24) // SECTOR))
        struct.pack_into(">I", bm_header, 24, ~sum(batmap[:n]) & 0xFFFFFFFF)
        child.seek(bm_at)
        child.write(bm_header)
        child.seek(map_at)
        child.write(batmap)
        child.seek(end)
        child.write(footer)
        child.truncate(end + 512)
    print(f"{child_path}: {rewritten} of {len(allocated)} blocks of the base rewritten")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4)
