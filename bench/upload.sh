#!/usr/bin/env bash
# Upload benchmark: glance-vhd upload vs the old plugin's data path (tar -zc subprocess
# read in 8 KiB chunks, hand-framed chunked PUT), into the same loopback sink
# (bench/sink.py), same image (bench/make_image.sh).
#
# 1. Levels: ours at each of BENCH_LEVELS (on BENCH_THREADS threads), ours with no
#    --compression-level/--threads (the CLI's defaults), the peer at BENCH_PEER_LEVELS
#    (GZIP=-N). Per row: wall time, VHD MB/s, CPU seconds (user+sys of the process and
#    its children, /usr/bin/time -v) and CPU-s per GB (10^9 bytes) of VHD, peak RSS,
#    page-cache growth (Cached in /proc/meminfo, caches dropped before each run when
#    root), the compressed size and that size against `gzip -6`'s (the cached
#    image.tgz: GNU tar + GNU gzip -6 of the same 0.vhd).
# 2. What a guest feels (BENCH_PROBE=1): bench/probe.py's 4 KiB O_DIRECT random reads of
#    a file beside the SR, idle for BENCH_PROBE_IDLE seconds, then during an upload with
#    the default flags and with --nice: p50/p99/p99.9 read latency beside the idle one.
# 3. Chain vs flattened (BENCH_FLATTEN=1): the same image as the base of a two-VHD chain
#    whose child rewrote every 4th allocated block (bench/make_chain.py), uploaded as the
#    chain and flattened at level 6: VHD bytes in the tarball, bytes sent and time.
#
#   GLANCE_VHD_BIN=target/x86_64-unknown-linux-musl/release/glance-vhd bench/upload.sh
# Env: BENCH_RUNS (default 3), BENCH_LEVELS (default "1 3 6 9"), BENCH_THREADS (default:
#      all cores), BENCH_PEER_LEVELS (default "6"), BENCH_PROBE (1), BENCH_PROBE_IDLE (15),
#      BENCH_FLATTEN (1), BENCH_DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/bench
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
RUNS=${BENCH_RUNS:-3}
LEVELS=${BENCH_LEVELS:-1 3 6 9}
THREADS=${BENCH_THREADS:-$(nproc)}
PEER_LEVELS=${BENCH_PEER_LEVELS:-6}
PROBE=${BENCH_PROBE:-1}
PROBE_IDLE=${BENCH_PROBE_IDLE:-15}
FLATTEN=${BENCH_FLATTEN:-1}
BIN=${GLANCE_VHD_BIN:-$ROOT/target/x86_64-unknown-linux-musl/release/glance-vhd}
[[ -x $BIN ]] || { echo "no glance-vhd binary at $BIN" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time; }
export BENCH_DIR
"$HERE/make_image.sh" >&2
VHD=$BENCH_DIR/image/stage/0.vhd
VHD_BYTES=$(stat -c %s "$VHD")
# GNU gzip -6 of the tar of the same 0.vhd, as the old plugin made it: the size reference.
GZIP6_BYTES=$(stat -c %s "$BENCH_DIR/image/image.tgz")
WORK=$BENCH_DIR/upload
rm -rf "$WORK"; mkdir -p "$WORK/log"
UUID=0badcafe-0000-4000-8000-000000000001
SR=$WORK/5e5e5e5e-0000-4000-8000-000000000001
STAGE=$WORK/peer-staging
mkdir -p "$SR" "$STAGE"
ln "$VHD" "$SR/$UUID.vhd"
ln "$VHD" "$STAGE/0.vhd"
STATS=$WORK/sink.jsonl
python3 "$HERE/sink.py" "$STATS" > "$WORK/sink.out" 2> "$WORK/sink.err" &
SINK=$!
PROBE_PID=
trap 'kill $SINK $PROBE_PID 2>/dev/null || true; wait $SINK 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q '^PORT ' "$WORK/sink.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(awk '/^PORT /{print $2}' "$WORK/sink.out")
EP=http://127.0.0.1:$PORT
RESULTS=$WORK/results.tsv
: > "$RESULTS"

cached() { awk '/^Cached:/{print $2}' /proc/meminfo; }
drop_caches() { sync; [[ $(id -u) == 0 ]] && echo 3 > /proc/sys/vm/drop_caches || true; }

