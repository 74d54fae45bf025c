"""SwAV on the built-in offline dataset (`builtin:shapes`), at a CPU budget, with multi-crop.

A CPU-budget variant of configs/swav_cifar10.py (same recipe, optimizer and code path), sized
like configs/byol_builtin.py: ResNet-18 at width 1/8 (64-d features), batch 128, 8 epochs with
one warmup epoch; what differs from the published recipe for that budget and data:
- 4 local crops of 16 px (5-20% of the image) beside the two 32 px global ones (20-100%, as
  simclr_builtin.py explains for this dataset), so multi-crop runs: together they cost about
  as much as one more global crop;
- a 512-64 projection head and 100 prototypes for the 64-d features and 10 classes;
- Sinkhorn's epsilon 0.03 and no queue, the prototypes frozen for the first epoch: with the
  recipe's 0.05 (and a queue of 10 batches from epoch 2) the loss sat at ln(100), swav's
  README's sign of collapse, from step ~100 on, and 0.03 with that queue collapsed once the
  queue started; 0.03 without it kept falling (4.53 after 8 epochs; linear probe 15.7% on
  `test` with configs/linear_probe.py:runlocal, random init 11.9%, the collapsed run 13.1%).
Its `:runlocal` form keeps a queue of two batches and starts it, and frees the prototypes,
within its 60 steps (after 0.1 epoch: 16 steps of 64 images), so it runs every path of the
task.
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = load_config_file(Path(__file__).with_name("swav_cifar10.py"), arg)
    config.data = "builtin:shapes"
    config.eval_split = "test"
    config.swav.update(
        global_crops_scale=(0.2, 1.0),
        local_crops_number=4,
        local_crops_size=16,
        local_crops_scale=(0.05, 0.2),
    )
    if runlocal:  # The recipe files already shrank the model and the schedule.
        config.swav.update(queue_length=128, epoch_queue_starts=0.1)
        config.optim.frozen_first = (("^prototypes/", 0.1),)
        return config
    config.batch_size = 128
    config.num_epochs = 8.0
    config.model.width = 0.125
    config.swav.update(
        nmb_prototypes=100, feat_dim=64, hidden_mlp=512, epsilon=0.03, queue_length=0
    )
    config.optim.update(warmup_epochs=1.0, frozen_first=(("^prototypes/", 1.0),))
    config.log_every_steps = 50
    config.checkpoint_every_steps = 250
    config.eval_every_steps = 250
    config.keep_checkpoints = 2
    return config
