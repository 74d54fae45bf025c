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

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import simclr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.task = "simclr"
    config.data = "tfds:cifar10"
    config.data_dir = ""  # Where TFDS/builtin datasets are prepared; "" = TFDS's default.
    config.train_split = "train"
    config.eval_split = "test"
    config.seed = 0
    # The encoder's weights at step 0 (a resume restores its checkpoint): "" = random init;
    # `torchvision:FILE` (a torchvision ResNet state dict, .safetensors or .pth), or a selfsup
    # pretraining workdir or export, of config.model's architecture.
    config.init_from = ""
    # An image that does not decode: "error" stops with its file named; "skip" leaves such
    # images out (one decoding pass over the splits read, at start) and counts them in
    # summary.json as data/skipped_images.
    config.corrupt_images = "error"
    config.image_size = 32
    config.batch_size = 512
    config.num_epochs = 1000.0
    config.total_steps = 0  # > 0 overrides num_epochs (simclr's --train_steps).
    # dtype: the encoder's compute dtype, "float32" or "bfloat16" (float32 parameters, optimizer
    # state, heads and loss either way); "auto" is bfloat16 on a GPU or TPU and float32 on a CPU,
    # and config.json records which ran (README: `model.dtype`). kernels: "xla" (XLA's own conv,
    # BatchNorm and max-pool), "cpu" (rewrites of them that XLA:CPU runs faster, equal up to
    # rounding) or "auto" (the rewrites on a CPU backend, XLA's ops elsewhere).
    config.model = ml_collections.ConfigDict(
        dict(depth=18, stem="cifar", width=1.0, dtype="auto", kernels="auto")
    )
    config.simclr = simclr.default_config()  # Then the CIFAR-10 recipe's changes:
    config.simclr.update(temperature=0.5, proj_hidden_dim=512, color_strength=0.5, blur=False)
    config.optim = ml_collections.ConfigDict(
        dict(
            name="lars",
            learning_rate=1.0,
            lr_scaling="linear",
            momentum=0.9,
            weight_decay=1e-4,
            weight_decay_exclude=r"(^|/)(bias|scale)$",
            trust_coefficient=0.001,
            warmup_epochs=10.0,
            schedule="cosine",
            decay_epochs=(),  # Piecewise schedule only.
            decay_factor=0.1,
        )
    )
    # A linear classifier on stop-gradient features trained alongside (simclr's
    # lineareval_while_pretraining), logged as online_probe/*: -1 = the data's class count,
    # 0 = off. Never the reported linear probe, which `evaluate` fits offline.
    config.online_probe_classes = -1
    config.log_every_steps = 100
    # Held-out pretext metrics (loss, contrastive accuracy on eval_split views); 0 = never.
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 3
    if runlocal:
        config.model.width = 0.125
        config.simclr.proj_hidden_dim = 64
        config.batch_size = 64
        config.total_steps = 60
        config.optim.warmup_epochs = 0.0
        config.log_every_steps = 10
        config.checkpoint_every_steps = 30
        config.eval_every_steps = 30
    return config
