"""SwAV (Caron et al. 2020): each image's two global crops are assigned to prototypes by
Sinkhorn-Knopp over the batch, and every other crop of the image (global and local) learns to
predict those assignments ("swapped prediction").

Matches facebookresearch/swav `main_swav.py` and `src/resnet50.py`: the encoder runs once per
resolution group (the 2 global crops, then the local ones), each group one batch (BatchNorm
over the group); the projection head Linear(hidden_mlp)-BatchNorm-ReLU-Linear(feat_dim) runs on
all crops at once (its BatchNorm over every crop), then L2 normalisation and the prototypes, a
bias-free Linear(feat_dim, nmb_prototypes). For each of crops_for_assign = [0, 1] (the global
crops) the assignments q are `sinkhorn` of that crop's scores under stop-gradient, and the loss
is -mean(sum(q * log_softmax(scores_v / temperature))) over every other crop v, divided by the
V - 1 other crops and averaged over the two assigned ones. Sinkhorn's sums over the batch are
over the global batch:
the step is one jitted program over a batch-sharded mesh, so a sum over the batch axis is
`distributed_sinkhorn`'s all-reduce (tests/test_swav.py checks that 1 and 8 devices agree).

The prototypes are kept unit-norm by the optimizer (`optim.normalize_after_step`) and held for
the first epoch(s) (`optim.frozen_first`), as main_swav normalises `prototypes.weight` before
every iteration and drops their gradient for `freeze_prototypes_niters`; they start unit-norm.

The optional queue (`queue_length` > 0) keeps the last queue_length embeddings of each global
crop and prepends their scores to the batch's before Sinkhorn (main_swav's `use_the_queue`): it
starts empty at epoch `epoch_queue_starts`, fills newest-first as main_swav shifts it, and is
used once its last row is filled. It lives in `TrainState.extra` as [queue_length, 2, feat_dim]
(queue row first, so it splits over the mesh's data axis as MoCo's queue does).

Views: `multicrop.host_crops` on the host (uint8, torchvision's RandomResizedCrop and flip);
colour in the step, `get_color_distortion(s=1.0)` (jitter 0.8/0.8/0.8/0.2 with p=0.8,
grayscale p=0.2) then `PILRandomGaussianBlur` (p=0.5, sigma U(0.1, 2)) on every crop, by
`augment_jax`'s ops: TF's formulas for contrast (around each channel's mean, not the grey mean)
and saturation (in HSV, not a blend with grey), TF's luma weights, and a Gaussian of
floor(side / 10) taps (odd; none below 20 px) with zero padding, where PIL blurs the whole
uint8 image with edge extension. Images are not standardised by ImageNet's mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import MAX_ARRAY_VALUES, MAX_WIDTH, TEMPERATURE, Rule, integer, number
from selfsup.data import augment_jax, multicrop
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import online_probe_head, torch_linear
from selfsup.models.resnet import BN_EPSILON, BN_MOMENTUM
from selfsup.pretext.moco import l2_normalize

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.swav`: the ImageNet recipe of swav's `scripts/swav_800ep_pretrain.sh`."""
    return ml_collections.ConfigDict(
        dict(
            **multicrop.crop_keys(
                global_crops_scale=(0.14, 1.0),
                local_crops_number=6,
                local_crops_size=96,
                local_crops_scale=(0.05, 0.14),
            ),
            nmb_prototypes=3000,
            feat_dim=128,
            hidden_mlp=2048,
            temperature=0.1,
            epsilon=0.05,  # Sinkhorn's entropy regularisation: scores / epsilon are exponentiated.
            sinkhorn_iterations=3,
            queue_length=0,  # 0: no queue; else a multiple of config.batch_size.
            epoch_queue_starts=15.0,
        )
    )


