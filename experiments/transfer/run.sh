#!/usr/bin/env bash
# Transfer study on the CIFAR-10 sample: frozen features (linear probe, k-NN) vs fine-tuning
# with the bottom 0, 2 or 4 stages frozen, at 1%, 10% and 100% of the labels, for a SimCLR
# encoder, a relative-patch encoder and random-init encoders of the same architecture
# (configs/transfer.py). Pretrains both encoders first unless their workdirs are complete.
# Run from the repository root: experiments/transfer/run.sh [data folder]
set -euo pipefail
data="${1:-../shared/data/cifar10-sample}"
RUN=runs/simclr_cifar_sample experiments/simclr_cifar10/run_cpu.sh "$data"
experiments/relpatch/run_cpu.sh "$data"
# Whole images, as measured: above 32 px (the relative-patch encoder's 72 px input) evaluation
# would otherwise crop the central 87.5%; SimCLR's 32 px input is never cropped.
for task in simclr relpatch; do
    python -m selfsup evaluate --config=configs/transfer.py --workdir="runs/transfer_${task}_val" \
        --config.checkpoint="runs/${task}_cifar_sample" --config.crop_proportion=1.0
done
# A different domain and task: the SimCLR encoder on builtin:shapes.
python -m selfsup evaluate --config=configs/transfer.py --workdir=runs/transfer_simclr_shapes \
    --config.checkpoint=runs/simclr_cifar_sample --config.data=builtin:shapes \
    --config.train_split=train --config.eval_split=test
