"""MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder learns to pick the momentum key
encoder's embedding of another view of the same image out of a queue of earlier keys.

Matches facebookresearch/moco `moco/builder.py`: query and key are each encoder + head (MoCo
v2's MLP, or v1's linear layer), L2-normalised; the key encoder is a copy of the query
encoder that gets no gradient and moves towards it with momentum m after every step (MoCo
updates it before the key's forward pass with the current weights, which is the same sequence
as updating it after each optimizer step with the new ones, as here); InfoNCE with
temperature T over the positive key and the K queued keys; then the global batch's keys
replace the oldest K-queue entries (`_dequeue_and_enqueue` of the gathered keys, FIFO).

The queue lives in `TrainState.extra`, split along K over the mesh's data axis: each device
holds and updates K / devices rows, and XLA gathers only the batch's keys (N x D) to enqueue.

BatchNorm: MoCo shuffles the keys' batch across GPUs before the key encoder ("shuffling BN")
because per-GPU BatchNorm let a query and its positive key share statistics that no negative
shared, a signal the model learnt to exploit. By default (`bn_groups=1`) BatchNorm statistics
span the global batch (the step is jitted over a batch-sharded mesh): there is no per-device
statistic for a pair to share, and the key encoder's output does not depend on how the batch
is split over devices (tests/test_moco.py checks that 1 and 8 devices agree), so no shuffle is
needed; all of a step's queries and keys are normalised with that global batch's statistics,
as SimCLR's are. `bn_groups=G` is the paper's behaviour on G GPUs, whatever the devices:
BatchNorm statistics per group of N / G consecutive examples (queries and keys alike), the keys'
batch shuffled across the groups before the key encoder and unshuffled after
(`embed_in_groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import (
    MAX_ARRAY_VALUES,
    MAX_WIDTH,
    TEMPERATURE,
    Rule,
    choice,
    flag,
    integer,
    probability,
)
from selfsup.data.view_config import COLOR_STRENGTH, CROP_SAMPLERS
from selfsup.models.encoders import encoder_from_config
from selfsup.models.heads import online_probe_head, torch_linear
from selfsup.pretext import teacher

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.moco`: MoCo v2's ImageNet recipe (facebookresearch/moco `main_moco.py` with
    --mlp --moco-t 0.2 --aug-plus --cos)."""
    return ml_collections.ConfigDict(
        dict(
            queue_size=65536,  # K; a multiple of the batch size, as MoCo asserts.
            momentum=0.999,
            temperature=0.2,
            dim=128,
            mlp=True,  # MoCo v2's 2-layer head; False is v1's linear layer.
            # MoCo v2's augmentation: SimCLR's with ColorJitter(0.4, 0.4, 0.4, 0.1), crops of at
            # least 20%, Gaussian blur with p=0.5.
            color_strength=0.5,
            min_crop_area=0.2,
            # `RandomResizedCrop(scale=(0.2, 1))`'s box: 10 tries, then the centre.
            crop_sampler="torchvision",
            blur=True,
            # BatchNorm over the whole batch; G: per group of batch / G examples with the keys
            # shuffled across groups (MoCo's 8 GPUs: 8).
            bn_groups=1,
        )
    )


