"""MoCo v2 on ImageNet with ResNet-50, the recipe of Chen, Fan, Girshick, He 2020 (MoCo v2) as
facebookresearch/moco runs it.

`main_moco.py --lr 0.03 --batch-size 256 --mlp --moco-t 0.2 --aug-plus --cos` with that
script's defaults for the rest: 200 epochs, SGD (momentum 0.9, weight decay 1e-4 on every
parameter, as torch's SGD applies it), learning rate 0.03 x batch/256 on a cosine to 0 without
warmup; queue of K = 65,536 keys, key-encoder momentum 0.999, temperature 0.2, a 2048-2048-128
MLP head; MoCo v2's views (crops of 20-100% drawn as torchvision's `RandomResizedCrop`
draws them, `moco.crop_sampler`; colour jitter 0.4/0.4/0.4/0.1 with p=0.8,
grayscale p=0.2, Gaussian blur with sigma in [0.1, 2] with p=0.5, flip). MoCo v2 reports
67.5% linear evaluation (ResNet-50, 200 epochs), and 71.1% for 800 epochs
(`--config.num_epochs=800`).

Remaining differences from the reference: BatchNorm statistics span the global batch
(`moco.bn_groups=1`, this recipe's) instead of MoCo's per-GPU BatchNorm with shuffled keys
(selfsup/pretext/moco.py explains why no shuffle is needed; `--config.moco.bn_groups=8` is the
paper's: 8 GPUs of 32); the cosine decays per step, not per epoch; the colour and blur ops are
TensorFlow's (simclr's), not torchvision's and PIL's, and crops are resized bicubically (PIL:
bilinear); images are not standardised; augmentation
seeds are per example (reproducible, resumable); ImageNet must already be prepared in
`--config.data_dir`. `:runlocal` shrinks it to a ~2 minute CPU run on the same code path
(ResNet-18 at width 1/8, 64 px, 60 steps, a queue of 256 keys).
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import moco

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "moco",
        moco.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=256,
        num_epochs=200.0,
        model=common["resnet"](50),
        optim=common["optimizer"](
            "sgd",
            0.03,
            # Matches no parameter: torch's SGD decays them all.
            weight_decay_exclude="^$",
            schedule="cosine",
            warmup_epochs=0.0,
        ),
        local=dict(batch_size=64, image_size=64),
    )
    # The online probe (not part of MoCo) reads query features; held-out metrics: InfoNCE and
    # contrastive accuracy on eval_split views.
    if runlocal:
        config.moco.update(queue_size=256, dim=32)
    return config
