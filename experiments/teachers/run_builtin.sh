#!/usr/bin/env bash
# The learnability check on the built-in data: BYOL and MoCo v2 at the demo's CPU budget
# (configs/byol_builtin.py, configs/moco_builtin.py: ResNet-18 at width 1/8, 8 epochs of batch
# 128 on builtin:shapes), each followed by the linear probe and k-NN next to a random-init
# encoder. Run from the repository root:
#   experiments/teachers/run_builtin.sh
# Workdirs: runs/teachers_builtin/<task> and runs/teachers_builtin/<task>_probe (re-running
# resumes/reuses).
set -euo pipefail
for task in byol moco; do
    python -m selfsup pretrain --config="configs/${task}_builtin.py" \
        --workdir="runs/teachers_builtin/$task"
    python -m selfsup evaluate --config=configs/linear_probe.py \
        --workdir="runs/teachers_builtin/${task}_probe" \
        --config.checkpoint="runs/teachers_builtin/$task"
done
