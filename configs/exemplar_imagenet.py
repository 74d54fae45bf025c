"""Exemplar on ImageNet with ResNet-50, the Revisiting-SSL recipe.

Kolesnikov, Zhai, Beyer 2019, google/revisiting-self-supervised `config/exemplar/imagenet.sh`,
checked against its `preprocess.py`, `self_supervision/exemplar.py` and `trainer.py`:
  --preprocessing to_gray,crop_inception_preprocess_patches,standardization
  --resize_size 224,224 --grayscale_probability 0.66 --embed_dim 1000 --margin 0.5
  --num_of_inception_patches 8 --architecture resnet50 --filters_factor 12 --batch_size 64
  --lr 0.1 --lr_scale_batch_size 256 --decay_epochs 15,25 --epochs 35 --warmup_epochs 5
i.e. each of the 64 images of a batch turns grey (mean of RGB) with p=0.66 and gives 8 copies
(TF-slim's Inception training crop, area 0.05-1, resized to 224 px, a flip and slim's fast colour
distortion), each standardised; a 1000-d linear embedding of the pooled features, L2-normalised
along the batch axis, and a semi-hard triplet loss with margin 0.5 over the 512 copies; momentum
SGD 0.9, weight decay 1e-4, lr 0.1 x 64/256 with 5 warmup epochs and x0.1 at epochs 15 and 25.
Differences: the ResNet-50 (at three times the standard width, filters_factor 12) is v1.5,
the crop is resized bicubically (slim: bilinearly) and BatchNorm momentum is 0.9 (TF's 0.997).
An accelerator run:

  python -m selfsup pretrain --config=configs/exemplar_imagenet.py --workdir=runs/exemplar_in1k

ImageNet must already be prepared in `--config.data_dir` (TFDS cannot download it). Revisiting
evaluates exemplar models on whole images, at every depth:
  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/exemplar_probe \
      --config.checkpoint=runs/exemplar_in1k --config.layers=all_stages
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import exemplar

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "exemplar",
        exemplar.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=64,  # Each image gives exemplar.copies copies.
        model=common["resnet"](50, width=3.0),
        local=dict(batch_size=32, image_size=32),
        **common["revisiting_schedule"](),
    )
    # The online probe (not part of Revisiting) reads the mean over the copies; held-out
    # metrics: loss and same-image nearest-copy accuracy on eval_split.
    if runlocal:
        config.exemplar.update(copies=4, embed_dim=64)
    return config
