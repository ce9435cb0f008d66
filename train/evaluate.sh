#!/usr/bin/env bash
# Score a checkpoint on the held-out real low-light photos (LIME, DICM, lowCUT: none in its training
# set) with sgllie.evaluate: brightness, exposure error and PIQE per image and overall.
# Usage: bash train/evaluate.sh WEIGHTS OUT_FOLDER [SHARED_DATA_FOLDER]
set -euo pipefail
weights=${1:?checkpoint}
out=${2:?output folder}
data=${3:-../shared/data}
for set in low-light/LIME low-light/DICM sgz-official/lowCUT; do
    name=$(basename "$set")
    python -m sgllie.enhance "$data/$set" -o "$out/$name" --weights "$weights" --overwrite -q
    python -m sgllie.evaluate --pred "$out/$name" -o "$out/$name.md" --csv "$out/$name.csv" > /dev/null
    echo "$name: $(grep -i '^| overall\|^| mean\|^| all' "$out/$name.md" | head -1)"
done
