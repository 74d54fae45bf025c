"""On an accelerator (GPU or TPU), its code paths compute what the CPU's do: the XLA:CPU rewrites
(`model.kernels=cpu`) against XLA's own ops, a ResNet-50's loss and gradients against the same
program on XLA:CPU, bf16 compute with float32 parameters, and the L-BFGS probe's precision under
the accelerator's default (TF32) matmuls. Skipped, with the reason, where JAX's default backend
is the CPU: `experiments/bench/gpu_check/check.sh` runs them on a GPU machine and reports a
skip as a skip."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from selfsup.config import resolve_model_dtype
from selfsup.evaluate import linear
from selfsup.models.kernels import xla_cpu
from selfsup.models.resnet import ResNet
from selfsup.train.state import split_model

BACKEND = jax.default_backend()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        BACKEND not in ("gpu", "tpu"), reason=f"needs a GPU or TPU (JAX's backend is {BACKEND})"
    ),
]
DIMS = ("NHWC", "HWIO", "NHWC")
FULL = "float32"  # jax.default_matmul_precision without TF32.


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def resnet50_tiny(dtype=jnp.float32) -> ResNet:
    """ResNet-50 at width 1/8: at 64 px its stage-4 maps are 2x2, the rewrites' matmul paths."""
    return ResNet(
        50, stem="imagenet", width=0.125, zero_init_residual=False, dtype=dtype, rngs=nnx.Rngs(0)
    )


def test_auto_model_dtype_is_bfloat16():
    config = ml_collections.ConfigDict({"model": {"dtype": "auto"}})
    resolve_model_dtype(config, BACKEND)
    assert config.model.dtype == "bfloat16"


def test_tensorflow_does_not_see_the_accelerator():
    tf = pytest.importorskip("tensorflow")
    from selfsup.data import pipeline  # noqa: F401  Hides the accelerators from TF on import.

    _ = tf.constant([1.0]) + 1.0  # Starts TF's runtime.
    assert tf.config.get_visible_devices("GPU") == []


@pytest.mark.parametrize(
    "size, kernel, stride, cin, cout",
    [
        (2, 3, 1, 64, 64),  # pixel-pair matmul (relpatch stage 4)
        (3, 7, 2, 3, 16),  # pixel-pair matmul (ImageNet stem on a tiny image)
        (4, 3, 2, 64, 128),  # im2col matmul (stride-2 conv into a 2x2 stage)
        (8, 1, 2, 64, 256),  # 1x1 projection shortcut: strided slice + matmul
        (14, 1, 1, 256, 64),  # 1x1: matmul
        (8, 3, 2, 32, 64),  # lax, strided
        (112, 7, 2, 3, 64),  # lax, ImageNet stem
    ],
)
def test_conv_rewrites_match_lax(size, kernel, stride, cin, cout):
    pad = (kernel - 1) // 2
    args = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)))
    x = jax.random.normal(jax.random.key(1), (4, size, size, cin))
    w = jax.random.normal(jax.random.key(2), (kernel, kernel, cin, cout)) / np.sqrt(
        kernel * kernel * cin
    )

    @jax.jit
    def both(x, w):
        out = []
        for conv in (xla_cpu.conv_general_dilated, jax.lax.conv_general_dilated):
            y, vjp = jax.vjp(functools.partial(conv, **args, dimension_numbers=DIMS), x, w)
            out.append((y, *vjp(jax.random.normal(jax.random.key(3), y.shape))))
        return out

    with jax.default_matmul_precision(FULL):
        ours, ref = both(x, w)
    for name, a, b in zip(("output", "input grad", "weight grad"), ours, ref):
        assert rel_err(a, b) < 1e-4, name


def test_max_pool_gradient_matches_autodiff():
    # Few distinct values: windows hold ties, whose gradient goes to the first maximum.
    x = jax.random.randint(jax.random.key(0), (4, 112, 112, 16), 0, 4).astype(jnp.float32)
    g = jax.random.normal(jax.random.key(1), (4, 56, 56, 16))

    @jax.jit
    def both(x, g):
        out = []
        for pool in (xla_cpu.max_pool, nnx.max_pool):
            y, vjp = jax.vjp(
                functools.partial(pool, window_shape=(3, 3), strides=(2, 2), padding="SAME"), x
            )
            out.append((y, vjp(g)[0]))
        return out

    (y, dx), (y_ref, dx_ref) = both(x, g)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    assert rel_err(dx, dx_ref) < 1e-6


