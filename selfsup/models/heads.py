"""Heads that sit on encoder features: the SimCLR projection MLP and the fusion head of the
patch tasks (relative patch position, jigsaw).

`ProjectionHead` follows google-research/simclr (`tf2/model.py`, `proj_head_mode="nonlinear"`):
every layer is a bias-free Dense (N(0, 0.01) init) followed by BatchNorm; middle layers keep the
BN offset and a ReLU, the final layer has neither, so its output is a BN-normalised linear map.
`PatchPairHead` follows google/revisiting-self-supervised (`patch_utils.fully_connected`, copied
there from AlexNet's fc7-fc8): Dense (N(0, 0.005) init, bias 0.1), BatchNorm, ReLU, dropout,
Dense to the classes (N(0, 0.005) init, bias 0). BatchNorm mode is an explicit `train` argument,
as in the encoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from selfsup.models.resnet import BN_EPSILON, BN_MOMENTUM


class DenseBN(nnx.Module):
    """Bias-free Dense then BatchNorm; `center=False` drops the BN offset too, `scale=False` its
    scale."""

    def __init__(
        self, in_dim: int, out_dim: int, *, center: bool, scale: bool = True, rngs: nnx.Rngs
    ):
        self.linear = nnx.Linear(
            in_dim,
            out_dim,
            use_bias=False,
            kernel_init=jax.nn.initializers.normal(stddev=0.01),
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            out_dim,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            use_bias=center,
            use_scale=scale,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.linear(x), use_running_average=not train)


def torch_linear(in_dim: int, out_dim: int, *, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    """`torch.nn.Linear`'s default initialisation: kernel and bias U[-1/sqrt(in), 1/sqrt(in)]."""
    bound = 1.0 / np.sqrt(in_dim)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(
        in_dim, out_dim, use_bias=use_bias, kernel_init=init, bias_init=init, rngs=rngs
    )


class ProjectionHead(nnx.Module):
    """`num_layers` layers, ReLU between them; `num_layers=2` is SimCLR v1's MLP. The hidden
    ones are DenseBN; `out` picks the last: "bn" (DenseBN without offset, SimCLR's), "bn_plain"
    (BatchNorm without scale or offset, SimSiam's `BatchNorm1d(affine=False)`) or "linear"
    (a bias-free `torch_linear`, Barlow Twins' and VICReg's)."""

    def __init__(
        self,
        in_dim: int,
        *,
        hidden_dim: int,
        out_dim: int,
        num_layers: int,
        rngs: nnx.Rngs,
        out: str = "bn",
    ):
        if num_layers < 1:
            raise ValueError(f"ProjectionHead needs num_layers >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        hidden = range(num_layers - 1)
        layers = [DenseBN(dims[i], dims[i + 1], center=True, rngs=rngs) for i in hidden]
        if out == "linear":
            layers.append(torch_linear(dims[-2], out_dim, use_bias=False, rngs=rngs))
        else:
            layers.append(DenseBN(dims[-2], out_dim, center=False, scale=out == "bn", rngs=rngs))
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x, train=train))
        last = self.layers[-1]
        return last(x) if isinstance(last, nnx.Linear) else last(x, train=train)


class PatchPairHead(nnx.Module):
    """Classifies concatenated patch embeddings (a pair for relative patch position, the nine
    cells for jigsaw) [..., in_dim] -> logits [..., num_classes]."""

    def __init__(
        self, in_dim: int, *, hidden_dim: int, num_classes: int, dropout: float, rngs: nnx.Rngs
    ):
        init = jax.nn.initializers.truncated_normal(stddev=0.005)
        self.hidden = nnx.Linear(
            in_dim,
            hidden_dim,
            kernel_init=init,
            bias_init=jax.nn.initializers.constant(0.1),
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(hidden_dim, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
        self.out = nnx.Linear(hidden_dim, num_classes, kernel_init=init, rngs=rngs)
        self.dropout = dropout

    def __call__(
        self, x: jax.Array, *, train: bool, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        """`dropout_rng` is required in training when dropout > 0 (explicit, so the jitted step
        draws it from the step's key rather than from hidden module state)."""
        x = nnx.relu(self.bn(self.hidden(x), use_running_average=not train))
        if train and self.dropout > 0:
            keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
        return self.out(x)


def online_probe_head(
    feature_dim: int, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs
) -> nnx.Linear | None:
    """The linear classifier a pretext model trains on its stop-gradient encoder features while
    pretraining (SimCLR's `lineareval_while_pretraining`), if `config.online_probe_classes` > 0."""
    if config.online_probe_classes <= 0:
        return None
    return nnx.Linear(
        feature_dim,
        config.online_probe_classes,
        kernel_init=jax.nn.initializers.normal(0.01),
        rngs=rngs,
    )


def online_probe_loss(
    probe: nnx.Linear | None, features: jax.Array, labels: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy and accuracy of the online probe on `stop_gradient(features)` (so it never
    changes the encoder) over the labelled images (label >= 0); (0, {}) without a probe."""
    if probe is None:
        return jnp.zeros(()), {}
    logits = probe(jax.lax.stop_gradient(features))
    labelled = labels >= 0
    count = jnp.maximum(labelled.sum(), 1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    loss = jnp.where(labelled, ce, 0.0).sum() / count
    correct = jnp.where(labelled, jnp.argmax(logits, axis=-1) == labels, False)
    return loss, {"online_probe/loss": loss, "online_probe/accuracy": correct.sum() / count}
