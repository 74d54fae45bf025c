"""The XLA:CPU kernels, one at a time: each conv path against `conv_math`'s convolution as a
matrix product (float64) and against `lax.conv_general_dilated` in bfloat16, with the compiled
program each path must give (one matmul, no dilated convolution, fusions reading stored arrays,
no resharding); the max-pool against autodiff of `nnx.max_pool`; BatchNorm against a float64
NumPy reference and `nnx.BatchNorm`; and a clear error for every argument a kernel does not
implement."""

import functools
import re

import conv_math
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from selfsup.models.kernels.xla_cpu import (
    BatchNorm,
    batch_norm_train,
    channel_sum,
    conv_general_dilated,
    max_pool,
    stored,
)

DIMS = ("NHWC", "HWIO", "NHWC")
PATHS = [
    (2, 3, 1, "pixel pairs"),  # Stage 4 of 16 px relative-patch inputs.
    (2, 3, 2, "pixel pairs"),
    (1, 3, 1, "pixel pairs"),
    (3, 7, 2, "pixel pairs"),  # An ImageNet stem on a tiny image.
    (4, 3, 2, "im2col"),  # The stride-2 conv into stage 4: 2x2 out.
    (1, 1, 1, "1x1"),
    (8, 1, 2, "1x1"),  # A projection shortcut.
    (4, 3, 1, "lax"),
    (8, 3, 2, "lax"),  # Strided: its input gradient by phases.
]


def conv_inputs(size, kernel, stride, dtype=jnp.float32, channels=(5, 4)):
    """x, w and an output cotangent g for a conv padded by (kernel - 1) // 2 on every side."""
    pad = (kernel - 1) // 2
    args = ((stride, stride), ((pad, pad), (pad, pad)))
    x = jax.random.normal(jax.random.key(1), (3, size, size, channels[0]), dtype)
    w = jax.random.normal(jax.random.key(2), (kernel, kernel, *channels), dtype)
    out = jax.eval_shape(lambda: jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=DIMS))
    return x, w, jax.random.normal(jax.random.key(3), out.shape, dtype), args


@functools.partial(jax.jit, static_argnums=(0, 4))
def forward_and_grads(conv, x, w, g, args):
    y, vjp = jax.vjp(lambda x, w: conv(x, w, *args, dimension_numbers=DIMS), x, w)
    return (y, *vjp(g))


