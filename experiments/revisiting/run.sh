#!/usr/bin/env bash
# The study of experiments/revisiting/RESULTS.md: five pretext tasks (rotation, jigsaw, exemplar,
# relative patch position, SimCLR) with the same encoder (ResNet-18 at width 1/8, CIFAR stem) and
# the same images seen (EPOCHS epochs of the CIFAR-10 sample's 5,000 train images), then a
# linear probe and k-NN of every depth of each frozen encoder next to a random-init one, one
# after the other. Run from the repository root:
#   experiments/revisiting/run.sh [folder with train/ and val/ image folders]
# Re-running resumes / reuses runs/revisiting; each command's wall time goes to times.tsv there.
set -euo pipefail
data="${1:-../shared/data/cifar10-sample}"
runs=runs/revisiting
epochs=8  # rotation.py's EPOCHS; jigsaw.py and exemplar.py read it from there.
mkdir -p "$runs"

timed() {  # timed NAME COMMAND...: runs the command, appends "NAME<tab>seconds" to times.tsv.
    local name=$1 start=$SECONDS
    shift
    "$@"
    printf '%s\t%s\n' "$name" $((SECONDS - start)) >>"$runs/times.tsv"
}

pretrain() {  # pretrain NAME CONFIG [OVERRIDES...]
    local name=$1 config=$2
    shift 2
    timed "$name" python -m selfsup pretrain --config="$config" --workdir="$runs/$name" \
        --config.data="folder:$data" "$@"
}

pretrain rotation experiments/revisiting/rotation.py
pretrain jigsaw experiments/revisiting/jigsaw.py
pretrain exemplar experiments/revisiting/exemplar.py
# The existing CPU budgets at the study's length; relative patch's x0.1 steps stay at 60% and
# 87% of training, as its 9 and 13 of 15 epochs.
pretrain relpatch experiments/relpatch/cpu_budget.py --config.num_epochs="$epochs" \
    "--config.optim.decay_epochs=(4.8,6.96)"
pretrain simclr experiments/simclr_cifar10/cpu_budget.py --config.num_epochs="$epochs"

for name in rotation jigsaw exemplar relpatch simclr; do
    # Whole images for every encoder; crop_proportion=1.0 keeps all of the 32 px image where
    # the patch tasks' encoders take 72 px inputs (32 px inputs are never cropped).
    timed "${name}_probe" python -m selfsup evaluate --config=configs/linear_probe.py \
        --workdir="$runs/${name}_probe" --config.checkpoint="$runs/$name" \
        --config.layers=all_stages --config.crop_proportion=1.0
done
python experiments/revisiting/summarize.py "$runs" experiments/revisiting
