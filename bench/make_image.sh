#!/usr/bin/env bash
# Build (once, cached under target/bench/) the realistic benchmark image:
#   an ext4 filesystem filled with real files from this machine (>= 1 GiB of content),
#   converted to a dynamic VHD with qemu-img, packed the old plugin's way
#   (tar -zcf image.tgz --directory=STAGE .  -> GNU gzip level 6, member ./0.vhd).
# Idempotent: a complete cache (image.tgz + 0.vhd + its sha256) is reused as is.
# Env: BENCH_DIR (default <repo>/target/bench), BENCH_MIN_CONTENT_MIB (default 1152).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
MIN_MIB=${BENCH_MIN_CONTENT_MIB:-1152}
IMG=$BENCH_DIR/image
mkdir -p "$IMG"

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2"; }; }
need mke2fs e2fsprogs
need qemu-img qemu-utils

sizes() {
    echo "image: $IMG"
    printf '  content        %6d MiB (%s)\n' "$(( $(cat "$IMG/content.bytes") >> 20 ))" "$(cat "$IMG/content.dirs")"
    printf '  ext4 (raw)     %6d MiB\n' "$(( $(cat "$IMG/raw.bytes") >> 20 ))"
    printf '  0.vhd          %6d MiB (%d bytes)\n' "$(( $(stat -c %s "$IMG/stage/0.vhd") >> 20 ))" "$(stat -c %s "$IMG/stage/0.vhd")"
    printf '  image.tgz      %6d MiB (%d bytes)\n' "$(( $(stat -c %s "$IMG/image.tgz") >> 20 ))" "$(stat -c %s "$IMG/image.tgz")"
    echo "  0.vhd sha256   $(cat "$IMG/0.vhd.sha256")"
}

if [[ -s $IMG/image.tgz && -s $IMG/0.vhd.sha256 && -s $IMG/stage/0.vhd && -s $IMG/content.bytes ]]; then
    sizes
    exit 0
fi

rm -rf "$IMG"/{rootfs,stage,raw.img,image.tgz,0.vhd.sha256,*.tmp}
mkdir -p "$IMG/rootfs" "$IMG/stage"

# Real files: libraries, compilers, docs, man pages, locales, Python... copied until the
# tree holds at least MIN_MIB MiB (a mix of ELF binaries, text and already-compressed data).
CANDIDATES=(/usr/lib/x86_64-linux-gnu /usr/lib/llvm-14 /usr/lib/gcc /usr/share/doc /usr/share/man
            /usr/share/locale /usr/lib/python3.11 /usr/lib/python3 /usr/share/perl /usr/lib/jvm
            /usr/bin /usr/sbin /usr/share /usr/lib /usr/include /opt /etc)
used=()
total=0
for d in "${CANDIDATES[@]}"; do
    (( total >= MIN_MIB << 20 )) && break
    [[ -d $d ]] || continue
    dest=$IMG/rootfs${d}
    [[ -e $dest ]] && continue
    mkdir -p "$(dirname "$dest")"
    cp -a --no-preserve=ownership "$d" "$dest" 2>/dev/null || true
    used+=("$d")
    total=$(du -sb "$IMG/rootfs" | cut -f1)
done
(( total >= MIN_MIB << 20 )) || { echo "only $((total >> 20)) MiB of files found" >&2; exit 1; }
echo "$total" > "$IMG/content.bytes"
echo "${used[*]}" > "$IMG/content.dirs"

# Filesystem: content + 25 % + 256 MiB, rounded to MiB; populated by mke2fs -d (no mount).
fs_mib=$(( (total * 5 / 4 >> 20) + 256 ))
echo "mke2fs: ${fs_mib} MiB ext4 from $((total >> 20)) MiB of files"
truncate -s "${fs_mib}M" "$IMG/raw.img"
mke2fs -q -t ext4 -F -E root_owner=0:0 -d "$IMG/rootfs" "$IMG/raw.img"
stat -c %s "$IMG/raw.img" > "$IMG/raw.bytes"
rm -rf "$IMG/rootfs"

echo "qemu-img convert -> dynamic VHD"
qemu-img convert -f raw -O vpc -o subformat=dynamic "$IMG/raw.img" "$IMG/stage/0.vhd.tmp"
mv "$IMG/stage/0.vhd.tmp" "$IMG/stage/0.vhd"
rm -f "$IMG/raw.img"
sha256sum "$IMG/stage/0.vhd" | cut -d' ' -f1 > "$IMG/0.vhd.sha256.tmp"

echo "tar -zcf image.tgz --directory=stage .  (GNU gzip, level 6)"
GZIP= tar -zcf "$IMG/image.tgz.tmp" --directory="$IMG/stage" .
mv "$IMG/image.tgz.tmp" "$IMG/image.tgz"
mv "$IMG/0.vhd.sha256.tmp" "$IMG/0.vhd.sha256"
sizes