def conv_math_reference(x, w, g, stride, pad):
    """Output, input gradient and weight gradient in float64 from `conv_math`: the conv is the
    matrix M(w) times the input, its input gradient M(w).T times g, and as M is linear in w,
    the weight gradient's entry k is <g, M(e_k) x> for the unit weight e_k."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    conv = dict(stride=stride, padding=pad)
    y = conv_math.conv2d_via_matmul(x, w, **conv)
    dx = conv_math.conv2d_transpose_via_matmul(g, w, x.shape[1:], **conv)
    dw = np.zeros(w.shape)
    for k in np.ndindex(*w.shape):
        unit = np.zeros(w.shape)
        unit[k] = 1.0
        dw[k] = np.sum(g * conv_math.conv2d_via_matmul(x, unit, **conv))
    return y, dx, dw


@pytest.mark.parametrize("size, kernel, stride, path", PATHS)
def test_every_conv_path_computes_conv_maths_matrix_product(size, kernel, stride, path):
    x, w, g, args = conv_inputs(size, kernel, stride, channels=(3, 2))
    ours = forward_and_grads(conv_general_dilated, x, w, g, args)
    reference = conv_math_reference(x, w, g, stride, (kernel - 1) // 2)
    for got, want in zip(ours, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("size, kernel, stride, path", PATHS)
def test_each_conv_path_compiles_to_its_matmul_or_convolution(size, kernel, stride, path):
    x, w, g, args = conv_inputs(size, kernel, stride)
    forward = jax.jit(lambda x, w: conv_general_dilated(x, w, *args, dimension_numbers=DIMS))
    lowered = forward.lower(x, w)
    assert ("convolution" in lowered.as_text()) == (path == "lax")
    if path != "lax":  # Multiply-adds of the one matmul: all pixel pairs, or output x taps.
        pixels, out_pixels = size * size, g.shape[1] * g.shape[2]
        products = pixels if path == "pixel pairs" else kernel * kernel
        flops = lowered.compile().cost_analysis()["flops"]
        assert flops == 2 * 3 * out_pixels * products * 5 * 4


@pytest.mark.parametrize("size, kernel, stride, path", PATHS)
def test_every_conv_path_in_bfloat16_rounds_as_xla_does(size, kernel, stride, path):
    """Both accumulate in float32 and round to bfloat16 (2^-9 relative) once or twice."""
    x, w, g, args = conv_inputs(size, kernel, stride, jnp.bfloat16, channels=(16, 8))
    ours = forward_and_grads(conv_general_dilated, x, w, g, args)
    theirs = forward_and_grads(jax.lax.conv_general_dilated, x, w, g, args)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 2**-7 * np.linalg.norm(b)


@pytest.mark.parametrize(
    "size, kernel, stride, padding",
    [
        (8, 3, 2, (1, 1)),  # ResNet's stride-2 3x3 convs.
        (16, 7, 2, (3, 3)),  # The ImageNet stem.
        (8, 3, 2, (0, 1)),  # "SAME" padding.
        (8, 4, 2, (1, 1)),
        (12, 5, 3, (2, 1)),
    ],
)
def test_strided_conv_input_gradient_has_no_dilated_convolution(size, kernel, stride, padding):
    """The input gradient of a strided conv is stride-1 convs over the input's phases
    (`xla_cpu.phase_input_gradient`), not XLA's convolution of the stride-dilated gradient."""
    args = ((stride, stride), (padding, padding[::-1]))
    x = jax.random.normal(jax.random.key(1), (3, size, size + stride, 5))
    w = jax.random.normal(jax.random.key(2), (kernel, kernel, 5, 4))

    def input_and_weight_grads(conv, x, w):
        y, vjp = jax.vjp(lambda x, w: conv(x, w, *args, dimension_numbers=DIMS), x, w)
        g = jax.random.normal(jax.random.key(3), y.shape)
        return (y, *vjp(g))

    reference = input_and_weight_grads(jax.lax.conv_general_dilated, x, w)
    ours = jax.jit(lambda x, w: input_and_weight_grads(conv_general_dilated, x, w))
    for a, b in zip(ours(x, w), reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    hlo = ours.lower(x, w).compile().as_text()
    assert "convolution" in hlo and "lhs_dilate" not in hlo


def fusions_feeding_convolutions(compiled_hlo: str) -> list[int]:
    """For each fusion a convolution of the compiled program reads: how many 4-D arrays it reads."""
    entry = compiled_hlo[compiled_hlo.index("\nENTRY") :]
    instructions = {}  # name -> (rank, opcode, operand names)
    for m in re.finditer(r"\n\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]\S* ([\w-]+)\(([^)]*)\)", entry):
        name, dims, opcode, operands = m.groups()
        instructions[name] = (len(dims.split(",")), opcode, re.findall(r"%([\w.-]+)", operands))
    counts = []
    for _, opcode, operands in instructions.values():
        if opcode == "convolution":
            for fusion in (o for o in operands if instructions[o][1] == "fusion"):
                reads = instructions[fusion][2]
                counts.append(sum(instructions[o][0] == 4 for o in reads if o in instructions))
    return counts


def residual_chain_loss(ws, x):
    """relu(x + conv(x)) blocks: the residual stream is an elementwise chain through all of them."""
    args = ((1, 1), ((1, 1), (1, 1)))
    for w in ws:
        x = jax.nn.relu(x + conv_general_dilated(x, w, *args, dimension_numbers=DIMS))
    return jnp.sum(jnp.square(x))


def test_weight_gradients_read_stored_activations_and_keep_a_sharded_batch_sharded():
    """XLA fuses cheap elementwise producers into every consumer; before `stored`, the transpose
    that starts each weight gradient recomputed the residual stream back through every earlier
    block, so the fusion feeding the last block's weight gradient read 8 arrays here."""
    ws = 0.1 * jax.random.normal(jax.random.key(0), (6, 3, 3, 4, 4))
    x = jax.random.normal(jax.random.key(1), (8, 6, 6, 4))
    np.testing.assert_array_equal(stored(x), x)
    grad = jax.jit(jax.grad(residual_chain_loss, argnums=(0, 1)))
    reads = fusions_feeding_convolutions(grad.lower(ws, x).compile().as_text())
    assert reads and max(reads) <= 2, reads

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded_x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    compiled = grad.lower(ws, sharded_x).compile()
    assert not re.search(r"all-gather|all-to-all|collective-permute", compiled.as_text())
    for a, b in zip(compiled(ws, sharded_x), grad(ws, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_takes_laxs_other_spellings_of_what_it_implements():
    x, w, _, (strides, _) = conv_inputs(8, 3, 2)
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, DIMS)
    for padding in ("SAME", "VALID", [(0, 1), (1, 0)]):
        kwargs = dict(lhs_dilation=(1, 1), rhs_dilation=[1, 1], feature_group_count=1)
        np.testing.assert_allclose(
            conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers, **kwargs),
            jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DIMS),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize(
    "argument, value",
    [
        ("rhs_dilation", (2, 2)),
        ("lhs_dilation", (1, 2)),
        ("feature_group_count", 2),
        ("batch_group_count", 3),
        ("preferred_element_type", jnp.float32),
        ("dimension_numbers", ("NCHW", "OIHW", "NCHW")),
    ],
)
def test_conv_rejects_what_it_does_not_implement_naming_it_and_the_fix(argument, value):
    x, w = jnp.ones((3, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
    kwargs = {"dimension_numbers": DIMS, argument: value}
    message = rf"does not implement {argument}=.*config.model.kernels='xla'"
    with pytest.raises(NotImplementedError, match=message):
        conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), **kwargs)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"kernel_dilation": 2}, r"rhs_dilation=\(2, 2\)"),
        ({"feature_group_count": 2}, "feature_group_count=2"),
    ],
)
def test_a_dilated_or_grouped_nnx_conv_is_an_error_not_a_wrong_result(option, message):
    conv = nnx.Conv(
        4, 6, (3, 3), conv_general_dilated=conv_general_dilated, rngs=nnx.Rngs(0), **option
    )
    with pytest.raises(NotImplementedError, match=message):
        conv(jnp.ones((2, 8, 8, 4)))