def _queue_fits(queue_size: int, c: ml_collections.ConfigDict, run) -> str | None:
    """What `queue_size` must be: whole batches (MoCo enqueues them), as a float32 [K, dim]
    array that can exist (`MAX_ARRAY_VALUES`); None if it is."""
    batch = run.batch_size
    most = MAX_ARRAY_VALUES // c.dim // batch * batch
    if queue_size % batch == 0 and batch <= queue_size <= most:
        return None
    near = min(max(-(-queue_size // batch) * batch, batch), most)
    return (
        f"a multiple of config.batch_size={batch} (MoCo enqueues whole batches) of at most "
        f"{most} keys of dim={c.dim} (a float32 queue of at most 1 GiB), e.g. {near}"
    )


def _groups_fit(groups: int, c: ml_collections.ConfigDict, run) -> str | None:
    if run.batch_size % groups == 0 and run.batch_size // groups >= 2:
        return None
    return f"a divisor of config.batch_size={run.batch_size} that leaves at least 2 per group"


# `config.moco`'s rules (`selfsup.config.check_values`); `min_crop_area` is a shared one.
VALUE_RULES = {
    "queue_size": Rule(integer(-(2**63)).test, "an integer", _queue_fits),
    "momentum": probability(" (MoCo v2: 0.999)"),
    "temperature": TEMPERATURE,
    "dim": MAX_WIDTH,
    "mlp": flag(),
    "color_strength": COLOR_STRENGTH,
    "crop_sampler": choice(*CROP_SAMPLERS),
    "blur": flag(),
    "bn_groups": Rule(integer(1, 65536).test, "an integer in [1, 65536]", _groups_fit),
}


def l2_normalize(x: jax.Array) -> jax.Array:
    """torch's `F.normalize(x, dim=1)`: x / max(|x|, 1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def info_nce_loss(
    q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MoCo's loss for unit queries `q` and keys `k` [N, D] and queued keys [K, D]: the mean
    cross-entropy of logits [q.k, q.queue^T] / T with the positive first, and the fraction of
    queries whose positive beats every queued key. The log-sum-exp is over the positive and
    the queue's logsumexp, so the queue's axis, split over devices, is never concatenated."""
    positive = jnp.sum(q * k, axis=-1) / temperature
    negatives = jnp.matmul(q, queue.T, precision=jax.lax.Precision.HIGHEST) / temperature
    loss = jnp.logaddexp(positive, jax.nn.logsumexp(negatives, axis=-1)) - positive
    accuracy = jnp.mean(positive > jnp.max(negatives, axis=-1))
    return jnp.mean(loss), {"contrast_accuracy": accuracy}


def enqueue(queue: jax.Array, pointer: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """MoCo's `_dequeue_and_enqueue`: rows pointer .. pointer + N - 1 (mod K) of `queue` [K, D]
    become `keys` [N, D], the pointer moves on by N. Each row picks its key elementwise, so a
    queue split over devices is updated where it lies."""
    size, n = queue.shape[0], keys.shape[0]
    offset = (jnp.arange(size) - pointer) % size  # Where each row falls in the new window.
    incoming = keys[jnp.minimum(offset, n - 1)]
    return jnp.where((offset < n)[:, None], incoming, queue), (pointer + n) % size


class MoCoModel(nnx.Module):
    """Query encoder and head (the key encoder is a copy, in `TrainState.extra`); `encoder` is
    what transfer evaluators use."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        c = config.moco
        self.encoder = encoder_from_config(config.model, rngs=rngs)
        dim = self.encoder.feature_dim
        # MoCo v2 puts fc(dim, dim) + ReLU before the v1 head fc(dim, out).
        self.hidden = torch_linear(dim, dim, rngs=rngs) if c.mlp else None
        self.head = torch_linear(dim, c.dim, rngs=rngs)
        self.online_probe = online_probe_head(dim, config, rngs=rngs)

    def embed(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """images [N, H, W, C] -> (unit embeddings [N, D], encoder features [N, F])."""
        features = self.encoder(images, train=train)
        x = features if self.hidden is None else nnx.relu(self.hidden(features))
        return l2_normalize(self.head(x)), features


def embed_in_groups(net: MoCoModel, images: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """`net.embed` in training mode with BatchNorm statistics per group of N / `groups`
    consecutive images, as MoCo's per-GPU BatchNorm computes them: every group starts from the
    same running statistics, and `net` keeps their mean over the groups afterwards (MoCo's
    DistributedDataParallel keeps GPU 0's)."""
    if groups == 1:
        return net.embed(images, train=True)
    graphdef, stats, rest = nnx.split(net, nnx.BatchStat, ...)

    def one_group(x, stats, rest):
        group_net = nnx.merge(graphdef, stats, rest)
        return group_net.embed(x, train=True), nnx.state(group_net, nnx.BatchStat)

    (embeddings, features), new_stats = jax.vmap(one_group, in_axes=(0, None, None))(
        images.reshape((groups, -1, *images.shape[1:])), stats, rest
    )
    nnx.update(net, jax.tree.map(lambda s: s.mean(axis=0), new_stats))
    return embeddings.reshape((-1, embeddings.shape[-1])), features.reshape(
        (-1, features.shape[-1])
    )


def shuffled_keys(net: MoCoModel, images: jax.Array, groups: int, rng: jax.Array) -> jax.Array:
    """MoCo's `_batch_shuffle_ddp` / `_batch_unshuffle_ddp` around the key encoder: the keys of
    `images` embedded in `groups` BatchNorm groups after a random permutation of the batch,
    returned in the batch's order."""
    order = jax.random.permutation(rng, images.shape[0])
    keys = embed_in_groups(net, images[order], groups)[0]
    return keys[jnp.argsort(order)]


class MoCo:
    """The pretext task: its views (TF side), its query model, key encoder, queue and loss."""

    sharded_extra = ("queue",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        from selfsup.data import augment

        c = self.config.moco
        views = augment.two_views(
            image,
            seed,
            size=self.config.image_size,
            color_strength=c.color_strength,
            min_crop_area=c.min_crop_area,
            crop_sampler=c.crop_sampler,
            blur=c.blur,
        )
        return {"views": views}  # View 1 is the query's, view 2 the key's.

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`: query and key view."""
        return list(example["views"])

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: simclr's evaluation view (`eval_view`)."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> MoCoModel:
        return MoCoModel(self.config, rngs=rngs)

    def init_extra(self, params: dict, batch_stats: dict, rng: jax.Array) -> dict[str, Any]:
        """The key encoder, a copy of the query encoder, and a queue of random unit keys
        (MoCo's `randn(dim, K)` normalised), its pointer at 0."""
        c = self.config.moco
        queue = l2_normalize(jax.random.normal(rng, (c.queue_size, c.dim), jnp.float32))
        return {
            "key_encoder": teacher.copy_of(params, batch_stats),
            "queue": queue,
            "queue_pointer": jnp.zeros((), jnp.int32),
        }

    def loss(
        self,
        model: MoCoModel,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        *,
        train: bool,
        extra: dict[str, Any],
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, dict[str, Any]]:
        views, groups = batch["views"], self.config.moco.bn_groups
        grouped = train and groups > 1  # Shuffled BN; inference uses running statistics.
        if grouped:
            q, features = embed_in_groups(model, views[:, 0], groups)
        else:
            q, features = model.embed(views[:, 0], train=train)

        def keys(net: MoCoModel) -> jax.Array:
            if grouped:
                return shuffled_keys(net, views[:, 1], groups, rng)
            return net.embed(views[:, 1], train=train)[0]

        k, key_encoder = teacher.run(model, extra["key_encoder"], keys)
        loss, metrics = info_nce_loss(q, k, extra["queue"], self.config.moco.temperature)
        queue, pointer = enqueue(extra["queue"], extra["queue_pointer"], k)
        extra = {"key_encoder": key_encoder, "queue": queue, "queue_pointer": pointer}
        return loss, metrics, features, extra

    def update_extra(
        self,
        extra: dict[str, Any],
        params: dict,
        step: jax.Array,
        *,
        total_steps: int,
        steps_per_epoch: float,
    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        momentum = self.config.moco.momentum
        key_encoder = teacher.moving_average(extra["key_encoder"], params, momentum)
        return {**extra, "key_encoder": key_encoder}, {}
