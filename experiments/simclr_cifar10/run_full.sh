#!/usr/bin/env bash
# google-research/simclr's published CIFAR-10 recipe (configs/simclr_cifar10.py: ResNet-18,
# batch 512, 1000 epochs, LARS), then the linear probe on frozen features. For an accelerator
# host with CIFAR-10 prepared for TFDS (it downloads itself where the network allows; else
# prepare it elsewhere and set DATA_DIR to the folder holding it).
set -euo pipefail
python -m selfsup pretrain --config=configs/simclr_cifar10.py --workdir=runs/simclr_cifar10 \
    --config.data_dir="${DATA_DIR:-}"
python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/simclr_cifar10_probe \
    --config.checkpoint=runs/simclr_cifar10
