"""Relative patch position on the CIFAR-10 sample at a CPU budget: configs/relpatch_cifar10.py
(Revisiting-SSL's patch recipe scaled to 32 px images) with ResNet-18 at width 1/8 (64-d
features), a 64-d patch embedding, a 256-unit fusion layer, batch 64 and 15 epochs of the
sample's 5,000 `train` images (1,172 steps), one warmup epoch, x0.1 at epochs 9 and 13. The data
folder comes from the launch script (`run_cpu.sh`).
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "relpatch_cifar10.py"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(RECIPE, arg)
    config.eval_split = "val"
    # The recorded run predates the online probe; turning it on (-1) leaves the encoder as is.
    config.online_probe_classes = 0
    if runlocal:  # The recipe file already shrank the model and the schedule.
        return config
    config.model.width = 0.125
    config.relpatch.update(dict(embed_dim=64, fusion_hidden_dim=256))
    config.batch_size = 64
    config.num_epochs = 15.0
    config.optim.update(dict(warmup_epochs=1.0, decay_epochs=(9, 13)))
    config.log_every_steps = 50
    config.eval_every_steps = 250
    return config
