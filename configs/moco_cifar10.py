"""MoCo on CIFAR-10 with ResNet-18 (CIFAR stem), facebookresearch/moco's own CIFAR-10 recipe.

The arguments of facebookresearch/moco `colab/moco_cifar10_demo.ipynb`: ResNet-18 with a 3x3
stride-1 stem and no max-pool, batch 512, 200 epochs, SGD (momentum 0.9, weight decay 5e-4)
with learning rate 0.06 (= 0.03 x 512/256) on a cosine, a queue of K = 4,096 keys, key-encoder
momentum 0.99, temperature 0.1, a linear 128-d head (its ResNet's `fc`; no MLP), the
asymmetric loss; views with crops of 8-100% (torchvision's `RandomResizedCrop`), colour
jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale p=0.2, flip, no blur. The notebook reports 82.6%
k-NN accuracy (k = 200, T = 0.1) on CIFAR-10's test split after 200 epochs (88.7% after 800),
and 90.7% linear evaluation for its 800-epoch symmetric-loss model. An accelerator run:

  python -m selfsup pretrain --config=configs/moco_cifar10.py --workdir=runs/moco_cifar10

The notebook splits BatchNorm into 8 groups to mimic 8 GPUs with shuffled keys; here
BatchNorm spans the global batch (its `--bn-splits 1`, which it calls analogous to
SyncBatchNorm). Other differences as in configs/moco_imagenet.py. `:runlocal` shrinks it to a
~2 minute CPU run; without a network, point it at images on disk, e.g.
  --config.data=folder:/path/to/cifar10-sample --config.eval_split=val
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("moco_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.image_size = 32
    config.model.update(depth=18, stem="cifar")
    config.moco.update(momentum=0.99, temperature=0.1, mlp=False, min_crop_area=0.08, blur=False)
    config.optim.weight_decay = 5e-4
    if runlocal:  # The ImageNet file already shrank the model, the queue and the schedule.
        return config
    config.moco.queue_size = 4096
    config.batch_size = 512
    return config
