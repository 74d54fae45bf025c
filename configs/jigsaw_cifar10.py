"""Jigsaw puzzles on 32 px images (CIFAR-10), scaled from configs/jigsaw_imagenet.py as
configs/relpatch_cifar10.py scales relative patch position, whose geometry and schedule it takes:
upsample to 80 px, a random 72 px crop, 3 x 24 px cells with a random 16 px patch in each, at
least 2 px apart; evaluation tiles as relative patch's (shorter side 56, central 48 crop, 16 px
tiles); ResNet-18 with the CIFAR stem; 200 epochs with x0.1 steps at 120 and 160.
Everything else (100 permutations, 8 per image, grey p=0.66, per-patch standardisation,
embedding 1000, fusion head 4096 with dropout 0.5, momentum SGD lr 0.1 x batch/256, weight
decay 1e-4, 5 warmup epochs) is Revisiting's. An accelerator run:

  python -m selfsup pretrain --config=configs/jigsaw_cifar10.py --workdir=runs/jigsaw_cifar10

`:runlocal` shrinks it to a ~2 minute CPU run on the same code path.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("jigsaw_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.jigsaw.update(
        resize_size=80, crop_size=72, patch_size=16, min_gap=2, eval_smaller_size=56
    )
    config.model.update(depth=18, stem="cifar")
    if runlocal:  # The ImageNet file already shrank the width and the schedule.
        return config
    config.model.width = 1.0
    config.num_epochs = 200.0
    config.optim.decay_epochs = (120, 160)
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 2000
    return config
