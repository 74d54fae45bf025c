"""Convolution arithmetic against XLA: output sizes and conv-as-matrix products against
lax.conv_general_dilated over a grid of filters, strides, dilations and every padding mode;
matrix transposes against jax.vjp; receptive fields against the measured input support of one
output unit's gradient; textbook numbers; and errors for impossible configurations."""

import itertools

import jax
import numpy as np
import pytest
from conv_math import (
    ConvLayer,
    conv2d_transpose_via_matmul,
    conv2d_via_matmul,
    conv_as_matrix,
    conv_output_size,
    padding_pair,
    receptive_field,
)
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def float64_jax():
    with jax.enable_x64(True):
        yield


def lax_conv(x, weights, *, stride, padding, dilation):
    """XLA's convolution, with "valid"/"same" handed to XLA by name so its padding is its own."""
    if padding in ("valid", "same"):
        lax_padding = padding.upper()
    else:
        lax_padding = [
            padding_pair(n, f, stride=stride, padding=padding, dilation=dilation)
            for n, f in zip(x.shape[1:3], weights.shape[:2])
        ]
    return lax.conv_general_dilated(
        x,
        weights,
        (stride, stride),
        lax_padding,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=DIMENSION_NUMBERS,
    )


GRID = list(
    itertools.product(
        [(7, 10), (10, 8)],  # non-square inputs (H, W)
        [(3, 3), (2, 4), (1, 3)],  # odd, even and mixed filters (F_h, F_w)
        [1, 2],  # stride
        [1, 2],  # dilation
        ["valid", "same", "half", "full", 1, (0, 2)],
    )
)


@pytest.mark.parametrize("spatial,filter_shape,stride,dilation,padding", GRID)
def test_conv_matrix_and_output_size_match_xla(spatial, filter_shape, stride, dilation, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *spatial, 3))
    weights = rng.normal(size=(*filter_shape, 3, 2))
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    expected = np.asarray(lax_conv(x, weights, **kwargs))

    sizes = [conv_output_size(n, f, **kwargs) for n, f in zip(spatial, filter_shape)]
    assert expected.shape == (2, *sizes, 2)
    np.testing.assert_allclose(
        conv2d_via_matmul(x, weights, **kwargs), expected, rtol=1e-12, atol=1e-12
    )
    matrix = conv_as_matrix(weights, x.shape[1:], **kwargs)
    np.testing.assert_allclose(matrix @ x[0].ravel(), expected[0].ravel(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial,filter_shape,stride,dilation,padding", GRID[::5])
def test_matrix_transpose_is_the_input_gradient(spatial, filter_shape, stride, dilation, padding):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *spatial, 3))
    weights = rng.normal(size=(*filter_shape, 3, 2))
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    out, vjp = jax.vjp(lambda x: lax_conv(x, weights, **kwargs), x)
    cotangent = rng.normal(size=out.shape)
    (expected,) = vjp(cotangent)
    got = conv2d_transpose_via_matmul(cotangent, weights, x.shape[1:], **kwargs)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", ["valid", "same", "half", "full", 2, (1, 3)])
def test_one_dimensional_conv_matrix_matches_xla(padding):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(11, 2))
    weights = rng.normal(size=(4, 2, 3))
    kwargs = {"stride": 2, "padding": padding, "dilation": 2}
    lax_padding = (
        padding.upper() if padding in ("valid", "same") else [padding_pair(11, 4, **kwargs)]
    )
    expected = lax.conv_general_dilated(
        x[None],
        weights,
        (2,),
        lax_padding,
        rhs_dilation=(2,),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    np.testing.assert_allclose(
        conv_as_matrix(weights, x.shape, **kwargs) @ x.ravel(),
        np.ravel(expected),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("input_size", range(1, 12))
@pytest.mark.parametrize(
    "filter_size,stride,dilation",
    [(1, 1, 1), (3, 2, 1), (4, 2, 1), (2, 3, 2), (5, 1, 3), (4, 4, 1)],
)
def test_same_padding_is_xlas(input_size, filter_size, stride, dilation):
    k_eff = dilation * (filter_size - 1) + 1
    expected = lax.padtype_to_pads((input_size,), (k_eff,), (stride,), "SAME")[0]
    assert padding_pair(
        input_size, filter_size, stride=stride, padding="same", dilation=dilation
    ) == tuple(expected)
    assert conv_output_size(
        input_size, filter_size, stride=stride, padding="same", dilation=dilation
    ) == -(-input_size // stride)


def test_textbook_output_sizes():
    assert conv_output_size(227, 11, stride=4) == 55  # AlexNet conv1
    assert conv_output_size(224, 7, stride=2, padding=3) == 112  # ResNet stem
    assert conv_output_size(5, 3, padding="full") == 7
    assert conv_output_size(5, 4, padding="half") == 4  # "half" is not "same" for even filters
    assert conv_output_size(7, 3, dilation=2) == 3
    assert padding_pair(10, 3, padding="full", dilation=2) == (4, 4)


def support_extent(mask):
    """(first, last) index along axis 0 where any entry is nonzero."""
    nonzero = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))))
    return int(nonzero[0]), int(nonzero[-1])


