"""The settings of a whole-image training view (`selfsup.data.views`: crop, flip, colour) that
rotation and exemplar share, free of TensorFlow so a task declares and checks them in processes
that never read data."""

from __future__ import annotations

import ml_collections

from selfsup.config import choice, flag, integer, number

CROPS = ("inception", "padded")
# Whose random resized crop draws the box (`augment.crop_box`).
CROP_SAMPLERS = ("simclr", "byol", "torchvision")


def view_config(**overrides) -> ml_collections.ConfigDict:
    """Revisiting-SSL's view (`inception_preprocess`), with `overrides` for a task's block."""
    return ml_collections.ConfigDict(
        dict(
            crop="inception",  # Or "padded" (Gidaris' CIFAR crop).
            min_crop_area=0.05,  # "inception": slim's area range (0.05, 1).
            crop_padding=4,  # "padded": zeros around the image before the crop.
            flip=True,
            color=True,  # slim's fast-mode brightness and saturation.
        )
        | overrides
    )


# simclr's colour jitter: contrast and saturation factors 1 +- 0.8 x strength, which TF
# refuses below 0.
COLOR_STRENGTH = number(0, 1.25, " (SimCLR: 0.5-1; contrast and saturation 1 +- 0.8 x it)")

# The rules of `view_config`'s keys (`selfsup.config.check_values`; `min_crop_area` is shared).
VIEW_RULES = {
    "crop": choice(*CROPS),
    # The image is padded before the crop, per example: Gidaris pads 4 px at 32.
    "crop_padding": integer(0, 256, " (pixels; Gidaris' CIFAR crop: 4)"),
    "flip": flag(),
    "color": flag(),
}
