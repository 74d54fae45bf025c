"""BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) learns to predict
a momentum target network's projection of the other view of the same image.

Matches deepmind-research `byol/byol_experiment.py`: each view goes through the encoder as its
own batch (BatchNorm statistics per view, over the global batch); the loss is DeepMind's
`regression_loss` (||p/|p| - z/|z|||^2 = 2 - 2 cos, with `l2_normalize`'s epsilon) of each
view's prediction against the target's projection of the *other* view, the two orders summed
and then averaged over the batch (summed, not averaged: averaging would halve the loss and
its gradient); the target is a second copy of the whole network, initialised from its own key
as DeepMind does, runs in training mode, gets no gradient, and after each optimizer step moves
towards the new online weights by `tau`, which rises from `base_momentum` to 1 on a cosine
over training (`teacher.cosine_momentum`). The target's projections skip its predictor, whose
output nothing reads. The views are BYOL's asymmetric pair (`VIEW_COLORS` below) on the host,
or with `color_on_device` their colour part in the jitted step, as DeepMind's
`augmentations.postprocess` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import MAX_WIDTH, choice, flag, probability, sequence
from selfsup.data import augment_jax
from selfsup.data.view_config import CROP_SAMPLERS
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import online_probe_head
from selfsup.models.resnet import BN_EPSILON, BN_MOMENTUM
from selfsup.pretext import teacher

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.byol`: deepmind-research byol's ImageNet recipe (its 300-epoch presets)."""
    return ml_collections.ConfigDict(
        dict(
            base_momentum=0.99,  # tau at step 0 (DeepMind: 0.99 for 300 epochs, 0.996 for 1000).
            proj_hidden_dim=4096,
            proj_out_dim=256,
            pred_hidden_dim=4096,
            min_crop_area=0.08,
            crop_sampler="byol",  # DeepMind's `_decode_and_random_crop` (`augment.crop_box`).
            # Per view (view 1, view 2): BYOL's asymmetric blur and solarize probabilities.
            blur=(1.0, 0.1),
            solarize=(0.0, 0.2),
            # Brightness adds U[-0.4, 0.4] (DeepMind's augmentations); False multiplies by
            # U[0.6, 1.4] (torchvision's, as CIFAR recipes built on it do).
            additive_brightness=True,
            # Colour jitter, grayscale, blur and solarize in the jitted step (the host then only
            # crops, flips and resizes), as DeepMind's implementation runs them.
            color_on_device=False,
        )
    )


# The rules of the view keys of BYOL's asymmetric pair, which Barlow Twins and VICReg share.
VIEW_RULES = {
    "crop_sampler": choice(*CROP_SAMPLERS),
    "blur": sequence(probability(), "(1.0, 0.1)", min_len=2, max_len=2),
    "solarize": sequence(probability(), "(0.0, 0.2)", min_len=2, max_len=2),
    "additive_brightness": flag(),
    "color_on_device": flag(),
}
# `config.byol`'s rules (`selfsup.config.check_values`); `min_crop_area` is a shared one.
VALUE_RULES = {
    "base_momentum": probability(" (the target's starting momentum; BYOL: 0.99)"),
    "proj_hidden_dim": MAX_WIDTH,
    "proj_out_dim": MAX_WIDTH,
    "pred_hidden_dim": MAX_WIDTH,
    **VIEW_RULES,
}


