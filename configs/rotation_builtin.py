"""Rotation prediction on the built-in offline dataset (`builtin:shapes`).

A CPU-budget variant of configs/rotation_cifar10.py (same view, optimizer and code path), sized
like configs/relpatch_builtin.py. The numbers that differ from the CIFAR-10 config are ours,
chosen for that budget: ResNet-18 at width 1/8 (64-d features), batch 64 images (256 rotations
a step), 8 epochs, x0.2 at epochs 5 and 7 (the CIFAR config's 120/160 of 200, compressed).
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("rotation_cifar10.py"), arg)
    config.data = "builtin:shapes"
    config.eval_split = "test"
    if runlocal:  # The CIFAR-10 file already shrank the model and the schedule.
        return config
    config.batch_size = 64
    config.num_epochs = 8.0
    config.model.width = 0.125
    config.optim.decay_epochs = (5, 7)
    config.log_every_steps = 50
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 250
    config.keep_checkpoints = 2
    return config
