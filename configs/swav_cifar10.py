"""SwAV on CIFAR-10 with ResNet-18 (CIFAR stem), solo-learn's published recipe.

solo-learn (da Costa et al. 2022, JMLR) `scripts/pretrain/cifar/swav.yaml` with its
`augmentations/symmetric.yaml`: ResNet-18 with a 3x3 stem and no max-pool, two 32 px crops of
8-100% of the image and no local crops, 3,000 prototypes frozen for the first 2 epochs, a
2048-128 projection head, temperature 0.1, Sinkhorn epsilon 0.05 with 3 iterations, a queue of
3,840 embeddings from epoch 50; batch 256, 1000 epochs, LARS (learning rate 0.6 x batch/256,
trust coefficient eta 0.02, weight decay 1e-6, biases and BatchNorm parameters excluded), 10
warmup epochs then a cosine to 0, global ("sync") BatchNorm; SwAV's colour distortion (jitter
0.8/0.8/0.8/0.2 with p=0.8, grayscale p=0.2) and blur with p=0.5. solo-learn's README reports
89.17% top-1 online linear accuracy on CIFAR-10's test split for this recipe. An accelerator run:

  python -m selfsup pretrain --config=configs/swav_cifar10.py --workdir=runs/swav_cifar10

Differences from solo-learn, which departs from swav's main_swav.py in these: the prototypes are
normalised after every step as main_swav normalises them (solo-learn reparametrises them with
`weight_norm`, whose gains train); the queue starts empty at epoch 50 and is used once full, as
main_swav's (solo-learn fills it from the first step and uses it from epoch 50). Otherwise as in
configs/byol_cifar10.py (optax's LARS without `clip_lr`, TensorFlow-formula colour ops, no
standardisation). `:runlocal` shrinks it to a ~2 minute CPU run; without a network, point it at
images on disk, e.g. --config.data=folder:/path/to/cifar10-sample --config.eval_split=val
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

# configs/common.py's BIAS_AND_SCALE: solo-learn's `exclude_bias_n_norm`.
BIAS_AND_SCALE = r"(^|/)(bias|scale)$"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("swav_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.image_size = 32
    config.model.update(depth=18, stem="cifar")
    config.swav.update(
        global_crops_scale=(0.08, 1.0),
        local_crops_number=0,
        queue_length=3840,
        epoch_queue_starts=50.0,
    )
    config.optim.update(
        name="lars",
        learning_rate=0.6,
        weight_decay=1e-6,
        weight_decay_exclude=BIAS_AND_SCALE,
        trust_coefficient=0.02,
        schedule="cosine",
        min_learning_rate=0.0,
        frozen_first=(("^prototypes/", 2.0),),
    )
    if runlocal:  # The ImageNet file already shrank the model and the schedule.
        return config
    config.batch_size = 256
    config.num_epochs = 1000.0
    return config