def view_colors(c: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Each view's colour arguments of `augment.augmented_view` / `augment_jax.augment_colors`:
    BYOL's jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; then grayscale), with
    the config's per-view blur and solarize probabilities."""
    jitter = augment_jax.ColorJitter(0.4, 0.4, 0.2, 0.1, additive_brightness=c.additive_brightness)
    return [
        dict(jitter=jitter, blur_p=blur, solarize_p=solarize)
        for blur, solarize in zip(c.blur, c.solarize, strict=True)
    ]


def asymmetric_views(image: tf.Tensor, seed: tf.Tensor, c, *, size: int) -> tf.Tensor:
    """BYOL's pair of views [2, size, size, 3] of `image` under the view keys of block `c`
    (`VIEW_RULES`, `min_crop_area`); with `c.color_on_device` only cropped, flipped and
    resized, and `color_views` colours them in the step."""
    import tensorflow as tf  # Only the input pipeline needs TensorFlow.

    from selfsup.data import augment

    no_color = dict(jitter=None, blur_p=0.0, solarize_p=0.0)
    views = [
        augment.augmented_view(
            image,
            view_seed,
            size=size,
            min_crop_area=c.min_crop_area,
            crop_sampler=c.crop_sampler,
            **(no_color if c.color_on_device else colors),
        )
        for view_seed, colors in zip(augment.split_seed(seed, 2), view_colors(c))
    ]
    return tf.stack(views)


def color_views(views: jax.Array, rng: jax.Array, c) -> jax.Array:
    """`views` [N, 2, ...] of `asymmetric_views`, coloured in the step if `c.color_on_device`
    (from the step's key: a resumed run draws the same colours, as in simclr.py)."""
    if not c.color_on_device:
        return views
    return augment_jax.augment_colors_per_view(views, rng, view_colors(c))


def l2_normalize(x: jax.Array, epsilon: float = 1e-12) -> jax.Array:
    """deepmind-research byol `helpers.l2_normalize` (the epsilon bounds the squared norm)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), epsilon))


def regression_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per row, ||x/|x| - y/|y|||^2 = 2 - 2 cos(x, y) (DeepMind's `regression_loss`)."""
    return jnp.sum(jnp.square(l2_normalize(x) - l2_normalize(y)), axis=-1)


def byol_loss(predictions: jax.Array, target_projections: jax.Array) -> jax.Array:
    """`predictions`, `target_projections` [N, 2, D] (view axis second): the mean over images
    of the two orders' summed regression losses, view 1's prediction against the target's
    view 2 and view 2's against view 1."""
    loss = regression_loss(predictions[:, 0], target_projections[:, 1])
    loss = loss + regression_loss(predictions[:, 1], target_projections[:, 0])
    return jnp.mean(loss)


class MLP(nnx.Module):
    """deepmind-research byol `networks.MLP`: Linear (with bias), BatchNorm, ReLU, Linear
    (without bias); haiku's default initialisation (truncated normal, std 1/sqrt(fan in))."""

    def __init__(self, in_dim: int, *, hidden_dim: int, out_dim: int, rngs: nnx.Rngs):
        def init(key, shape, dtype=jnp.float32):
            return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / np.sqrt(shape[0])

        self.hidden = nnx.Linear(in_dim, hidden_dim, kernel_init=init, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden_dim, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
        self.out = nnx.Linear(hidden_dim, out_dim, use_bias=False, kernel_init=init, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.out(nnx.relu(self.bn(self.hidden(x), use_running_average=not train)))


class BYOLModel(nnx.Module):
    """Encoder, projector and predictor (the target is a second copy, in `TrainState.extra`);
    `encoder` is what transfer evaluators use."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        c = config.byol
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        dim = self.encoder.feature_dim
        self.projector = MLP(dim, hidden_dim=c.proj_hidden_dim, out_dim=c.proj_out_dim, rngs=rngs)
        self.predictor = MLP(
            c.proj_out_dim, hidden_dim=c.pred_hidden_dim, out_dim=c.proj_out_dim, rngs=rngs
        )
        self.online_probe = online_probe_head(dim, config, rngs=rngs)

    def project(self, views: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """views [N, 2, H, W, C] -> (encoder features, projections), each [N, 2, ...]; each
        view is its own batch, as DeepMind's `apply_once_fn`."""
        features = [self.encoder(views[:, v], train=train) for v in range(2)]
        projections = [self.projector(h, train=train) for h in features]
        return jnp.stack(features, axis=1), jnp.stack(projections, axis=1)

    def __call__(self, views: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """views [N, 2, H, W, C] -> (predictions [N, 2, D], view 1's encoder features [N, F],
        which DeepMind's online classifier reads)."""
        features, projections = self.project(views, train=train)
        predictions = [self.predictor(projections[:, v], train=train) for v in range(2)]
        return jnp.stack(predictions, axis=1), features[:, 0]


class BYOL:
    """The pretext task: its views (TF side), its online model, its target and loss."""

    sharded_extra = ()  # The target is replicated like the online weights.

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.config.image_size
        return {"views": asymmetric_views(image, seed, self.config.byol, size=size)}

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: its two views."""
        return list(example["views"])

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`), as DeepMind's `preprocess_for_eval`."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> BYOLModel:
        return BYOLModel(self.config, rngs=rngs)

    def init_extra(self, params: dict, batch_stats: dict, rng: jax.Array) -> dict[str, Any]:
        """The target: the whole network again, from its own key (DeepMind initialises online
        and target from split keys)."""
        _, params, batch_stats = nnx.split(
            self.build_model(nnx.Rngs(rng)), nnx.Param, nnx.BatchStat
        )
        target = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}
        return {"target": target}

    def loss(
        self,
        model: BYOLModel,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        *,
        train: bool,
        extra: dict[str, Any],
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, dict[str, Any]]:
        views = color_views(batch["views"], rng, self.config.byol)
        predictions, features = model(views, train=train)
        projections, target = teacher.run(
            model, extra["target"], lambda net: net.project(views, train=train)[1]
        )
        return byol_loss(predictions, projections), {}, features, {"target": target}

    def update_extra(
        self,
        extra: dict[str, Any],
        params: dict,
        step: jax.Array,
        *,
        total_steps: int,
        steps_per_epoch: float,
    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        tau = teacher.cosine_momentum(step, total_steps, self.config.byol.base_momentum)
        return {"target": teacher.moving_average(extra["target"], params, tau)}, {"momentum": tau}
