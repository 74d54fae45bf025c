#!/usr/bin/env bash
# SimCLR, BYOL and MoCo at one CPU budget on the CIFAR-10 sample (same encoder, 15 epochs of
# batch 128, same probe), one after the other, each followed by the linear probe and k-NN next
# to a random-init encoder; then the table and plots. Run from the repository root:
#   experiments/teachers/run_cpu.sh [folder with train/ and val/ image folders]
# Workdirs: runs/teachers/<task> and runs/teachers/<task>_probe (re-running resumes/reuses).
set -euo pipefail
data="${1:-../shared/data/cifar10-sample}"
here="$(dirname "$0")"
for task in simclr byol moco; do
    config="$here/${task}_cpu_budget.py"
    [ "$task" = simclr ] && config=experiments/simclr_cifar10/cpu_budget.py
    python -m selfsup pretrain --config="$config" --workdir="runs/teachers/$task" \
        --config.data="folder:$data"
    python -m selfsup evaluate --config=configs/linear_probe.py \
        --workdir="runs/teachers/${task}_probe" --config.checkpoint="runs/teachers/$task"
done
python "$here/plot.py" runs/teachers "$here"
