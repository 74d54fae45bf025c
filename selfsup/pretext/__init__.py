"""Pretext tasks. Each is one module with the same surface: `train_example(image, seed)` (TF
side), `eval_input(image, crop_proportion=, patches=)` (what transfer evaluators feed the encoder),
`display_views(example)` (what the network sees of one training example, as [h, w, 3] images
in [0, 1], for `show-augmentations`), `build_model(rngs)` (an NNX module with an `encoder` and
an `online_probe`), and `loss(model, batch, rng, train=) -> (loss, metrics, features)`,
`features` being the encoder's features of each image, which the trainer's online probe
classifies. The trainer knows nothing else about them."""

from __future__ import annotations

import ml_collections

from selfsup.config import ConfigError


def get_task(config: ml_collections.ConfigDict):
    from selfsup.pretext import relpatch, simclr

    tasks = {"simclr": simclr.SimCLR, "relpatch": relpatch.RelativePatchPosition}
    if config.task not in tasks:
        raise ConfigError(f"unknown config.task={config.task!r}: use one of {sorted(tasks)}.")
    return tasks[config.task](config)
