"""Jigsaw puzzles on ImageNet with ResNet-50, the Revisiting-SSL recipe.

Kolesnikov, Zhai, Beyer 2019, google/revisiting-self-supervised `config/jigsaw/imagenet.sh`,
checked against its `self_supervision/jigsaw.py`, `patch_utils.py` and `trainer.py`:
  --preprocessing resize,to_gray,crop,crop_patches,standardization --resize_size 292,292
  --crop_size 255 --grayscale_probability 0.66 --splits_per_side 3 --patch_jitter 21
  --embed_dim 1000 --architecture resnet50 --filters_factor 8 --batch_size 128 --lr 0.1
  --lr_scale_batch_size 256 --decay_epochs 15,25 --epochs 35 --warmup_epochs 5
with `permutations_100_max.bin` (100 permutations) and `perm_subset_size` 8: the patch geometry
of relative patch position (configs/relpatch_imagenet.py), each image in 8 of the 100
permutations, the 9 patch embeddings (1000-d) concatenated and classified by a Dense 4096 + BN
+ ReLU + dropout 0.5 + Dense 100 head; momentum SGD 0.9, weight decay 1e-4, lr 0.1 x batch/256
with 5 warmup epochs and x0.1 at epochs 15 and 25. The permutation set is that file's
(Noroozi's, shipped with the package and read as Revisiting reads it; selfsup/pretext/jigsaw.py).
Differences: each image draws its own 8 permutations (Revisiting: one draw per batch), and, as
for relative patch, the ResNet is v1.5, BatchNorm momentum 0.9 and the head shares the
encoder's weight decay. `--config.jigsaw.permutations=greedy
--config.jigsaw.num_permutations=1000` is a set of Noroozi's largest size. An accelerator run:

  python -m selfsup pretrain --config=configs/jigsaw_imagenet.py --workdir=runs/jigsaw_in1k

ImageNet must already be prepared in `--config.data_dir` (TFDS cannot download it).
Transfer as Revisiting evaluates patch models (shorter side 224, central 192 crop, nine
adjacent 64 px tiles, `jigsaw.eval_smaller_size`; the mean of their features), at every depth:
  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/jigsaw_probe \
      --config.checkpoint=runs/jigsaw_in1k --config.features=patches --config.layers=all_stages
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import jigsaw

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "jigsaw",
        jigsaw.default_config(),
        runlocal,
        data=common["imagenet"](image_size=None),  # jigsaw's block sets the sizes.
        batch_size=128,  # Each image gives 9 patches and perms_per_image puzzles.
        model=common["resnet"](50, width=2.0),
        local=dict(batch_size=32),
        **common["revisiting_schedule"](),
    )
    # The online probe (not part of Revisiting) reads the mean over the 9 patches; held-out
    # metrics: loss and permutation accuracy on eval_split patches.
    if runlocal:
        config.jigsaw.update(
            resize_size=80,
            crop_size=72,
            patch_size=16,
            eval_smaller_size=56,
            embed_dim=64,
            fusion_hidden_dim=128,
        )
    return config