timed() { # LABEL LEVEL RUN ID -- CMD...
    local label=$1 level=$2 run=$3 id=$4; shift 5
    local tf=$WORK/log/$label.$level.$run.time
    drop_caches
    local c0; c0=$(cached)
    /usr/bin/time -v -o "$tf" "$@" > "$WORK/log/$label.$level.$run.out" 2> "$WORK/log/$label.$level.$run.err" || {
        echo "$label L$level run $run failed" >&2; cat "$WORK/log/$label.$level.$run.err" >&2; exit 1; }
    local c1; c1=$(cached)
    local wall rss bytes cpu
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tf")
    rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$tf")
    cpu=$(awk -F': ' '/User time|System time/{s+=$2} END{print s}' "$tf")
    bytes=$(grep "\"id\": \"$id\"" "$STATS" | tail -1 | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["bytes"])')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$level" "$wall" "$rss" "$(( (c1 - c0) ))" "$bytes" "$cpu" >> "$RESULTS"
    printf '  %-12s L%s run %d: %7.2f s  CPU %6.2f s  peak RSS %6.1f MiB  page cache %+7.1f MiB  sent %s bytes  (load %s)\n' \
        "$label" "$level" "$run" "$wall" "$cpu" "$(echo "$rss/1024" | bc -l)" "$(echo "($c1-$c0)/1024" | bc -l)" "$bytes" \
        "$(cut -d' ' -f1 /proc/loadavg)" >&2
}

# ours LEVEL-LABEL RUN -- FLAGS...: one upload of the image by glance-vhd.
ours() {
    local level=$1 run=$2; shift 3
    timed glance-vhd "$level" "$run" "ours-$level-$run" -- "$BIN" upload --endpoint "$EP" --sr-path "$SR" \
        --vdi "$UUID" --image-id "ours-$level-$run" --json "$@"
}

echo "image: $VHD_BYTES bytes of VHD (gzip -6: $GZIP6_BYTES bytes); sink $EP; $RUNS runs per row;" \
     "levels $LEVELS on $THREADS threads; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for run in $(seq "$RUNS"); do
    for level in $PEER_LEVELS; do
        timed peer "$level" "$run" "peer-$level-$run" -- python3 "$HERE/old_plugin_upload.py" "$EP/v2/images/peer-$level-$run/file" "$STAGE" "$level"
    done
    for level in $LEVELS; do
        ours "$level" "$run" -- --compression-level "$level" --threads "$THREADS"
    done
    ours default "$run" --
done
# What the defaults are (`compression` in --json; a binary without it: level 6, all cores).
DEFAULTS=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])).get("compression") or {"level": "6 (old)", "threads": sys.argv[2]}; print("%s|%s" % (c["level"], c["threads"]))' \
    "$WORK/log/glance-vhd.default.1.out" "$(nproc)")

python3 - "$RESULTS" "$VHD_BYTES" "$GZIP6_BYTES" "$DEFAULTS" "$THREADS" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
vhd, gz6, defaults, threads = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
print()
print(f"VHD {vhd} bytes; gzip -6 {gz6} bytes; CPU = user+sys of the process and its children (median); "
      "CPU-s/GB = per 10^9 bytes of VHD; size = compressed bytes vs gzip -6's")
