"""Convolution arithmetic, in plain NumPy: the output size of a convolution for a given filter
size, padding, stride and dilation; the receptive field of a stack of convolutions; and a
convolution written out as the matrix that multiplies the flattened input, whose transpose is
the gradient with respect to the input (the "transposed convolution"). Spatial axes are treated
independently, with one padding spec, stride and dilation applied to each; arrays are
channels-last (NHWC activations, HWIO weights), as in `jax.lax.conv_general_dilated` with
dimension_numbers ("NHWC", "HWIO", "NHWC").

A test helper: the reference the encoder's XLA:CPU convs (`selfsup.models.kernels.xla_cpu`) are
checked against, every conv path's output and gradients against `conv2d_via_matmul` and its
transpose, in float64 (tests/test_xla_cpu.py); tests/test_conv_math.py checks it against XLA."""

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Padding = Literal["valid", "same", "half", "full"] | int | tuple[int, int]
PADDING_NAMES = ("valid", "same", "half", "full")


def dilated_filter_size(filter_size: int, dilation: int = 1) -> int:
    """Input span of a filter with `dilation - 1` holes between its taps."""
    return dilation * (filter_size - 1) + 1


def padding_pair(
    input_size: int,
    filter_size: int,
    *,
    stride: int = 1,
    padding: Padding = "valid",
    dilation: int = 1,
) -> tuple[int, int]:
    """The (lo, hi) zero padding that `padding` means on an axis of `input_size`, checked.

    "same" pads exactly as XLA/TF "SAME" does, so that the output has ceil(input/stride) units;
    the odd unit of padding goes on the high side. "half" pads (k_eff - 1) // 2 on both sides
    (equal to "same" for odd filters and stride 1); "full" pads k_eff - 1 on both sides, so
    that every partial overlap of filter and input yields an output.
    """
    for name, value in (
        ("input_size", input_size),
        ("filter_size", filter_size),
        ("stride", stride),
        ("dilation", dilation),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    k_eff = dilated_filter_size(filter_size, dilation)
    if padding == "valid":
        pads = (0, 0)
    elif padding == "same":
        # Only the size of the last window matters: it must end at or after the input's end.
        total = max((math.ceil(input_size / stride) - 1) * stride + k_eff - input_size, 0)
        pads = (total // 2, total - total // 2)
    elif padding == "half":
        pads = ((k_eff - 1) // 2,) * 2
    elif padding == "full":
        pads = (k_eff - 1,) * 2
    elif isinstance(padding, int) and not isinstance(padding, bool):
        pads = (padding, padding)
    elif (
        isinstance(padding, tuple)
        and len(padding) == 2
        and all(isinstance(p, int) for p in padding)
    ):
        pads = padding
    else:
        raise ValueError(
            f"unknown padding {padding!r}: expected one of {PADDING_NAMES}, "
            "an int, or a (lo, hi) pair of ints"
        )
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {pads}")
    if k_eff > input_size + sum(pads):
        raise ValueError(
            f"filter larger than padded input: the filter spans {k_eff} units (size "
            f"{filter_size}, dilation {dilation}) but the padded input has only "
            f"{input_size} + {pads[0]} + {pads[1]} = {input_size + sum(pads)}"
        )
    return pads


def conv_output_size(
    input_size: int,
    filter_size: int,
    *,
    stride: int = 1,
    padding: Padding = "valid",
    dilation: int = 1,
) -> int:
    """Output units of a convolution along one axis: floor((W + p_lo + p_hi - k_eff) / s) + 1."""
    lo, hi = padding_pair(
        input_size, filter_size, stride=stride, padding=padding, dilation=dilation
    )
    return (input_size + lo + hi - dilated_filter_size(filter_size, dilation)) // stride + 1


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution (or pooling window: same arithmetic) along one spatial axis."""

    filter_size: int
    stride: int = 1
    padding: Padding = "valid"
    dilation: int = 1


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """What one output unit of a stack sees, in input coordinates along one axis.

    Output unit i sees input units [start + i * jump, start + i * jump + size - 1]; indices
    below 0 or past the input's end are padding. With dilation the field can have holes:
    `size` is its extent, not the number of input units that reach the output.
    """

    size: int
    jump: int  # input units between neighbouring output units: the product of the strides
    start: int  # first input unit seen by output unit 0 (negative: the field starts in padding)

    @property
    def center(self) -> float:
        """Center of output unit 0's field; the usual `start` of the textbook recurrence."""
        return self.start + (self.size - 1) / 2


def receptive_field(
    layers: Sequence[ConvLayer], *, input_size: int | None = None
) -> ReceptiveField:
    """Receptive field of `layers` applied in order, by the recurrence
    size += (k_eff - 1) * jump; start -= pad_lo * jump; jump *= stride.

    `input_size` is needed only when a strided "same" layer's padding depends on it; given, it
    also checks that every layer fits its input.
    """
    size, jump, start, axis_size = 1, 1, 0, input_size
    for layer in layers:
        if axis_size is None and layer.padding == "same" and layer.stride > 1:
            raise ValueError(
                f"{layer} pads by an amount that depends on its input size: pass input_size"
            )
        k_eff = dilated_filter_size(layer.filter_size, layer.dilation)
        # Without an input size, any input the filter fits in gives the same padding.
        lo, _ = padding_pair(
            k_eff if axis_size is None else axis_size,
            layer.filter_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
        )
        if axis_size is not None:
            axis_size = conv_output_size(
                axis_size,
                layer.filter_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
            )
        size += (k_eff - 1) * jump
        start -= lo * jump
        jump *= layer.stride
    return ReceptiveField(size=size, jump=jump, start=start)


def conv_as_matrix(
    weights: np.ndarray,
    input_shape: Sequence[int],
    *,
    stride: int = 1,
    padding: Padding = "valid",
    dilation: int = 1,
) -> np.ndarray:
    """The matrix M with conv(x).ravel() == M @ x.ravel() for one channels-last image x.

    `weights` has shape (*filter_shape, C_in, C_out), e.g. HWIO, and `input_shape` is
    (*spatial_shape, C_in), e.g. HWC; any number of spatial axes works. Each row holds one
    output unit's filter, shifted to where it reads the input; taps that fall on padding read
    zeros and are dropped. M is returned dense for clarity: only about prod(filter_shape) /
    prod(spatial_shape) of it is nonzero, so a real use would store it sparse.
    """
    weights = np.asarray(weights)
    *spatial_in, c_in = input_shape
    *filter_shape, w_in, c_out = weights.shape
    if len(filter_shape) != len(spatial_in) or w_in != c_in:
        raise ValueError(
            f"weights of shape {weights.shape} (filter dims..., C_in, C_out) do "
            f"not fit an input of shape {tuple(input_shape)} (spatial dims..., C_in)"
        )
    pads_lo = [
        padding_pair(n, f, stride=stride, padding=padding, dilation=dilation)[0]
        for n, f in zip(spatial_in, filter_shape)
    ]
    spatial_out = [
        conv_output_size(n, f, stride=stride, padding=padding, dilation=dilation)
        for n, f in zip(spatial_in, filter_shape)
    ]
    # Row/column index of every (position, channel) in the ravelled output/input.
    rows = np.arange(math.prod(spatial_out) * c_out).reshape(*spatial_out, c_out)
    cols = np.arange(math.prod(spatial_in) * c_in).reshape(*spatial_in, c_in)
    matrix = np.zeros((rows.size, cols.size), dtype=weights.dtype)
    for out_pos in np.ndindex(*spatial_out):
        for tap in np.ndindex(*filter_shape):
            in_pos = tuple(
                o * stride + t * dilation - lo for o, t, lo in zip(out_pos, tap, pads_lo)
            )
            if all(0 <= p < n for p, n in zip(in_pos, spatial_in)):
                matrix[np.ix_(rows[out_pos], cols[in_pos])] = weights[tap].T
    return matrix


def conv2d_via_matmul(
    x: np.ndarray,
    weights: np.ndarray,
    *,
    stride: int = 1,
    padding: Padding = "valid",
    dilation: int = 1,
) -> np.ndarray:
    """Convolve a batch x of shape (N, H, W, C_in) with HWIO weights as one matrix product."""
    x = np.asarray(x)
    matrix = conv_as_matrix(weights, x.shape[1:], stride=stride, padding=padding, dilation=dilation)
    out_spatial = [
        conv_output_size(n, f, stride=stride, padding=padding, dilation=dilation)
        for n, f in zip(x.shape[1:-1], np.shape(weights)[:-2])
    ]
    return (x.reshape(len(x), -1) @ matrix.T).reshape(len(x), *out_spatial, -1)


def conv2d_transpose_via_matmul(
    y: np.ndarray,
    weights: np.ndarray,
    input_shape: Sequence[int],
    *,
    stride: int = 1,
    padding: Padding = "valid",
    dilation: int = 1,
) -> np.ndarray:
    """M.T @ y for a batch y of conv outputs (N, H_out, W_out, C_out): the transposed convolution.

    Since conv(x) = M x, the gradient of <y, conv(x)> with respect to x is M.T y: backprop
    through a convolution is this product, and a "transposed convolution" layer is the same map
    used forward, to upsample. `input_shape` (H, W, C_in) is needed because with stride > 1
    several input sizes give the same output size.
    """
    y = np.asarray(y)
    matrix = conv_as_matrix(weights, input_shape, stride=stride, padding=padding, dilation=dilation)
    return (y.reshape(len(y), -1) @ matrix).reshape(len(y), *input_shape)
