"""Rotation prediction on ImageNet, the Revisiting-SSL recipe.

Kolesnikov, Zhai, Beyer 2019, google/revisiting-self-supervised `config/rotation/imagenet.sh`,
checked against its `preprocess.py`, `self_supervision/rotation.py` and `trainer.py`:
  --preprocessing inception_preprocess,rotate --resize_size 224,224 --architecture revnet50
  --filters_factor 16 --batch_size 64 --lr 0.1 --lr_scale_batch_size 256 --decay_epochs 15,25
  --epochs 35 --warmup_epochs 5
i.e. TF-slim's Inception training crop (area 0.05-1, aspect 3/4-4/3) resized to 224 px, a flip
and slim's fast colour distortion, then all four rotations of each of the 64 images of a batch
(256 images through the encoder) and a 4-way linear layer on the pooled features; momentum SGD
0.9, weight decay 1e-4, lr 0.1 x 64/256 with 5 warmup epochs and x0.1 at epochs 15 and 25.
Differences: the encoder is a ResNet-50 v1.5 at four times the standard width (Revisiting's
best rotation model is a RevNet-50 of that width, filters_factor 16, which selfsup does not
have), the crop is resized bicubically (slim's fast mode: bilinearly), inputs stay in [0, 1]
(Revisiting maps them to [-1, 1]) and BatchNorm momentum is 0.9 (TF's 0.997). An accelerator
run:

  python -m selfsup pretrain --config=configs/rotation_imagenet.py --workdir=runs/rotation_in1k

ImageNet must already be prepared in `--config.data_dir` (TFDS cannot download it). Revisiting
evaluates rotation models on whole images, at every depth:
  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/rotation_probe \
      --config.checkpoint=runs/rotation_in1k --config.layers=all_stages
"""

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import rotation


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.task = "rotation"
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
    config.batch_size = 64  # Images; each is seen in all four rotations.
    config.num_epochs = 35.0
    config.total_steps = 0  # > 0 overrides num_epochs.
    # dtype: the encoder's compute dtype, "float32" or "bfloat16" (float32 parameters, optimizer
    # state, heads and loss either way); "auto" is bfloat16 on a GPU or TPU and float32 on a CPU,
    # and config.json records which ran (README: `model.dtype`). kernels: "xla" (XLA's own conv,
    # BatchNorm and max-pool), "cpu" (rewrites of them that XLA:CPU runs faster, equal up to
    # rounding) or "auto" (the rewrites on a CPU backend, XLA's ops elsewhere).
    config.model = ml_collections.ConfigDict(
        dict(depth=50, stem="imagenet", width=4.0, dtype="auto", kernels="auto")
    )
    config.rotation = rotation.default_config()
    config.optim = ml_collections.ConfigDict(
        dict(
            name="sgd",
            learning_rate=0.1,
            lr_scaling="linear",
            momentum=0.9,
            weight_decay=1e-4,
            weight_decay_exclude=r"(^|/)(bias|scale)$",
            trust_coefficient=0.001,  # LARS only.
            warmup_epochs=5.0,
            schedule="piecewise",
            decay_epochs=(15, 25),
            decay_factor=0.1,
        )
    )
    # A linear classifier on stop-gradient features of the upright image trained alongside,
    # logged as online_probe/*: -1 = the data's class count, 0 = off. Not part of Revisiting.
    config.online_probe_classes = -1
    config.log_every_steps = 100
    # Held-out pretext metrics (loss, 4-way accuracy on eval_split images); 0 = never.
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 5000
    config.keep_checkpoints = 3
    if runlocal:
        config.model.update(depth=18, width=0.125)
        config.image_size = 32
        config.batch_size = 32
        config.total_steps = 60
        config.optim.warmup_epochs = 0.0
        config.log_every_steps = 10
        config.checkpoint_every_steps = 30
        config.eval_every_steps = 30
    return config
