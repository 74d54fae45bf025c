"""Rotation on the CIFAR-10 sample at the study's CPU budget: configs/rotation_cifar10.py
(Gidaris' CIFAR setup) with the study's encoder, ResNet-18 at width 1/8 with the CIFAR stem
(64-d features), batch 64 images (256 rotations a step) and EPOCHS epochs of the sample's 5,000
`train` images with Gidaris' x0.2 steps at 30%, 60% and 80% of training. The data folder comes
from the launch script (`run.sh`).
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "rotation_cifar10.py"
EPOCHS = 8  # The study's images seen, for every task (jigsaw.py, exemplar.py, run.sh).


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(RECIPE, arg)
    config.eval_split = "val"
    if runlocal:  # The recipe file already shrank the model and the schedule.
        return config
    config.model.width = 0.125
    config.batch_size = 64
    config.num_epochs = float(EPOCHS)
    config.optim.decay_epochs = (0.3 * EPOCHS, 0.6 * EPOCHS, 0.8 * EPOCHS)
    config.log_every_steps = 50
    config.eval_every_steps = 250
    return config
