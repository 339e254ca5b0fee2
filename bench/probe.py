#!/usr/bin/env python3
"""What a guest feels: 4 KiB O_DIRECT reads at random aligned offsets of FILE, one after
another, until SIGTERM/SIGINT or --seconds; then one JSON line on stdout with the
latency percentiles (microseconds) and the read count.

    probe.py FILE [--size-mib 256] [--seconds S]

FILE is created first (random bytes, fsynced) if it is missing or smaller than
--size-mib. O_DIRECT bypasses the page cache, so every read goes to the disk and waits
behind whatever else the disk and the CPUs are doing — like a guest's blkback request
served in dom0. The buffer is an anonymous mmap (page-aligned, as O_DIRECT needs).
"""
import argparse, json, mmap, os, random, signal, sys, time

BLOCK = 4096

ap = argparse.ArgumentParser()
ap.add_argument("file")
ap.add_argument("--size-mib", type=int, default=256)
ap.add_argument("--seconds", type=float, default=0.0)
args = ap.parse_args()

size = args.size_mib << 20
if not os.path.exists(args.file) or os.path.getsize(args.file) < size:
    with open(args.file, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.size_mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())

stop = [False]
def on_signal(*_):
    stop[0] = True
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

direct = True
try:
    fd = os.open(args.file, os.O_RDONLY | os.O_DIRECT)
except OSError:
    # A file system without O_DIRECT (tmpfs): the figures then measure the CPU only.
    fd, direct = os.open(args.file, os.O_RDONLY), False
buf = mmap.mmap(-1, BLOCK)
blocks = size // BLOCK
rng = random.Random(15)
lat = []
t_end = time.monotonic() + args.seconds if args.seconds > 0 else None
while not stop[0]:
    off = rng.randrange(blocks) * BLOCK
    t0 = time.perf_counter_ns()
    try:
        n = os.preadv(fd, [buf], off)
    except InterruptedError:
        continue
    lat.append((time.perf_counter_ns() - t0) / 1000.0)
    if n != BLOCK:
        print(f"short read at {off}: {n}", file=sys.stderr)
        sys.exit(1)
    if t_end is not None and time.monotonic() >= t_end:
        break
os.close(fd)

lat.sort()
def pct(p):
    return round(lat[min(len(lat) - 1, int(len(lat) * p / 100))], 1) if lat else None
print(json.dumps({"reads": len(lat), "o_direct": direct, "p50_us": pct(50), "p99_us": pct(99),
                  "p999_us": pct(99.9), "max_us": round(lat[-1], 1) if lat else None}))
