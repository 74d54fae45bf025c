"""BYOL on ImageNet with ResNet-50, the recipe of Grill et al. 2020 as deepmind-research's `byol`
implementation runs it.

deepmind-research `byol/configs/byol.py` with its 300-epoch presets (`_LR_PRESETS`,
`_WD_PRESETS`, `_EMA_PRESETS`): batch 4096, LARS (momentum 0.9, trust coefficient 1e-3,
biases and BatchNorm parameters excluded from weight decay and adaptation, as its
`exclude_bias_and_norm`), base learning rate 0.3 x batch/256 with 10 warmup epochs then cosine
decay to 0, weight decay 1e-6, target momentum from 0.99 to 1 on a cosine; projector and
predictor 4096-256 MLPs; BatchNorm decay 0.9, eps 1e-5, over the global batch; ResNet-50 v1
(this codebase's is v1.5: stride in the 3x3 convolution); BYOL's asymmetric views (blur 1.0 /
0.1, solarize 0 / 0.2, brightness 0.4 added, contrast 0.4, saturation 0.2, hue 0.1). The
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

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import byol


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.task = "byol"
    config.data = "tfds:imagenet2012"
    config.data_dir = ""  # Where TFDS/builtin datasets are prepared; "" = TFDS's default.
    config.train_split = "train"
    config.eval_split = "validation"
    config.seed = 0
    # The encoder's weights at step 0 (a resume restores its checkpoint): "" = random init;
    # `torchvision:FILE` (a torchvision ResNet state dict, .safetensors or .pth), or a selfsup
    # pretraining workdir or export, of config.model's architecture.
    config.init_from = ""
    # An image that does not decode: "error" stops with its file named; "skip" leaves such
    # images out (one decoding pass over the splits read, at start) and counts them in
    # summary.json as data/skipped_images.
    config.corrupt_images = "error"
    config.image_size = 224
    config.batch_size = 4096
    config.num_epochs = 300.0
    config.total_steps = 0  # > 0 overrides num_epochs.
    # dtype and kernels: as in configs/simclr_cifar10.py (README: `model.dtype`).
    config.model = ml_collections.ConfigDict(
        dict(depth=50, stem="imagenet", width=1.0, dtype="auto", kernels="auto")
    )
    config.byol = byol.default_config()
    # Colour ops in the jitted step, as DeepMind's BYOL runs them: the host only crops, resizes
    # and flips, and its views cross to the device as uint8 (README "Feeding the device").
    config.byol.color_on_device = True
    config.optim = ml_collections.ConfigDict(
        dict(
            name="lars",
            learning_rate=0.3,
            lr_scaling="linear",
            momentum=0.9,
            weight_decay=1e-6,
            weight_decay_exclude=r"(^|/)(bias|scale)$",
            trust_coefficient=1e-3,
            warmup_epochs=10.0,
            schedule="cosine",
            decay_epochs=(),  # Piecewise schedule only.
            decay_factor=0.1,
        )
    )
    # DeepMind's online classifier on stop-gradient features of view 1, logged as
    # online_probe/*: -1 = the data's class count, 0 = off.
    config.online_probe_classes = -1
    config.log_every_steps = 100
    # Held-out BYOL loss on eval_split views (both networks in inference mode); 0 = never.
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 3
    if runlocal:
        config.image_size = 64
        config.model.update(depth=18, width=0.125)
        config.byol.update(proj_hidden_dim=64, proj_out_dim=32, pred_hidden_dim=64)
        config.batch_size = 64
        config.total_steps = 60
        config.optim.warmup_epochs = 0.0
        config.log_every_steps = 10
        config.checkpoint_every_steps = 30
        config.eval_every_steps = 30
    return config
