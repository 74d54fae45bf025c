"""BYOL on CIFAR-10 with ResNet-18 (CIFAR stem), solo-learn's published recipe.

solo-learn (da Costa et al. 2022, JMLR) `scripts/pretrain/cifar/byol.yaml` with its
`augmentations/asymmetric.yaml`: ResNet-18 with a 3x3 stem and no max-pool, batch 256, 1000
epochs, LARS (learning rate 1.0 x batch/256, trust coefficient eta 0.02, weight decay 1e-5,
biases and BatchNorm parameters excluded), 10 warmup epochs then cosine decay, projector
4096-256 and predictor 4096, target momentum 0.99 -> 1 on a cosine, global ("sync")
BatchNorm; views with crops of 8-100% of the image (torchvision's `RandomResizedCrop`,
`byol.crop_sampler`), torchvision's colour jitter (brightness
multiplied by U[0.6, 1.4], contrast 0.4, saturation 0.2, hue 0.1) with p=0.8, grayscale
p=0.2, no blur (32 px images), solarize 0 / 0.2. solo-learn's README reports 92.58% top-1
online linear accuracy on CIFAR-10's test split for this recipe. An accelerator run:

  python -m selfsup pretrain --config=configs/byol_cifar10.py --workdir=runs/byol_cifar10

Remaining differences from solo-learn: LARS is optax's, without solo-learn's `clip_lr` (which
caps each layer's step at the scheduled rate) and with momentum after the learning rate;
TensorFlow's colour ops, not torchvision's (contrast around each channel's mean, saturation in
HSV); the images are not standardised; the online probe trains with the encoder's optimizer.
`:runlocal` shrinks it to a ~2 minute CPU run on the same code path; without a network, point
it at images on disk, e.g. --config.data=folder:/path/to/cifar10-sample --config.eval_split=val
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("byol_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.image_size = 32
    config.model.update(depth=18, stem="cifar")
    config.byol.update(
        dict(base_momentum=0.99, blur=(0.0, 0.0), solarize=(0.0, 0.2), additive_brightness=False)
    )
    config.byol.crop_sampler = "torchvision"  # solo-learn's RandomResizedCrop.
    config.optim.update(learning_rate=1.0, weight_decay=1e-5, trust_coefficient=0.02)
    if runlocal:  # The ImageNet file already shrank the model and the schedule.
        return config
    config.batch_size = 256
    config.num_epochs = 1000.0
    return config
