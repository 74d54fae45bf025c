"""Linear probe and k-NN of a pretrained encoder's frozen features on all training labels,
next to a random-init encoder: the transfer suite (`configs/transfer.py`) without fine-tuning.

  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/probe \
      --config.checkpoint=runs/simclr_cifar10

Multinomial logistic regression solved to convergence with L-BFGS on standardised features, as
SimCLR and Kornblith et al. 2019 evaluate: the L2 strength is chosen from 45 values on a
class-stratified minival split held out from `train_split` (the probe fit on the rest), then the
probe is refit with it on all of `train_split` and reported on `eval_split`. The k-NN bank is all
of `train_split` (DINO). Empty data keys mean "what the checkpoint was pretrained on".
"""

from pathlib import Path

import ml_collections

from selfsup.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).with_name("transfer.py"), arg)
    config.evaluators = ("linear", "knn")
    config.label_fractions = (1.0,)
    return config