def _queue_fits(length: int, c: ml_collections.ConfigDict, run) -> str | None:
    """What `queue_length` must be: 0, or whole batches (main_swav rounds it down to them) in a
    float32 [length, 2, feat_dim] array that can exist; None if it is."""
    batch = run.batch_size
    most = MAX_ARRAY_VALUES // (2 * c.feat_dim) // batch * batch
    if length == 0 or (length % batch == 0 and length <= most):
        return None
    near = min(max(length // batch * batch, batch), most)
    return (
        f"0 (no queue) or a multiple of config.batch_size={batch} (the queue shifts whole "
        f"batches) of at most {most} rows of feat_dim={c.feat_dim}, e.g. {near}"
    )


# `config.swav`'s rules (`selfsup.config.check_values`).
VALUE_RULES = {
    **multicrop.CROP_RULES,
    "nmb_prototypes": integer(1, 65536, " (SwAV: 3000)"),
    "feat_dim": MAX_WIDTH,
    "hidden_mlp": MAX_WIDTH,
    "temperature": TEMPERATURE,
    # Scores are cosines in [-1, 1]: exp(1 / epsilon) must stay finite in float32.
    "epsilon": number(0.02, 10, " (SwAV: 0.05; exp(score / epsilon) overflows below 0.02)"),
    "sinkhorn_iterations": integer(1, 100, " (SwAV: 3)"),
    "queue_length": Rule(integer(0).test, "an integer >= 0", _queue_fits),
    "epoch_queue_starts": number(0, 100_000, " (epochs)"),
}


def sinkhorn(scores: jax.Array, *, epsilon: float, iterations: int) -> jax.Array:
    """main_swav `distributed_sinkhorn` of scores [B, K] (samples by prototypes; the global
    batch, so its sums over B are the all-reduces): Q = exp(scores / epsilon) scaled to sum 1,
    then `iterations` times each prototype's total set to 1/K and each sample's to 1/B; the
    assignments [B, K], each row summing to 1."""
    b, k = scores.shape
    q = jnp.exp(scores / epsilon)
    q = q / jnp.sum(q)
    for _ in range(iterations):
        q = q / jnp.sum(q, axis=0, keepdims=True) / k
        q = q / jnp.sum(q, axis=1, keepdims=True) / b
    return q * b


def swapped_prediction_loss(scores: jax.Array, q: jax.Array, temperature: float) -> jax.Array:
    """main_swav's loss from every crop's scores [V, N, K] and the assignments q [A, N, K] of
    crops 0..A-1: for each assigned crop a, -mean_n sum_k q_a log_softmax(scores_v / T) summed
    over the crops v != a and divided by V - 1; then averaged over the A assigned crops."""
    views, n = scores.shape[:2]
    log_p = jax.nn.log_softmax(scores / temperature, axis=-1)
    cross = -jnp.einsum("ank,vnk->av", q, log_p, precision="highest") / n
    others = 1.0 - jnp.eye(len(q), views, dtype=cross.dtype)  # v != a.
    return jnp.mean(jnp.sum(cross * others, axis=1) / (views - 1))


def assignments(
    scores: jax.Array, queue_scores: jax.Array | None, *, epsilon: float, iterations: int
) -> jax.Array:
    """`sinkhorn` of one crop's scores [N, K] under stop-gradient, with the queue's [Q, K]
    prepended if given (main_swav's `torch.cat((queue scores, out))`); the batch's rows [N, K]."""
    n = scores.shape[0]
    if queue_scores is not None:
        scores = jnp.concatenate([queue_scores, scores])
    return sinkhorn(jax.lax.stop_gradient(scores), epsilon=epsilon, iterations=iterations)[-n:]


def enqueue(queue: jax.Array, embeddings: jax.Array) -> jax.Array:
    """main_swav's fill: queue [Q, 2, D] shifted back by the batch and the batch's embeddings of
    the assigned crops [N, 2, D] put first (`queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] =
    embedding`)."""
    return jnp.concatenate([embeddings, queue[: len(queue) - len(embeddings)]])


def queue_is_full(queue: jax.Array) -> jax.Array:
    """main_swav's `use_the_queue`: the queue's last row holds an embedding (not all zeros)."""
    return jnp.any(queue[-1] != 0)


def crop_assignments(
    scores: jax.Array,
    queue: jax.Array | None,
    prototypes: jax.Array,
    *,
    epsilon: float,
    iterations: int,
) -> jax.Array:
    """The assignments [2, N, K] of the global crops (main_swav's crops_for_assign [0, 1]) from
    every crop's scores [V, N, K]; once the queue [Q, 2, D] is full, with its embeddings' scores
    against the unit prototypes [D, K] prepended."""

    def of_crop(i: int, use_queue: bool) -> jax.Array:
        queue_scores = (
            jnp.matmul(queue[:, i], prototypes, precision="highest") if use_queue else None
        )
        return assignments(scores[i], queue_scores, epsilon=epsilon, iterations=iterations)

    crops = range(multicrop.GLOBAL_CROPS)
    if queue is None:
        return jnp.stack([of_crop(i, False) for i in crops])
    full = queue_is_full(queue)
    return jnp.stack(
        [jax.lax.cond(full, partial(of_crop, i, True), partial(of_crop, i, False)) for i in crops]
    )


def normalized_torch_linear_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """torch's Linear initialisation, each output unit's weights (a kernel column) then scaled to
    unit norm, as main_swav's first iteration finds the prototypes."""
    bound = 1.0 / np.sqrt(shape[0])
    kernel = jax.random.uniform(key, shape, dtype, -bound, bound)
    return kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)


class SwAVModel(nnx.Module):
    """Encoder, projection head and prototypes (swav `src/resnet50.py`); `encoder` is what
    transfer evaluators use."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        c = config.swav
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        dim = self.encoder.feature_dim
        self.hidden = torch_linear(dim, c.hidden_mlp, rngs=rngs)
        self.bn = nnx.BatchNorm(c.hidden_mlp, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
        self.out = torch_linear(c.hidden_mlp, c.feat_dim, rngs=rngs)
        self.prototypes = nnx.Linear(
            c.feat_dim,
            c.nmb_prototypes,
            use_bias=False,
            kernel_init=normalized_torch_linear_init,
            rngs=rngs,
        )
        self.online_probe = online_probe_head(dim, config, rngs=rngs)

    def __call__(
        self, groups: list[jax.Array], *, train: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Resolution groups [N, V_g, H_g, W_g, 3] -> (unit embeddings [V, N, D], prototype
        scores [V, N, K], encoder features of the first crop [N, F]), crops in group order."""
        n = groups[0].shape[0]
        features = [self.encoder(multicrop.view_major(g), train=train) for g in groups]
        h = self.hidden(jnp.concatenate(features))
        z = l2_normalize(self.out(nnx.relu(self.bn(h, use_running_average=not train))))
        scores = self.prototypes(z)
        return (
            z.reshape(-1, n, z.shape[-1]),
            scores.reshape(-1, n, scores.shape[-1]),
            features[0][:n],
        )


class SwAV:
    """The pretext task: its multi-crop views (TF side), its model, queue and loss."""

    sharded_extra = ("queue",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """`multicrop.host_crops`: "global" [2, S, S, 3] and "local" [L, s, s, 3], uint8."""
        return multicrop.host_crops(image, seed, self.config.swav, size=self.config.image_size)

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example` before colour: every crop."""
        return [*example["global"], *example.get("local", ())]

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`)."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> SwAVModel:
        return SwAVModel(self.config, rngs=rngs)

    def init_extra(self, params: dict, batch_stats: dict, rng: jax.Array) -> dict[str, Any]:
        """The queue, empty (zeros) as main_swav creates it; none with `queue_length` 0."""
        c = self.config.swav
        if not c.queue_length:
            return {}
        return {"queue": jnp.zeros((c.queue_length, multicrop.GLOBAL_CROPS, c.feat_dim))}

    def colored(self, batch: dict[str, jax.Array], rng: jax.Array) -> list[jax.Array]:
        """The crop groups coloured in the step, every crop from its own key
        (`augment_jax.color_augment_views`: SwAV's jitter of strength 1, then blur with p=0.5)."""
        return [
            augment_jax.color_augment_views(
                views, jax.random.fold_in(rng, g), strength=1.0, blur=True
            )
            for g, views in enumerate(multicrop.groups(batch))
        ]

    def loss(
        self,
        model: SwAVModel,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        *,
        train: bool,
        extra: dict[str, Any],
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, dict[str, Any]]:
        c = self.config.swav
        z, scores, features = model(self.colored(batch, rng), train=train)
        queue = extra.get("queue")
        prototypes = jax.lax.stop_gradient(model.prototypes.kernel[...])
        q = crop_assignments(
            scores, queue, prototypes, epsilon=c.epsilon, iterations=c.sinkhorn_iterations
        )
        loss = swapped_prediction_loss(scores, q, c.temperature)
        if queue is None:
            return loss, {}, features, {}
        embeddings = jax.lax.stop_gradient(jnp.swapaxes(z[: multicrop.GLOBAL_CROPS], 0, 1))
        metrics = {"queue_used": queue_is_full(queue).astype(jnp.float32)}
        return loss, metrics, features, {"queue": enqueue(queue, embeddings)}

    def update_extra(
        self,
        extra: dict[str, Any],
        params: dict,
        step: jax.Array,
        *,
        total_steps: int,
        steps_per_epoch: float,
    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """Before epoch `epoch_queue_starts` the queue does not exist in main_swav: the step
        that just ran (`step`) was before it, so what it enqueued is dropped (zeros)."""
        if not extra:
            return extra, {}
        before = step < self.config.swav.epoch_queue_starts * steps_per_epoch
        return {"queue": jnp.where(before, 0.0, extra["queue"])}, {}
