"""MoCo on the CIFAR-10 sample at the CPU budget of experiments/simclr_cifar10/cpu_budget.py:
configs/moco_cifar10.py (facebookresearch/moco's CIFAR-10 recipe: SGD, a queue of 4,096 keys,
momentum 0.99, temperature 0.1) with the same encoder and schedule as that SimCLR run:
ResNet-18 at width 1/8 (64-d features), batch 128, 15 epochs of the sample's 5,000 `train`
images (586 steps; the recipe has no warmup). The queue holds 32 batches, 82% of the sample.
The data folder comes from the launch script (`run_cpu.sh`).
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "moco_cifar10.py"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(RECIPE, arg)
    config.eval_split = "val"
    if runlocal:  # The recipe file already shrank the model, the queue and the schedule.
        return config
    config.model.width = 0.125
    config.batch_size = 128
    config.num_epochs = 15.0
    config.log_every_steps = 50
    return config
