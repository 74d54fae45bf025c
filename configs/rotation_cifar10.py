"""Rotation prediction on CIFAR-10, Gidaris et al.'s CIFAR setup with a ResNet-18.

Gidaris, Singh, Komodakis 2018 (gidariss/FeatureLearningRotNet,
`config/CIFAR10_RotNet_NIN4blocks.py` and `dataloader.py`): batches of 128 images, each in all
four rotations (512 through the network); a random 32 px crop of the image padded by 4 px and a
random flip, no colour augmentation; SGD with momentum 0.9 (Nesterov), weight decay 5e-4,
lr 0.1, x0.2 at epochs 60, 120 and 160 of 200. The learning rate here is 0.2 x batch/256 = 0.1 at
batch 128. Differences: the encoder is ResNet-18 with the CIFAR stem (as for SimCLR on
CIFAR-10; Gidaris used a Network-In-Network), momentum is not Nesterov, BatchNorm scales and
biases get no weight decay, and inputs are in [0, 1] (Gidaris: standardised per channel). An
accelerator run:

  python -m selfsup pretrain --config=configs/rotation_cifar10.py --workdir=runs/rotation_cifar10

`:runlocal` shrinks it to a ~2 minute CPU run on the same code path.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("rotation_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.model.update(depth=18, stem="cifar")
    config.rotation.update(crop="padded", crop_padding=4, color=False)
    config.optim.update(learning_rate=0.2, weight_decay=5e-4, warmup_epochs=0.0, decay_factor=0.2)
    if runlocal:  # The ImageNet file already shrank the width and the schedule.
        return config
    config.image_size = 32
    config.model.width = 1.0
    config.batch_size = 128
    config.num_epochs = 200.0
    config.optim.decay_epochs = (60, 120, 160)
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 2000
    return config
