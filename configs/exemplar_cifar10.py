"""Exemplar on 32 px images (CIFAR-10), scaled from configs/exemplar_imagenet.py.

Revisiting-SSL has no CIFAR exemplar recipe; the numbers here are ours: 32 px copies, crops of
at least 8% of the image (SimCLR's CIFAR-10 crop; 5% of a 32 px image is 7 px), ResNet-18 with
the CIFAR stem, and 200 epochs with x0.1 steps at 120 and 160 (as configs/relpatch_cifar10.py).
The batch stays 64 images x 8 copies with a 1000-d embedding, so the normalisation along the
batch axis works at the scale it does in Revisiting. Everything else (grey p=0.66, slim's flip
and colour, per-copy standardisation, margin 0.5, momentum SGD lr 0.1 x batch/256, weight decay
1e-4, 5 warmup epochs) is Revisiting's. An accelerator run:

  python -m selfsup pretrain --config=configs/exemplar_cifar10.py --workdir=runs/exemplar_cifar10

`:runlocal` shrinks it to a ~2 minute CPU run on the same code path.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("exemplar_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.model.update(depth=18, stem="cifar")
    config.exemplar.min_crop_area = 0.08
    if runlocal:  # The ImageNet file already shrank the width and the schedule.
        return config
    config.image_size = 32
    config.model.width = 1.0
    config.num_epochs = 200.0
    config.optim.decay_epochs = (120, 160)
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 2000
    return config
