#!/usr/bin/env bash
# SimCLR on the CIFAR-10 sample at a CPU budget, then the linear probe and k-NN of the frozen
# encoder next to a random-init encoder. Run from the repository root:
#   experiments/simclr_cifar10/run_cpu.sh [folder with train/ and val/ image folders]
# Extra arguments after the folder are passed to `pretrain` (e.g. --config.simclr.crop=False);
# RUN names the workdir (default runs/simclr_cifar_sample). Re-running resumes / reuses it.
set -euo pipefail
data="${1:-../shared/data/cifar10-sample}"
shift || true
run="${RUN:-runs/simclr_cifar_sample}"
python -m selfsup pretrain --config=experiments/simclr_cifar10/cpu_budget.py --workdir="$run" \
    --config.data="folder:$data" "$@"
python -m selfsup evaluate --config=configs/linear_probe.py --workdir="${run}_probe" \
    --config.checkpoint="$run"
