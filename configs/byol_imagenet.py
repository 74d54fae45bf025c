"""BYOL on ImageNet with ResNet-50, the recipe of Grill et al. 2020 as deepmind-research's `byol`
implementation runs it.

deepmind-research `byol/configs/byol.py` with its 300-epoch presets (`_LR_PRESETS`,
`_WD_PRESETS`, `_EMA_PRESETS`): batch 4096, LARS (momentum 0.9, trust coefficient 1e-3,
biases and BatchNorm parameters excluded from weight decay and adaptation, as its
`exclude_bias_and_norm`), base learning rate 0.3 x batch/256 with 10 warmup epochs then cosine
decay to 0, weight decay 1e-6, target momentum from 0.99 to 1 on a cosine; projector and
predictor 4096-256 MLPs; BatchNorm decay 0.9, eps 1e-5, over the global batch; ResNet-50 v1
(this codebase's is v1.5: stride in the 3x3 convolution); BYOL's asymmetric views (blur 1.0 /
0.1, solarize 0 / 0.2, brightness 0.4 added, contrast 0.4, saturation 0.2, hue 0.1) cut by
DeepMind's `_decode_and_random_crop` (`byol.crop_sampler`: one draw, clamped to the image).
The
paper's headline 1000-epoch run (74.3% linear evaluation, ResNet-50) is the same file with
DeepMind's 1000-epoch presets, which are the paper's stated hyperparameters:

  python -m selfsup pretrain --config=configs/byol_imagenet.py --workdir=runs/byol_in1k \
      --config.num_epochs=1000 --config.optim.learning_rate=0.2 \
      --config.optim.weight_decay=1.5e-6 --config.byol.base_momentum=0.996

Remaining differences from the reference: images are not standardised by ImageNet's mean and
standard deviation (this codebase feeds [0, 1] images, as for SimCLR; the first BatchNorm
absorbs the scale); LARS is optax's (momentum applied after the learning rate, which differs
from DeepMind's while the learning rate changes); the target's predictor is not run, so its
BatchNorm statistics (read by nothing) stay at their initial values; augmentation seeds are
per example (reproducible, resumable); ImageNet must already be prepared in
`--config.data_dir`. `:runlocal` shrinks it to a ~2 minute CPU run on the same code path
(ResNet-18 at width 1/8, 64 px, 60 steps).
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import byol

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "byol",
        byol.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=4096,
        num_epochs=300.0,
        model=common["resnet"](50),
        optim=common["optimizer"](
            "lars", 0.3, weight_decay=1e-6, schedule="cosine", warmup_epochs=10.0
        ),
        local=dict(batch_size=64, image_size=64),
    )
    # Colour ops in the jitted step, as DeepMind's BYOL runs them: the host only crops, resizes
    # and flips, and its views cross to the device as uint8 (docs/scaling.md). The
    # online probe is DeepMind's online classifier on view 1; held-out metrics: the BYOL loss on
    # eval_split views (both networks in inference mode).
    config.byol.color_on_device = True
    if runlocal:
        config.byol.update(proj_hidden_dim=64, proj_out_dim=32, pred_hidden_dim=64)
    return config
