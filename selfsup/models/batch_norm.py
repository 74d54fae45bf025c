"""The encoder's BatchNorm: `nnx.BatchNorm`'s variables, defaults and inference mode, with the
training mode as one function with a hand-written gradient.

Training-mode BatchNorm is reductions: the batch mean and variance forward, the sums of the
gradient and of the gradient times the normalised input backward. Autodiff of `nnx.BatchNorm`
lowers them to XLA reductions over the batch and spatial axes, which XLA:CPU runs up to 8x slower
than PyTorch's kernels (experiments/bench/RESULTS.md); on a CPU the per-channel sums here are
matmuls with a vector of ones, which run at memory speed on every core. Other backends reduce
well and take `jnp.sum`. The math is the textbook one: statistics in float32 (the variance as
E[x^2] - E[x]^2, clipped at 0, like nnx's default), biased variance in the running average.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def channel_sum(x: jax.Array) -> jax.Array:
    """Sum over every axis but the last (channels), in float32."""
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    if jax.default_backend() == "cpu":
        ones = jnp.ones(x.shape[0], jnp.float32)
        return jnp.dot(ones, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(x, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(scale * (x - mean) / sqrt(var + epsilon) + bias in x's dtype, mean, var) with the batch
    statistics of x over every axis but the last. The statistics are returned for the running
    averages only: their cotangents are ignored, so callers must stop their gradient."""
    return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
    n = x.size // x.shape[-1]
    x32 = x.astype(jnp.float32)
    mean = channel_sum(x32) / n
    var = jnp.maximum(channel_sum(jnp.square(x32)) / n - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (inv * scale) + bias
    return (y.astype(x.dtype), mean, var), (x, mean, inv, scale)


def _backward(epsilon, residuals, cotangents):
    del epsilon
    x, mean, inv, scale = residuals
    dy = cotangents[0].astype(jnp.float32)
    n = x.size // x.shape[-1]
    centred = x.astype(jnp.float32) - mean
    dbias = channel_sum(dy)
    dscale = channel_sum(dy * centred) * inv
    dx = (scale * inv / n) * (n * dy - dbias - centred * (inv * dscale))
    return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_forward, _backward)


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` over the last axis, with scale and bias, whose training mode runs
    `batch_norm_train`; the same variables, so checkpoints and parameter paths are unchanged."""

    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        if use_running_average:
            return super().__call__(x, use_running_average=True)
        y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon)
        m = self.momentum
        self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
        self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
        return y.astype(self.dtype or x.dtype)
