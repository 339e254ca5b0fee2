#!/usr/bin/env bash
# Upload benchmark: glance-vhd upload vs the old plugin's data path (tar -zc subprocess
# read in 8 KiB chunks, hand-framed chunked PUT), into the same loopback sink
# (bench/sink.py), same image (bench/make_image.sh), levels 6 and 1 (the peer with
# GZIP=-N). Reports wall time, throughput of VHD bytes, peak RSS (/usr/bin/time -v),
# page-cache growth (Cached in /proc/meminfo, caches dropped before each run) and the
# compressed size each produced. Then chain vs flattened (`upload --flatten`): the same
# image as the base of a two-VHD chain whose child rewrote every 4th allocated block
# (bench/make_chain.py), uploaded as the chain and flattened at level 6: VHD bytes in
# the tarball, bytes sent and time.
#
#   GLANCE_VHD_BIN=target/x86_64-unknown-linux-musl/release/glance-vhd bench/upload.sh
# Env: BENCH_RUNS (default 3), BENCH_LEVELS (default "6 1"), BENCH_DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/bench
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
RUNS=${BENCH_RUNS:-3}
LEVELS=${BENCH_LEVELS:-6 1}
BIN=${GLANCE_VHD_BIN:-$ROOT/target/x86_64-unknown-linux-musl/release/glance-vhd}
[[ -x $BIN ]] || { echo "no glance-vhd binary at $BIN" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time; }
export BENCH_DIR
"$HERE/make_image.sh" >&2
VHD=$BENCH_DIR/image/stage/0.vhd
VHD_BYTES=$(stat -c %s "$VHD")
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
trap 'kill $SINK 2>/dev/null || true; wait $SINK 2>/dev/null || true' EXIT
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
    local wall rss bytes
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tf")
    rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$tf")
    bytes=$(grep "\"id\": \"$id\"" "$STATS" | tail -1 | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["bytes"])')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$level" "$wall" "$rss" "$(( (c1 - c0) ))" "$bytes" >> "$RESULTS"
    printf '  %-12s L%s run %d: %7.2f s  peak RSS %6.1f MiB  page cache %+7.1f MiB  sent %s bytes\n' \
        "$label" "$level" "$run" "$wall" "$(echo "$rss/1024" | bc -l)" "$(echo "($c1-$c0)/1024" | bc -l)" "$bytes" >&2
}

echo "image: $VHD_BYTES bytes of VHD; sink $EP; $RUNS runs per tool and level" >&2
for level in $LEVELS; do
    for run in $(seq "$RUNS"); do
        timed peer "$level" "$run" "peer-$level-$run" -- python3 "$HERE/old_plugin_upload.py" "$EP/v2/images/peer-$level-$run/file" "$STAGE" "$level"
        timed glance-vhd "$level" "$run" "ours-$level-$run" -- "$BIN" upload --endpoint "$EP" --sr-path "$SR" \
            --vdi "$UUID" --image-id "ours-$level-$run" --compression-level "$level"
    done
done

python3 - "$RESULTS" "$VHD_BYTES" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
vhd = int(sys.argv[2])
print("| tool | level | median s | VHD MB/s | peak RSS MiB | page cache growth MiB | compressed bytes | vs peer |")
print("|---|---|---|---|---|---|---|---|")
med = {}
for tool in ("peer", "glance-vhd"):
    for level in sorted({r[1] for r in rows}, reverse=True):
        rs = [r for r in rows if r[0] == tool and r[1] == level]
        if not rs: continue
        t = statistics.median(float(r[2]) for r in rs)
        med[(tool, level)] = t
        rss = max(int(r[3]) for r in rs) / 1024
        cache = max(int(r[4]) for r in rs) / 1024
        size = int(rs[-1][5])
        ratio = med[("peer", level)] / t if ("peer", level) in med else 1.0
        print(f"| {tool} | {level} | {t:.2f} | {vhd / t / 1e6:.0f} | {rss:.1f} | {cache:.0f} | {size} | {ratio:.2f}x |")
PY

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
        --leaf "$CHILD_UUID" --image-id "chain-$run" --compression-level 6
    timed flattened 6 "$run" "flat-$run" -- "$BIN" upload -v --endpoint "$EP" --sr-path "$SR" \
        --leaf "$CHILD_UUID" --image-id "flat-$run" --compression-level 6 --flatten
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
