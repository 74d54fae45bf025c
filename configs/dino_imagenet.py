"""DINO on ImageNet with ViT-S/16, the paper's repository's best ViT-S/16 run.

facebookresearch/dino README, "Boosting DINO performance" (`--arch vit_small --epochs 300
--teacher_temp 0.07 --warmup_teacher_temp_epochs 30 --norm_last_layer false`, 16 GPUs x 64 =
batch 1024; 73.3% k-NN, 76.0% linear on ImageNet), with `main_dino.py`'s defaults for the rest:
AdamW at 5e-4 x batch/256 after 10 warmup epochs, cosine to 1e-6; weight decay 0.04 -> 0.4 on a
cosine (not on biases and norms); each parameter's gradient clipped to norm 3.0; the head's last
layer frozen for the first epoch; head 2048-2048-256 -> K = 65,536; teacher momentum 0.996 -> 1;
student temperature 0.1, centre momentum 0.9; stochastic depth 0.1 in the student; multi-crop:
2 x 224 px of 40-100% of the image and 8 x 96 px of 5-40%. An accelerator run:

  python -m selfsup pretrain --config=configs/dino_imagenet.py --workdir=runs/dino_imagenet

Remaining differences from the reference: the ViT is timm's (its initialisation; position
embeddings resampled as timm does for 96 px crops); the blur is SimCLR's, not PIL's; images are
not standardised; ImageNet must already be prepared in `--config.data_dir`. `:runlocal` shrinks
it to a ~2 minute CPU run on the same code path (ViT-Tiny/8 on 32 px global and 16 px local
crops, a 256-64-1024 head, 60 steps).
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import dino

common = runpy.run_path(str(Path(__file__).with_name("common.py")))

# main_dino.py's `freeze_last_layer`: no update to the head's last layer in the first epoch.
FROZEN_LAST_LAYER = (("^head/(last_layer|g$)", 1.0),)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    block = dino.default_config()
    block.update(teacher_temp=0.07, warmup_teacher_temp_epochs=30, norm_last_layer=False)
    config = common["pretraining"](
        "dino",
        block,
        runlocal,
        data=common["imagenet"](),
        batch_size=1024,
        num_epochs=300.0,
        model=common["encoder"]("vit_small", patch_size=16, image_size=224),
        optim=common["optimizer"](
            "adamw",
            5e-4,
            schedule="cosine_linspace",  # main_dino.py's `cosine_scheduler`.
            warmup_epochs=10.0,
            weight_decay=0.04,
            weight_decay_end=0.4,
            min_learning_rate=1e-6,
            clip_per_tensor=3.0,
            frozen_first=FROZEN_LAST_LAYER,
        ),
        local=dict(batch_size=32, image_size=32),
    )
    if runlocal:
        config.dino.update(out_dim=1024, hidden_dim=256, bottleneck_dim=64)
        config.dino.update(local_crops_number=2, local_crops_size=16)
    return config
