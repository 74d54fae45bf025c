#!/usr/bin/env bash
# Relative patch position at a CPU budget on the CIFAR-10 sample, then the linear probe and
# k-NN of the frozen encoder (whole-image and patch-average features) next to a random-init
# encoder. Run from the repository root:
#   experiments/relpatch/run_cpu.sh [folder with train/ and val/ image folders]
# Re-running resumes / reuses runs/relpatch_cifar_sample.
set -euo pipefail
data="${1:-../shared/data/cifar10-sample}"
run=runs/relpatch_cifar_sample
python -m selfsup pretrain --config=experiments/relpatch/cpu_budget.py --workdir="$run" \
    --config.data="folder:$data"
for features in image patches; do
    python -m selfsup evaluate --config=configs/linear_probe.py \
        --workdir="${run}_probe_$features" --config.checkpoint="$run" \
        --config.features="$features"
done
