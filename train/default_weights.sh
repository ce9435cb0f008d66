#!/usr/bin/env bash
# How sgllie/weights/sgllie_default.pth was trained (see sgllie/weights/MODEL_CARD.md): the method
# without its semantic term (no ImageNet ResNet-50 weights offline) on SICE Part-1 plus the real
# low-light phone captures of zdce-real, at 128x128, on a 2-core CPU with the fused CPU kernels.
# Usage: bash train/default_weights.sh SICE_PART1_FOLDER ZDCE_REAL_FOLDER RUN_FOLDER
set -euo pipefail
sice=${1:?SICE Part-1 folder}
zdce=${2:?zdce-real folder}
run=${3:?output folder}
python train/prepare_data.py "$run/data" "$sice" "$zdce" --size 128
python -m sgllie.train --lowlight_images_path "$run/data" --snapshots_folder "$run" \
    --semantic_weight 0 --resize 128 --train_batch_size 8 --lr 1e-3 \
    --num_epochs "${EPOCHS:-40}" --num_workers 1 --snapshot_iter 100000 --display_iter 50 --seed 0 --device cpu
# then 3 epochs at a tenth of the learning rate from the last checkpoint (lr 1e-3 never settles:
# consecutive epochs' checkpoints differ by up to 8% in held-out loss); its last is the default
python -m sgllie.train --lowlight_images_path "$run/data" --snapshots_folder "$run/lr1e-4" \
    --semantic_weight 0 --resize 128 --train_batch_size 8 --lr 1e-4 --num_epochs 3 --num_workers 1 \
    --snapshot_iter 100000 --display_iter 50 --seed 1 --device cpu \
    --load_pretrain true --pretrain_dir "$run/Epoch$(( ${EPOCHS:-40} - 1 )).pth"
