"""Multi-crop (Caron et al. 2020, SwAV; used by DINO): two global crops of the image at the
training size plus `local_crops_number` small local crops, each group its own array, so the
encoder runs once per resolution (facebookresearch/dino `MultiCropWrapper`, swav
`src/resnet50.py`'s `forward`) and a ViT resamples its position embeddings for the local size.

The host only crops, resizes and flips (uint8 out: a quarter of the bytes of float32 views);
each task colours the views in the jitted step from the step's key
(`augment_jax.augment_colors_per_view`), as BYOL's `color_on_device` does. Crop boxes are
torchvision's `RandomResizedCrop` (both references crop with it; `augment.crop_box`), resized
bicubically (DINO's interpolation; SwAV's is bilinear). Free of TensorFlow at import, like
every task's config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections

from selfsup.config import choice, integer, number, sequence
from selfsup.data.view_config import CROP_SAMPLERS

if TYPE_CHECKING:
    import tensorflow as tf

GLOBAL_CROPS = 2  # Both references' teacher / assignment views.


def crop_keys(**overrides) -> dict:
    """A task block's multi-crop keys, DINO's ImageNet defaults (`main_dino.py`'s arguments)
    with `overrides`; the global crops' side is `config.image_size`."""
    return (
        dict(
            global_crops_scale=(0.4, 1.0),  # Area fractions of the image.
            local_crops_number=8,
            local_crops_size=96,
            local_crops_scale=(0.05, 0.4),
            crop_sampler="torchvision",
        )
        | overrides
    )


AREA_RANGE = sequence(number(0, 1, open_low=True), "(0.05, 0.4)", min_len=2, max_len=2)
# The rules of `crop_keys`'s keys (`selfsup.config.check_values`).
CROP_RULES = {
    "global_crops_scale": AREA_RANGE,
    "local_crops_number": integer(0, 64, " (DINO: 8 or 10; SwAV: 6; 0: two crops only)"),
    "local_crops_size": integer(8, 4096, " (pixels; ImageNet recipes: 96)"),
    "local_crops_scale": AREA_RANGE,
    "crop_sampler": choice(*CROP_SAMPLERS),
}


def host_crops(
    image: tf.Tensor, seed: tf.Tensor, c: ml_collections.ConfigDict, *, size: int
) -> dict[str, tf.Tensor]:
    """One image's crops from block `c` (`crop_keys`): "global" [2, size, size, 3] and, with
    local crops, "local" [L, s, s, 3] (s = `c.local_crops_size`): each a random resized crop
    of its group's area range, then a left-right flip with probability 1/2; uint8 from a uint8
    image. Every crop has its own seed split from `seed`."""
    import tensorflow as tf  # Only the input pipeline needs TensorFlow.

    from selfsup.data import augment

    def crop(crop_seed, side, area_range):
        box_seed, flip_seed = augment.split_seed(crop_seed, 2)
        view = augment.random_resized_crop(
            image, box_seed, size=side, area_range=tuple(area_range), sampler=c.crop_sampler
        )
        view = tf.ensure_shape(augment.random_flip(view, flip_seed), [side, side, 3])
        return augment.host_view(view, image, photometric=False)

    seeds = augment.split_seed(seed, GLOBAL_CROPS + c.local_crops_number)
    crops = {"global": tf.stack([crop(s, size, c.global_crops_scale) for s in seeds[:2]])}
    if c.local_crops_number:
        side, scale = c.local_crops_size, c.local_crops_scale
        crops["local"] = tf.stack([crop(s, side, scale) for s in seeds[GLOBAL_CROPS:]])
    return crops


def groups(batch: dict) -> list:
    """The batch's crop groups [N, V, h, w, 3] in crop order: global, then local if any."""
    return [batch[name] for name in ("global", "local") if name in batch]


def view_major(views: jax.Array) -> jax.Array:
    """[N, V, ...] -> [V * N, ...], view by view: the batch the encoder sees for one group
    (`torch.cat` of the per-crop batches, so BatchNorm normalises over the whole group)."""
    return jnp.swapaxes(views, 0, 1).reshape(-1, *views.shape[2:])
