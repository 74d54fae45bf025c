"""DINO on ImageNet with ResNet-50, the paper's repository's ResNet-50 run.

facebookresearch/dino README, "ResNet-50 and other convnets trainings" (`--arch resnet50
--optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4 --global_crops_scale
0.14 1 --local_crops_scale 0.05 0.14`, one node of 8 GPUs x 64 = batch 512, 100 epochs), with
`main_dino.py`'s defaults for the rest: SGD with momentum 0.9 at 0.03 x batch/256 after 10
warmup epochs, cosine to 1e-6; weight decay 1e-4 (not on biases and BatchNorm); each
parameter's gradient clipped to norm 3.0; the head's last layer frozen for the first epoch and
weight-normalised (g fixed to 1); teacher temperature 0.04 throughout; no stochastic depth;
multi-crop 2 x 224 px of 14-100% and 8 x 96 px of 5-14%. The README reports 75.3% linear
accuracy for its released ResNet-50. An accelerator run:

  python -m selfsup pretrain --config=configs/dino_resnet50_imagenet.py --workdir=runs/dino_rn50

Remaining differences: the blur is SimCLR's, not PIL's; images are not standardised.
`:runlocal` shrinks it to a ~2 minute CPU run on the same code path.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("dino_imagenet.py"), arg)
    config.model.name = "resnet"
    config.dino.update(
        teacher_temp=0.04, warmup_teacher_temp_epochs=0, norm_last_layer=True, drop_path=0.0
    )
    config.dino.update(global_crops_scale=(0.14, 1.0), local_crops_scale=(0.05, 0.14))
    config.optim.update(name="sgd", learning_rate=0.03, weight_decay=1e-4, weight_decay_end=1e-4)
    if runlocal:  # The ViT file already shrank the schedule and the head.
        return config
    config.model.update(depth=50, width=1.0)
    config.batch_size = 512
    config.num_epochs = 100.0
    return config
