"""SimSiam on CIFAR-10 with ResNet-18 (CIFAR stem), solo-learn's published recipe.

solo-learn (da Costa et al. 2022, JMLR) `scripts/pretrain/cifar/simsiam.yaml` with its
`augmentations/symmetric_weak.yaml`: ResNet-18 with a 3x3 stem and no max-pool, batch 256, 1000
epochs, SGD (learning rate 0.5 x batch/256, momentum 0.9, weight decay 1e-5), 10 warmup epochs
then cosine decay, the predictor at the peak rate throughout (solo-learn's `static_lr`),
projector 2048-2048 and predictor 512, global ("sync") BatchNorm; views with crops of 8-100%,
colour jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale p=0.2, blur p=0.5, flip. solo-learn's
README reports 90.51% top-1 online linear accuracy on CIFAR-10's test split for this recipe.
An accelerator run:

  python -m selfsup pretrain --config=configs/simsiam_cifar10.py --workdir=runs/simsiam_cifar10

Remaining differences from solo-learn: TensorFlow's colour ops, not torchvision's; the images
are not standardised; the online probe trains with the encoder's optimizer. `:runlocal` shrinks
it to a ~2 minute CPU run on the same code path; without a network, point it at images on
disk, e.g. --config.data=folder:/path/to/cifar10-sample --config.eval_split=val
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("simsiam_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.image_size = 32
    config.model.update(depth=18, stem="cifar")
    config.simsiam.min_crop_area = 0.08
    config.optim.update(learning_rate=0.5, weight_decay=1e-5)
    if runlocal:  # The ImageNet file already shrank the model and the schedule.
        return config
    config.batch_size = 256
    config.num_epochs = 1000.0
    config.optim.warmup_epochs = 10.0
    return config
