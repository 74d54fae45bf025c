"""Jigsaw on the CIFAR-10 sample at the study's CPU budget: configs/jigsaw_cifar10.py (Revisiting's
recipe at relative patch's 32 px geometry, 100 permutations, 8 per image) with the study's
encoder, ResNet-18 at width 1/8 (64-d features), and relative patch's CPU-budget head
(experiments/relpatch/cpu_budget.py: a 64-d patch embedding, a 256-unit fusion layer, batch
64), rotation.py's epochs with one warmup epoch and x0.1 steps at 60% and 87% of training.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "jigsaw_cifar10.py"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    # The study's images seen, the same for every task: rotation.py's epochs.
    epochs = load_config_file(Path(__file__).with_name("rotation.py")).num_epochs
    config = load_config_file(RECIPE, arg)
    config.eval_split = "val"
    if runlocal:  # The recipe file already shrank the model and the schedule.
        return config
    config.model.width = 0.125
    config.jigsaw.update(embed_dim=64, fusion_hidden_dim=256)
    config.batch_size = 64
    config.num_epochs = epochs
    config.optim.update(warmup_epochs=1.0, decay_epochs=(0.6 * epochs, 0.87 * epochs))
    config.log_every_steps = 50
    config.eval_every_steps = 250
    return config
