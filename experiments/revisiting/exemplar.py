"""Exemplar on the CIFAR-10 sample at the study's CPU budget: configs/exemplar_cifar10.py
(Revisiting's triplet recipe at 32 px) with the study's encoder, ResNet-18 at width 1/8 (64-d
features), 4 copies of each of 64 images a step (Revisiting: 8; 4 halves the cost, and the 256
copies of a step with a 512-d embedding keep Revisiting's embedding/batch ratio of ~2 for the
normalisation along the batch axis), rotation.py's epochs with one warmup epoch and x0.1
steps at 60% and 87% of training.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "exemplar_cifar10.py"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    # The study's images seen, the same for every task: rotation.py's epochs.
    epochs = load_config_file(Path(__file__).with_name("rotation.py")).num_epochs
    config = load_config_file(RECIPE, arg)
    config.eval_split = "val"
    if runlocal:  # The recipe file already shrank the model and the schedule.
        return config
    config.model.width = 0.125
    config.exemplar.update(copies=4, embed_dim=512)
    config.batch_size = 64
    config.num_epochs = epochs
    config.optim.update(warmup_epochs=1.0, decay_epochs=(0.6 * epochs, 0.87 * epochs))
    config.log_every_steps = 50
    config.eval_every_steps = 250
    return config
