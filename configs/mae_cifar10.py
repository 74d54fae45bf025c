"""MAE on CIFAR-10 with ViT-S/4, solo-learn's published recipe.

solo-learn (da Costa et al. 2022, JMLR) `scripts/pretrain/cifar/mae.yaml` with its
`augmentations/reconstruction.yaml`: ViT-Small with 4 px patches on 32 px images (64 patches),
the decoder 8 blocks of 512 with 16 heads, 75% of the patches masked, `norm_pix_loss`; AdamW
(betas 0.9, 0.95, weight decay 0.05) at 2e-4 for batch 256, 10 warmup epochs (solo-learn's
`warmup_cosine` default) then cosine decay, 1000 epochs; views: a random resized crop of 8-100%
and a flip. An accelerator run:

  python -m selfsup pretrain --config=configs/mae_cifar10.py --workdir=runs/mae_cifar10

Remaining differences from solo-learn: the images are not standardised; TensorFlow's resize.
`:runlocal` shrinks it to a ~2 minute CPU run on the same code path; without a network, point
it at images on disk, e.g. --config.data=folder:/path/to/cifar10-sample --config.eval_split=val
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("mae_imagenet.py"), arg)
    config.data = "tfds:cifar10"
    config.eval_split = "test"
    config.image_size = 32
    config.mae.min_crop_area = 0.08
    config.optim.learning_rate = 2e-4
    if runlocal:  # The ImageNet file already shrank the model and the schedule.
        return config
    config.model.update(name="vit_small", patch_size=4, image_size=32)
    config.batch_size = 256
    config.num_epochs = 1000.0
    config.optim.warmup_epochs = 10.0
    return config
