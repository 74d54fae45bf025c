"""The demo: both pretext tasks on the built-in offline dataset, each followed by a linear probe and
k-NN of its frozen encoder next to a random-init encoder of the same architecture.

  python -m selfsup demo                                     # ~6-8 minutes on 2 CPU cores
  python -m selfsup demo --config=configs/demo.py:runlocal   # ~3 minutes, same code path

`tasks.<name>.pretrain` is the pretraining config (configs/simclr_builtin.py,
configs/relpatch_builtin.py) and `tasks.<name>.probe` its evaluation (configs/linear_probe.py);
any key can be overridden, e.g. `--config.tasks.relpatch.pretrain.num_epochs=4`. Both encoders
are probed on whole-image features: for the relative-patch encoder these beat Revisiting-SSL's
mean over the 9 pretext patches on the probe's minival split (20.6% vs 15.7%;
`--config.tasks.relpatch.probe.features=patches` switches).
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file, parse_runlocal

CONFIGS = Path(__file__).parent


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.data_dir = ""  # Where the built-in dataset is prepared; "" = TFDS's default.
    config.tasks = ml_collections.ConfigDict()
    for name in ("simclr", "relpatch"):
        config.tasks[name] = ml_collections.ConfigDict(
            dict(
                pretrain=load_config_file(CONFIGS / f"{name}_builtin.py", arg),
                probe=load_config_file(CONFIGS / "linear_probe.py", arg),
            )
        )
    # The relative-patch encoder sees 72 px inputs, so evaluation would crop the central 87.5%
    # of the 32 px images; the demo's numbers were measured on the whole image.
    config.tasks.relpatch.probe.crop_proportion = 1.0
    return config