print("| tool | level | threads | median s | VHD MB/s | CPU s | CPU-s/GB | peak RSS MiB | page cache growth MiB | compressed bytes | vs gzip -6 | VHD/compressed |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
def key(level):
    return (level == "default", int(level) if level.isdigit() else 0)
for tool in ("peer", "glance-vhd"):
    for level in sorted({r[1] for r in rows if r[0] == tool}, key=key):
        rs = [r for r in rows if r[0] == tool and r[1] == level]
        t = statistics.median(float(r[2]) for r in rs)
        cpu = statistics.median(float(r[6]) for r in rs)
        rss = max(int(r[3]) for r in rs) / 1024
        cache = max(int(r[4]) for r in rs) / 1024
        size = int(rs[-1][5])
        lv, th = [d + " (default)" for d in defaults.split("|")] \
            if level == "default" else (level, "1 (gzip)" if tool == "peer" else threads)
        print(f"| {tool} | {lv} | {th} | {t:.2f} | {vhd / t / 1e6:.0f} | {cpu:.2f} | {cpu / (vhd / 1e9):.2f} | {rss:.1f} "
              f"| {cache:.0f} | {size} | {100 * (size / gz6 - 1):+.1f} % | {vhd / size:.2f}x |")
PY

if [[ $PROBE == 1 ]]; then
    PROBE_FILE=$WORK/probe.dat
    PROBE_RESULTS=$WORK/probe.tsv
    : > "$PROBE_RESULTS"
    python3 "$HERE/probe.py" "$PROBE_FILE" --seconds 0.1 > /dev/null   # create it (256 MiB)
    drop_caches
    echo "probe: idle for $PROBE_IDLE s" >&2
    printf 'idle\t%s\n' "$(python3 "$HERE/probe.py" "$PROBE_FILE" --seconds "$PROBE_IDLE")" >> "$PROBE_RESULTS"
    for run in $(seq "$RUNS"); do
        for mode in default nice; do
            flags=(); [[ $mode == nice ]] && flags=(--nice)
            python3 "$HERE/probe.py" "$PROBE_FILE" > "$WORK/probe.$mode.$run.json" &
            PROBE_PID=$!
            ours "probe-$mode" "$run" -- "${flags[@]}"
            kill -TERM "$PROBE_PID"; wait "$PROBE_PID" || true; PROBE_PID=
            printf '%s\t%s\n' "$mode" "$(cat "$WORK/probe.$mode.$run.json")" >> "$PROBE_RESULTS"
        done
    done
    python3 - "$PROBE_RESULTS" "$RESULTS" "$DEFAULTS" <<'PY'
import json, statistics, sys
probes = [l.split("\t", 1) for l in open(sys.argv[1]).read().splitlines()]
up = [l.split("\t") for l in open(sys.argv[2]).read().splitlines() if l.startswith("glance-vhd\tprobe-")]
print()
print(f"What a guest feels: 4 KiB O_DIRECT random reads of a file beside the SR (bench/probe.py), "
      "idle and during an upload with the default flags (level %s, %s threads); medians over runs" % tuple(sys.argv[3].split("|")))
print("| during | reads | p50 µs | p99 µs | p99.9 µs | max µs | upload s | upload CPU s |")
print("|---|---|---|---|---|---|---|---|")
for mode, label in (("idle", "idle"), ("default", "upload, default flags"), ("nice", "upload --nice")):
    ps = [json.loads(j) for m, j in probes if m == mode]
    if not ps:
        continue
    med = lambda k: statistics.median(p[k] for p in ps)
    us = [u for u in up if u[1] == f"probe-{mode}"]
    wall = f"{statistics.median(float(u[2]) for u in us):.2f}" if us else "-"
    cpu = f"{statistics.median(float(u[6]) for u in us):.2f}" if us else "-"
    direct = "" if all(p["o_direct"] for p in ps) else " (no O_DIRECT)"
    print(f"| {label}{direct} | {med('reads'):.0f} | {med('p50_us'):.0f} | {med('p99_us'):.0f} | {med('p999_us'):.0f} "
          f"| {med('max_us'):.0f} | {wall} | {cpu} |")
PY
fi

[[ $FLATTEN == 1 ]] || exit 0

# Chain vs flattened. The child is made in the SR by our `vhd snapshot` (relative
# locator ./BASE.vhd) and filled by make_chain.py.
BASE_UUID=0badcafe-0000-4000-8000-000000000002
CHILD_UUID=0badcafe-0000-4000-8000-000000000003
ln "$VHD" "$SR/$BASE_UUID.vhd"
(cd "$SR" && "$BIN" vhd snapshot "$BASE_UUID.vhd" "$CHILD_UUID.vhd" >/dev/null)
python3 "$HERE/make_chain.py" "$SR/$BASE_UUID.vhd" "$SR/$CHILD_UUID.vhd" 4 >&2
"$BIN" vhd check --parents "$SR/$CHILD_UUID.vhd" >&2
CHAIN_VHD_BYTES=$(( $(stat -c %s "$SR/$BASE_UUID.vhd") + $(stat -c %s "$SR/$CHILD_UUID.vhd") ))
FLAT_RESULTS=$WORK/flat-results.tsv
RESULTS=$FLAT_RESULTS
: > "$RESULTS"
echo "chain vs flattened: $CHAIN_VHD_BYTES bytes of VHD in the chain; $RUNS runs each, level 6" >&2
for run in $(seq "$RUNS"); do
    timed chain 6 "$run" "chain-$run" -- "$BIN" upload -v --endpoint "$EP" --sr-path "$SR" \
        --leaf "$CHILD_UUID" --image-id "chain-$run" --compression-level 6 --threads "$THREADS"
    timed flattened 6 "$run" "flat-$run" -- "$BIN" upload -v --endpoint "$EP" --sr-path "$SR" \
        --leaf "$CHILD_UUID" --image-id "flat-$run" --compression-level 6 --threads "$THREADS" --flatten
done
FLAT_VHD_BYTES=$(grep -ho 'into one of [0-9]* bytes' "$WORK"/log/flattened.6.1.err | head -1 | awk '{print $4}')

python3 - "$FLAT_RESULTS" "$CHAIN_VHD_BYTES" "$FLAT_VHD_BYTES" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
vhd = {"chain": int(sys.argv[2]), "flattened": int(sys.argv[3])}
print()
print("| upload (L6) | VHD bytes in the tarball | bytes sent | median s | peak RSS MiB |")
print("|---|---|---|---|---|")
for label in ("chain", "flattened"):
    rs = [r for r in rows if r[0] == label]
    t = statistics.median(float(r[2]) for r in rs)
    rss = max(int(r[3]) for r in rs) / 1024
    print(f"| {label} | {vhd[label]} | {int(rs[-1][5])} | {t:.2f} | {rss:.1f} |")
PY
