"""VICReg on ImageNet with ResNet-50, the recipe of Bardes et al. 2022 as facebookresearch/vicreg
runs it.

`main_vicreg.py` with its defaults and the paper's 1000 epochs: batch 2048, LARS (momentum 0.9,
trust coefficient 1e-3, weight decay 1e-6, biases and BatchNorm parameters excluded from decay
and adaptation) at base learning rate 0.2 x batch/256, 10 warmup epochs then cosine decay; an
8192-8192-8192 expander; invariance, variance and covariance coefficients 25, 25, 1; Barlow
Twins' views (BYOL's asymmetric pair: blur 1.0 / 0.1, solarize 0 / 0.2, torchvision's colour
jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2). VICReg reports 73.2% linear evaluation
(ResNet-50, 1000 epochs).

Remaining differences from the reference: its cosine ends at 0.001 of the peak, this one at 0;
LARS is optax's (momentum after the learning rate); BatchNorm statistics span the global batch
(the reference converts to SyncBatchNorm too); TensorFlow's colour ops; images are not
standardised; augmentation seeds are per example (reproducible, resumable); ImageNet must
already be prepared in `--config.data_dir`. `:runlocal` shrinks it to a ~2 minute CPU run on
the same code path (ResNet-18 at width 1/8, 64 px, 60 steps).
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import vicreg

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "vicreg",
        vicreg.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=2048,
        num_epochs=1000.0,
        model=common["resnet"](50),
        optim=common["optimizer"](
            "lars", 0.2, weight_decay=1e-6, schedule="cosine", warmup_epochs=10.0
        ),
        local=dict(batch_size=64, image_size=64),
    )
    if runlocal:
        config.vicreg.update(proj_hidden_dim=64, proj_out_dim=64)
    return config
