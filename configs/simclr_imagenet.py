"""SimCLR on ImageNet with ResNet-50, the published google-research/simclr recipe.

Reproduces the ImageNet pretraining command of google-research/simclr's README (TF2 `run.py`),
which "reflects the default hyperparameters in our paper":
  --train_batch_size=4096 --train_epochs=100 --temperature=0.1 --learning_rate=0.075
  --learning_rate_scaling=sqrt --weight_decay=1e-4 --dataset=imagenet2012 --image_size=224
  --eval_split=validation
with that script's defaults for everything the command leaves out: ResNet-50 (width 1, ImageNet
stem), LARS (momentum 0.9, trust coefficient 0.001, BatchNorm and biases excluded from weight
decay and adaptation), 10 warmup epochs then cosine decay to 0, a 3-layer projection head
(2048-2048-128, simclrv2's `num_proj_layers=3`), colour strength 1.0, Gaussian blur on, global
BatchNorm (momentum 0.9) and a linear head trained alongside on stop-gradient features
(`lineareval_while_pretraining`). Peak lr = 0.075 * sqrt(4096) = 4.8 (the README: the same as
0.3 with linear scaling at this batch size). Evaluation crops the central 87.5% (simclr's
`preprocess_for_eval` at 224 px; `crop_proportion` in configs/transfer.py).

Remaining differences from the reference:
- augmentation randomness comes from per-example stateless seeds (reproducible and resumable),
  not TF's global random state, and blur is drawn per view in the host pipeline rather than
  per batch on the accelerator (the same distribution: each view blurred with p=0.5);
- the online linear head shares the encoder's weight decay (simclr exempts `head_supervised`);
- ImageNet must already be prepared in `--config.data_dir` (TFDS cannot download it).

An accelerator run (a batch of 4096 needs the memory of many accelerators):

  python -m selfsup pretrain --config=configs/simclr_imagenet.py --workdir=runs/simclr_in1k

`:runlocal` shrinks it to a ~2 minute CPU run on the same code path (ResNet-18 at width 1/8,
64 px, 60 steps); without ImageNet, point it at images on disk with `--config.data=folder:...`.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal
from selfsup.pretext import simclr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("simclr_cifar10.py"), arg)
    config.data = "tfds:imagenet2012"
    config.eval_split = "validation"
    config.image_size = 224
    config.model.update(depth=50, stem="imagenet", width=1.0)
    config.simclr = simclr.default_config()  # The published ImageNet recipe's.
    config.optim.update(learning_rate=0.075, lr_scaling="sqrt", weight_decay=1e-4)
    config.num_epochs = 100.0
    if runlocal:  # The CIFAR-10 file already shrank the batch, the schedule and the logging.
        config.image_size = 64
        config.model.update(depth=18, width=0.125)
        config.simclr.proj_hidden_dim = 64
        return config
    config.batch_size = 4096
    return config
