"""Relative patch position on 32 px images (CIFAR-10), scaled from configs/relpatch_imagenet.py.

The Revisiting-SSL recipe cuts 64 px patches from 85 px cells of a 255 px crop; a 32 px image
has no room for that, so it is upsampled first. The numbers here are ours, not the paper's:
- resize to 80 px, random 72 px crop (Revisiting: 292 -> 255, the same ~0.9 ratio), 3 x 24 px
  cells, a random 16 px patch in each (patch/cell 0.67; Revisiting 64/85 = 0.75), at least 2 px
  between neighbours (`min_gap`): at 16 px, touching patches make edge continuation an easy
  shortcut, which Doersch's gap exists to prevent. The 9 patches hold 2,304 pixels, about what
  SimCLR's two 32 px views hold (2,048), so the two tasks cost about the same per image;
- evaluation tiles as Revisiting's at 16 px: shorter side 56, central 48 crop, nine adjacent
  16 px tiles (Revisiting: 224, 192, 64);
- ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), as for SimCLR on CIFAR-10;
- 200 epochs with x0.1 steps at 120 and 160 (CIFAR-10 has 1/25 of ImageNet's images; the
  Revisiting schedule's 35 epochs would be ~14k steps at batch 128).
Everything else (grey p=0.66, per-patch standardisation, embedding 1000, fusion head 4096 with
dropout 0.5, momentum SGD lr 0.1 x batch/256, weight decay 1e-4, 5 warmup epochs) is
Revisiting's. An accelerator run:

  python -m selfsup pretrain --config=configs/relpatch_cifar10.py --workdir=runs/relpatch_cifar10

`:runlocal` shrinks it to a ~2 minute CPU run on the same code path.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("relpatch_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.relpatch.update(
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
