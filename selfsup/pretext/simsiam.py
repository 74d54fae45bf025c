"""SimSiam (Chen & He 2021): a predictor on one view's projection learns to match the
stop-gradient projection of the other view of the same image, with no negatives and no
momentum encoder.

Matches facebookresearch/simsiam `simsiam/builder.py`: each view goes through the encoder as
its own batch (BatchNorm statistics per view, over the global batch); the projector is three
layers (Linear, BatchNorm, ReLU twice, then Linear and BatchNorm without scale or offset), the
predictor a bottleneck (Linear, BatchNorm, ReLU, Linear with bias); the loss is
`-(cos(p1, z2.detach()) + cos(p2, z1.detach())) / 2` averaged over the batch (`main_simsiam.py`).
The predictor trains at the peak learning rate throughout (its `--fix-pred-lr`): the recipe's
`config.optim.param_groups`. The views are MoCo v2's (crops of at least 20%, colour jitter
0.4/0.4/0.4/0.1 with p=0.8, grayscale 0.2, blur with p=0.5, flip), as SimSiam's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import MAX_WIDTH, choice, flag
from selfsup.data.view_config import COLOR_STRENGTH, CROP_SAMPLERS
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import DenseBN, ProjectionHead, online_probe_head, torch_linear

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.simsiam`: facebookresearch/simsiam's ImageNet defaults (`main_simsiam.py`)."""
    return ml_collections.ConfigDict(
        dict(
            proj_hidden_dim=2048,  # The encoder's feature width (ResNet-50: 2048).
            proj_out_dim=2048,
            pred_hidden_dim=512,
            # MoCo v2's augmentation, as SimSiam's: SimCLR's with ColorJitter(0.4, 0.4, 0.4, 0.1),
            # crops of at least 20%, Gaussian blur with p=0.5.
            color_strength=0.5,
            min_crop_area=0.2,
            crop_sampler="torchvision",  # `RandomResizedCrop` (`augment.crop_box`), as SimSiam's.
            blur=True,
        )
    )


# `config.simsiam`'s rules (`selfsup.config.check_values`); `min_crop_area` is a shared one.
VALUE_RULES = {
    "proj_hidden_dim": MAX_WIDTH,
    "proj_out_dim": MAX_WIDTH,
    "pred_hidden_dim": MAX_WIDTH,
    "color_strength": COLOR_STRENGTH,
    "crop_sampler": choice(*CROP_SAMPLERS),
    "blur": flag(),
}


def cosine_similarity(x: jax.Array, y: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Per row, torch's `F.cosine_similarity`: x.y / (max(|x|, eps) max(|y|, eps))."""
    norm_x = jnp.maximum(jnp.linalg.norm(x, axis=-1), eps)
    norm_y = jnp.maximum(jnp.linalg.norm(y, axis=-1), eps)
    return jnp.sum(x * y, axis=-1) / (norm_x * norm_y)


def simsiam_loss(predictions: jax.Array, projections: jax.Array) -> jax.Array:
    """`predictions`, `projections` [N, 2, D] (view axis second): SimSiam's symmetrised negative
    cosine, each view's prediction against the other view's projection, whose gradient is
    stopped, averaged over images and halved per order (in [-1, 1])."""
    targets = jax.lax.stop_gradient(projections)
    loss = cosine_similarity(predictions[:, 0], targets[:, 1])
    loss = loss + cosine_similarity(predictions[:, 1], targets[:, 0])
    return -jnp.mean(loss) / 2


class Predictor(nnx.Module):
    """SimSiam's predictor: Linear (bias-free), BatchNorm, ReLU, Linear (with bias)."""

    def __init__(self, dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
        self.hidden = DenseBN(dim, hidden_dim, center=True, rngs=rngs)
        self.out = torch_linear(hidden_dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x, train=train)))


class SimSiamModel(nnx.Module):
    """Encoder, projector and predictor; `encoder` is what transfer evaluators use."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        c = config.simsiam
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        dim = self.encoder.feature_dim
        self.projector = ProjectionHead(
            dim,
            hidden_dim=c.proj_hidden_dim,
            out_dim=c.proj_out_dim,
            num_layers=3,
            out="bn_plain",
            rngs=rngs,
        )
        self.predictor = Predictor(c.proj_out_dim, c.pred_hidden_dim, rngs=rngs)
        self.online_probe = online_probe_head(dim, config, rngs=rngs)

    def __call__(self, views: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """views [N, 2, H, W, C] -> (predictions, projections, each [N, 2, D], and the encoder
        features of each image, the mean over its two views, [N, F]); each view is its own
        batch, as SimSiam's two forward passes."""
        features = [self.encoder(views[:, v], train=train) for v in range(2)]
        z = [self.projector(h, train=train) for h in features]
        p = [self.predictor(x, train=train) for x in z]
        mean_features = (features[0] + features[1]) / 2
        return jnp.stack(p, axis=1), jnp.stack(z, axis=1), mean_features


class SimSiam:
    """The pretext task: its views (TF side), its model, and its loss."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        from selfsup.data import augment

        c = self.config.simsiam
        views = augment.two_views(
            image,
            seed,
            size=self.config.image_size,
            color_strength=c.color_strength,
            min_crop_area=c.min_crop_area,
            crop_sampler=c.crop_sampler,
            blur=c.blur,
        )
        return {"views": views}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: its two views."""
        return list(example["views"])

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`)."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> SimSiamModel:
        return SimSiamModel(self.config, rngs=rngs)

    def loss(
        self, model: SimSiamModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        """The metric `projection_std`: the mean over dimensions of the unit projections'
        standard deviation over the batch, SimSiam's collapse monitor (0 when collapsed,
        1/sqrt(D) when spread)."""
        predictions, projections, features = model(batch["views"], train=train)
        z = projections[:, 0]
        unit = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        metrics = {"projection_std": jnp.mean(jnp.std(unit, axis=0))}
        return simsiam_loss(predictions, projections), metrics, features
