"""ResNet-18/34/50 (v1.5) encoders in Flax NNX, NHWC, for self-supervised pretraining.

Two stems: "cifar" (3x3 stride-1 conv, no max-pool, for 32 px images) and "imagenet" (7x7
stride-2 conv and a 3x3/2 max-pool). v1.5 puts the bottleneck's stride on its 3x3 conv; strided
convs pad symmetrically by (k-1)//2 like torchvision and google-research/simclr's fixed
padding. BatchNorm follows google-research/simclr (momentum 0.9, epsilon 1e-5, last BN of each
residual block zero-initialised) and its mode is an explicit `train` argument on every call, so
jit-compiled steps never depend on a mutable train/eval flag. Parameter paths are
stage-prefixed (`stem/conv/kernel`, `stage3/1/bn2/scale`, `classifier/kernel`) so optimizers
can freeze or rescale whole stages by regex.

`dtype` is the compute dtype: with bfloat16, convolutions and activations run in bf16 while
parameters (and so the optimizer state) stay float32, BatchNorm statistics reduce in float32,
and the pooled features come out in float32, so heads and losses on top of them run in float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from selfsup.config import ConfigError
from selfsup.models.batch_norm import BatchNorm

STAGE_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")
STAGE_WIDTHS = (64, 128, 256, 512)
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"); google-research/simclr
# uses Keras VarianceScaling() (scale 1, fan_in, truncated) instead.
CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    in_ch: int, out_ch: int, kernel: int, stride: int, *, dtype: Any, rngs: nnx.Rngs
) -> nnx.Conv:
    """A bias-free conv padded by (kernel-1)//2 on each side, so stride s divides size by s."""
    pad = (kernel - 1) // 2
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=CONV_INIT,
        dtype=dtype,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    **kwargs: Any,
) -> jax.Array:
    """`lax.conv_general_dilated` for the encoder's NHWC convs, with changes for XLA:CPU that
    compute the same sums (experiments/bench/RESULTS.md has the measurements):

    - A 1x1 conv is a matmul of 2-D arrays, pixels by channels. XLA:CPU computes a 1x1 conv's
      weight gradient as a convolution of transposed arrays; with the matmul, the ResNet-50/224
      encoder step at 16 views went from 3.23 to 2.99 s.
    - Where a feature map in or out is smaller than the kernel, the conv is one matmul:
      XLA:CPU's convolutions take a slow path there (3x3 convs on the 2x2 stage-4 maps of 16 px
      relative-patch inputs ran ~60x slower than the matmul). The matmul runs over the kernel's
      taps (im2col), or, where the map has fewer pixels than the kernel has taps, over all its
      pixels with a weight block per pair of input and output pixel: on a 2x2 map that is 16
      blocks, against 36 taps for im2col of which 20 multiply padding zeros.
    - On a CPU, a strided conv's input gradient is stride-1 convs, one per phase of the input
      (`phase_input_gradient`), instead of XLA's convolution of the stride-dilated gradient.
    - On a CPU, the backward pass reads the conv's input and output gradient as stored arrays
      (`stored`), as PyTorch's autograd does, instead of XLA recomputing them.
    """
    conv = functools.partial(conv_kernels, window_strides=window_strides, padding=padding, **kwargs)
    if jax.default_backend() != "cpu":
        return conv(lhs, rhs)

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
    them. Each weight gradient starts with an XLA:CPU transpose of the conv's input, and without
    this copy that transpose recomputed the input's BatchNorm, ReLU and residual sums back
    through every earlier block, reading each of their conv outputs (ResNet-18 CIFAR, 512
    views: the transposes took 5.8 s of a 15 s encoder step, 0.4 s with this copy). A gather is
    not recomputed, so the transpose reads one stored array. It copies each example's rows by
    themselves, so a batch sharded over devices stays sharded.
    """
    n, *spatial, channels = x.shape
    rows = math.prod(spatial)
    copy = jnp.take(x.reshape(n, rows, channels), jnp.arange(rows), axis=1, mode="clip")
    return copy.reshape(x.shape)


def conv_kernels(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    **kwargs: Any,
) -> jax.Array:
    """The arithmetic of `conv_general_dilated`: one matmul for 1x1 kernels and small maps,
    else `lax.conv_general_dilated` (with `phase_input_gradient` for strided convs on a CPU);
    without `stored`, which concerns the whole network."""
    kh, kw = rhs.shape[:2]
    n, h, w, cin = lhs.shape
    (top, bottom), (left, right) = padding
    sh, sw = window_strides
    oh, ow = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    precision = kwargs.get("precision")
    if kh == kw == 1 and not any((top, bottom, left, right)):
        # A 1x1 conv: the (strided) pixels times the kernel, as a matmul of 2-D arrays.
        x = lhs[:, ::sh, ::sw, :]
        out = jnp.dot(x.reshape(-1, cin), rhs.reshape(cin, -1), precision=precision)
        return out.reshape(*x.shape[:3], -1)
    if min(h, oh) >= kh and min(w, ow) >= kw:
        conv = functools.partial(jax.lax.conv_general_dilated, **kwargs)
        strided = (sh, sw) != (1, 1) and (oh * sh, ow * sw) == (h, w) and kh >= sh and kw >= sw
        if strided and jax.default_backend() == "cpu":
            return strided_conv(lhs, rhs, window_strides, padding, conv)
        return conv(lhs, rhs, window_strides, padding)
    if h * w < kh * kw:
        # Fewer pixels than taps: a matmul over all input pixels, with one weight block per
        # (input pixel, output pixel) pair: the tap that joins them, or zeros.
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


def strided_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
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
    padding: Sequence[tuple[int, int]],
    conv: Callable[..., jax.Array],
) -> jax.Array:
    """The input gradient of a strided conv whose output is its input's size over the stride, as
    stride-1 convs of `g`, one per phase (input pixel position modulo the stride).

    The input pixels of phase (p, q), x[:, p::sh, q::sw], meet only the taps (a, b) with a - top
    = p mod sh and b - left = q mod sw, at consecutive offsets, so the strided conv is the sum
    over phases of a stride-1 conv of each phase with its taps; the transpose of that sum, which
    `jax.linear_transpose` derives, computes the same products as the strided conv's input
    gradient. XLA:CPU computes that gradient as a convolution of `g` dilated by the stride,
    whose multiplications by the inserted zeros made it 1.1-2.8x slower than this (ResNet-18
    CIFAR, 512 views, stride-2 conv into stage 2: 376 against 191 ms).
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """`nnx.max_pool` over square windows with "SAME" padding, whose gradient, like XLA's
    `select_and_scatter` that autodiff would use, goes to the first maximum of each window in
    row-major order. The gradient here is compares, pads and adds, which XLA fuses: for
    ResNet-50/224's stem at 16 views on a CPU, `select_and_scatter` took 0.21 s and this 0.045 s
    (PyTorch eager: 0.06 s)."""
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding="SAME")


