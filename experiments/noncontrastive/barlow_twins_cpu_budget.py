"""Barlow Twins on the CIFAR-10 sample at the CPU budget of experiments/teachers (and of
experiments/simclr_cifar10/cpu_budget.py): configs/barlow_twins_cifar10.py (solo-learn's recipe:
LARS, asymmetric views, lambda 0.0051, loss x 0.1) with the same encoder and schedule as those
runs: ResNet-18 at width 1/8 (64-d features), batch 128, 15 epochs of the sample's 5,000 `train`
images (586 steps), one warmup epoch; a 512-512-512 projector, as
configs/barlow_twins_builtin.py. The data folder comes from the launch script (`run_cpu.sh`).
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "barlow_twins_cifar10.py"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(RECIPE, arg)
    config.eval_split = "val"
    if runlocal:  # The recipe file already shrank the model and the schedule.
        return config
    config.model.width = 0.125
    config.barlow_twins.update(proj_hidden_dim=512, proj_out_dim=512)
    config.batch_size = 128
    config.num_epochs = 15.0
    config.optim.warmup_epochs = 1.0
    config.log_every_steps = 50
    return config
