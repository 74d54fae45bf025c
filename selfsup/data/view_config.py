"""The settings of a whole-image training view (`selfsup.data.views`: crop, flip, colour) that
rotation and exemplar share, free of TensorFlow so a task declares and checks them in processes
that never read data."""

from __future__ import annotations

import ml_collections

from selfsup.config import ConfigError

CROPS = ("inception", "padded")


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


def check_view_config(c: ml_collections.ConfigDict, block: str) -> None:
    """A ConfigError naming `config.<block>.<key>` for a crop that cannot be drawn."""
    if c.crop not in CROPS:
        raise ConfigError(f"unknown config.{block}.crop={c.crop!r}: use one of {list(CROPS)}.")
    if c.crop == "padded" and not (isinstance(c.crop_padding, int) and c.crop_padding >= 0):
        raise ConfigError(
            f"config.{block}.crop_padding={c.crop_padding!r}: set it to a number of pixels >= 0."
        )
