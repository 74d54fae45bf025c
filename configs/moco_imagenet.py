"""MoCo v2 on ImageNet with ResNet-50, the recipe of Chen, Fan, Girshick, He 2020 (MoCo v2) as
facebookresearch/moco runs it.

`main_moco.py --lr 0.03 --batch-size 256 --mlp --moco-t 0.2 --aug-plus --cos` with that
script's defaults for the rest: 200 epochs, SGD (momentum 0.9, weight decay 1e-4 on every
parameter, as torch's SGD applies it), learning rate 0.03 x batch/256 on a cosine to 0 without
warmup; queue of K = 65,536 keys, key-encoder momentum 0.999, temperature 0.2, a 2048-2048-128
MLP head; MoCo v2's views (crops of 20-100%, colour jitter 0.4/0.4/0.4/0.1 with p=0.8,
grayscale p=0.2, Gaussian blur with sigma in [0.1, 2] with p=0.5, flip). MoCo v2 reports
67.5% linear evaluation (ResNet-50, 200 epochs), and 71.1% for 800 epochs
(`--config.num_epochs=800`).

Remaining differences from the reference: BatchNorm statistics span the global batch instead
of MoCo's per-GPU BatchNorm with shuffled keys (selfsup/pretext/moco.py explains why no shuffle
is needed); the cosine decays per step, not per epoch; the colour and blur ops are
TensorFlow's (simclr's), not torchvision's and PIL's; images are not standardised; augmentation
seeds are per example (reproducible, resumable); ImageNet must already be prepared in
`--config.data_dir`. `:runlocal` shrinks it to a ~2 minute CPU run on the same code path
(ResNet-18 at width 1/8, 64 px, 60 steps, a queue of 256 keys).
"""

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import moco


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.task = "moco"
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
    config.batch_size = 256
    config.num_epochs = 200.0
    config.total_steps = 0  # > 0 overrides num_epochs.
    # dtype and kernels: as in configs/simclr_cifar10.py (README: `model.dtype`).
    config.model = ml_collections.ConfigDict(
        dict(depth=50, stem="imagenet", width=1.0, dtype="auto", kernels="auto")
    )
    config.moco = moco.default_config()
    config.optim = ml_collections.ConfigDict(
        dict(
            name="sgd",
            learning_rate=0.03,
            lr_scaling="linear",
            momentum=0.9,
            weight_decay=1e-4,
            weight_decay_exclude="^$",  # Matches no parameter: torch's SGD decays them all.
            trust_coefficient=0.001,  # LARS only.
            warmup_epochs=0.0,
            schedule="cosine",
            decay_epochs=(),  # Piecewise schedule only.
            decay_factor=0.1,
        )
    )
    # A linear classifier on stop-gradient query features trained alongside, logged as
    # online_probe/*: -1 = the data's class count, 0 = off. Not part of MoCo.
    config.online_probe_classes = -1
    config.log_every_steps = 100
    # Held-out InfoNCE and contrastive accuracy on eval_split views; 0 = never.
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 3
    if runlocal:
        config.image_size = 64
        config.model.update(depth=18, width=0.125)
        config.moco.update(queue_size=256, dim=32)
        config.batch_size = 64
        config.total_steps = 60
        config.log_every_steps = 10
        config.checkpoint_every_steps = 30
        config.eval_every_steps = 30
    return config