def _max_pool_forward(x, window, stride):
    return max_pool(x, window, stride), x


def _max_pool_backward(window, stride, x, g):
    (top, bottom), (left, right) = jax.lax.padtype_to_pads(
        x.shape[1:3], (window, window), (stride, stride), "SAME"
    )
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
    _, oh, ow, _ = g.shape
    span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    taps = [(a, b) for a in range(window) for b in range(window)]
    elements = [window_element(padded, a, b, (stride, stride), (oh, ow)) for a, b in taps]
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
                (a, padded.shape[1] - a - span_h, stride - 1),
                (b, padded.shape[2] - b - span_w, stride - 1),
                (0, 0, 0),
            ),
        )
        for t, (a, b) in enumerate(taps)
    )
    return (grad[:, top : top + x.shape[1], left : left + x.shape[2]],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def batch_norm(features: int, *, zero_scale: bool = False, dtype: Any, rngs: nnx.Rngs) -> BatchNorm:
    init = jax.nn.initializers.zeros if zero_scale else jax.nn.initializers.ones
    return BatchNorm(
        features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale_init=init, dtype=dtype, rngs=rngs
    )


class ConvBN(nnx.Module):
    """Conv followed by BatchNorm: the stem's first layer and the projection shortcut."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, *, dtype: Any, rngs: nnx.Rngs
    ):
        self.conv = conv(in_ch, out_ch, kernel, stride, dtype=dtype, rngs=rngs)
        self.bn = batch_norm(out_ch, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34); the stride sits on the first."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        *,
        zero_init_residual: bool,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.conv1 = conv(in_ch, width, 3, stride, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(width, dtype=dtype, rngs=rngs)
        self.conv2 = conv(width, width, 3, 1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(width, zero_scale=zero_init_residual, dtype=dtype, rngs=rngs)
        self.shortcut = projection_shortcut(in_ch, width, stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        shortcut = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        *,
        zero_init_residual: bool,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        out_ch = width * self.expansion
        self.conv1 = conv(in_ch, width, 1, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(width, dtype=dtype, rngs=rngs)
        self.conv2 = conv(width, width, 3, stride, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(width, dtype=dtype, rngs=rngs)
        self.conv3 = conv(width, out_ch, 1, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(out_ch, zero_scale=zero_init_residual, dtype=dtype, rngs=rngs)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        shortcut = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + shortcut)


def projection_shortcut(
    in_ch: int, out_ch: int, stride: int, *, dtype: Any, rngs: nnx.Rngs
) -> ConvBN | None:
    """1x1 conv + BN where the block changes shape; None (identity) otherwise."""
    if stride == 1 and in_ch == out_ch:
        return None
    return ConvBN(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

BLOCKS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nnx.Module):
    """ResNet v1.5 encoder; `model(x, train=...)` gives pooled features, or logits if
    `num_classes` is set."""

    def __init__(
        self,
        depth: int,
        *,
        stem: str = "cifar",
        width: float = 1.0,
        num_classes: int | None = None,
        zero_init_residual: bool = True,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f'stem must be "cifar" or "imagenet", got {stem!r}')
        block, counts = BLOCKS[depth]
        widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        self.max_pool = stem == "imagenet"
        self.stem = ConvBN(
            3,
            widths[0],
            7 if self.max_pool else 3,
            2 if self.max_pool else 1,
            dtype=dtype,
            rngs=rngs,
        )
        in_ch = widths[0]
        for i, (stage_width, count) in enumerate(zip(widths, counts, strict=True)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    block(
                        in_ch,
                        stage_width,
                        stride,
                        zero_init_residual=zero_init_residual,
                        dtype=dtype,
                        rngs=rngs,
                    )
                )
                in_ch = stage_width * block.expansion
            setattr(self, STAGE_NAMES[i + 1], nnx.List(blocks))
        self.feature_dim = in_ch
        self.classifier = (
            None if num_classes is None else nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)
        )

    def features(
        self, x: jax.Array, *, train: bool, frozen_stages: int = 0
    ) -> dict[str, jax.Array]:
        """Feature maps after the stem and after each stage, and the global-average-pooled
        features ("pooled").

        `frozen_stages=n` (0..4) freezes the bottom n stages for fine-tuning: for n >= 1 the stem
        and stage1..stage<n> run in inference mode (running BatchNorm statistics, left
        unchanged) and no gradient flows back into them.
        """
        if not 0 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in 0..4, got {frozen_stages}")

        def output(i: int, y: jax.Array) -> jax.Array:
            return jax.lax.stop_gradient(y) if frozen_stages >= max(i, 1) else y

        x = nnx.relu(self.stem(x, train=train and frozen_stages == 0))
        if self.max_pool:
            x = max_pool(x, 3, 2)
        x = output(0, x)
        out = {"stem": x}
        for i, name in enumerate(STAGE_NAMES[1:], start=1):
            for block in getattr(self, name):
                x = block(x, train=train and frozen_stages < i)
            out[name] = x = output(i, x)
        out["pooled"] = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
        return out

    def __call__(self, x: jax.Array, *, train: bool, frozen_stages: int = 0) -> jax.Array:
        pooled = self.features(x, train=train, frozen_stages=frozen_stages)["pooled"]
        return pooled if self.classifier is None else self.classifier(pooled)


def encoder_from_config(model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> ResNet:
    """The encoder a pretext task's `config.model` (depth, stem, width, dtype) describes."""
    if model.dtype not in COMPUTE_DTYPES:
        raise ConfigError(
            f"unknown config.model.dtype={model.dtype!r}: use one of {sorted(COMPUTE_DTYPES)}."
        )
    return ResNet(
        model.depth,
        stem=model.stem,
        width=model.width,
        dtype=COMPUTE_DTYPES[model.dtype],
        rngs=rngs,
    )
