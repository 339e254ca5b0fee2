#!/usr/bin/env bash
# make demo: the native VHD tools on blktap's own sample chain, as an admin would use
# them. Needs GLANCE_VHD_BIN (the static binary) and SAMPLES (../shared/vhd-samples).
set -euo pipefail
BIN=${GLANCE_VHD_BIN:?set GLANCE_VHD_BIN}
SAMPLES=${SAMPLES:?set SAMPLES}
work=$(mktemp -d /tmp/glance-vhd-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; }

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

echo; echo "# ---- the round trip: an SR chain → image store → a fresh SR ----"
SR1=$work/sr-a/$(cat /proc/sys/kernel/random/uuid)
SR2=$work/sr-b/$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$SR1" "$SR2" "$work/lock"
L=$(cat /proc/sys/kernel/random/uuid); M=$(cat /proc/sys/kernel/random/uuid); B=$(cat /proc/sys/kernel/random/uuid)
cp grandchild.vhd "$SR1/$L.vhd"; cp child.vhd "$SR1/$M.vhd"; cp parent.vhd "$SR1/$B.vhd"
echo "# name the sample chain by VDI UUIDs in SR $SR1 and relink it natively"
step "$BIN" vhd set-parent "$SR1/$L.vhd" "$SR1/$M.vhd"
step "$BIN" vhd set-parent "$SR1/$M.vhd" "$SR1/$B.vhd"
step "$BIN" vhd check --parents "$SR1/$L.vhd"
if [[ -n ${GLANCE_ENDPOINT:-} ]]; then
    echo "# upload to the Glance at $GLANCE_ENDPOINT (a new image), then download it"
    step "$BIN" upload --endpoint "$GLANCE_ENDPOINT" --sr-path "$SR1" --leaf "$L" --create --name glance-vhd-demo --json > upload.json
    cat upload.json
    IMAGE=$(python3 -c 'import json,sys; print(json.load(open("upload.json"))["image_id"])')
    step "$BIN" download --endpoint "$GLANCE_ENDPOINT" --image-id "$IMAGE" --sr-path "$SR2" --lock-dir "$work/lock" --json | tee download.json
else
    echo "# upload to a local store (GLANCE_ENDPOINT=http://… uses a real Glance instead)"
    step "$BIN" upload --endpoint "file://$work/image.tgz" --sr-path "$SR1" --leaf "$L" --image-id local --json
    step tar -tvzf "$work/image.tgz"
    step "$BIN" download --endpoint "file://$work/image.tgz" --sr-path "$SR2" --lock-dir "$work/lock" --json | tee download.json
fi
NEW=$(python3 -c 'import json; print(json.load(open("download.json"))["root"]["uuid"])')
step ls -l "$SR2"
step "$BIN" vhd check --parents "$SR2/$NEW.vhd"
"$BIN" vhd read "$SR2/$NEW.vhd" round.raw
printf '%s  downloaded leaf content\n' "$(sha256sum < round.raw | cut -c1-64)"
grep 'tap-chain/grandchild.vhd' "$SAMPLES/SHA256SUMS.content" | sed 's/$/   <- expected/'
[[ $(sha256sum < round.raw | cut -c1-64) == $(grep 'tap-chain/grandchild.vhd' "$SAMPLES/SHA256SUMS.content" | cut -c1-64) ]] \
    && echo "round trip OK: the same disk came back" || { echo "round trip FAILED"; exit 1; }
