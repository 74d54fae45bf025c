"""Jigsaw puzzles on the built-in offline dataset (`builtin:shapes`).

A CPU-budget variant of configs/jigsaw_cifar10.py (same patch geometry, permutations, optimizer
and code path), sized like configs/relpatch_builtin.py. The numbers that differ from the 32 px
config are ours, chosen for that budget: ResNet-18 at width 1/8 (64-d features), a 64-d patch
embedding and a 256-unit fusion layer, batch 64 images (576 patches, 512 puzzles a step), 8
epochs, 1 warmup epoch, x0.1 at epochs 5 and 7.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("jigsaw_cifar10.py"), arg)
    config.data = "builtin:shapes"
    config.eval_split = "test"
    if runlocal:  # The CIFAR-10 file already shrank the model and the schedule.
        return config
    config.batch_size = 64
    config.num_epochs = 8.0
    config.model.width = 0.125
    config.jigsaw.update(embed_dim=64, fusion_hidden_dim=256)
    config.optim.update(warmup_epochs=1.0, decay_epochs=(5, 7))
    config.log_every_steps = 50
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 250
    config.keep_checkpoints = 2
    return config
