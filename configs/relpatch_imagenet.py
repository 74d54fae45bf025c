"""Relative patch position on ImageNet with ResNet-50, the Revisiting-SSL recipe.

Kolesnikov, Zhai, Beyer 2019, google/revisiting-self-supervised
`config/relative_patch_location/imagenet.sh`, checked against its `preprocess.py`,
`self_supervision/patch_model_preprocess.py`, `patch_utils.py` and `trainer.py`:
  --preprocessing resize,to_gray,crop,crop_patches,standardization --resize_size 292,292
  --crop_size 255 --grayscale_probability 0.66 --splits_per_side 3 --patch_jitter 21
  --embed_dim 1000 --architecture resnet50 --filters_factor 8 --batch_size 128 --lr 0.1
  --lr_scale_batch_size 256 --decay_epochs 15,25 --epochs 35 --warmup_epochs 5
i.e. 85 px cells with a random 64 px patch in each, grey (mean of RGB) with p=0.66, every patch
standardised; ResNet-50 at twice the standard width (filters_factor 8 = 2 x 4) embeds each
patch into 1000-d; the fusion head is Dense 4096 + BN + ReLU + dropout 0.5 + Dense 8; momentum
SGD 0.9, weight decay 1e-4, lr 0.1 x batch/256 with 5 warmup epochs and x0.1 at epochs 15 and
25. Differences, all small: our ResNet is v1.5 (stride on the 3x3 conv; Revisiting uses v1),
BatchNorm momentum is 0.9 (Revisiting's TF default 0.997), and the fusion head shares the
encoder's weight decay (Revisiting: 5e-4 on the head). An accelerator run:

  python -m selfsup pretrain --config=configs/relpatch_imagenet.py --workdir=runs/relpatch_in1k

ImageNet must already be prepared in `--config.data_dir` (TFDS cannot download it).
Transfer as Revisiting evaluates patch models (`config/evaluation/
jigsaw_or_relative_patch_location.sh`: shorter side resized to 224, the central 192 crop cut
into nine adjacent 64 px tiles, `relpatch.eval_smaller_size`; the mean of their features):
  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/relpatch_probe \
      --config.checkpoint=runs/relpatch_in1k --config.features=patches
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import relpatch

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "relpatch",
        relpatch.default_config(),
        runlocal,
        data=common["imagenet"](image_size=None),  # relpatch's block sets the sizes.
        batch_size=128,  # Each image gives 9 patches and all 8 (neighbour, centre) pairs.
        model=common["resnet"](50, width=2.0),
        local=dict(batch_size=32),
        **common["revisiting_schedule"](),
    )
    # The online probe (not part of Revisiting) reads the mean over the 9 patches; held-out
    # metrics: loss and 8-way accuracy on eval_split patches.
    if runlocal:
        config.relpatch.update(
            resize_size=80,
            crop_size=72,
            patch_size=16,
            eval_smaller_size=56,
            embed_dim=64,
            fusion_hidden_dim=128,
        )
    return config
