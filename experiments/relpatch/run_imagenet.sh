#!/usr/bin/env bash
# Revisiting-SSL's relative patch position recipe on ImageNet (configs/relpatch_imagenet.py:
# ResNet-50 at 2x width, 35 epochs of batch 128), then the linear probe on frozen
# patch-average features, as Revisiting evaluates it. For an accelerator host (or pod: run
# the same command on every host, see docs/scaling.md) with ImageNet prepared for TFDS in DATA_DIR.
set -euo pipefail
data_dir="${DATA_DIR:?set DATA_DIR to the folder holding the prepared imagenet2012 TFDS dataset}"
python -m selfsup pretrain --config=configs/relpatch_imagenet.py --workdir=runs/relpatch_imagenet \
    --config.data_dir="$data_dir"
python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/relpatch_imagenet_probe \
    --config.checkpoint=runs/relpatch_imagenet --config.features=patches
