"""DINO on CIFAR-10 with ResNet-18 (CIFAR stem), solo-learn's published recipe.

solo-learn (da Costa et al. 2022, JMLR) `scripts/pretrain/cifar/dino.yaml` with its
`augmentations/asymmetric.yaml` and `solo/methods/dino.py`'s defaults: ResNet-18 with a 3x3 stem
and no max-pool, batch 256, 1000 epochs, LARS (learning rate 0.3 x batch/256, trust coefficient
eta 0.02, weight decay 1e-6, biases and BatchNorm parameters excluded), 10 warmup epochs then
cosine decay; head 2048-2048-256 -> K = 4,096, last layer weight-normalised and frozen for the
first epoch, no gradient clipping; student temperature 0.1, teacher 0.04 -> 0.07 over 50
epochs; teacher momentum 0.9995 -> 1; two 32 px crops of 8-100% of the image (no local crops),
torchvision's jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2, solarize 0 / 0.2, no blur.
An accelerator run:

  python -m selfsup pretrain --config=configs/dino_cifar10.py --workdir=runs/dino_cifar10

Remaining differences from solo-learn: LARS is optax's, without solo-learn's `clip_lr`; the
images are not standardised; the online probe trains with the encoder's optimizer. `:runlocal`
shrinks it to a ~2 minute CPU run on the same code path.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("dino_resnet50_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.image_size = 32
    config.model.update(depth=18, stem="cifar")
    config.dino.update(
        momentum_teacher=0.9995,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=50,
        global_crops_scale=(0.08, 1.0),
        local_crops_number=0,
        blur=(0.0, 0.0, 0.0),
        solarize=(0.0, 0.2, 0.0),
    )
    config.optim.update(
        name="lars",
        schedule="cosine",
        learning_rate=0.3,
        trust_coefficient=0.02,
        weight_decay=1e-6,
        weight_decay_end=None,
        min_learning_rate=0.0,
        clip_per_tensor=0.0,
    )
    if runlocal:  # The ImageNet files already shrank the model, the head and the schedule.
        return config
    config.dino.update(out_dim=4096)
    config.batch_size = 256
    config.num_epochs = 1000.0
    return config
