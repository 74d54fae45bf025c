"""Rotation prediction on ImageNet, the Revisiting-SSL recipe.

Kolesnikov, Zhai, Beyer 2019, google/revisiting-self-supervised `config/rotation/imagenet.sh`,
checked against its `preprocess.py`, `self_supervision/rotation.py` and `trainer.py`:
  --preprocessing inception_preprocess,rotate --resize_size 224,224 --architecture revnet50
  --filters_factor 16 --batch_size 64 --lr 0.1 --lr_scale_batch_size 256 --decay_epochs 15,25
  --epochs 35 --warmup_epochs 5
i.e. TF-slim's Inception training crop (area 0.05-1, aspect 3/4-4/3) resized to 224 px, a flip
and slim's fast colour distortion, then all four rotations of each of the 64 images of a batch
(256 images through the encoder) and a 4-way linear layer on the pooled features; momentum SGD
0.9, weight decay 1e-4, lr 0.1 x 64/256 with 5 warmup epochs and x0.1 at epochs 15 and 25.
Differences: the encoder is a ResNet-50 v1.5 at four times the standard width (Revisiting's
best rotation model is a RevNet-50 of that width, filters_factor 16, which selfsup does not
have), the crop is resized bicubically (slim's fast mode: bilinearly), inputs stay in [0, 1]
(Revisiting maps them to [-1, 1]) and BatchNorm momentum is 0.9 (TF's 0.997). An accelerator
run:

  python -m selfsup pretrain --config=configs/rotation_imagenet.py --workdir=runs/rotation_in1k

ImageNet must already be prepared in `--config.data_dir` (TFDS cannot download it). Revisiting
evaluates rotation models on whole images, at every depth:
  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/rotation_probe \
      --config.checkpoint=runs/rotation_in1k --config.layers=all_stages
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import rotation

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    # The online probe (not part of Revisiting) reads the upright image; held-out metrics: loss
    # and 4-way accuracy on eval_split images.
    return common["pretraining"](
        "rotation",
        rotation.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=64,  # Each image is seen in all four rotations.
        model=common["resnet"](50, width=4.0),
        local=dict(batch_size=32, image_size=32),
        **common["revisiting_schedule"](),
    )
