"""Jigsaw puzzles on ImageNet with ResNet-50, the Revisiting-SSL recipe.

Kolesnikov, Zhai, Beyer 2019, google/revisiting-self-supervised `config/jigsaw/imagenet.sh`,
checked against its `self_supervision/jigsaw.py`, `patch_utils.py` and `trainer.py`:
  --preprocessing resize,to_gray,crop,crop_patches,standardization --resize_size 292,292
  --crop_size 255 --grayscale_probability 0.66 --splits_per_side 3 --patch_jitter 21
  --embed_dim 1000 --architecture resnet50 --filters_factor 8 --batch_size 128 --lr 0.1
  --lr_scale_batch_size 256 --decay_epochs 15,25 --epochs 35 --warmup_epochs 5
with `permutations_100_max.bin` (100 permutations) and `perm_subset_size` 8: the patch geometry
of relative patch position (configs/relpatch_imagenet.py), each image in 8 of the 100
permutations, the 9 patch embeddings (1000-d) concatenated and classified by a Dense 4096 + BN
+ ReLU + dropout 0.5 + Dense 100 head; momentum SGD 0.9, weight decay 1e-4, lr 0.1 x batch/256
with 5 warmup epochs and x0.1 at epochs 15 and 25. Differences: the permutation set is our
greedy maximal-Hamming-distance set (selfsup/pretext/jigsaw.py; Revisiting's file is not
published), each image draws its own 8 permutations (Revisiting: one draw per batch), and, as
for relative patch, the ResNet is v1.5, BatchNorm momentum 0.9 and the head shares the
encoder's weight decay. `--config.jigsaw.num_permutations=1000` is Noroozi's set size. An
accelerator run:

  python -m selfsup pretrain --config=configs/jigsaw_imagenet.py --workdir=runs/jigsaw_in1k

ImageNet must already be prepared in `--config.data_dir` (TFDS cannot download it).
Transfer as Revisiting evaluates patch models (mean of the 9 patches' features), at every depth:
  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/jigsaw_probe \
      --config.checkpoint=runs/jigsaw_in1k --config.features=patches --config.layers=all_stages
"""

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import jigsaw


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.task = "jigsaw"
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
    config.batch_size = 128  # Images; each gives 9 patches and perms_per_image puzzles.
    config.num_epochs = 35.0
    config.total_steps = 0  # > 0 overrides num_epochs.
    # dtype: the encoder's compute dtype, "float32" or "bfloat16" (float32 parameters, optimizer
    # state, heads and loss either way); "auto" is bfloat16 on a GPU or TPU and float32 on a CPU,
    # and config.json records which ran (README: `model.dtype`). kernels: "xla" (XLA's own conv,
    # BatchNorm and max-pool), "cpu" (rewrites of them that XLA:CPU runs faster, equal up to
    # rounding) or "auto" (the rewrites on a CPU backend, XLA's ops elsewhere).
    config.model = ml_collections.ConfigDict(
        dict(depth=50, stem="imagenet", width=2.0, dtype="auto", kernels="auto")
    )
    config.jigsaw = jigsaw.default_config()
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
    # A linear classifier on stop-gradient features (mean over the 9 patches) trained alongside,
    # logged as online_probe/*: -1 = the data's class count, 0 = off. Not part of Revisiting.
    config.online_probe_classes = -1
    config.log_every_steps = 100
    # Held-out pretext metrics (loss, permutation accuracy on eval_split patches); 0 = never.
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 5000
    config.keep_checkpoints = 3
    if runlocal:
        config.model.update(depth=18, width=0.125)
        config.jigsaw.update(
            resize_size=80, crop_size=72, patch_size=16, embed_dim=64, fusion_hidden_dim=128
        )
        config.batch_size = 32
        config.total_steps = 60
        config.optim.warmup_epochs = 0.0
        config.log_every_steps = 10
        config.checkpoint_every_steps = 30
        config.eval_every_steps = 30
    return config
