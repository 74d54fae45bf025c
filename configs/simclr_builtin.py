"""SimCLR on the built-in offline dataset (`builtin:shapes`): the demo's pretraining run.

A CPU-budget variant of configs/simclr_cifar10.py (same recipe and code path) sized to finish
in a few minutes on 2 CPU cores. The numbers that differ from the published CIFAR-10 recipe
are ours, chosen for that budget: a ResNet-18 at width 1/4, batch 256 and a short schedule
(SGD-scale runs this short gain nothing from LARS' layer adaptation at this batch size, but we
keep LARS to stay on the recipe's code path), temperature 0.2 as solo-learn uses for short
CIFAR runs, and full colour strength because the dataset's labels are colour-invariant.
"""

import ml_collections

from selfsup.config import parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.task = "simclr"
    config.data = "builtin:shapes"
    config.data_dir = ""  # Where the builtin dataset is prepared; "" = TFDS's default.
    config.train_split = "train"
    config.eval_split = "test"
    config.seed = 0
    config.image_size = 32
    config.batch_size = 256
    config.num_epochs = 6.0
    config.total_steps = 0  # > 0 overrides num_epochs.
    config.model = ml_collections.ConfigDict(dict(depth=18, stem="cifar", width=0.125))
    config.simclr = ml_collections.ConfigDict(
        dict(
            temperature=0.2,
            proj_hidden_dim=64,
            proj_out_dim=64,
            proj_layers=2,
            color_strength=1.0,
            crop=True,
            flip=True,
            color=True,
            blur=False,
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            name="lars",
            learning_rate=1.0,
            lr_scaling="linear",
            momentum=0.9,
            weight_decay=1e-4,
            weight_decay_exclude=r"(^|/)(bias|scale)$",
            trust_coefficient=0.001,
            warmup_epochs=1.0,
        )
    )
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 2
    if runlocal:
        config.model.width = 0.125
        config.simclr.proj_hidden_dim = 64
        config.batch_size = 64
        config.total_steps = 40
        config.log_every_steps = 10
        config.checkpoint_every_steps = 20
    return config
