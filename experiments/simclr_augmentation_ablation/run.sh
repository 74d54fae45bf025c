#!/usr/bin/env bash
# SimCLR augmentation ablation at the CPU budget of experiments/simclr_cifar10/run_cpu.sh:
# the full recipe, without the random crop (a plain resize instead), without colour distortion
# (jitter and grayscale), and without both; each followed by the linear probe and k-NN.
# Run from the repository root: experiments/simclr_augmentation_ablation/run.sh [data folder]
set -euo pipefail
data="${1:-../shared/data/cifar10-sample}"
here="$(dirname "$0")"
RUN=runs/simclr_cifar_sample experiments/simclr_cifar10/run_cpu.sh "$data"
RUN=runs/ablation_no_crop experiments/simclr_cifar10/run_cpu.sh "$data" --config.simclr.crop=False
RUN=runs/ablation_no_color experiments/simclr_cifar10/run_cpu.sh "$data" --config.simclr.color=False
RUN=runs/ablation_no_crop_no_color experiments/simclr_cifar10/run_cpu.sh "$data" \
    --config.simclr.crop=False --config.simclr.color=False
python "$here/plot.py" runs "$here"
