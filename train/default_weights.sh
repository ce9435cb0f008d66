#!/usr/bin/env bash
# How sgllie/weights/sgllie_default.pth was trained (see train/MODEL_CARD.md): the reference's
# method and training set on the 2-core CPU machine we had, so at 128x128 and for a few epochs.
# Usage: bash train/default_weights.sh SICE_PART1_FOLDER RUN_FOLDER
set -euo pipefail
data=${1:?SICE Part-1 folder}
run=${2:?output folder}
python -m sgllie.train --lowlight_images_path "$data" --snapshots_folder "$run" \
    --semantic_weight 0 --resize 128 --train_batch_size 8 --lr 1e-3 \
    --num_epochs "${EPOCHS:-12}" --num_workers 1 --snapshot_iter 50 --display_iter 50 --seed 0 --device cpu