def test_batch_norm_gradient_matches_the_textbook():
    eps = 1e-5
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (16, 28, 28, 64)) * 2.0 + 3.0
    scale = jax.random.uniform(k[1], (64,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(k[2], (64,))
    dy = jax.random.normal(k[3], x.shape)

    def textbook(x, scale, bias):
        mean = x.mean(axis=(0, 1, 2))
        var = jnp.square(x - mean).mean(axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias

    @jax.jit
    def both(x, scale, bias, dy):
        y, vjp = jax.vjp(lambda *a: xla_cpu.batch_norm_train(*a, eps)[0], x, scale, bias)
        y_ref, vjp_ref = jax.vjp(textbook, x, scale, bias)
        return (y, *vjp(dy)), (y_ref, *vjp_ref(dy))

    ours, ref = both(x, scale, bias, dy)
    for name, a, b in zip(("y", "dx", "dscale", "dbias"), ours, ref):
        assert rel_err(a, b) < 1e-4, name


def test_encoder_loss_and_gradients_match_the_cpu():
    graphdef, params, stats = split_model(resnet50_tiny())
    x = jax.random.uniform(jax.random.key(4), (8, 64, 64, 3))

    def loss(params, stats, x):
        features = nnx.merge(graphdef, params, stats)(x, train=True)
        return jnp.mean(jnp.square(features))

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    with jax.default_matmul_precision(FULL):
        accel = jax.device_get(value_and_grad(params, stats, x))
        cpu = jax.device_get(
            value_and_grad(*jax.device_put((params, stats, x), jax.devices("cpu")[0]))
        )
    assert rel_err(accel[0], cpu[0]) < 1e-4
    leaves, ref = jax.tree.leaves(accel[1]), jax.tree.leaves(cpu[1])
    num = sum(float(np.sum((np.float64(a) - np.float64(b)) ** 2)) for a, b in zip(leaves, ref))
    den = sum(float(np.sum(np.float64(b) ** 2)) for b in ref)
    assert np.sqrt(num / den) < 1e-3


def test_bfloat16_compute_keeps_float32_parameters_and_features():
    model = resnet50_tiny(jnp.bfloat16)
    graphdef, state = nnx.split(model)
    x = jax.random.uniform(jax.random.key(5), (8, 64, 64, 3))

    @jax.jit
    def features(state, x):
        return nnx.merge(graphdef, state).features(x, train=True)

    out = features(state, x)
    assert out["stage4"].dtype == jnp.bfloat16
    assert out["pooled"].dtype == jnp.float32
    assert np.isfinite(np.asarray(out["pooled"])).all()
    assert {str(p.dtype) for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {"float32"}
    if BACKEND == "gpu":  # cuDNN's convolutions, all of them in bf16.
        hlo = features.lower(state, x).compile().as_text()
        convs = [
            line.split("custom-call(")[0] for line in hlo.splitlines() if "__cudnn$conv" in line
        ]
        assert convs and all("bf16[" in c and "f32[" not in c for c in convs)


def test_linear_probe_converges_alike_under_the_default_matmul_precision():
    """The probe's own matmuls ask for full fp32, so TF32 defaults change nothing."""
    rng = np.random.default_rng(0)
    n, d, c = 20_000, 512, 10
    y = rng.integers(0, c, n)
    x = 0.05 * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d))  # Overlapping classes.
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    fits = []
    for context in (contextlib.nullcontext(), jax.default_matmul_precision(FULL)):
        with context:
            fit = linear.fit_logistic_regression(x, y, num_classes=c, l2=1e-3)
            fits.append((fit.converged, fit.num_iter, linear.accuracy(fit, x, y)))
    assert fits[1][0], "the full-fp32 fit did not converge"
    assert fits[0] == fits[1]
