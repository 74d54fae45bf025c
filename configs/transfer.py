"""Transfer suite: linear probe, k-NN and fine-tuning (frozen bottom stages 0, 2, 4) at 1%, 10%
and 100% of the training labels, for a pretrained encoder and a random-init baseline.

  python -m selfsup evaluate --config=configs/transfer.py --workdir=runs/transfer \
      --config.checkpoint=runs/simclr_cifar10 [--config.data=builtin:shapes ...]

The target is any data spec: empty data keys mean "what the checkpoint was pretrained on"
(same task); another split or dataset gives "same domain, different task" or "different
domain" transfer. A class-stratified minival split (`minival_fraction` of `train_split`) is held
out for hyper-parameter choice only (the linear probe's L2 per row; the fine-tuning defaults
below were chosen on it, never on the test split); label fractions are class-balanced subsets
of the rest, the same for every method and encoder. Fine-tuning runs a fixed number of steps
for every label fraction, so its cost does not grow with the subset.

The frozen protocols are the papers': the linear probe's L2 from SimCLR's (Chen et al. 2020,
appendix B) and Kornblith et al. 2019's grid, 45 values log-spaced over [1e-6, 1e5], then at
100% labels the probe refit on train + minival; k-NN with DINO's fixed k = 20 and T = 0.07 (and
k = 200, InstDisc's), its bank at 100% labels the whole training split. On purpose, a smaller
label fraction keeps its own labels (no refit or bank with minival: that would add more labels
than the fraction has), and fine-tuning at 100% trains on the rest without minival.
"""

import ml_collections
from ml_collections import config_dict

from selfsup.config import parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.checkpoint = ""  # Required: the --workdir of a pretraining run.
    config.data = ""  # "" = the checkpoint's pretraining data.
    config.data_dir = ""  # "" = the checkpoint's data_dir.
    config.train_split = ""  # "" = the checkpoint's train_split.
    config.eval_split = ""  # "" = the checkpoint's eval_split.
    config.seed = 0  # Minival split, label subsets, head init and fine-tuning data order.
    # An image that does not decode: "error" stops with its file named; "skip" leaves such
    # images out (one decoding pass over the splits read, at start) and counts them in
    # summary.json as data/skipped_images.
    config.corrupt_images = "error"
    config.batch_size = 256  # Feature extraction and evaluation batches.
    # Evaluation images: for an encoder input above 32 px, the square central crop of this
    # proportion of the shorter side, then a resize (simclr's preprocess_for_eval; 1.0 keeps
    # the largest central square); at 32 px or less, a plain resize (simclr's test_crop=False).
    config.crop_proportion = 0.875
    # Frozen features for linear and k-NN. "image": features of the whole image; "patches": the
    # mean of the features of a patch task's 3x3 evaluation patches (Revisiting-SSL's
    # evaluation of patch-based models). Fine-tuning always feeds whole images.
    config.features = "image"
    # The encoder depths linear and k-NN probe: "pre_logits" (the encoder's output), a ResNet's
    # "stage1".."stage3" (each stage's output map max-pooled to about 9,000 values, as
    # Revisiting-SSL's linear evaluation pools it), a ViT's "block1".."block11" (the class token
    # after each block) and "patch_mean", or "all_stages" (every depth), all from one pass over
    # the data (Revisiting-SSL's layer-wise evaluation). Fine-tuning always trains the whole
    # encoder's output.
    config.layers = ("pre_logits",)
    config.random_init_baseline = True
    # Also evaluate the checkpoint's architecture with these weights, as the row "init_from":
    # `torchvision:FILE` (e.g. a supervised ImageNet ResNet-50's state dict, .safetensors or
    # .pth), or a selfsup pretraining workdir or export; "" = no such row.
    config.init_from = ""
    config.evaluators = ("linear", "knn", "finetune")
    config.label_fractions = (0.01, 0.1, 1.0)
    config.minival_fraction = 0.1
    # L2 strengths tried on minival, 4 per decade from 1e-6 to 1e5 (SimCLR's and Kornblith et
    # al.'s 45 values), for mean cross-entropy + l2 / 2 * ||W||^2.
    l2_grid = tuple(10.0 ** (e / 4) for e in range(-24, 21))
    config.linear = ml_collections.ConfigDict(dict(l2_grid=l2_grid))
    # Weighted k-NN on the same frozen features (Wu et al. 2018; DINO's defaults).
    config.knn = ml_collections.ConfigDict(dict(ks=(20, 200), temperature=0.07))
    config.finetune = ml_collections.ConfigDict(
        dict(
            # n freezes depths 0..n (a ResNet's stem..stage<n>, a ViT's embeddings..block<n>);
            # a ResNet's 4 or a ViT's 12 leaves the head only.
            freeze_stages=(0, 2, 4),
            steps=80,
            batch_size=64,  # Shrunk to the subset size where a subset is smaller.
            warmup_steps=8,
            # Depth i of D - 1 (a ResNet's stem 0 .. stage4 4; a ViT's embeddings 0 .. block12 12)
            # gets lr * decay ** (D - i), the head lr (MAE's layer decay: 0.75 for ViT-B).
            stage_lr_decay=1.0,
            drop_path=0.0,  # A ViT's stochastic depth at its last block (MAE's ViT-B: 0.1).
            lr_multipliers=(),  # ((regex, multiplier), ...) over classifier paths; first wins.
            min_crop_area=0.25,
            flip=True,
            log_every_steps=20,
            # Checkpoints in the evaluation's workdir (and one on SIGTERM), so that a re-run of
            # the same command resumes a fine-tuning cut short; dropped once the row is saved.
            checkpoint_every_steps=20,
            optim=dict(
                name="sgd",
                learning_rate=0.1,  # Peak lr = 0.1 * batch_size / 256; chosen on minival.
                lr_scaling="linear",
                momentum=0.9,  # AdamW's beta1.
                beta2=0.999,  # AdamW only.
                weight_decay=0.0,
                weight_decay_exclude=r"(^|/)(bias|scale)$",
                trust_coefficient=0.001,
                param_groups=(),  # Fine-tuning's groups are lr_multipliers above.
                schedule="cosine",  # Linear warmup, then cosine decay to min_learning_rate.
                min_learning_rate=0.0,
                weight_decay_end=config_dict.placeholder(float),  # None: constant decay.
                clip_per_tensor=0.0,  # Each gradient tensor's L2 norm cap; 0: off.
                frozen_first=(),  # Pretraining only, as is normalize_after_step.
                normalize_after_step="",
            ),
        )
    )
    if runlocal:
        config.batch_size = 64
        config.linear.l2_grid = (1e-4, 1e-2)
        config.knn.ks = (5, 20)
        config.label_fractions = (0.1, 1.0)
        config.finetune.freeze_stages = (0, 4)
        config.finetune.steps = 6
        config.finetune.batch_size = 32
        config.finetune.warmup_steps = 1
        config.finetune.log_every_steps = 3
        config.finetune.checkpoint_every_steps = 3
    return config
