#!/usr/bin/env bash
# Run one cargo-fuzz target for $FUZZ_SECONDS (default 60).
#
#   fuzz/run.sh vhd_open              # extra args go to libFuzzer
#   FUZZ_SECONDS=600 fuzz/run.sh vhd_relink -jobs=1
#
# Targets: vhd_open, vhd_relink (VHD read and write sides), tar_unpack (the image
# tarball's member policy), xmlrpc_call (the plugin's XML-RPC call and XenAPI's
# responses), pickle_params (the params pickle and the argument screening),
# upload_list (an upload's VDI list checked as a chain).
#
# An empty corpus is seeded first: fuzz/seeds/<target>/ (small synthetic files; see
# fuzz/seeds/make_seeds.py for the three plugin-side targets) plus, for the VHD targets,
# the unpacked samples from $GLANCE_VHD_SAMPLES (default ../../shared/vhd-samples from
# here; for vhd_relink, child+parent pairs in the target's input layout). Crashes land in
# fuzz/artifacts/<target>/; minimise with
#   cargo +nightly fuzz tmin <target> fuzz/artifacts/<target>/crash-…
# and keep it as tests/fixtures/fuzz/<target>-<short-name>.bin. Replay every such fixture
# (no fuzzing; fails if one still crashes) with
#   fuzz/run.sh replay
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
targets="vhd_open vhd_relink tar_unpack xmlrpc_call pickle_params upload_list"
target=${1:?usage: run.sh ${targets// /|} [libFuzzer args…] | run.sh replay}
shift
seconds=${FUZZ_SECONDS:-60}
rss=${FUZZ_RSS_MB:-2048}
samples=${GLANCE_VHD_SAMPLES:-$here/../../shared/vhd-samples}
export GLANCE_VHD_SAMPLES=$samples
corpus=$here/corpus/$target

# Per-target libFuzzer options, into the array topts. tar_unpack: no single allocation
# over 64 MiB (unpack needs a few MiB; the tar reader once held a whole GNU long name in
# memory). A dictionary of the format's tokens is used when fuzz/dicts/<target>.dict exists.
target_opts() {
    topts=()
    case $1 in
    tar_unpack) topts+=(-malloc_limit_mb=64) ;;
    esac
    [ ! -e "$here/dicts/$1.dict" ] || topts+=("-dict=$here/dicts/$1.dict")
}

if [ "$target" = replay ]; then
    cd "$here"
    for t in $targets; do
        fixtures=("$here/../tests/fixtures/fuzz/$t"-*.bin)
        [ -e "${fixtures[0]}" ] || continue
        echo "replaying ${#fixtures[@]} fixture(s) through $t"
        target_opts "$t"
        cargo +nightly fuzz run "$t" "${fixtures[@]}" -- -rss_limit_mb="$rss" -timeout=10 \
            "${topts[@]}"
    done
    exit 0
fi

# The largest input: VHDs need room for a BAT and some blocks; the plugin's inputs are
# small (xapi passes at most 128 KiB per argument).
case $target in
vhd_open | vhd_relink | upload_list) max_len=8388608 ;;
tar_unpack) max_len=1048576 ;;
xmlrpc_call | pickle_params) max_len=262144 ;;
*)
    echo "unknown target $target (${targets// /, })" >&2
    exit 2
    ;;
esac

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

# u32 little-endian, as raw bytes.
le32() {
    local n=$1
    printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $(((n >> 8) & 255)))"
    printf "\\x$(printf %02x $(((n >> 16) & 255)))\\x$(printf %02x $(((n >> 24) & 255)))"
}

mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
    echo "seeding $corpus"
    cp "$here/seeds/$target"/* "$corpus"/
    if [ "$target" != vhd_open ] && [ "$target" != vhd_relink ] && [ "$target" != upload_list ]; then
        : # seeds only
    elif [ -d "$samples" ]; then
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        for f in "$samples"/{tap-chain,qemu-parent,dfvfs}/*.vhd.gz; do
            [ -e "$f" ] && gunzip -c "$f" >"$tmp/$(basename "${f%.gz}")"
        done
        if [ "$target" = vhd_open ]; then
            cp "$tmp"/*.vhd "$corpus"/
        elif [ "$target" = upload_list ]; then
            # list-length byte, the list (indexes), then files: u32 length + bytes, the
            # last one without a length.
            list() { # out list-bytes files…
                local out=$1 l=$2
                shift 2
                { printf "$l"; while [ $# -gt 1 ]; do le32 "$(stat -c %s "$tmp/$1")"; cat "$tmp/$1"; shift; done; cat "$tmp/$1"; } >"$corpus/$out"
            }
            list chain-of-3.bin '\x02\x00\x01\x02' grandchild.vhd child.vhd parent.vhd
            list graft.bin '\x01\x00\x01' child.vhd parent2.vhd
            list reversed.bin '\x01\x01\x00' child.vhd parent.vhd
            list empty-child.bin '\x01\x00\x01' empty-child.vhd parent.vhd
            list qemu.bin '\x01\x00\x01' tap-child-of-qemu.vhd qemu-parent.vhd
        else
            pair() { # child parent flags(0..3: bit1 raw, bit0 hidden) out
                [ -e "$tmp/$1" ] && [ -e "$tmp/$2" ] || return 0
                local n
                n=$(($(stat -c %s "$tmp/$1") | (($3 & 2) << 30) | (($3 & 1) << 30)))
                { le32 "$n"; cat "$tmp/$1" "$tmp/$2"; } >"$corpus/$4"
            }
            pair empty-child.vhd parent2.vhd 1 sample-empty-child-onto-parent2.bin
            pair empty-child-relinked.vhd parent.vhd 0 sample-empty-child-relinked-onto-parent.bin
            pair tap-child-of-qemu.vhd empty-child.vhd 1 sample-tap-child-of-qemu-onto-empty-child.bin
            pair fat-differential.vhd empty-child.vhd 2 sample-fat-differential-onto-raw.bin
            pair grandchild.vhd empty-child.vhd 0 sample-grandchild-onto-empty-child.bin
        fi
    else
        echo "no samples at $samples: synthetic seeds only" >&2
    fi
fi

cd "$here"
target_opts "$target"
exec cargo +nightly fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss" -timeout=10 -max_len="$max_len" \
    -print_final_stats=1 "${topts[@]}" "$@"
