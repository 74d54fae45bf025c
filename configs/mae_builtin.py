"""MAE on the built-in offline dataset (`builtin:shapes`), at a CPU budget.

A CPU-budget variant of configs/mae_cifar10.py (same recipe, optimizer and code path): ViT-Tiny
with 4 px patches on the 32 px images, a decoder of 2 blocks of 128 with 4 heads (the recipe's
8 x 512 would cost more than the encoder on 16 visible patches), batch 128, 8 epochs with one
warmup epoch; crops of at least 20% of the image, as simclr_builtin.py explains for this data.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("mae_cifar10.py"), arg)
    config.data = "builtin:shapes"
    config.eval_split = "test"
    if runlocal:  # The recipe files already shrank the model and the schedule.
        return config
    config.model.update(name="vit_tiny", patch_size=4, image_size=32)
    config.mae.update(decoder_dim=128, decoder_depth=2, decoder_heads=4, min_crop_area=0.2)
    config.batch_size = 128
    config.num_epochs = 8.0
    config.optim.warmup_epochs = 1.0
    config.log_every_steps = 50
    config.checkpoint_every_steps = 250
    config.eval_every_steps = 250
    config.keep_checkpoints = 2
    return config
