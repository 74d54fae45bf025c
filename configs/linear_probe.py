"""Linear probe and k-NN of a pretrained encoder's frozen features, next to a random-init encoder.

  python -m selfsup evaluate --config=configs/linear_probe.py --workdir=runs/probe \
      --config.checkpoint=runs/simclr_cifar10

Multinomial logistic regression solved to convergence with L-BFGS on standardised features;
the L2 strength is chosen on a class-stratified minival split held out from `train_split`,
then the probe is refit on all of `train_split` and reported on `eval_split`. Empty data
keys mean "what the checkpoint was pretrained on".
"""

import ml_collections

from selfsup.config import parse_runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = ml_collections.ConfigDict()
    config.checkpoint = ""  # Required: the --workdir of a pretraining run.
    config.data = ""  # "" = the checkpoint's pretraining data.
    config.data_dir = ""  # "" = the checkpoint's data_dir.
    config.train_split = ""  # "" = the checkpoint's train_split.
    config.eval_split = ""  # "" = the checkpoint's eval_split.
    config.seed = 0
    config.batch_size = 256
    config.crop_fraction = 1.0  # Central crop before resizing (0.875 for ImageNet-size images).
    # "image": features of the whole image; "patches": the mean of the features of a patch
    # task's 3x3 evaluation patches (Revisiting-SSL's evaluation of patch-based models).
    config.features = "image"
    config.random_init_baseline = True
    config.probe = ml_collections.ConfigDict(
        dict(l2_grid=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1], val_fraction=0.1)
    )
    # Weighted k-NN on the same frozen features (Wu et al. 2018; DINO's defaults).
    config.knn = ml_collections.ConfigDict(dict(ks=[20, 200], temperature=0.07))
    if runlocal:
        config.batch_size = 64
        config.probe.l2_grid = [1e-4, 1e-2]
        config.knn.ks = [5, 20]
    return config
