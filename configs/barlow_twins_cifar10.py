"""Barlow Twins on CIFAR-10 with ResNet-18 (CIFAR stem), solo-learn's published recipe.

solo-learn (da Costa et al. 2022, JMLR) `scripts/pretrain/cifar/barlow.yaml` with its
`augmentations/asymmetric.yaml`: ResNet-18 with a 3x3 stem and no max-pool, batch 256, 1000
epochs, LARS (one learning rate, 0.3 x batch/256, trust coefficient eta 0.02, weight decay
1e-4, biases and BatchNorm parameters excluded), 10 warmup epochs then cosine decay, projector
2048-2048-2048, lambda 0.0051, the loss scaled by 0.1, global ("sync") BatchNorm; views with
crops of 8-100%, torchvision's colour jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2, no
blur (32 px images), solarize 0 / 0.2. solo-learn's README reports 92.10% top-1 online linear
accuracy on CIFAR-10's test split for this recipe. An accelerator run:

  python -m selfsup pretrain --config=configs/barlow_twins_cifar10.py --workdir=runs/bt_cifar10

Remaining differences from solo-learn: LARS is optax's, without solo-learn's `clip_lr`;
TensorFlow's colour ops; the images are not standardised; the online probe trains with the
encoder's optimizer. `:runlocal` shrinks it to a ~2 minute CPU run on the same code path;
without a network, point it at images on disk, e.g.
  --config.data=folder:/path/to/cifar10-sample --config.eval_split=val
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("barlow_twins_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.image_size = 32
    config.model.update(depth=18, stem="cifar")
    config.barlow_twins.update(scale_loss=0.1, blur=(0.0, 0.0))
    config.optim.update(
        learning_rate=0.3, weight_decay=1e-4, trust_coefficient=0.02, param_groups=()
    )
    if runlocal:  # The ImageNet file already shrank the model and the schedule.
        return config
    config.barlow_twins.update(proj_hidden_dim=2048, proj_out_dim=2048)
    config.batch_size = 256
    return config
