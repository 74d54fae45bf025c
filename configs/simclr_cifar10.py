"""SimCLR on CIFAR-10 with ResNet-18 (CIFAR stem), the published google-research/simclr recipe.

Reproduces the CIFAR-10 command of google-research/simclr's README (TF2 `run.py`):
  --train_batch_size=512 --train_epochs=1000 --learning_rate=1.0 --weight_decay=1e-4
  --temperature=0.5 --dataset=cifar10 --image_size=32 --resnet_depth=18 --use_blur=False
  --color_jitter_strength=0.5
with that script's defaults for everything the command leaves out: LARS (momentum 0.9,
trust coefficient 0.001, BatchNorm and biases excluded from weight decay and adaptation),
linear learning-rate scaling (peak lr = 1.0 * 512 / 256 = 2.0), 10 warmup epochs then cosine
decay to 0, a 3-layer projection head (512-512-128) and global BatchNorm. The README reports
~91% linear evaluation accuracy on the CIFAR-10 test split. An accelerator run:

  python -m selfsup pretrain --config=configs/simclr_cifar10.py --workdir=runs/simclr_cifar10

`:runlocal` shrinks it to a ~2 minute CPU run on the same code path (tiny ResNet, few steps);
without a network, point it at images on disk, e.g.
  --config.data=folder:/path/to/cifar10-sample --config.eval_split=val
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import simclr

common = runpy.run_path(str(Path(__file__).with_name("common.py")))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "simclr",
        simclr.default_config(),
        runlocal,
        data=common["cifar10"](),
        batch_size=512,
        num_epochs=1000.0,  # total_steps > 0 overrides it (simclr's --train_steps).
        model=common["resnet"](18, stem="cifar"),
        optim=common["optimizer"]("lars", 1.0, schedule="cosine", warmup_epochs=10.0),
        local=dict(batch_size=64),
    )
    # The CIFAR-10 recipe's changes. The online probe is simclr's lineareval_while_pretraining;
    # held-out metrics: loss and contrastive accuracy on eval_split views.
    config.simclr.update(temperature=0.5, proj_hidden_dim=512, color_strength=0.5, blur=False)
    if runlocal:
        config.simclr.proj_hidden_dim = 64
    return config
