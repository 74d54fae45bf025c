"""SimSiam on the built-in offline dataset (`builtin:shapes`), at the demo's CPU budget.

A CPU-budget variant of configs/simsiam_cifar10.py (same recipe, optimizer and code path), sized
like configs/byol_builtin.py: ResNet-18 at width 1/8 (64-d features), batch 128, 8 epochs with
one warmup epoch, and what differs from the published recipe for that budget and data:
- projector 512-512 and predictor 128 (the recipe's 2048-512 keep 4x and 1/4 of ResNet-18's
  512 features at the projector's width; these keep 8x of 64 and the predictor's 1/4);
- crops of at least 20% of the image, as simclr_builtin.py explains for this dataset.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("simsiam_cifar10.py"), arg)
    config.data = "builtin:shapes"
    config.eval_split = "test"
    if runlocal:  # The recipe files already shrank the model and the schedule.
        return config
    config.batch_size = 128
    config.num_epochs = 8.0
    config.model.width = 0.125
    config.simsiam.update(
        proj_hidden_dim=512, proj_out_dim=512, pred_hidden_dim=128, min_crop_area=0.2
    )
    config.optim.warmup_epochs = 1.0
    config.log_every_steps = 50
    config.checkpoint_every_steps = 250
    config.eval_every_steps = 250
    config.keep_checkpoints = 2
    return config
