"""SimCLR on the CIFAR-10 sample at a CPU budget: configs/simclr_cifar10.py, the published
recipe (LARS, temperature 0.5, colour strength 0.5, no blur, warmup + cosine), with a model and
schedule that fit about five minutes of 2 CPU cores: ResNet-18 at width 1/8 (64-d features), a
64-wide projection head, batch 128, 15 epochs of the sample's 5,000 `train` images (586 steps),
one warmup epoch. The data folder comes from the launch script (`run_cpu.sh`).
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "simclr_cifar10.py"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(RECIPE, arg)
    config.eval_split = "val"
    if runlocal:  # The recipe file already shrank the model and the schedule.
        return config
    config.model.width = 0.125
    config.simclr.proj_hidden_dim = 64
    config.batch_size = 128
    config.num_epochs = 15.0
    config.optim.warmup_epochs = 1.0
    config.log_every_steps = 50
    return config
