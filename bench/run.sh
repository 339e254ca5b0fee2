#!/usr/bin/env bash
# Download benchmark: glance-vhd download vs the old plugin's data path, one run.
#
#   GLANCE_VHD_BIN=target/x86_64-unknown-linux-musl/release/glance-vhd bench/run.sh
#
# Env: BENCH_RUNS (default 3) runs per tool, alternating, each on a fresh SR directory;
#      the page cache is dropped before every timed run when root.
#      BENCH_EXTRA="v2 file peer-fsync" also times the Glance v2 form (its record declares
#      os_hash_algo sha512, so SHA-512 is hashed besides MD5), the local file:// store,
#      and the peer with an fsync before its rename (ours fsyncs; the old plugin did not).
#      BENCH_DIR (default <repo>/target/bench).
# Wall time and peak RSS come from /usr/bin/time -v. Every result is checked: the SR holds
# exactly one <uuid>.vhd whose sha256 is the original 0.vhd's, and nothing else.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/bench
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
RUNS=${BENCH_RUNS:-3}
EXTRA=${BENCH_EXTRA:-}
BIN=${GLANCE_VHD_BIN:-$ROOT/target/x86_64-unknown-linux-musl/release/glance-vhd}
[[ -x $BIN ]] || { echo "no glance-vhd binary at $BIN (make build, or set GLANCE_VHD_BIN)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time; }
export BENCH_DIR

"$HERE/make_image.sh"
IMG=$BENCH_DIR/image
TGZ=$IMG/image.tgz
WANT=$(cat "$IMG/0.vhd.sha256")
TGZ_BYTES=$(stat -c %s "$TGZ")
VHD_BYTES=$(stat -c %s "$IMG/stage/0.vhd")
WORK=$BENCH_DIR/work
rm -rf "$WORK"; mkdir -p "$WORK/sr" "$WORK/lock" "$WORK/log"
RESULTS=$WORK/results.tsv
: > "$RESULTS"

# The loopback store.
python3 "$HERE/serve.py" "$TGZ" --image-id bench --idle 300 > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1200); do grep -q "^PORT " "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done  # it hashes the image first
PORT=$(awk '/^PORT /{print $2}' "$WORK/serve.out")
[[ -n $PORT ]] || { echo "server did not start" >&2; cat "$WORK/serve.err" >&2; exit 1; }
EP=http://127.0.0.1:$PORT

drop_caches() {
    sync
    if [[ $(id -u) == 0 ]]; then echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; fi
}

# timed LABEL RUN -- CMD... : time CMD with /usr/bin/time -v; append wall/rss to RESULTS.
timed() {
    local label=$1 run=$2; shift 3
    local tf=$WORK/log/$label.$run.time out=$WORK/log/$label.$run.out
    /usr/bin/time -v -o "$tf" "$@" > "$out" 2> "$WORK/log/$label.$run.err" || {
        echo "$label run $run failed:" >&2; cat "$WORK/log/$label.$run.err" "$tf" >&2; exit 1; }
    local wall rss cpu
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tf")
    rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$tf")
    cpu=$(awk -F': ' '/User time|System time/{s+=$2} END{print s}' "$tf")
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$run" "$wall" "$rss" "$cpu" >> "$RESULTS"
    printf '  %-22s run %d: %7.2f s  CPU %6.2f s  peak RSS %6.1f MiB  (load %s)\n' "$label" "$run" "$wall" "$cpu" \
        "$(awk "BEGIN{print $rss/1024}")" "$(cut -d' ' -f1 /proc/loadavg)"
}

# verify SR: exactly one <uuid>.vhd with the original content, nothing else left behind.
verify() {
    local sr=$1 label=$2
    mapfile -t left < <(ls -A "$sr")
    if [[ ${#left[@]} -ne 1 || ! ${left[0]} =~ ^[0-9a-f-]{36}\.vhd$ ]]; then
        echo "$label: unexpected SR content: ${left[*]}" >&2; exit 1
    fi
    local got; got=$(sha256sum "$sr/${left[0]}" | cut -d' ' -f1)
    [[ $got == "$WANT" ]] || { echo "$label: sha256 mismatch ($got != $WANT)" >&2; exit 1; }
}

fresh_sr() { local d=$WORK/sr/$(cat /proc/sys/kernel/random/uuid); mkdir -p "$d"; echo "$d"; }

run_tool() {   # run_tool LABEL RUN
    local label=$1 run=$2 sr; sr=$(fresh_sr)
    drop_caches
    case $label in
        peer)        timed "$label" "$run" -- python3 "$HERE/old_plugin_download.py" "$EP/v1/images/bench" "$sr" ;;
        peer-fsync)  timed "$label" "$run" -- python3 "$HERE/old_plugin_download.py" --fsync "$EP/v1/images/bench" "$sr" ;;
        glance-vhd)  timed "$label" "$run" -- "$BIN" download --endpoint "$EP" --api-version 1 --image-id bench \
                         --sr-path "$sr" --lock-dir "$WORK/lock" --json ;;
        glance-vhd-v2)   timed "$label" "$run" -- "$BIN" download --endpoint "$EP" --api-version 2 --image-id bench \
                         --sr-path "$sr" --lock-dir "$WORK/lock" --json ;;
        glance-vhd-file) timed "$label" "$run" -- "$BIN" download --endpoint "file://$TGZ" \
                         --sr-path "$sr" --lock-dir "$WORK/lock" --json ;;
    esac
    verify "$sr" "$label"
    rm -rf "$sr"
    sync
}

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "binary:  $BIN (built $(date -r "$BIN" "+%F %T"); repo HEAD $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo "?"))"
echo "store:   $EP/v1/images/bench ($TGZ_BYTES bytes gzip, $VHD_BYTES bytes VHD)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) — other work on the machine skews wall times; CPU seconds are reported too"
echo "runs:    $RUNS per tool, fresh SR each, page cache dropped: $([[ $(id -u) == 0 ]] && echo yes || echo 'no (not root)')"
echo

