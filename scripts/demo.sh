#!/usr/bin/env bash
# make demo: the native VHD tools on blktap's own sample chain, as an admin would use
# them. Needs GLANCE_VHD_BIN (the static binary) and SAMPLES (../shared/vhd-samples).
set -euo pipefail
BIN=${GLANCE_VHD_BIN:?set GLANCE_VHD_BIN}
SAMPLES=${SAMPLES:?set SAMPLES}
work=$(mktemp -d /tmp/glance-vhd-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

for f in "$SAMPLES"/tap-chain/*.vhd.gz; do gunzip -c "$f" > "$(basename "${f%.gz}")"; done
touch -d '2024-01-01 00:00:30 UTC' parent.vhd
touch -d '2024-01-02 03:04:05 UTC' parent2.vhd
echo "blktap-made sample chain unpacked in $work"

step "$BIN" vhd info grandchild.vhd
step "$BIN" vhd query -vsafp -n child.vhd
step "$BIN" vhd query -n grandchild.vhd -d -p -u
step "$BIN" vhd check --parents grandchild.vhd

echo; echo "# relink a copy of child.vhd onto parent2.vhd: byte-identical to vhd-util modify -p"
cp child.vhd mine.vhd
step "$BIN" vhd set-parent mine.vhd parent2.vhd
step cmp mine.vhd child-relinked.vhd && echo "identical to blktap's child-relinked.vhd"

echo; echo "# hide it: byte-identical to vhd-util set -f hidden -v 1"
cp child.vhd hidden.vhd
step "$BIN" vhd set-hidden hidden.vhd 1
step cmp hidden.vhd child-hidden.vhd && echo "identical to blktap's child-hidden.vhd"

echo; echo "# a new snapshot on top of grandchild.vhd, and the whole disk read through the chain"
step "$BIN" vhd snapshot grandchild.vhd leaf.vhd
step "$BIN" vhd check --parents leaf.vhd
"$BIN" vhd read leaf.vhd leaf.raw
printf '%s  leaf.vhd content (read through 4 files)\n' "$(sha256sum < leaf.raw | cut -c1-64)"
grep 'tap-chain/grandchild.vhd' "$SAMPLES/SHA256SUMS.content" | sed 's/$/   <- expected (blktap, libvhdi)/'