STACKS = {
    "two_3x3": [ConvLayer(3), ConvLayer(3)],
    "strided": [
        ConvLayer(3, stride=2, padding="same"),
        ConvLayer(3, padding=1),
        ConvLayer(2, stride=2),
    ],
    "dilated": [
        ConvLayer(3, padding="half"),
        ConvLayer(3, dilation=2, padding="half"),
        ConvLayer(3, dilation=4, padding="full"),
    ],
    "resnet_stem_like": [
        ConvLayer(7, stride=2, padding="same"),
        ConvLayer(3, stride=2, padding="same"),
        ConvLayer(3, padding="same"),
        ConvLayer(3, stride=2, dilation=2),
    ],
}


@pytest.mark.parametrize("name", STACKS)
def test_receptive_field_matches_gradient_support(name):
    """Ones as weights cannot cancel, so the gradient of one output unit is nonzero exactly on
    the inputs it sees; with dilation the support has holes, so compare its extent."""
    layers = STACKS[name]
    height, width = 41, 34  # different sizes, so strided "same" pads differently per axis

    def stack(x):
        for layer in layers:
            weights = np.ones((layer.filter_size, layer.filter_size, 1, 1))
            x = lax_conv(
                x, weights, stride=layer.stride, padding=layer.padding, dilation=layer.dilation
            )
        return x

    x = np.zeros((1, height, width, 1))
    out_shape = jax.eval_shape(stack, x).shape
    fields = [receptive_field(layers, input_size=n) for n in (height, width)]
    for unit in ((0, 0), (out_shape[1] // 2, out_shape[2] // 2), (out_shape[1] - 1, 0)):
        grad = jax.grad(lambda x, unit=unit: stack(x)[0, unit[0], unit[1], 0])(x)[0, ..., 0]
        for axis, (field, i, n) in enumerate(zip(fields, unit, (height, width))):
            first = field.start + i * field.jump
            last = first + field.size - 1
            # Parts of the field that lie in padding have no input to take a gradient of.
            assert support_extent(np.moveaxis(grad != 0, axis, 0)) == (
                max(first, 0),
                min(last, n - 1),
            )


def test_receptive_field_numbers():
    stem = STACKS["resnet_stem_like"]
    field = receptive_field(stem, input_size=224)
    assert (field.size, field.jump) == (7 + 2 * 2 + 2 * 4 + 4 * 4, 8)
    # 224 -> 112 -> 56 -> 56 -> 26; SAME pads (2, 3), (0, 1), (1, 1) then none.
    assert field.start == -2 - 0 * 2 - 1 * 4
    assert field.center == field.start + (field.size - 1) / 2
    assert receptive_field([ConvLayer(3)] * 3) == receptive_field([ConvLayer(7)])
    assert receptive_field([ConvLayer(3, padding="same")]).start == -1
    assert receptive_field([]).size == 1


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: conv_output_size(4, 3, dilation=2), "filter larger than padded input"),
        (lambda: conv_output_size(4, 7, padding=1), "filter larger than padded input"),
        (lambda: conv_output_size(8, 3, stride=0), "stride must be a positive integer"),
        (lambda: conv_output_size(8, 3, dilation=0), "dilation must be a positive integer"),
        (lambda: conv_output_size(8, 0), "filter_size must be a positive integer"),
        (lambda: conv_output_size(8, 3, padding="SAME"), "unknown padding 'SAME'"),
        (lambda: conv_output_size(8, 3, padding=(1, 2, 3)), "unknown padding"),
        (lambda: conv_output_size(8, 3, padding=-1), "padding must be non-negative"),
        (lambda: receptive_field([ConvLayer(3, stride=2, padding="same")]), "pass input_size"),
        (
            lambda: receptive_field([ConvLayer(5, stride=2)] * 3, input_size=16),
            "filter larger than padded input",
        ),
        (lambda: conv_as_matrix(np.ones((3, 3, 2, 1)), (8, 8, 3)), "do not fit"),
    ],
)
def test_impossible_configurations_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