TOOLS=(peer glance-vhd)
for e in $EXTRA; do case $e in peer-fsync) TOOLS+=(peer-fsync) ;; *) TOOLS+=("glance-vhd-$e") ;; esac; done
for run in $(seq "$RUNS"); do
    for t in "${TOOLS[@]}"; do run_tool "$t" "$run"; done
done

# Machine bounds (input in page cache: these measure CPU / loopback / disk alone).
echo
echo "machine bounds:"
cat "$TGZ" > /dev/null
for run in $(seq "$RUNS"); do timed bound-gzip-dc "$run" -- sh -c "gzip -dc '$TGZ' > /dev/null"; done
for run in $(seq "$RUNS"); do timed bound-loopback "$run" -- curl -sf -o /dev/null "$EP/v1/images/bench"; done
cat "$IMG/stage/0.vhd" > /dev/null
for run in $(seq "$RUNS"); do
    sr=$(fresh_sr)
    timed bound-write-fsync "$run" -- dd if="$IMG/stage/0.vhd" of="$sr/x.vhd" bs=1M conv=fsync status=none
    rm -rf "$sr"; sync
done

echo
python3 - "$RESULTS" "$TGZ_BYTES" "$VHD_BYTES" <<'PY' | tee "$WORK/report.txt"
import statistics, sys
path, tgz, vhd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for line in open(path):
    label, run, wall, rss, cpu = line.split("\t")
    rows.setdefault(label, []).append((float(wall), int(rss), float(cpu)))
def med(label):
    w = [r[0] for r in rows[label]]
    return statistics.median(w), max(r[1] for r in rows[label]) / 1024, min(w), max(w)
def cpu(label):
    return statistics.median(r[2] for r in rows[label])
print("MB = 10^6 bytes; throughput = bytes / median wall time; peak RSS = max over runs;")
print("CPU s = user+sys of the process and its children (median); CPU-s/GB = per 10^9 bytes of VHD written")
print(f"{'tool':<20} {'median s':>9} {'(min-max)':>13} {'gz MB/s':>8} {'VHD MB/s':>9} {'peak RSS MiB':>13} {'CPU s':>6} {'CPU-s/GB':>9} {'vs peer':>8}")
peer = med("peer")[0]
for label in rows:
    if label.startswith("bound-"):
        continue
    m, rss, lo, hi = med(label)
    print(f"{label:<20} {m:9.2f} {f'({lo:.2f}-{hi:.2f})':>13} {tgz/m/1e6:8.1f} {vhd/m/1e6:9.1f} {rss:13.1f} {cpu(label):6.2f} {cpu(label)/(vhd/1e9):9.2f} {peer/m:7.2f}x")
print()
print("machine bounds (input cached):")
names = {"bound-gzip-dc": "gzip -dc image.tgz > /dev/null (single-thread inflate)",
         "bound-loopback": "curl the tarball over loopback > /dev/null",
         "bound-write-fsync": "dd 0.vhd -> SR file, conv=fsync (disk write)"}
for label, desc in names.items():
    if label in rows:
        m = med(label)[0]
        print(f"  {desc:<55} {m:6.2f} s  {tgz/m/1e6:7.1f} MB/s gz  {vhd/m/1e6:7.1f} MB/s VHD")
if "glance-vhd" in rows:
    # Runs alternate peer/ours, so each pair saw about the same machine load: the ratio
    # of each pair is the figure least skewed by other work on the machine.
    pairs = [p[0] / o[0] for p, o in zip(rows["peer"], rows["glance-vhd"])]
    print()
    print("per-run ratio (peer wall / ours wall, same run): " + ", ".join(f"{r:.2f}x" for r in pairs)
          + f"; median {statistics.median(pairs):.2f}x")
    m, rss = med("glance-vhd")[:2]
    ratio = peer / m
    print()
    print(f"target: >= 2.30x peer throughput, peak RSS <= 48 MiB  ->  {ratio:.2f}x, {rss:.1f} MiB: "
          + ("MET" if ratio >= 2.3 and rss <= 48 else "MISSED"))
PY
echo "(raw: $RESULTS, logs: $WORK/log/)"
