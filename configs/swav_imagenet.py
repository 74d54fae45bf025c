"""SwAV on ImageNet with ResNet-50, the 800-epoch multi-crop recipe of Caron et al. 2020 as
facebookresearch/swav runs it.

swav `scripts/swav_800ep_pretrain.sh` (its README's 75.3% linear evaluation, ResNet-50): 2 x 224
px crops of 14-100% of the image and 6 x 96 px crops of 5-14%, 3,000 prototypes, a 2048-128
projection head, temperature 0.1, Sinkhorn epsilon 0.05 with 3 iterations, no queue; batch 4096
(64 on each of 64 GPUs), 800 epochs, LARC (apex, clip=False, trust coefficient 0.001) over SGD
with momentum 0.9 and weight decay 1e-6 on every parameter, learning rate 4.8 (0.3 x 4096/256)
warmed up over 10 epochs (`np.linspace`), then a cosine to 0.0048; the prototypes normalised
after every step and frozen for the first 313 iterations (one epoch of 4096).

  python -m selfsup pretrain --config=configs/swav_imagenet.py --workdir=runs/swav_in1k

Remaining differences from the reference: the warmup starts at 0, not at its `start_warmup` 0.3;
BatchNorm statistics span the global batch (the script's apex SyncBatchNorm spans groups of 8
GPUs, 512 images); colour and blur are TensorFlow-formula ops in the step
(`selfsup/pretext/swav.py` lists how they differ from torchvision's and PIL's) and crops are
resized bicubically (torchvision's RandomResizedCrop: bilinearly); images are not standardised;
mixed precision is bfloat16 on accelerators (`model.dtype`), not apex's float16; ImageNet must
already be prepared in `--config.data_dir`. `:runlocal` shrinks it to a ~2 minute CPU run on the
same code path (ResNet-18 at width 1/8, 64 px global and 2 x 32 px local crops, 60 steps).
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import swav

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    optim = common["optimizer"](
        "larc",
        0.3,
        weight_decay=1e-6,
        weight_decay_exclude="^$",  # Matches no parameter: LARC and SGD's decay apply to all.
        schedule="cosine_linspace",  # main_swav.py's np.linspace warmup, then its cosine.
        warmup_epochs=10.0,
        min_learning_rate=0.0048,  # final_lr.
        frozen_first=(("^prototypes/", 1.0),),  # freeze_prototypes_niters=313.
        normalize_after_step="^prototypes/kernel$",
    )
    config = common["pretraining"](
        "swav",
        swav.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=4096,
        num_epochs=800.0,
        model=common["resnet"](50),
        optim=optim,
        local=dict(batch_size=64, image_size=64),
    )
    if runlocal:
        config.swav.update(
            local_crops_number=2, local_crops_size=32, nmb_prototypes=30, feat_dim=32, hidden_mlp=64
        )
    return config
