"""SimSiam on ImageNet with ResNet-50, the recipe of Chen & He 2021 as facebookresearch/simsiam
runs it.

`main_simsiam.py --fix-pred-lr` (its README's 100-epoch command) with that script's defaults
for the rest: batch 512, 100 epochs, SGD (momentum 0.9, weight decay 1e-4 on every parameter,
as torch's SGD applies it), learning rate 0.05 x batch/256 on a cosine to 0 without warmup, the
predictor at that peak rate throughout (`--fix-pred-lr`, here `config.optim.param_groups`); a
2048-2048-2048 projector (BatchNorm without affine parameters on its output) and a 2048-512-2048
predictor; MoCo v2's views (crops of 20-100%, colour jitter 0.4/0.4/0.4/0.1 with p=0.8,
grayscale p=0.2, Gaussian blur with p=0.5, flip). SimSiam reports 68.1% linear evaluation for
this run (ResNet-50, 100 epochs), 71.3% for 800 epochs (`--config.num_epochs=800`, batch 256).

Remaining differences from the reference: BatchNorm statistics span the global batch (the
reference's SyncBatchNorm does the same); the cosine decays per step, not per epoch; the
colour and blur ops are TensorFlow's (simclr's), not torchvision's and PIL's; images are not
standardised; augmentation seeds are per example (reproducible, resumable); ImageNet must
already be prepared in `--config.data_dir`. `:runlocal` shrinks it to a ~2 minute CPU run on
the same code path (ResNet-18 at width 1/8, 64 px, 60 steps).
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import simsiam

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "simsiam",
        simsiam.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=512,
        num_epochs=100.0,
        model=common["resnet"](50),
        optim=common["optimizer"](
            "sgd",
            0.05,
            # Matches no parameter: torch's SGD decays them all.
            weight_decay_exclude="^$",
            schedule="cosine",
            warmup_epochs=0.0,
            param_groups=(("^predictor/", 1.0, "constant"),),
        ),
        local=dict(batch_size=64, image_size=64),
    )
    if runlocal:
        config.simsiam.update(proj_hidden_dim=64, proj_out_dim=64, pred_hidden_dim=16)
    return config