@pytest.mark.parametrize("size", [8, 7, 112])
def test_max_pool_equals_nnx_and_sends_the_gradient_to_each_windows_first_maximum(size):
    # Few distinct values: windows hold ties, which must go to the first maximum, as autodiff
    # of nnx.max_pool (XLA's select_and_scatter) sends them.
    x = jax.random.randint(jax.random.key(0), (2, size, size, 3), 0, 4).astype(jnp.float32)
    g = jax.random.normal(jax.random.key(1), (2, (size + 1) // 2, (size + 1) // 2, 3))

    def forward_and_grad(pool):
        y, vjp = jax.vjp(pool, x)
        return y, vjp(g)[0]

    ours = forward_and_grad(jax.jit(lambda x: max_pool(x, (3, 3), (2, 2), "SAME")))
    reference = forward_and_grad(lambda x: nnx.max_pool(x, (3, 3), (2, 2), padding="SAME"))
    np.testing.assert_array_equal(ours[0], reference[0])
    np.testing.assert_allclose(ours[1], reference[1], rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(ours[1]) < ours[1].size / 2  # Gradients reach few inputs.


@pytest.mark.parametrize(
    "window, strides, padding",
    [((3, 2), (2, 1), "VALID"), ((2, 2), None, "SAME"), ((3, 3), (1, 2), ((1, 0), (2, 1)))],
)
def test_max_pool_takes_any_2d_window_stride_and_padding(window, strides, padding):
    x = jax.random.randint(jax.random.key(0), (2, 7, 6, 3), 0, 4).astype(jnp.float32)

    def grad(pool):
        return jax.grad(lambda x: jnp.sum(pool(x, window, strides, padding) ** 2))(x)

    np.testing.assert_allclose(grad(max_pool), grad(nnx.max_pool), rtol=1e-6)
    with pytest.raises(NotImplementedError, match=r"window_shape=\(3,\)"):
        max_pool(x, (3,), (1,))


EPS = 1e-5


def batch_norm_reference(x, scale, bias, dy):
    """Textbook BatchNorm over all axes but the last, and its gradients, in float64."""
    x, scale, bias, dy = (np.asarray(a, np.float64) for a in (x, scale, bias, dy))
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    xhat = (x - mean) / np.sqrt(var + EPS)
    n = x.size // x.shape[-1]
    dbias, dscale = dy.sum(axes), (dy * xhat).sum(axes)
    dx = scale / np.sqrt(var + EPS) / n * (n * dy - dbias - xhat * dscale)
    return scale * xhat + bias, mean, var, dx, dscale, dbias


def batch_norm_inputs(shape=(6, 5, 4, 3), offset=3.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * 2.0 + offset
    scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, scale, bias, dy


def test_batch_norm_output_statistics_and_gradients_match_float64_reference():
    x, scale, bias, dy = batch_norm_inputs()
    (y, mean, var), vjp = jax.vjp(lambda *a: batch_norm_train(*a, EPS), x, scale, bias)
    dx, dscale, dbias = vjp((jnp.asarray(dy), jnp.zeros_like(mean), jnp.zeros_like(var)))
    expected = batch_norm_reference(x, scale, bias, dy)
    for got, want in zip((y, mean, var, dx, dscale, dbias), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_batch_norm_gradient_matches_autodiff_of_nnx_batchnorm_under_jit():
    x, scale, bias, dy = batch_norm_inputs(shape=(16, 8, 8, 32), seed=1)

    def loss(cls, x, scale, bias):
        bn = cls(32, epsilon=EPS, rngs=nnx.Rngs(0))
        bn.scale[...], bn.bias[...] = scale, bias
        return jnp.sum(jax.nn.relu(bn(x, use_running_average=False)) * dy)

    ours = jax.jit(jax.grad(lambda *a: loss(BatchNorm, *a), argnums=(0, 1, 2)))(x, scale, bias)
    theirs = jax.jit(jax.grad(lambda *a: loss(nnx.BatchNorm, *a), argnums=(0, 1, 2)))(
        x, scale, bias
    )
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batch_norm_running_averages_inference_mode_and_variables_equal_nnx():
    x, scale, bias, _ = batch_norm_inputs()
    ours, theirs = (
        cls(3, momentum=0.9, epsilon=EPS, rngs=nnx.Rngs(0)) for cls in (BatchNorm, nnx.BatchNorm)
    )
    for bn in (ours, theirs):
        bn.scale[...], bn.bias[...] = scale, bias
    for _ in range(2):
        np.testing.assert_allclose(
            ours(x, use_running_average=False), theirs(x, use_running_average=False), atol=1e-5
        )
    np.testing.assert_allclose(ours.mean[...], theirs.mean[...], rtol=1e-6)
    np.testing.assert_allclose(ours.var[...], theirs.var[...], rtol=1e-5)
    _, _, var = batch_norm_reference(x, scale, bias, x)[:3]
    np.testing.assert_allclose(ours.var[...], (1 - 0.9**2) * var + 0.9**2, rtol=1e-5)
    np.testing.assert_allclose(
        ours(x, use_running_average=True), theirs(x, use_running_average=True), atol=1e-6
    )
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(theirs))


def test_batch_norm_bfloat16_inputs_give_bfloat16_outputs_and_float32_statistics():
    x, scale, bias, dy = batch_norm_inputs(offset=0.0)
    bn = BatchNorm(3, epsilon=EPS, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = scale, bias
    y = bn(jnp.asarray(x, jnp.bfloat16), use_running_average=False)
    assert y.dtype == jnp.bfloat16 and bn.mean[...].dtype == jnp.float32
    np.testing.assert_allclose(
        np.float32(y), batch_norm_reference(x, scale, bias, dy)[0], atol=0.05
    )
    grads = jax.grad(lambda s: jnp.sum(batch_norm_train(x.astype(jnp.bfloat16), s, bias, EPS)[0]))
    assert grads(scale).dtype == jnp.float32


def test_batch_norm_sums_per_channel_by_matmul():
    text = jax.jit(channel_sum).lower(jnp.ones((4, 3, 2))).as_text()
    assert "dot_general" in text and "reduce" not in text
    np.testing.assert_array_equal(channel_sum(jnp.ones((4, 3, 2))), [12.0, 12.0])


@pytest.mark.parametrize(
    "option, message",
    [
        ({"axis": 1}, "axis=1"),
        ({"use_bias": False}, "use_bias=False"),
        ({"axis_name": "data"}, "axis_name='data'"),
        ({"use_fast_variance": False}, "use_fast_variance=False"),
    ],
)
def test_batch_norm_rejects_what_it_does_not_implement_naming_it_and_the_fix(option, message):
    with pytest.raises(NotImplementedError, match=rf"{message}: .*config.model.kernels='xla'"):
        BatchNorm(3, rngs=nnx.Rngs(0), **option)
    with pytest.raises(NotImplementedError, match="mask="):
        BatchNorm(3, rngs=nnx.Rngs(0))(jnp.ones((4, 3)), use_running_average=False, mask=True)
