#!/usr/bin/env bash
# Every method the project has that learns from two views (SimCLR, BYOL, MoCo v2, SimSiam,
# Barlow Twins, VICReg) at one CPU budget on the CIFAR-10 sample (same encoder, 15 epochs of
# batch 128, same probe), one after the other, each followed by the linear probe and k-NN next
# to a random-init encoder; then the table and plots. Run from the repository root:
#   experiments/noncontrastive/run_cpu.sh [folder with train/ and val/ image folders] [task ...]
# Workdirs: runs/noncontrastive/<task> and <task>_probe (re-running resumes/reuses).
set -euo pipefail
data="${1:-../shared/data/cifar10-sample}"
shift || true
tasks="${*:-simsiam barlow_twins vicreg simclr byol moco}"
here="$(dirname "$0")"
for task in $tasks; do
    case "$task" in
        simclr) config=experiments/simclr_cifar10/cpu_budget.py ;;
        byol | moco) config="experiments/teachers/${task}_cpu_budget.py" ;;
        *) config="$here/${task}_cpu_budget.py" ;;
    esac
    python -m selfsup pretrain --config="$config" --workdir="runs/noncontrastive/$task" \
        --config.data="folder:$data"
    python -m selfsup evaluate --config=configs/linear_probe.py \
        --workdir="runs/noncontrastive/${task}_probe" \
        --config.checkpoint="runs/noncontrastive/$task"
done
python "$here/plot.py" runs/noncontrastive "$here"
