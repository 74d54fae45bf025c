"""The encoder's conv, BatchNorm and max-pool rewritten for XLA:CPU (`config.model.kernels`).

Each kernel has the signature of the op it stands in for (`jax.lax.conv_general_dilated`,
`nnx.BatchNorm`, `nnx.max_pool`) and computes the same sums, in forms that XLA:CPU runs fast
where its own lowering is slow: convs on maps smaller than the kernel and 1x1 convs as matmuls,
strided convs' input gradients as stride-1 convs, stored conv operands for the backward pass,
per-channel sums as matmuls, and a max-pool gradient without `select_and_scatter`. Each rewrite
covers the ResNet encoder's layers only, and raises `NotImplementedError` for an argument it does
not implement rather than compute something else. Other backends run XLA's own ops
(`selfsup.models.kernels`). experiments/bench/RESULTS.md ("What changed, step by step") has the
measurements behind each rewrite.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

NHWC = ("NHWC", "HWIO", "NHWC")
FIX = "use the XLA kernels (config.model.kernels='xla')"
Padding = tuple[tuple[int, int], tuple[int, int]]


def not_implemented(kernel: str, argument: str, value: Any) -> NotImplementedError:
    return NotImplementedError(f"xla_cpu.{kernel} does not implement {argument}={value!r}: {FIX}.")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """`jax.lax.conv_general_dilated` for 2-D NHWC/HWIO convs without dilation or groups: the
    sums of `conv_arithmetic`, whose backward pass reads the conv's input and output gradient
    as stored arrays (`stored`), as PyTorch's autograd reads its saved tensors, instead of XLA
    recomputing them."""
    implemented = {  # Argument: (value, whether the rewrites implement it).
        "lhs_dilation": (lhs_dilation, lhs_dilation is None or set(lhs_dilation) == {1}),
        "rhs_dilation": (rhs_dilation, rhs_dilation is None or set(rhs_dilation) == {1}),
        "feature_group_count": (feature_group_count, feature_group_count == 1),
        "batch_group_count": (batch_group_count, batch_group_count == 1),
        "preferred_element_type": (preferred_element_type, preferred_element_type is None),
        "out_sharding": (out_sharding, out_sharding is None),
        "dimension_numbers": (
            dimension_numbers,
            lhs.ndim == 4
            and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC),
        ),
    }
    for name, (value, ok) in implemented.items():
        if not ok:
            raise not_implemented("conv_general_dilated", name, value)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    conv = functools.partial(
        conv_arithmetic,
        window_strides=tuple(window_strides),
        padding=tuple(map(tuple, padding)),
        precision=precision,
    )

    @jax.custom_vjp
    def conv_reading_stored_arrays(lhs, rhs):
        return conv(lhs, rhs)

    def forward(lhs, rhs):
        return jax.vjp(conv, stored(lhs), rhs)  # The VJP function holds the residuals.

    def backward(vjp, g):
        return vjp(stored(g))

    conv_reading_stored_arrays.defvjp(forward, backward)
    return conv_reading_stored_arrays(lhs, rhs)


def stored(x: jax.Array) -> jax.Array:
    """x, copied row by row by a gather, which XLA computes once into a buffer of its own.

    XLA's fusion recomputes cheap elementwise results inside each consumer instead of storing
    them: without this copy, the transpose that starts each weight gradient on XLA:CPU
    recomputed the input's BatchNorm, ReLU and residual sums back through every earlier block.
    A gather is not recomputed. It copies each example's rows by themselves, so a batch sharded
    over devices stays sharded.
    """
    n, *spatial, channels = x.shape
    rows = math.prod(spatial)
    copy = jnp.take(x.reshape(n, rows, channels), jnp.arange(rows), axis=1, mode="clip")
    return copy.reshape(x.shape)


def conv_arithmetic(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: tuple[int, int],
    padding: Padding,
    precision: Any = None,
) -> jax.Array:
    """An NHWC/HWIO conv, without `stored`: one matmul for 1x1 kernels (XLA:CPU computes a 1x1
    conv's weight gradient as a convolution of transposed arrays) and where a map in or out is
    smaller than the kernel (XLA:CPU's convolutions take a slow path there); otherwise XLA's
    convolution, with `phase_input_gradient` for strided convs."""
    kh, kw = rhs.shape[:2]
    _, h, w, cin = lhs.shape
    (top, bottom), (left, right) = padding
    sh, sw = window_strides
    oh = (h + top + bottom - kh) // sh + 1  # floor((W + p_lo + p_hi - k) / s) + 1
    ow = (w + left + right - kw) // sw + 1
    if kh == kw == 1 and not any((top, bottom, left, right)):
        # The (strided) pixels times the kernel, as a matmul of 2-D arrays.
        x = lhs[:, ::sh, ::sw, :]
        out = jnp.dot(x.reshape(-1, cin), rhs.reshape(cin, -1), precision=precision)
        return out.reshape(*x.shape[:3], -1)
    if min(h, oh) >= kh and min(w, ow) >= kw:
        conv = functools.partial(
            jax.lax.conv_general_dilated, dimension_numbers=NHWC, precision=precision
        )
        strided = (sh, sw) != (1, 1) and (oh * sh, ow * sw) == (h, w) and kh >= sh and kw >= sw
        if strided:
            return strided_conv(lhs, rhs, window_strides, padding, conv)
        return conv(lhs, rhs, window_strides, padding)
    if h * w < kh * kw:
        return pixel_pair_conv(lhs, rhs, window_strides, padding, (oh, ow), precision)
    # Otherwise one matmul over the kernel's taps (im2col).
    padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    columns = jnp.concatenate(
        [
            window_element(padded, i, j, window_strides, (oh, ow))
            for i in range(kh)
            for j in range(kw)
        ],
        axis=-1,
    )  # [n, oh, ow, kh * kw * cin], tap-major like HWIO.
    return jnp.dot(columns, rhs.reshape(kh * kw * cin, -1), precision=precision)


def pixel_pair_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: tuple[int, int],
    padding: Padding,
    out_size: tuple[int, int],
    precision: Any,
) -> jax.Array:
    """A conv on a map with fewer pixels than the kernel has taps, as one matmul over all input
    pixels with one weight block per (input pixel, output pixel) pair: the tap that joins them,
    or zeros. On a 2x2 map that is 16 blocks, against 36 taps for im2col, 20 of them padding."""
    kh, kw, cin, _ = rhs.shape
    n, h, w, _ = lhs.shape
    (sh, sw), ((top, _), (left, _)), (oh, ow) = window_strides, padding, out_size
    taps, zeros = rhs.reshape(kh * kw, cin, -1), jnp.zeros_like(rhs[0, 0])

    def block(y, x, i, j):
        a, b = y - i * sh + top, x - j * sw + left
        return taps[a * kw + b] if 0 <= a < kh and 0 <= b < kw else zeros

    rows = [
        jnp.stack([block(y, x, i, j) for i in range(oh) for j in range(ow)], axis=1)
        for y in range(h)
        for x in range(w)
    ]  # Per input pixel: [cin, oh * ow, cout].
    dense = jnp.stack(rows).reshape(h * w * cin, -1)
    out = jnp.dot(lhs.reshape(n, h * w * cin), dense, precision=precision)
    return out.reshape(n, oh, ow, -1)


def strided_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    strides: Sequence[int],
    padding: Padding,
    conv: Callable[..., jax.Array],
) -> jax.Array:
    """`conv(lhs, rhs, strides, padding)`, whose input gradient is `phase_input_gradient`."""

    @jax.custom_vjp
    def strided(lhs, rhs):
        return conv(lhs, rhs, strides, padding)

    def forward(lhs, rhs):
        return strided(lhs, rhs), (lhs, rhs)

    def backward(residuals, g):
        lhs, rhs = residuals
        weight_grad = jax.linear_transpose(lambda rhs: conv(lhs, rhs, strides, padding), rhs)
        return phase_input_gradient(g, rhs, lhs.shape, strides, padding, conv), *weight_grad(g)

    strided.defvjp(forward, backward)
    return strided(lhs, rhs)


def phase_input_gradient(
    g: jax.Array,
    rhs: jax.Array,
    lhs_shape: Sequence[int],
    strides: Sequence[int],
    padding: Padding,
    conv: Callable[..., jax.Array],
) -> jax.Array:
    """The input gradient of a strided conv whose output is its input's size over the stride, as
    stride-1 convs of `g`, one per phase (input pixel position modulo the stride).

    The input pixels of phase (p, q), x[:, p::sh, q::sw], meet only the taps (a, b) with a - top
    = p mod sh and b - left = q mod sw, at consecutive offsets, so the strided conv is the sum
    over phases of a stride-1 conv of each phase with its taps; the transpose of that sum, which
    `jax.linear_transpose` derives, computes the same products as the strided conv's input
    gradient, without the products with inserted zeros of XLA:CPU's convolution of `g` dilated
    by the stride.
    """
    n, _, _, cin = lhs_shape
    (sh, sw), ((top, _), (left, _)) = strides, padding
    _, oh, ow, _ = g.shape
    kh, kw = rhs.shape[:2]

    def phase(p: int, stride: int, low: int, k: int) -> tuple[slice, tuple[int, int]]:
        """Along one axis: the taps meeting phase p, and the padding that aligns them in a
        stride-1 conv of the phase, which has as many pixels as the output."""
        first = (p + low) % stride
        offsets = range((first - low - p) // stride, (k - 1 - low - p) // stride + 1)
        return slice(first, k, stride), (-offsets[0], offsets[-1])

    def phase_convs(phases: list[list[jax.Array]]) -> jax.Array:
        out = 0
        for p in range(sh):
            rows, pad_h = phase(p, sh, top, kh)
            for q in range(sw):
                cols, pad_w = phase(q, sw, left, kw)
                out = out + conv(phases[p][q], rhs[rows, cols], (1, 1), (pad_h, pad_w))
        return out

    shape = jax.ShapeDtypeStruct((n, oh, ow, cin), g.dtype)
    (phases,) = jax.linear_transpose(phase_convs, [[shape] * sw] * sh)(g)
    interleaved = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
    return interleaved.reshape(lhs_shape)  # [n, oh, sh, ow, sw, cin] -> NHWC.


def window_element(
    padded: jax.Array, i: int, j: int, strides: Sequence[int], out: Sequence[int]
) -> jax.Array:
    """Element (i, j) of every window of a padded NHWC map: [n, out_h, out_w, c]."""
    (sh, sw), (oh, ow) = strides, out
    return padded[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]


def max_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """`nnx.max_pool` over 2-D windows of an NHWC map, whose gradient, like XLA's
    `select_and_scatter` that autodiff would use, goes to the first maximum of each window in
    row-major order. The gradient here is compares, pads and adds, which XLA:CPU fuses, where
    it runs `select_and_scatter` slowly."""
    if inputs.ndim != 4:
        raise not_implemented("max_pool", "inputs.shape", inputs.shape)
    if len(window_shape) != 2:
        raise not_implemented("max_pool", "window_shape", window_shape)
    strides = (1, 1) if strides is None else tuple(strides)
    padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))
    return _max_pool(inputs, tuple(window_shape), strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(
    x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding
) -> jax.Array:
    return nnx.max_pool(x, window, strides=strides, padding=padding)


def _max_pool_forward(x, window, strides, padding):
    return _max_pool(x, window, strides, padding), x


def _max_pool_backward(window, strides, padding, x, g):
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
    (top, bottom), (left, right) = padding
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
    (wh, ww), (sh, sw), (_, oh, ow, _) = window, strides, g.shape
    span_h, span_w = sh * (oh - 1) + 1, sw * (ow - 1) + 1
    taps = [(a, b) for a in range(wh) for b in range(ww)]
    elements = [window_element(padded, a, b, strides, (oh, ow)) for a, b in taps]
    # Per window: its maximum so far, and which tap first held it.
    best, first = elements[0], jnp.zeros(g.shape, jnp.int32)
    for t, element in enumerate(elements[1:], start=1):
        best, first = jnp.maximum(best, element), jnp.where(element > best, t, first)
    zero = jnp.zeros((), g.dtype)
    grad = sum(
        jax.lax.pad(
            jnp.where(first == t, g, zero),
            zero,
            (
                (0, 0, 0),
                (a, padded.shape[1] - a - span_h, sh - 1),
                (b, padded.shape[2] - b - span_w, sw - 1),
                (0, 0, 0),
            ),
        )
        for t, (a, b) in enumerate(taps)
    )
    return (grad[:, top : top + x.shape[1], left : left + x.shape[2]],)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def channel_sum(x: jax.Array) -> jax.Array:
    """Sum over every axis but the last (channels), in float32, as a matmul with a vector of
    ones: XLA:CPU runs its reductions over batch and space slowly, a matmul at memory speed."""
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    ones = jnp.ones(x.shape[0], jnp.float32)
    return jnp.dot(ones, x, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(scale * (x - mean) / sqrt(var + epsilon) + bias in x's dtype, mean, var) with the batch
    statistics of x over every axis but the last, and the textbook gradient: statistics in
    float32, the variance as E[x^2] - E[x]^2 clipped at 0, like `nnx.BatchNorm`'s default. The
    statistics are returned for the running averages only: their cotangents are ignored, so
    callers must stop their gradient."""
    return _batch_norm_forward(x, scale, bias, epsilon)[0]


def _batch_norm_forward(x, scale, bias, epsilon):
    n = x.size // x.shape[-1]
    x32 = x.astype(jnp.float32)
    mean = channel_sum(x32) / n
    var = jnp.maximum(channel_sum(jnp.square(x32)) / n - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (inv * scale) + bias
    return (y.astype(x.dtype), mean, var), (x, mean, inv, scale)


def _batch_norm_backward(epsilon, residuals, cotangents):
    del epsilon
    x, mean, inv, scale = residuals
    dy = cotangents[0].astype(jnp.float32)
    n = x.size // x.shape[-1]
    centred = x.astype(jnp.float32) - mean
    dbias = channel_sum(dy)
    dscale = channel_sum(dy * centred) * inv
    dx = (scale * inv / n) * (n * dy - dbias - centred * (inv * dscale))
    return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward)

# The nnx.BatchNorm options `batch_norm_train` implements, at their only implemented values.
BATCH_NORM_OPTIONS = {
    "axis": -1,
    "param_dtype": jnp.float32,
    "use_bias": True,
    "use_scale": True,
    "axis_name": None,
    "axis_index_groups": None,
    "use_fast_variance": True,
    "promote_dtype": nnx.BatchNorm.__init__.__kwdefaults__["promote_dtype"],
}


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` (same variables, defaults and inference mode) whose training mode is
    `batch_norm_train`: autodiff of `nnx.BatchNorm` leaves reductions over batch and space that
    XLA:CPU runs slowly."""

    def __init__(self, num_features: int, **kwargs: Any):
        super().__init__(num_features, **kwargs)
        for name, value in BATCH_NORM_OPTIONS.items():
            if getattr(self, name) != value:
                raise not_implemented("BatchNorm", name, getattr(self, name))

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: Any = None
    ) -> jax.Array:
        if mask is not None:
            raise not_implemented("BatchNorm", "mask", mask)
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is not False:  # Inference mode, or nnx's error for None.
            return super().__call__(x, use_running_average)
        y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon)
        m = self.momentum
        self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
        self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
        return y.astype(self.dtype or x.dtype)
